"""The contract between stages: a finished stage directory and its manifest.

A finished stage directory holds the model, the tokenizer, the card (`README.md`) and `hf_rlhf_manifest.json`: stage
name, resolved config, metrics, the exact inputs (with the repo and commit of each input read from the Hub), the
lineage of upstream stages, and `"complete": true`. The manifest is written last and atomically (temporary file, then
rename), so a directory whose manifest is missing or not complete is never handed to the next stage. A stage asked to
push (`push_to_hub`) is pushed once, after its manifest is complete (`hf_rlhf.hub`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from typing import Any

from .errors import IncompleteStageError

MANIFEST = "hf_rlhf_manifest.json"
PICKLED_TRAINER_FILES = ("training_args.bin",)  # the resolved config goes to the manifest as JSON instead
CARD_STAGES = ("pretrain", "sft", "reward", "rl", "sample")  # a model card each; `sample` gets a dataset card
LINEAGE_INPUTS = ("model", "reward_model", "dataset", "adapter")  # inputs that may be upstream stages
_pending_pushes: dict[str, tuple[Any, Any]] = {}  # output dir -> (hub.PushRequest, the config it was taken from)


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


def start_stage(output_dir: str, args: Any = None) -> None:
    """Mark a stage directory as in progress: any old manifest goes first, so a crash never looks complete.

    With `args` (the stage's config), its Hub settings (`push_to_hub`, `hub_model_id`...) are taken over: no upstream
    trainer pushes, and `finish_stage` pushes once the stage is complete. A missing token fails here, before training.
    """
    _pending_pushes.pop(os.path.abspath(output_dir), None)  # from an earlier run that died before finishing
    if args is not None:
        from .hub import take_push_request

        request = take_push_request(args)
        if request is not None:
            _pending_pushes[os.path.abspath(output_dir)] = (request, args)
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
    """Write the card and the manifest, last, with the completion flag; then push if the stage was asked to.

    Pickled trainer files are removed from the output. Returns the manifest (with the `hub` record after a push).
    """
    for name in PICKLED_TRAINER_FILES:
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            os.remove(path)
    pending = _pending_pushes.pop(os.path.abspath(output_dir), None)
    if pending is not None:
        pending[1].push_to_hub = True  # taken over by `start_stage`; the config dump shows what was asked
    manifest = {
        "stage": stage,
        "configs": {k: config_dict(v) if dataclasses.is_dataclass(v) else v for k, v in configs.items()},
        "inputs": {**inputs, "sources": input_sources(inputs, configs)},
        "lineage": lineage(inputs),
        "metrics": metrics,
        **(extra or {}),
        **({"push": pending[0].record()} if pending is not None else {}),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "complete": True,
    }
    if stage in CARD_STAGES:
        from .hub.cards import write_card

        write_card(output_dir, manifest)
    atomic_write_json(os.path.join(output_dir, MANIFEST), manifest)  # last: the completion flag
    if pending is not None:
        from .hub import push_stage

        request = pending[0]
        manifest = push_stage(
            output_dir, request.repo_id, private=request.private, revision=request.revision, token=request.token
        )
    return manifest


def update_manifest(stage_dir: str, **fields: Any) -> dict[str, Any]:
    """Add fields to a finished stage's manifest (rewritten atomically, still complete) and re-render its card."""
    manifest = {**require_complete(stage_dir), **fields}
    if manifest["stage"] in CARD_STAGES:
        from .hub.cards import write_card

        write_card(stage_dir, manifest)
    atomic_write_json(os.path.join(stage_dir, MANIFEST), manifest)
    return manifest


# ---------------------------------------------------------------------------------------- sources and lineage
def _input_name(value: Any) -> Any:
    return value.get("name") if isinstance(value, dict) else value


def input_sources(inputs: dict[str, Any], configs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Where each input came from: the Hub repo, revision and exact commit it was read at, or the name of its local
    directory (with the repo and commit it was pushed to, if it was). Inputs named only in a config (e.g.
    `reference_dataset`, `tokenizer_name_or_path`) are included when they were read from the Hub."""
    from .hub import input_record

    named = {key: _input_name(value) for key, value in inputs.items() if key != "sources"}
    for config in configs.values():
        values = config_dict(config) if dataclasses.is_dataclass(config) else config
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if input_record(value) and value not in named.values():
                named[key] = value
    sources = dict(inputs.get("sources") or {})  # recorded by the stage these inputs come from (e.g. a merge's)
    for key, name in named.items():
        if input_record(name):
            sources[key] = input_record(name)
        elif isinstance(name, str) and os.path.isdir(name):
            sources[key] = {"local": os.path.basename(os.path.normpath(name)), **_pushed(read_manifest(name))}
    return sources


def _pushed(manifest: dict[str, Any] | None) -> dict[str, Any]:
    hub = (manifest or {}).get("hub") or {}
    return {k: hub[k] for k in ("repo_id", "repo_type", "commit") if k in hub}


def lineage(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The upstream stages of a stage, oldest first: each input stage's own lineage, then that stage.

    An entry is `{"stage", "repo_id", "commit"}` for a stage read from the Hub, or `{"stage", "local"}` (its
    directory's name, never a full path; plus `repo_id` and `commit` if it was pushed) for a local one.
    """
    from .hub import input_path, input_record

    chain: list[dict[str, Any]] = []
    for key in LINEAGE_INPUTS:
        name = _input_name(inputs.get(key))
        path = input_path(name) if isinstance(name, str) else None
        upstream = read_manifest(path) if path else None
        if not upstream or not upstream.get("stage"):
            continue
        record = input_record(name)
        if record:
            entry = {"stage": upstream["stage"], "repo_id": record["repo_id"], "commit": record["commit"]}
        else:
            entry = {
                "stage": upstream["stage"],
                "local": os.path.basename(os.path.normpath(path)),
                **_pushed(upstream),
            }
        for item in [*upstream.get("lineage", []), entry]:
            if not any(_same_stage(item, other) for other in chain):
                chain.append(item)
    return chain


def _same_stage(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.get("commit") and b.get("commit"):
        return (a["stage"], a["commit"]) == (b["stage"], b["commit"])
    return (a["stage"], a.get("local"), a.get("repo_id")) == (b["stage"], b.get("local"), b.get("repo_id"))


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

    if getattr(trainer, "is_fsdp_enabled", False):  # a sharded state dict would save no weights: gather them
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(training_args.output_dir)  # every process takes part (sharded models); one writes
    if not trainer.is_world_process_zero():
        return {}
    tokenizer.save_pretrained(training_args.output_dir)
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
