"""Where a stage writes: built in `<output_dir>.partial/`, swapped in only when complete, so no output is lost.

A stage never writes into its `output_dir` while it runs. `check_output` (before any data or model loads) refuses a
directory that already holds a complete stage unless the stage was asked to `overwrite` it, and a directory it did
not write (files but no stage); `start_stage` checks that the disk can be written and points the stage's config at
`<output_dir>.partial/`, where the trainers put their checkpoints and the final model (resuming finds them there).
`finish_stage` writes the manifest there, recording the final `output_dir`, and swaps the directory in. A failed,
interrupted or killed run leaves the previous output as it was (and its checkpoints in the partial directory); a
fresh run that fails leaves only `<output_dir>.partial/`, never an `output_dir` that looks complete.

The swap (`commit_output`), by the main process once every process has saved and the manifest is written:

1. `<output_dir>` -> `<output_dir>.replaced` (if there is one);
2. `<output_dir>.partial` -> `<output_dir>`;
3. `<output_dir>.replaced` is deleted.

Each step is one `rename` in the same directory, so a crash leaves one of: before 1, the old output in place and the
new complete one in `.partial`; between 1 and 2, no `output_dir` but both complete copies, in `.replaced` and
`.partial`; between 2 and 3, the new output in place and the old one in `.replaced`. `recover_output` finishes an
interrupted swap from any of them (the new copy wins: it was complete, and replacing was allowed when it started);
`start_stage` and the pipeline call it first, so the next command finds one complete copy in `output_dir`.

Every write here goes through `hf_rlhf.storage.writing`: a full, read-only or forbidden disk is a one-line
`OutputWriteError` naming the path, the free space against what the model needs, and what was kept.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

from .data.loading import dataset_fingerprint
from .errors import OutputExistsError, OutputWriteError
from .manifest import MANIFEST, is_complete, read_manifest
from .manifest import finish_stage as write_manifest
from .storage import (
    CHECKPOINT,
    SPACE_RECORD,
    existing,
    final_dir,
    fsync_dir,
    fsync_tree,
    is_partial,
    partial_dir,
    read_only,
    replaced_dir,
    writing,
)

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------- before anything loads
def check_output(output_dir: str, overwrite: bool = False) -> None:
    """Refuse an `output_dir` that cannot be used, before any data or model loads (every process; nothing written).

    Raises:
        OutputExistsError: it holds a complete stage and `overwrite` is off, or it holds files but no stage.
        OutputWriteError: it is a file, is under a file, or its directory cannot be written.
    """
    out = os.path.normpath(output_dir)
    if os.path.lexists(out) and not os.path.isdir(out):
        raise OutputWriteError(f"output_dir '{out}' is a file, not a directory: choose another output_dir")
    manifest = read_manifest(out) if os.path.isdir(out) else None
    if manifest and manifest.get("complete") and not overwrite:
        raise OutputExistsError(
            f"output_dir '{out}' already holds a complete {manifest.get('stage', 'hf_rlhf')} stage (finished "
            f"{manifest.get('finished_at', 'at an unknown time')}); pass --overwrite to replace it (the old output is "
            "kept until the new one is complete) or choose another output_dir"
        )
    if not (manifest and manifest.get("complete")) and not _replaceable(out):
        raise OutputExistsError(
            f"output_dir '{out}' holds files but no hf_rlhf stage (no {MANIFEST}); a stage replaces only a directory "
            "a stage wrote: move them away or choose another output_dir"
        )
    parent = existing(os.path.dirname(os.path.abspath(out)))
    if not os.path.isdir(parent):
        raise OutputWriteError(
            f"cannot write output_dir '{out}': '{parent}' is a regular file, not a directory; choose another "
            "output_dir"
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        reason = "read-only file system" if read_only(parent) else "no permission to write"
        raise OutputWriteError(
            f"cannot write output_dir '{out}': {reason} in '{parent}' (the stage is built in '{partial_dir(out)}' "
            "beside it); nothing was written: fix the permissions or choose another output_dir"
        )


def _replaceable(out: str) -> bool:
    """Whether a directory without a complete manifest may become the old copy of a swap (and be deleted): absent,
    empty, or an unfinished stage (a manifest, checkpoints, hf_rlhf's records)."""
    if not os.path.isdir(out) or not os.listdir(out):
        return True
    return any(n == MANIFEST or CHECKPOINT.match(n) or n.startswith(".hf_rlhf") for n in os.listdir(out))


# ------------------------------------------------------------------------------------------- the partial dir
def open_output(output_dir: str, overwrite: bool = False, *, main: bool = True) -> str:
    """Make `<output_dir>.partial/` ready for a stage and return it. The main process (`main`) finishes an
    interrupted swap, checks again (`check_output`), removes what an unfinished run left there besides its
    checkpoints and hf_rlhf's records (`.hf_rlhf*`), creates it and writes a probe file; the others only get the path.
    """
    out, partial = os.path.normpath(output_dir), partial_dir(output_dir)
    if not main:
        return partial
    recover_output(out)
    check_output(out, overwrite)
    with writing(partial):
        for name in os.listdir(partial) if os.path.isdir(partial) else []:
            path = os.path.join(partial, name)
            if not (CHECKPOINT.match(name) or name.startswith(".hf_rlhf")):
                logger.info("removing %s, left by an unfinished run (its checkpoints are kept)", path)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
        os.makedirs(partial, exist_ok=True)
        with tempfile.TemporaryFile(dir=partial) as probe:  # a read-only or full disk fails here, not after training
            probe.write(b"hf_rlhf")
            probe.flush()
            os.fsync(probe.fileno())
    return partial


def start_stage(args: Any, overwrite: bool = False) -> str:
    """Point a stage's config (`args.output_dir`) at its partial directory (`open_output`); returns that path.

    The trainers then write checkpoints and the final model there; `finish_stage` puts `args.output_dir` back. The
    process that saves (`args.should_save`, the main one; every process for a config without it) prepares it.
    """
    args.output_dir = open_output(args.output_dir, overwrite, main=getattr(args, "should_save", True))
    return args.output_dir


def commit_output(partial: str) -> str:
    """Swap a complete partial directory in as its `output_dir` (steps 1-3 of the module docstring); returns it."""
    out, replaced = final_dir(partial), replaced_dir(final_dir(partial))
    with writing(out):
        if os.path.isdir(replaced) and os.path.lexists(out):  # an earlier swap's step 3 was cut short
            shutil.rmtree(replaced)
        if os.path.lexists(out):
            os.rename(out, replaced)
        os.rename(partial, out)
        fsync_dir(os.path.dirname(os.path.abspath(out)))
        shutil.rmtree(replaced, ignore_errors=True)
    return out


def recover_output(output_dir: str) -> None:
    """Finish a swap that a crash interrupted (see the module docstring), so `output_dir` holds the one complete
    copy: a complete partial directory is swapped in; a `.replaced` copy left beside a new output is deleted, or
    put back if there is no output (nothing newer was complete)."""
    out = os.path.normpath(output_dir)
    partial, replaced = partial_dir(out), replaced_dir(out)
    if is_complete(partial):
        logger.warning("%s: finishing an interrupted swap: the complete output in %s replaces it", out, partial)
        commit_output(partial)
    elif os.path.isdir(replaced):
        with writing(out):
            if os.path.lexists(out):
                shutil.rmtree(replaced)
            else:
                logger.warning("%s: putting back the complete output left in %s", out, replaced)
                os.rename(replaced, out)


def finish_stage(output_dir: str, stage: str, **fields: Any) -> dict[str, Any]:
    """`hf_rlhf.manifest.finish_stage` for a stage built in its partial directory: the configs get their final
    `output_dir` back (the manifest records it), the files are flushed, the card and manifest are written there, and
    the directory is swapped in (`commit_output`). Called by the main process after every process has saved; a
    directory that is not a partial one is finished in place. Returns the manifest."""
    if not is_partial(output_dir):
        return write_manifest(output_dir, stage, **fields)
    output_dir, final = os.path.normpath(output_dir), final_dir(output_dir)
    for config in (fields.get("configs") or {}).values():
        if getattr(config, "output_dir", None) and os.path.normpath(config.output_dir) == output_dir:
            config.output_dir = final
    with writing(output_dir):
        if os.path.exists(os.path.join(output_dir, SPACE_RECORD)):
            os.remove(os.path.join(output_dir, SPACE_RECORD))
        for name in os.listdir(output_dir):  # checkpoints were flushed when they were marked
            if not CHECKPOINT.match(name):
                fsync_tree(os.path.join(output_dir, name))
        manifest = write_manifest(output_dir, stage, final_dir=final, **fields)
    commit_output(output_dir)
    return manifest


def save_trainer_stage(
    trainer,
    tokenizer,
    stage: str,
    *,
    data_args,
    training_args,
    model_args,
    train_dataset,
    metrics: dict[str, Any],
    inputs: dict[str, Any],
    extra: dict[str, Any] | None = None,
    push: Any = None,
) -> dict[str, Any]:
    """Save a transformers/TRL trainer's model and the tokenizer, then (main process, once every process has saved)
    the card and manifest, and swap the stage in (`finish_stage`).

    `inputs` holds the stage's `ResolvedInput`s, `"model"` and `"dataset"` (the training data) among them; the
    dataset is recorded with the fingerprint of `train_dataset`. Returns the manifest (`{}` on other processes).
    """
    if getattr(trainer, "is_fsdp_enabled", False):  # a sharded state dict would save no weights: gather them
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    with writing(training_args.output_dir):
        trainer.save_model(training_args.output_dir)  # every process takes part (sharded models); one writes
    trainer.accelerator.wait_for_everyone()  # all have saved before the main process swaps the directory in
    if not trainer.is_world_process_zero():
        training_args.output_dir = final_dir(training_args.output_dir)
        return {}
    with writing(training_args.output_dir):
        tokenizer.save_pretrained(training_args.output_dir)
    return finish_stage(
        training_args.output_dir,
        stage,
        configs={"data": data_args, "training": training_args, "model": model_args},
        inputs={**inputs, "dataset": {"name": inputs["dataset"], "fingerprint": dataset_fingerprint(train_dataset)}},
        metrics=metrics,
        extra=extra,
        push=push,
    )
