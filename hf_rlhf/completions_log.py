"""Sample completions of the RL stage, logged every `log_completions_steps` updates for PPO, GRPO and RLOO.

`CompletionsLog` writes one table per logged update: every row to `<output_dir>/completions.jsonl` (whole texts), and
the table to each `report_to` tracker (texts cut to `MAX_CELL_CHARS`): TensorBoard as a markdown table under the tag
`completions` (an event file in `logging_dir`), Weights & Biases as a `wandb.Table` while a wandb run is active,
trackio as a `trackio.Table`. Other trackers are ignored. PPO calls `CompletionsLog.log` itself; for TRL's GRPO and
RLOO, `RewardRecorder` wraps the reward functions to keep the batch they last scored and `CompletionsCallback` logs
it after the optimizer step.

With several processes the callback gathers an equal share of rows from every process (`gather_object`), so the
table shows prompts from the whole batch, not only the main process's.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from accelerate import PartialState
from accelerate.utils import gather_object
from transformers import TrainerCallback

COMPLETIONS_FILE = "completions.jsonl"
TEXT_COLUMNS = ("step", "prompt", "completion")
MAX_CELL_CHARS = 1000  # a tracker's table cell; the jsonl keeps whole texts


def render_text(value: Any) -> str:
    """A prompt or completion as readable text: a string as is; chat messages as `role: content` lines (a lone
    assistant message, a TRL conversational completion, as its content)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, (list, tuple)) and all(isinstance(m, dict) and "content" in m for m in value):
        if len(value) == 1 and value[0].get("role") == "assistant":
            return str(value[0]["content"])
        return "\n".join(f"{m.get('role', 'unknown')}: {m['content']}" for m in value)
    return str(value)


