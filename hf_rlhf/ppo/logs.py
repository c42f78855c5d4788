"""PPO's logs: the reduced statistics of an update, the console line, the trackers, and the completions table."""

from __future__ import annotations

import json

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from .rollout import Rollout, rollout_statistics


class PPOLogging:
    """What `PPOTrainer` logs; needs `args`, `accelerator`, `kl_ctl`, `global_step` and `completions_log`."""

    def rollout_metrics(self, rollout: Rollout) -> dict[str, float]:
        """Statistics of one rollout over valid tokens only, averaged over every process."""
        args = self.args
        shaped = args.group_baseline or args.running_reward_norm or args.reward_clip is not None
        local = rollout_statistics(rollout, self.kl_ctl.value, shaped)
        stacked = torch.stack([v.float() for v in local.values()])
        reduced = self.accelerator.reduce(stacked, reduction="mean")
        return {k: v.item() for k, v in zip(local, reduced, strict=True)}

    def log_completions(self, rollout: Rollout) -> None:
        """The first rows of every process's rollout, with the total score and each reward, to `completions_log`."""
        rows = self.completions_log.rows
        share = -(-rows // self.accelerator.num_processes)  # every process contributes, as GRPO/RLOO's table
        parts = {"score": rollout.raw_scores, **rollout.score_parts}
        mine = [
            (prompt, completion, {name: float(values[i]) for name, values in parts.items()})
            for i, (prompt, completion) in enumerate(
                zip(rollout.prompts[:share], rollout.completions[:share], strict=True)
            )
        ]
        gathered = gather_object([mine]) if self.accelerator.num_processes > 1 else [mine]
        if self.accelerator.is_main_process:
            table = [row for part in gathered for row in part][:rows]
            scores = {name: [row[2][name] for row in table] for name in parts}
            self.completions_log.log(self.global_step, [r[0] for r in table], [r[1] for r in table], scores)

    def log(self, metrics: dict[str, float]) -> None:
        if self.accelerator.log_with:
            self.accelerator.log(metrics, step=self.global_step)
        if self.accelerator.is_main_process:
            keys = ("score", "kl", "entropy", "policy/clipfrac", "response_length", "missing_eos_rate")
            tqdm.write(
                json.dumps({"step": self.global_step, **{k: round(metrics[k], 4) for k in keys if k in metrics}})
            )
