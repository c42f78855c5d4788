"""Stage outputs on disk: the directories beside an `output_dir`, checkpoints and their markers, flushing, the free
space a model needs, and the one-line errors of a full, read-only or forbidden disk.

A stage is built in `<output_dir>.partial/` and swapped in through `<output_dir>.replaced` (`hf_rlhf.outputs`). A
checkpoint counts once its marker is written (`hf_rlhf.resilience`). A write that fails for want of space or
permission (`OSError`, safetensors' `SafetensorError`, torch's serializer) becomes an `OutputWriteError` (`writing`)
naming the path, the free space against what the model needs (`output_bytes`, recorded by `check_space` when
training starts) and what was kept: the previous complete output and the last complete checkpoint.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import OutputWriteError
from .manifest import atomic_write_json, is_complete

logger = logging.getLogger(__name__)

PARTIAL, REPLACED = ".partial", ".replaced"  # suffixes of the directories beside `output_dir`
CHECKPOINT_MARKER = "hf_rlhf_checkpoint.json"  # a checkpoint counts once this is in it (`hf_rlhf.resilience`)
SPACE_RECORD = ".hf_rlhf_space.json"  # in a partial directory: what `check_space` estimated the stage writes
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
WRITE_ERRNOS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a parent is a regular file, not a directory",
    errno.EEXIST: "a regular file is in the way",
}
_OS_ERROR = re.compile(r"os error (\d+)")  # how safetensors' Rust I/O errors name the errno
_TORCH_WRITE = ("inline_container.cc", "PytorchStreamWriter", "file write failed")  # torch.save on a full disk


# ------------------------------------------------------------------------------------------------- names
def partial_dir(output_dir: str) -> str:
    return os.path.normpath(output_dir) + PARTIAL


def replaced_dir(output_dir: str) -> str:
    return os.path.normpath(output_dir) + REPLACED


def is_partial(path: str) -> bool:
    return os.path.normpath(path).endswith(PARTIAL)


def final_dir(path: str) -> str:
    """The `output_dir` a partial directory becomes (any other path as it is)."""
    path = os.path.normpath(path)
    return path[: -len(PARTIAL)] if path.endswith(PARTIAL) else path


def partial_root(path: str) -> str | None:
    """The partial directory `path` is in (or is), if any."""
    while path and path != os.path.dirname(path):
        if is_partial(path):
            return path
        path = os.path.dirname(path)
    return None


# ------------------------------------------------------------------------------------------ checkpoints
def checkpoints(output_dir: str) -> list[str]:
    """Every `checkpoint-<step>` directory in `output_dir`, complete or not, oldest step first."""
    if not output_dir or not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(output_dir) if (m := CHECKPOINT.match(name))]
    return [
        os.path.join(output_dir, name) for _, name in sorted(found) if os.path.isdir(os.path.join(output_dir, name))
    ]


def is_complete_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, CHECKPOINT_MARKER))


def complete_checkpoints(output_dir: str) -> list[str]:
    """The checkpoints whose saving finished (marker present), oldest step first."""
    return [path for path in checkpoints(output_dir) if is_complete_checkpoint(path)]


def last_complete_checkpoint(output_dir: str) -> str | None:
    found = complete_checkpoints(output_dir)
    return found[-1] if found else None


def fsync_tree(path: str) -> None:
    """Flush every file under `path` (or the file `path`), and the directories themselves, to disk."""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(root)


def fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. directories cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def existing(path: str) -> str:
    """`path`, or its nearest ancestor that exists."""
    while not os.path.lexists(path) and path != os.path.dirname(path):
        path = os.path.dirname(path)
    return path


def read_only(path: str) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


# ------------------------------------------------------------------------------------------ space and errors
def output_bytes(model, args: Any = None) -> dict[str, int]:
    """What a stage writes, estimated from the model: `model`, the saved weights (parameter count x bytes of their
    dtype; only the trainable ones when some are frozen: an adapter), and `checkpoint`, one checkpoint (those weights
    plus Adam's two fp32 values per trainable parameter; 0 when `args.save_strategy` is "no")."""
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]

    def numel(p) -> int:
        return getattr(p, "ds_numel", None) or p.numel()  # DeepSpeed ZeRO-3 leaves empty placeholders

    weights = sum(numel(p) * p.element_size() for p in (trainable if len(trainable) < len(params) else params))
    strategy = getattr(getattr(args, "save_strategy", "no"), "value", getattr(args, "save_strategy", "no"))
    checkpoint = weights + sum(2 * 4 * numel(p) for p in trainable) if strategy != "no" else 0
    return {"model": weights, "checkpoint": checkpoint}