def score_value(value: Any) -> float | None:
    """A score for JSON and the tables: a float, or None for a missing score (None or NaN)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def default_logging_dir(output_dir: str) -> str:
    """TensorBoard's event directory as transformers' `TensorBoardCallback` chooses it: `$TENSORBOARD_LOGGING_DIR`,
    else `<output_dir>/runs/<date>_<host>`."""
    from transformers.integrations.integration_utils import default_logdir

    return os.path.expanduser(os.environ.get("TENSORBOARD_LOGGING_DIR") or os.path.join(output_dir, default_logdir()))


def due(step: int, every: int) -> bool:
    """Whether update `step` (1-based) logs a completions table: every `every` updates, never when `every` is 0."""
    return every > 0 and step > 0 and step % every == 0


class CompletionsLog:
    """A table of sample completions every `every` updates, written to `completions.jsonl` and the trackers.

    Args:
        output_dir (`str`): Where `completions.jsonl` is appended to.
        every (`int`): Log every this many updates (`log_completions_steps`; 0: never).
        rows (`int`): At most this many rows per table, the first ones given (`log_completions_rows`).
        report_to (`Sequence[str]` or `str`, *optional*): Trackers to write the table to: `tensorboard`, `wandb`
            and `trackio`; others are ignored.
        logging_dir (`str`, *optional*): TensorBoard's event directory (default: `default_logging_dir`, the
            Trainer's rule).

    Nothing is opened before the first `log`, so a log can be made on every process and used on the main one only.
    """

    def __init__(
        self,
        output_dir: str,
        every: int,
        rows: int,
        report_to: Sequence[str] | str | None = None,
        logging_dir: str | None = None,
    ):
        if every < 0 or rows < 1:
            raise ValueError(f"CompletionsLog needs every >= 0 and rows >= 1, got every={every}, rows={rows}")
        self.output_dir, self.every, self.rows = output_dir, every, rows
        report_to = [report_to] if isinstance(report_to, str) else list(report_to or [])
        self.report_to = [r for r in report_to if r in ("tensorboard", "wandb", "trackio")]
        self.logging_dir = logging_dir or default_logging_dir(output_dir)
        self._writer = None  # TensorBoard's SummaryWriter, made at the first table

    @property
    def path(self) -> str:
        return os.path.join(self.output_dir, COMPLETIONS_FILE)

    def due(self, step: int) -> bool:
        return due(step, self.every)

    def log(
        self,
        step: int,
        prompts: Sequence[Any],
        completions: Sequence[Any],
        scores: dict[str, Sequence[float | None]],
    ) -> list[dict[str, Any]]:
        """Log the first `rows` completions of update `step`; returns the rows written.

        Args:
            step (`int`): The update (optimizer step) the completions were sampled for.
            prompts (`Sequence`): Texts or chat conversations, one per completion.
            completions (`Sequence`): Texts, or TRL's conversational completions (a list of messages).
            scores (`dict[str, Sequence[float]]`): One value per completion for each score (the total, the
                reward model, each reward function); None or NaN where a reward did not score a completion.
        """
        if len(prompts) != len(completions):
            raise ValueError(f"CompletionsLog.log: {len(prompts)} prompts for {len(completions)} completions")
        for name, values in scores.items():
            if name in TEXT_COLUMNS:
                raise ValueError(f"CompletionsLog.log: score name '{name}' is a column of the table: rename it")
            if len(values) != len(completions):
                raise ValueError(
                    f"CompletionsLog.log: score '{name}' has {len(values)} values for {len(completions)} completions"
                )
        n = min(self.rows, len(completions))
        rows = [
            {
                "step": step,
                "prompt": render_text(prompts[i]),
                "completion": render_text(completions[i]),
                **{name: score_value(values[i]) for name, values in scores.items()},
            }
            for i in range(n)
        ]
        if not rows:
            return rows
        os.makedirs(self.output_dir, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        columns = list(rows[0])
        cells = [[truncate(row[c]) if isinstance(row[c], str) else row[c] for c in columns] for row in rows]
        for tracker in self.report_to:
            getattr(self, f"_to_{tracker}")(step, columns, cells)
        return rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _to_tensorboard(self, step: int, columns: list[str], cells: list[list[Any]]) -> None:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=self.logging_dir)
        self._writer.add_text("completions", markdown_table(columns, cells), global_step=step)
        self._writer.flush()

    def _to_wandb(self, step: int, columns: list[str], cells: list[list[Any]]) -> None:
        try:
            import wandb
        except ImportError:
            return
        if wandb.run is not None:  # the trainer's own run; none: nothing to log to
            wandb.log({"completions": wandb.Table(columns=columns, data=cells)})

    def _to_trackio(self, step: int, columns: list[str], cells: list[list[Any]]) -> None:
        try:
            import trackio
        except ImportError:
            return
        import pandas as pd

        trackio.log({"completions": trackio.Table(dataframe=pd.DataFrame(cells, columns=columns))})


def truncate(text: str, limit: int = MAX_CELL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown_table(columns: list[str], cells: list[list[Any]]) -> str:
    """A markdown table (as TensorBoard's text tab renders it); `|` escaped, line breaks as `<br>`."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value).replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in cells]
    return "\n".join(lines)


class RewardRecorder:
    """Wraps TRL reward functions so that the batch they last scored can be logged: prompts, completions, each
    function's values and, with several rewards, their weighted total (`reward`, NaN left out as TRL does)."""

    def __init__(self, names: Sequence[str], weights: Sequence[float]):
        self.names, self.weights = list(names), list(weights)
        self.prompts: list = []
        self.completions: list = []
        self.values: dict[str, list] = {}

    def wrap(self, funcs: Sequence[Callable]) -> list[Callable]:
        """The reward functions to give TRL, in order; TRL calls them one after the other on the same batch."""
        return [self._recording(i, fn) for i, fn in enumerate(funcs)]

    def _recording(self, index: int, fn: Callable) -> Callable:
        def reward(prompts, completions, **kwargs):
            values = fn(prompts=prompts, completions=completions, **kwargs)
            if index == 0:  # the first function of a new batch
                self.prompts, self.completions, self.values = list(prompts), list(completions), {}
            self.values[self.names[index]] = list(values)
            return values

        reward.__name__ = getattr(fn, "__name__", self.names[index])
        return reward

    def scores(self) -> dict[str, list[float | None]]:
        """Each reward's values for the recorded batch, and the weighted total when there are several rewards."""
        scores = {name: [score_value(v) for v in self.values[name]] for name in self.names if name in self.values}
        if len(scores) > 1 and "reward" not in scores:
            totals = []
            for i in range(len(self.completions)):
                parts = [
                    w * scores[n][i] for n, w in zip(self.names, self.weights, strict=True) if scores[n][i] is not None
                ]
                totals.append(sum(parts) if parts else None)
            scores = {"reward": totals, **scores}
        return scores


class CompletionsCallback(TrainerCallback):
    """Logs the batch a `RewardRecorder` last scored every `log.every` optimizer steps (TRL's GRPO and RLOO).

    Every process contributes its first `ceil(rows / processes)` rows (`gather_object`, called by all processes
    at the same step); the main process writes them. The table goes to the `trainer`'s own TensorBoard directory,
    so that it sits with the scalars (that callback has chosen it by `on_train_begin`).
    """

    def __init__(self, recorder: RewardRecorder, log: CompletionsLog, trainer=None):  # trainer: for its callbacks
        self.recorder, self.log, self.trainer = recorder, log, trainer

    def on_train_begin(self, args, state, control, **kwargs):
        from transformers.integrations import TensorBoardCallback

        callbacks = self.trainer.callback_handler.callbacks if self.trainer is not None else []
        tensorboard = next((c for c in callbacks if isinstance(c, TensorBoardCallback)), None)
        if tensorboard is not None and tensorboard.logging_dir:
            self.log.logging_dir = tensorboard.logging_dir

    def on_step_end(self, args, state, control, **kwargs):
        if not self.log.due(state.global_step):
            return
        world = PartialState().num_processes
        share = -(-self.log.rows // world)
        recorder, scores = self.recorder, self.recorder.scores()
        local = [
            (recorder.prompts[i], recorder.completions[i], {k: v[i] for k, v in scores.items()})
            for i in range(min(share, len(recorder.completions)))
        ]
        rows = gather_object(local) if world > 1 else local
        if state.is_world_process_zero and rows:
            names = list(rows[0][2])
            self.log.log(
                state.global_step,
                [r[0] for r in rows],
                [r[1] for r in rows],
                {name: [r[2].get(name) for r in rows] for name in names},
            )

    def on_train_end(self, args, state, control, **kwargs):
        self.log.close()
