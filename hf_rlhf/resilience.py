"""What happens when a training stage is interrupted or diverges: complete checkpoints, NaN/inf losses, SIGTERM.

- **Complete checkpoints.** transformers' `Trainer` writes `checkpoint-<step>` in place (model, optimizer, scheduler,
  RNG states of every process, `trainer_state.json`) and then rotates old ones, so a crash while saving leaves a
  directory that `get_last_checkpoint` would pick. hf_rlhf writes `hf_rlhf_checkpoint.json` into it after every
  process has finished writing and its files are fsync'd: only a checkpoint with that marker counts. Resuming picks
  the newest complete one, incomplete ones are removed when training starts, and `save_total_limit` counts complete
  checkpoints only (rotation happens after marking, so a crash never leaves fewer complete checkpoints than asked).
  A stage's trainer writes in the stage's partial directory (`hf_rlhf.outputs`), so resuming finds an unfinished
  run's checkpoints there; a save that fails for want of space or permission is a one-line `OutputWriteError` that
  keeps the last complete checkpoint, and the space the model needs is checked when training starts.
- **NaN/inf loss.** The loss of every micro-batch is checked; at each optimizer step the processes agree (one small
  gather), and a non-finite loss stops the stage with `NonFiniteLossError` before the optimizer step: no checkpoint
  and no final model are saved from that state, and the stage's manifest is not written.
- **SIGTERM** (a scheduler's preemption, `kill`, or `accelerate launch` forwarding its own SIGTERM): training stops
  at the next step boundary that every process agrees on, saves a complete checkpoint and raises
  `TrainingInterrupted` (the CLI exits with 143); rerunning the same command with `resume_from_checkpoint: true`, or
  the same pipeline command, continues from it. A second SIGTERM stops at once. SIGKILL is covered by the above.

`resilient(TrainerClass)` adds all three to a transformers/TRL trainer class. hf_rlhf's PPO trainer
(`hf_rlhf.ppo`) saves its checkpoints through the same `saving_checkpoint` and finds them with the same functions,
and checks its statistics, reduced over the processes, after each update: a non-finite one stops it before anything
is saved from that state.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from .errors import NonFiniteLossError, RecipeError, TrainingInterrupted
from .manifest import atomic_write_json, is_complete
from .storage import (  # where checkpoints are found: hf_rlhf.storage (used here and through this module)
    CHECKPOINT_MARKER,
    check_space,
    checkpoints,
    complete_checkpoints,
    final_dir,
    fsync_dir,
    fsync_tree,
    is_complete_checkpoint,
    is_partial,
    last_complete_checkpoint,
    writing,
)

logger = logging.getLogger(__name__)

INTERRUPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM


# ------------------------------------------------------------------------------------------------ processes
def process_state():
    """accelerate's `PartialState` of this launch (one process outside `accelerate launch`), on the CPU when
    `ACCELERATE_USE_CPU` says so, as transformers' `TrainingArguments` and accelerate's `Accelerator` read it.

    If it starts the process group, it does so with transformers' `ddp_timeout` default (30 min), not torch's 10 min
    for NCCL: processes wait at barriers while the main one prepares data or samples comparisons.
    """
    from datetime import timedelta

    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), timeout=timedelta(seconds=1800))


def use_cpu_if_no_accelerator() -> None:
    """Under a multi-process launch on a machine without GPUs (or another accelerator), run on the CPU with gloo.

    accelerate starts CPU processes only through its multi-GPU launcher (`--multi_gpu`, or a config such as
    the named config `cpu_2proc` (hf_rlhf/accelerate_configs/cpu_2proc.yaml); `--cpu` with several processes wants mpirun), and each process then
    needs `ACCELERATE_USE_CPU` to join the others instead of training alone.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")