def check_space(output_dir: str, model, args: Any = None) -> dict[str, int]:
    """Before training (the process that saves): refuse when the disk under `output_dir` has less free space than
    the final model and one checkpoint need (`output_bytes`), warn when the checkpoints kept (`save_total_limit`, +1
    while rotating) may not fit; the estimate is recorded in the partial directory for later write errors."""
    need = output_bytes(model, args)
    if not getattr(args, "should_save", True):
        return need
    root = partial_root(output_dir)
    if root and os.path.isdir(root):
        atomic_write_json(os.path.join(root, SPACE_RECORD), need)
    disk = existing(os.path.abspath(output_dir))
    free = shutil.disk_usage(disk).free
    at_least = need["model"] + need["checkpoint"]
    if free < at_least:
        raise OutputWriteError(
            f"cannot write output_dir '{final_dir(root or output_dir)}': not enough space on the disk of '{disk}': "
            f"{_space(free, need)}; free some space or choose another output_dir; {_kept(output_dir)}"
        )
    kept = (getattr(args, "save_total_limit", None) or 1) + 1
    if need["checkpoint"] and free < need["model"] + kept * need["checkpoint"]:
        logger.warning(
            "%s: %s free, the model and %d checkpoints need about %s: training may stop when the disk is full",
            output_dir, _size(free), kept, _size(need["model"] + kept * need["checkpoint"]),
        )  # fmt: skip
    return need


@contextmanager
def writing(path: str) -> Iterator[None]:
    """Turn a write that fails for want of space or permission into a one-line `OutputWriteError` naming `path`, the
    free space against the estimate (`check_space`'s record) when the disk is full, and what was kept."""
    try:
        yield
    except OutputWriteError:
        raise
    except Exception as e:
        reason = write_failure(e)
        if reason is None:
            raise
        raise OutputWriteError(write_error_message(path, reason)) from e


def write_failure(error: BaseException) -> str | None:
    """Why a write failed, if for want of space or permission (`WRITE_ERRNOS`); None for anything else."""
    code = getattr(error, "errno", None) if isinstance(error, OSError) else None
    if code is None and type(error).__name__ == "SafetensorError" and (m := _OS_ERROR.search(str(error))):
        code = int(m.group(1))
    if code in WRITE_ERRNOS:
        return WRITE_ERRNOS[code]
    if isinstance(error, RuntimeError) and any(marker in str(error) for marker in _TORCH_WRITE):
        return "the write failed (torch's serializer; usually a full disk)"
    return None


def write_error_message(path: str, reason: str) -> str:
    message = f"cannot write '{path}': {reason}"
    if reason.startswith(("no space", "disk quota", "the write failed")):
        root = partial_root(path)
        record = os.path.join(root, SPACE_RECORD) if root else ""
        need = None
        if record and os.path.isfile(record):
            with open(record) as f:
                need = json.load(f)
        message += f": {_space(shutil.disk_usage(existing(path)).free, need)}; free some space or choose another "
        message += "output_dir, then rerun the same command (add --resume_from_checkpoint true to continue from the "
        message += "last checkpoint)"
    else:
        message += "; fix the permissions or choose another output_dir"
    return f"{message}; {_kept(path)}"


def _space(free: int, need: dict[str, int] | None) -> str:
    if not need:
        return f"{_size(free)} free"
    detail = f"{_size(need['model'])} for the model"
    if need.get("checkpoint"):
        detail += f" + {_size(need['checkpoint'])} for a checkpoint with optimizer state"
    return f"{_size(free)} free, about {_size(need['model'] + need.get('checkpoint', 0))} needed ({detail})"


def _kept(path: str) -> str:
    """What a failed write leaves: the previous complete output and the last complete checkpoint."""
    root = partial_root(path) or os.path.normpath(path)
    out, checkpoint = final_dir(root), last_complete_checkpoint(root)
    kept = [f"the previous complete output '{out}'"] if is_complete(out) else []
    kept += [f"the last complete checkpoint '{checkpoint}'"] if checkpoint else []
    return f"{' and '.join(kept)} {'is' if len(kept) == 1 else 'are'} kept" if kept else "no earlier output was lost"


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
