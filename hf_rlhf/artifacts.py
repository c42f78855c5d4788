"""The contract between stages: a finished stage directory and its manifest.

A finished stage directory holds the model, the tokenizer, the card (`README.md`) and `hf_rlhf_manifest.json`: stage name, resolved config,
metrics, the exact inputs and `"complete": true`. The manifest is written last and atomically (temporary file, then
rename), so a directory whose manifest is missing or not complete is never handed to the next stage.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from typing import Any

MANIFEST = "hf_rlhf_manifest.json"
PICKLED_TRAINER_FILES = ("training_args.bin",)
CARD_STAGES = (
    "pretrain",
    "sft",
    "reward",
)  # stages whose output is a model, with a card  # the resolved config goes to the manifest as JSON instead


class IncompleteStageError(RuntimeError):
    """A stage directory that has no complete manifest."""


def atomic_write_json(path: str, payload: Any) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2, default=_jsonable)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return config_dict(value)
    if hasattr(value, "value"):  # enums
        return value.value
    return str(value)


def config_dict(config: Any) -> dict[str, Any]:
    """A dataclass as a JSON-safe dict, secrets removed (a Hub token never reaches a file)."""
    out = {}
    for f in dataclasses.fields(config):
        if "token" in f.name and f.name not in ("pad_token", "eos_token"):
            continue
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            value = str(value)
        out[f.name] = value
    return json.loads(json.dumps(out, default=_jsonable))


def start_stage(output_dir: str) -> None:
    """Mark a stage directory as in progress: any old manifest goes first, so a crash never looks complete."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, MANIFEST)
    if os.path.exists(path):
        os.remove(path)


def finish_stage(
    output_dir: str,
    stage: str,
    *,
    configs: dict[str, Any],
    inputs: dict[str, Any],
    metrics: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the manifest, last, with the completion flag. Pickled trainer files are removed from the output."""
    for name in PICKLED_TRAINER_FILES:
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            os.remove(path)
    manifest = {
        "stage": stage,
        "configs": {k: config_dict(v) if dataclasses.is_dataclass(v) else v for k, v in configs.items()},
        "inputs": inputs,
        "metrics": metrics,
        **(extra or {}),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "complete": True,
    }
    if stage in CARD_STAGES:
        from .cards import write_card

        write_card(output_dir, stage, manifest)
    atomic_write_json(os.path.join(output_dir, MANIFEST), manifest)  # last: the completion flag
    return manifest


def read_manifest(stage_dir: str) -> dict[str, Any] | None:
    path = os.path.join(stage_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def is_complete(stage_dir: str) -> bool:
    manifest = read_manifest(stage_dir)
    return bool(manifest and manifest.get("complete"))


def require_complete(stage_dir: str) -> dict[str, Any]:
    """The manifest of a finished stage, or an error saying the directory is not a finished stage."""
    manifest = read_manifest(stage_dir)
    if not manifest or not manifest.get("complete"):
        raise IncompleteStageError(
            f"'{stage_dir}' is not a finished stage output (no complete {MANIFEST}); rerun that stage first"
        )
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
    inputs: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Save a transformers/TRL trainer's model and the tokenizer, then (main process) the card and manifest."""
    from .data.formats import dataset_fingerprint

    trainer.save_model(training_args.output_dir)
    tokenizer.save_pretrained(training_args.output_dir)
    if not trainer.is_world_process_zero():
        return {}
    return finish_stage(
        training_args.output_dir,
        stage,
        configs={"data": data_args, "training": training_args, "model": model_args},
        inputs={
            "model": model_args.model_name_or_path,
            "dataset": {"name": data_args.dataset_name, "fingerprint": dataset_fingerprint(train_dataset)},
            **(inputs or {}),
        },
        metrics=metrics,
        extra=extra,
    )
