"""PPO that notices it has failed: checks on each update's statistics that stop a run gone wrong.

A PPO run can fail without a NaN: the policy drifts away from the reference (KL explodes), stops exploring (entropy
collapses), learns to end every response at once (response length 1: EOS first), or exploits nothing and gets worse
(the score falls). Without a check such a run finishes and the stage is marked complete with a dead policy.
`PPOHealthMonitor.check` runs after every update on the statistics of `hf_rlhf.ppo.logs.rollout_metrics` (reduced
over processes, so every process decides the same) and raises `PPOFailedError` when one of these holds for
`health_patience` consecutive updates (`PPOConfig.health_*`; `None` turns one check off, `health_checks: false` all):

* **KL explosion**: the median of `kl` (per sequence) over the last `health_window` updates is above
  `health_max_kl_multiple * target_kl`;
* **KL jump**: `kl` is more than `health_max_kl_jump` nats above its lowest value of the `health_window` updates
  before;
* **entropy collapse**: the windowed median of `entropy` is below `health_min_entropy_ratio` times the median of
  the first `health_window` updates;
* **response-length collapse**: the windowed median of `response_length` (EOS included) is below
  `health_min_response_length` tokens;
* **falling score**: the windowed median of `score` is more than `health_max_score_drop` noise units below its best
  windowed median so far, the noise unit being the standard deviation of one update's score around the trend
  (`1.4826 * median |score[u] - score[u - 1]| / sqrt(2)`, robust to the trend and to outliers).

Windows take medians, not means, so one odd update (a batch of strange prompts, a reward glitch) never stops a run:
a window fails once more than half of it has moved. Each window needs `health_window` updates (the entropy check and the score's noise `2 * health_window`), so runs
shorter than that are never stopped. The error names the update, what tripped with its values, the update where the
trouble started and the last good checkpoint: the newest complete checkpoint whose policy sampled a rollout from
before the trouble (checkpoint-k holds the policy that sampled update k + 1). Training stops there, as for a
non-finite statistic: nothing is saved from the failing state and the stage is not marked complete. Rolling back
automatically is deliberately left out: resuming restores the checkpoint's optimizer and learning-rate schedule
(`accelerator.load_state`), so a lowered `learning_rate` would not take effect on resume, and the prompt order would
replay the updates that failed.
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass
from typing import Any

from ..errors import NonFiniteLossError
from ..storage import complete_checkpoints

WATCHED = ("kl", "entropy", "response_length", "score")
NOISE_PER_MAD = 1.4826 / math.sqrt(2)  # std of one update's score from the median absolute consecutive difference


class PPOFailedError(NonFiniteLossError):
    """PPO's statistics show the run has failed (KL explosion, entropy or response-length collapse, falling score):
    training stopped like on a non-finite loss; the message names the update, the check, the values and the last
    good checkpoint."""


@dataclass
class Failure:
    check: str  # the option that tripped, e.g. "health_max_kl_jump"
    what: str  # one clause with the values
    onset: int  # the first update that shows the trouble


def check_health_options(args: Any) -> None:
    """Refuse health options that cannot work (`ValueError` naming the key), before training starts."""
    for name in ("health_window", "health_patience"):
        value = getattr(args, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    for name in ("health_max_kl_multiple", "health_max_kl_jump", "health_max_score_drop"):
        value = getattr(args, name)
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0 (or null to turn the check off), got {value!r}")
    ratio = args.health_min_entropy_ratio
    if ratio is not None and not 0 < ratio < 1:
        raise ValueError(f"health_min_entropy_ratio must be in (0, 1) (or null: off), got {ratio!r}")
    length = args.health_min_response_length
    if length is not None and not length > 0:
        raise ValueError(f"health_min_response_length must be > 0 tokens (or null: off), got {length!r}")
    if args.health_max_kl_multiple is not None and not args.target_kl > 0:
        raise ValueError(f"health_max_kl_multiple needs target_kl > 0, got target_kl={args.target_kl!r}")


class PPOHealthMonitor:
    """Watches `kl`, `entropy`, `response_length` and `score` over the updates of one run.

    Args:
        args (`PPOConfig`): Its `health_*` options and `target_kl`.
        output_dir (`str`): Where the run's checkpoints are (to name the last good one).
    """

    def __init__(self, args: Any, output_dir: str):
        check_health_options(args)
        self.args, self.output_dir = args, output_dir
        self.updates: list[int] = []
        self.values: dict[str, list[float]] = {key: [] for key in WATCHED}
        self.streaks: dict[str, int] = {}  # check -> consecutive failing updates
        self.onsets: dict[str, int] = {}  # check -> the onset found at the first failure of its streak

    def resume(self, history: list[dict[str, float]]) -> None:
        """Replay the logged history of a resumed run (its checkpoint's), so windows and streaks continue."""
        for metrics in history:
            self.check(int(metrics["step"]), metrics, stop=False)

    def check(self, update: int, metrics: dict[str, float], stop: bool = True) -> None:
        """Record update `update`'s statistics (1-based, `metrics["step"]`); raise `PPOFailedError` when a check has
        failed for `health_patience` consecutive updates (`stop=False`: only record)."""
        if not self.args.health_checks:
            return
        self.updates.append(update)
        for key in WATCHED:
            self.values[key].append(float(metrics.get(key, math.nan)))
        for failure in self.failures():
            if stop and self.streaks[failure.check] >= self.args.health_patience:
                failure.onset = self.onsets[failure.check]
                raise PPOFailedError(self.message(update, failure))

    # ------------------------------------------------------------------------------------------ checks
    def failures(self) -> list[Failure]:
        """The checks failing at the latest update; updates each check's streak of consecutive failures."""
        found = [
            f
            for f in (
                self.kl_explosion(),
                self.kl_jump(),
                self.entropy_collapse(),
                self.length_collapse(),
                self.fall(),
            )
            if f is not None
        ]
        failing = {f.check: f for f in found}
        for name in set(self.streaks) | set(failing):
            self.streaks[name] = self.streaks.get(name, 0) + 1 if name in failing else 0
            if self.streaks[name] == 1:
                self.onsets[name] = failing[name].onset
        return found

    def window(self, key: str) -> list[float] | None:
        """The last `health_window` values of `key`, or `None` while there are fewer or one is missing."""
        values = self.values[key][-self.args.health_window :]
        if len(values) < self.args.health_window or not all(math.isfinite(v) for v in values):
            return None
        return values

    def span(self, length: int, end: int | None = None) -> str:
        """'updates a-b' for the `length` updates ending at index `end` (default: the latest)."""
        end = len(self.updates) - 1 if end is None else end
        return f"updates {self.updates[end - length + 1]}-{self.updates[end]}"

    def first_past(self, key: str, past) -> int:
        """The first update of the latest window whose own value is past the limit (`past(value)`); there is one
        when the window's median is."""
        w = self.args.health_window
        return next(u for u, v in zip(self.updates[-w:], self.values[key][-w:], strict=True) if past(v))

    def kl_explosion(self) -> Failure | None:
        multiple, values = self.args.health_max_kl_multiple, self.window("kl")
        if multiple is None or values is None:
            return None
        limit, median = multiple * self.args.target_kl, statistics.median(values)
        if median <= limit:
            return None
        return Failure(
            "health_max_kl_multiple",
            f"KL explosion: KL to the reference {median:.3g} nats per sequence (median of {self.span(len(values))}), "
            f"beyond health_max_kl_multiple x target_kl = {multiple:g} x {self.args.target_kl:g} = {limit:.3g}",
            self.first_past("kl", lambda v: v > limit),
        )

    def kl_jump(self) -> Failure | None:
        jump, w, kl = self.args.health_max_kl_jump, self.args.health_window, self.values["kl"]
        if jump is None or len(kl) < w + 1 or not all(math.isfinite(v) for v in kl[-w - 1 :]):
            return None
        before = kl[-w - 1 : -1]
        low = min(before)
        if kl[-1] - low <= jump:
            return None
        low_index = len(kl) - 2 - before[::-1].index(low)  # its last occurrence: the rise starts after it
        return Failure(
            "health_max_kl_jump",
            f"KL jump: KL to the reference rose from {low:.3g} (update {self.updates[low_index]}) to {kl[-1]:.3g} "
            f"nats per sequence (update {self.updates[-1]}), more than health_max_kl_jump = {jump:g} within "
            f"{w} updates",
            self.updates[low_index + 1],
        )

    def entropy_collapse(self) -> Failure | None:
        ratio, w, values = self.args.health_min_entropy_ratio, self.args.health_window, self.window("entropy")
        first = self.values["entropy"][:w]
        if ratio is None or values is None or len(self.updates) < 2 * w or not all(map(math.isfinite, first)):
            return None
        start = statistics.median(first)
        limit, median = ratio * start, statistics.median(values)
        if median >= limit:
            return None
        return Failure(
            "health_min_entropy_ratio",
            f"entropy collapse: entropy {median:.3g} nats per token (median of {self.span(w)}), below "
            f"health_min_entropy_ratio x its {start:.3g} of {self.span(w, w - 1)} = {ratio:g} x {start:.3g}",
            self.first_past("entropy", lambda v: v < limit),
        )

    def length_collapse(self) -> Failure | None:
        limit, values = self.args.health_min_response_length, self.window("response_length")
        if limit is None or values is None or statistics.median(values) >= limit:
            return None
        return Failure(
            "health_min_response_length",
            f"response-length collapse: response length {statistics.median(values):.3g} tokens, EOS included (median "
            f"of {self.span(len(values))}), below health_min_response_length = {limit:g} (the policy ends its "
            "responses at once)",
            self.first_past("response_length", lambda v: v < limit),
        )

    def fall(self) -> Failure | None:
        drop, w, score = self.args.health_max_score_drop, self.args.health_window, self.values["score"]
        if drop is None or len(score) < 2 * w or not all(map(math.isfinite, score)):
            return None
        noise = NOISE_PER_MAD * statistics.median(abs(b - a) for a, b in zip(score, score[1:], strict=False))
        medians = [statistics.median(score[i - w + 1 : i + 1]) for i in range(w - 1, len(score))]
        best = max(medians[:-1])
        best_end = len(medians) - 2 - medians[-2::-1].index(best) + w - 1  # the last best window's last update
        fallen = (best - medians[-1]) / max(noise, 1e-12)
        if fallen <= drop:
            return None
        return Failure(
            "health_max_score_drop",
            f"falling score: score {medians[-1]:.3g} (median of {self.span(w)}), {fallen:.1f} noise units below its "
            f"best {best:.3g} (median of {self.span(w, best_end)}; one update's noise {noise:.3g}, "
            f"health_max_score_drop = {drop:g})",
            self.updates[min(best_end + 1, len(score) - 1)],
        )

    # ----------------------------------------------------------------------------------------- message
    def last_good_checkpoint(self, onset: int) -> tuple[str | None, list[str]]:
        """(the newest complete checkpoint saved before `onset - 1`, the complete ones saved from then on)."""
        good, bad = None, []
        for path in complete_checkpoints(self.output_dir):
            step = int(os.path.basename(path).rsplit("-", 1)[1])
            if step <= onset - 2:  # checkpoint-k's policy sampled update k + 1's rollout
                good = path
            else:
                bad.append(path)
        return good, bad

    def message(self, update: int, failure: Failure) -> str:
        good, bad = self.last_good_checkpoint(failure.onset)
        names = ", ".join(os.path.basename(p) for p in bad)
        if good:
            kept = (
                f"the last good checkpoint is {good} (its policy sampled update "
                f"{int(good.rsplit('-', 1)[1]) + 1}, before the trouble)"
            )
            if bad:
                kept += f"; {names} hold(s) the failing policy"
        elif bad:
            kept = (
                f"every checkpoint kept ({names}) was saved after the trouble started: raise save_total_limit to keep "
                "one from before it"
            )
        else:
            kept = "no checkpoint had been saved before it: set save_strategy: steps and save_steps to keep one"
        return (
            f"{self.output_dir}: PPO has failed at update {update}: {failure.what}, for {self.args.health_patience} "
            f"consecutive updates; the trouble shows from update {failure.onset}. Training stopped; no checkpoint or "
            f"model was saved from this state and the stage is not complete; {kept}. Try a lower learning_rate, a "
            f"larger kl_coef (or adaptive_kl), normalize_reward or reward_clip; resuming from a checkpoint keeps its "
            f"optimizer and learning-rate schedule. To let such a run go on, raise {failure.check} (null turns it "
            "off) or set health_checks: false."
        )
