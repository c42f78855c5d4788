"""Checks of user input shared by several entry points, each failing with one line that names the place at fault.

- Counts on a command line (`hf-rlhf generate`, `hf-rlhf score`): argparse types, so that `--max_new_tokens -3`
  is refused by the parser naming the option, before any model loads.
- The weight files of a model directory: safetensors headers are read (no tensor is), so that a truncated or
  corrupt download names its file and how to get it again, instead of a `SafetensorError` that names nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable
from typing import Any

from .errors import ModelNotFoundError

SAFETENSORS_INDEX = "model.safetensors.index.json"
ADAPTER_CONFIG = "adapter_config.json"  # a peft adapter directory holds this
_CACHED_SNAPSHOT = re.compile(r"models--(?P<repo>[^/\\]+)[/\\]snapshots[/\\](?P<commit>[0-9a-f]{40})")


# ------------------------------------------------------------------------------------------ command-line counts
def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type`: an integer of at least `minimum` (argparse names the option in its error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def non_negative(text: str) -> float:
    """An argparse `type`: a number of at least 0 (a temperature: 0 samples greedily)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


# ------------------------------------------------------------------------------------------------ weight files
def weight_files(path: str) -> list[str]:
    """The safetensors files a model directory's weights are in: an adapter's, the shards its index names, or
    `model.safetensors`; `[]` when it has none of them."""
    if os.path.isfile(os.path.join(path, ADAPTER_CONFIG)):
        return [os.path.join(path, "adapter_model.safetensors")]
    index = os.path.join(path, SAFETENSORS_INDEX)
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f).get("weight_map", {}).values()))
        return [os.path.join(path, shard) for shard in shards]
    single = os.path.join(path, "model.safetensors")
    return [single] if os.path.isfile(single) else []


def check_weights(source: Any, what: str = "model", required: bool = False) -> None:
    """Refuse a model directory whose safetensors weights are missing, truncated or corrupt, naming the file and
    how to get it again (a `ModelNotFoundError`); only headers are read.

    Args:
        source: A `hf_rlhf.hub.resolve.ResolvedInput` (a Hub snapshot names its repo and commit) or a directory.
        what: The role, as errors name it ("model", "reward model"...).
        required: Also refuse a directory with no weights at all (a loader needs them; a config reader does not).
    """
    from safetensors import SafetensorError, safe_open

    path = getattr(source, "path", source)
    if not isinstance(path, str) or not os.path.isdir(path):
        return
    files = weight_files(path)
    if not files and required:
        found = sorted(f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".ckpt")))
        pickled = f" (it has {', '.join(found)}: hf_rlhf reads safetensors only, so loading never unpickles)"
        raise ModelNotFoundError(
            f"{what} '{path}' has no weights: expected model.safetensors, {SAFETENSORS_INDEX} with its shards, or "
            f"adapter_model.safetensors{pickled if found else ''}; {how_to_restore(source, None)}"
        )
    for file in files:
        if not os.path.isfile(file):
            if required or os.path.isfile(os.path.join(path, SAFETENSORS_INDEX)):
                raise ModelNotFoundError(f"{what} weights file '{file}' is missing; {how_to_restore(source, file)}")
            continue
        try:
            with safe_open(file, framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise ModelNotFoundError(
                f"{what} weights file '{file}' is truncated or corrupt ({e}); {how_to_restore(source, file)}"
            ) from None


def how_to_restore(source: Any, file: str | None) -> str:
    """How to get a model's weights again: download from the Hub (its commit), rerun the stage that wrote it, or
    save it again."""
    path = getattr(source, "path", source)
    repo, commit = getattr(source, "repo_id", None), getattr(source, "commit", None)
    cached = _CACHED_SNAPSHOT.search(os.path.abspath(path))
    if repo is None and cached is not None:  # a snapshot in the Hub cache, given by its path
        repo, commit = cached["repo"].replace("--", "/", 1), cached["commit"]
    if repo is not None:
        names = [os.path.relpath(file, path)] if file else []
        command = ["hf", "download", repo, *names, "--revision", commit or "main", "--force-download"]
        return f"download it again: {' '.join(command)}"
    manifest = os.path.join(path, "hf_rlhf_manifest.json")  # hf_rlhf.manifest.MANIFEST (no import: a leaf module)
    if os.path.isfile(manifest):
        try:
            with open(manifest) as f:
                stage = json.load(f).get("stage")
        except (OSError, ValueError):
            stage = None
        if stage:
            return f"it was written by the {stage} stage: run `hf-rlhf {stage}` again into '{path}' with --overwrite"
    return "save the model there again (`save_pretrained`), or copy a complete one"