# ---------------------------------------------------------------------------------------------- checkpoints
def remove_incomplete_checkpoints(output_dir: str, keep: str | None = None) -> list[str]:
    """Delete checkpoints that were never marked complete (a crash or kill while saving); returns them."""
    removed = []
    for path in checkpoints(output_dir):
        if not is_complete_checkpoint(path) and (keep is None or os.path.abspath(path) != os.path.abspath(keep)):
            logger.warning("removing incomplete checkpoint %s (its saving never finished)", path)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def mark_checkpoint_complete(path: str, step: int) -> None:
    """Flush the checkpoint's files, then write its marker (temporary file, fsync, rename): the last thing written."""
    fsync_tree(path)
    atomic_write_json(
        os.path.join(path, CHECKPOINT_MARKER),
        {"step": step, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    )
    fsync_dir(path)


def unmark_checkpoint(path: str) -> None:
    """A checkpoint about to be written again is not complete until it is marked again."""
    marker = os.path.join(path, CHECKPOINT_MARKER)
    if os.path.exists(marker):
        os.remove(marker)
        fsync_dir(path)


def rotate_checkpoints(output_dir: str, limit: int | None, protect: tuple[str | None, ...] = ()) -> None:
    """Keep the `limit` newest complete checkpoints (and any in `protect`, e.g. the best one); delete older ones."""
    if not limit or limit <= 0:
        return
    protected = {os.path.abspath(p) for p in protect if p}
    complete = complete_checkpoints(output_dir)
    for path in complete[: max(0, len(complete) - limit)]:
        if os.path.abspath(path) not in protected:
            shutil.rmtree(path, ignore_errors=True)


@contextmanager
def saving_checkpoint(
    folder: str,
    step: int,
    *,
    saves: bool,
    wait_for_everyone: Callable[[], None],
    limit: int | None = None,
    protect: tuple[str | None, ...] = (),
) -> Iterator[None]:
    """Write checkpoint `folder` (`<output_dir>/checkpoint-<step>`) in the body; it counts once the body is done.

    Before: its marker is removed (a folder written again is not complete) and every process waits, so none writes
    into a folder that still looks complete. After: every process waits until all have written (e.g. each its RNG
    state), then the saving process (`saves`, the main one) marks it complete and rotates to `limit` complete
    checkpoints, never deleting this one or those in `protect`. An exception in the body leaves it unmarked; a write
    that fails for want of space or permission is an `OutputWriteError` (`hf_rlhf.storage.writing`).
    """
    with writing(folder):  # a full disk or lost permission: one line (`OutputWriteError`), older ones kept
        if saves:
            unmark_checkpoint(folder)
        wait_for_everyone()
        yield
        wait_for_everyone()
        if saves:
            mark_checkpoint_complete(folder, step)
            rotate_checkpoints(os.path.dirname(folder), limit, protect=(folder, *protect))


def resolve_resume(output_dir: str, resume_from_checkpoint: str | bool | None) -> str | None:
    """The checkpoint to resume from: `True` (or "true"/"latest") is the newest complete one in `output_dir`.

    A stage's trainer writes in its partial directory (`hf_rlhf.outputs`): an unfinished run's checkpoints are
    there; without any, those of the stage's complete (or older, unfinished) output beside it count.
    """
    if resume_from_checkpoint in (None, False, "", "false", "False"):
        return None
    if resume_from_checkpoint is True or str(resume_from_checkpoint).lower() in ("true", "latest"):
        places = [output_dir] + ([final_dir(output_dir)] if is_partial(output_dir) else [])
        found = next((c for c in map(last_complete_checkpoint, places) if c), None)
        if found is None:
            raise RecipeError(
                f"resume_from_checkpoint: no complete checkpoint in {' or '.join(map(repr, places))} (a checkpoint "
                f"counts once {CHECKPOINT_MARKER} is in it); unset resume_from_checkpoint to start from scratch"
            )
        return found
    path = str(resume_from_checkpoint)
    if not os.path.isdir(path):
        raise RecipeError(f"resume_from_checkpoint: '{path}' is not a directory")
    if not is_complete_checkpoint(path):
        logger.warning("resuming from %s, which has no %s: its saving may not have finished", path, CHECKPOINT_MARKER)
    return path


# -------------------------------------------------------------------------------------------------- SIGTERM
class StopRequest:
    """Turns SIGTERM into a request to stop at the next step boundary (while `on_sigterm()` is active).

    The handler only sets `requested`; the training loop decides, with the other processes, where to stop. A second
    SIGTERM restores the previous handler and re-sends the signal: it stops at once.
    """

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum, frame) -> None:
        if self.requested:
            signal.signal(signal.SIGTERM, self._previous)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        self.requested = True
        logger.warning("SIGTERM: stopping at the next step boundary and saving a checkpoint (again to stop now)")

    def agreed(self, accelerator) -> bool:
        """Whether any process was asked to stop; every process gets the same answer (one small reduce)."""
        flag = torch.tensor(float(self.requested), device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum") > 0)

    @contextmanager
    def on_sigterm(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
            yield self
            return
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGTERM, self._previous)


def interrupted_message(where: str, step: int, max_steps: int, checkpoint: str | None) -> str:
    saved = f"saved {checkpoint}" if checkpoint else "no checkpoint could be saved"
    replacing = is_partial(where) and is_complete(final_dir(where))
    overwrite = (
        f" (and --overwrite: the complete output in {final_dir(where)} is kept until then)" if replacing else ""
    )
    return (
        f"{where}: stopped by SIGTERM after step {step} of {max_steps}; {saved}. To continue from it, rerun the same "
        f"command with --resume_from_checkpoint true{overwrite}, or rerun the same `hf-rlhf pipeline` command (it "
        "resumes this stage and skips the finished ones)."
    )


def nonfinite_message(step: int, losses: list[float | None], output_dir: str) -> str:
    """`losses[i]`: process i's first non-finite loss in this step, or None if its losses were finite."""
    per_process = ", ".join(
        f"process {i}: {'finite' if value is None else value}" for i, value in enumerate(losses) if len(losses) > 1
    )
    value = next(v for v in losses if v is not None)
    return (
        f"{output_dir}: the training loss is {value} at step {step}{f' ({per_process})' if per_process else ''}. Training "
        f"stopped before the optimizer step; no checkpoint or model was saved from this state and the stage is not "
        f"complete; {_kept(output_dir)}. Try a lower learning_rate, more warmup_steps, gradient clipping "
        "(max_grad_norm), fp32 or bf16 instead of fp16, or look for bad rows in the data; a run resumed with the same "
        "settings may diverge again."
    )


def nonfinite_statistics_message(output_dir: str, update: int, statistics: dict[str, float]) -> str:
    """PPO's: `statistics` of `update`, reduced over the processes, of which some are NaN or inf."""
    bad = ", ".join(f"{k}={v}" for k, v in statistics.items() if not math.isfinite(v))
    return (
        f"{output_dir}: non-finite PPO statistics at update {update} ({bad}). Training stopped; no checkpoint or "
        f"model was saved from this state and the stage is not complete; {_kept(output_dir)}. Try a lower "
        "learning_rate, max_grad_norm, a larger kl_coef, reward_clip or normalize_reward, or check the reward "
        "functions for NaN/inf; a run resumed with the same settings may diverge again."
    )


def _kept(output_dir: str) -> str:
    kept = last_complete_checkpoint(output_dir)
    said = f"the last good checkpoint, {kept}, is kept" if kept else "no checkpoint had been saved before it"
    if is_partial(output_dir) and is_complete(final_dir(output_dir)):  # a rerun: the finished stage is untouched
        said += f", and the previous complete output in {final_dir(output_dir)} is untouched"
    return said


# ------------------------------------------------------------------------------------ transformers trainers
class _StopAtStepEnd(TrainerCallback):
    """Turns an agreed stop request into a checkpoint at this step and the end of training."""

    def __init__(self, trainer: ResilientTrainerMixin) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        if self.trainer._stop_agreed:
            control.should_save = True
            control.should_training_stop = True
        return control


class ResilientTrainerMixin:
    """Complete checkpoints, a NaN/inf loss stop and a graceful SIGTERM for a transformers/TRL trainer class.

    Three `Trainer` methods are overridden, because no callback event sees what they need: `train` (resolve
    `resume_from_checkpoint` to the newest *complete* checkpoint and catch SIGTERM), `training_step` (callbacks never
    see the loss; the one logged is averaged over `logging_steps` and, with `logging_nan_inf_filter`, has NaN
    replaced) and `_save_checkpoint` (transformers rotates old checkpoints inside it, before any callback runs, so
    the marker must be written, by one process after all have saved, before rotation). Hyperparameter search
    (`trial`) is not supported by the marker logic: checkpoints are looked for in `args.output_dir`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stop = StopRequest()
        self._stop_agreed = False
        self._step_losses: list[torch.Tensor] = []
        self.add_callback(_StopAtStepEnd(self))

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any):
        output_dir = self.args.output_dir
        resume = resolve_resume(output_dir, resume_from_checkpoint)
        if self.args.should_save:
            remove_incomplete_checkpoints(output_dir, keep=resume)
            check_space(output_dir, self.model, self.args)  # the model and a checkpoint fit, or a one-line error
        self._stop.requested, self._stop_agreed = False, False
        with self._stop.on_sigterm():
            result = super().train(resume_from_checkpoint=resume, **kwargs)
            stop = self._stop_agreed or bool(self._agree([0.0, 0.0, float(self._stop.requested)])[:, 2].any())
            if stop and not self._stop_agreed:  # SIGTERM after the last step: keep the finished state
                self._save_checkpoint(self.model, trial=None)
        if stop:
            checkpoint = os.path.join(output_dir, f"checkpoint-{self.state.global_step}")
            raise TrainingInterrupted(
                interrupted_message(
                    output_dir,
                    self.state.global_step,
                    self.state.max_steps,
                    checkpoint if is_complete_checkpoint(checkpoint) else None,
                )
            )
        return result

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        self._step_losses.append(loss.detach().float().reshape(()))
        if self.accelerator.sync_gradients:  # the last micro-batch before the optimizer step
            self._check_step()
        return loss

    def _agree(self, local: list[float]) -> torch.Tensor:
        """Every process's row of `local` (non-finite loss seen, its value, SIGTERM seen): (num_processes, 3)."""
        row = torch.tensor([local], dtype=torch.float32, device=self.accelerator.device)
        return self.accelerator.gather(row).cpu()

    def _check_step(self) -> None:
        losses, self._step_losses = torch.stack(self._step_losses).cpu(), []
        bad = losses[~torch.isfinite(losses)]
        table = self._agree([float(len(bad) > 0), float(bad[0]) if len(bad) else 0.0, float(self._stop.requested)])
        if bool(table[:, 0].any()):
            values = [float(row[1]) if row[0] else None for row in table]
            raise NonFiniteLossError(nonfinite_message(self.state.global_step + 1, values, self.args.output_dir))
        self._stop_agreed = bool(table[:, 2].any())

    def _save_checkpoint(self, model, trial) -> None:
        folder = os.path.join(self.args.output_dir, f"checkpoint-{self.state.global_step}")
        limit, self.args.save_total_limit = self.args.save_total_limit, None  # rotated after marking, not inside
        try:
            with saving_checkpoint(
                folder,
                self.state.global_step,
                saves=self.args.should_save,
                wait_for_everyone=self.accelerator.wait_for_everyone,
                limit=limit,
                protect=(self.state.best_model_checkpoint,),
            ):
                super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit


@functools.cache
def resilient(trainer_cls: type[Trainer]) -> type[Trainer]:
    """`trainer_cls` with `ResilientTrainerMixin`: e.g. `resilient(SFTTrainer)(model=..., args=...)`."""
    return type(f"Resilient{trainer_cls.__name__}", (ResilientTrainerMixin, trainer_cls), {})
