"""The contract between stages: a finished stage directory and its manifest.

A finished stage directory holds the model, the tokenizer, the card (`README.md`) and `hf_rlhf_manifest.json`: stage
name, resolved config, metrics, the exact inputs (with the repo and commit of each input read from the Hub), the
lineage of upstream stages, and `"complete": true`. The manifest is written last and atomically (temporary file, then
rename), so a directory whose manifest is missing or not complete is never handed to the next stage. Stages build
their directory beside `output_dir` and swap it in once complete (`hf_rlhf.outputs`).

Stages pass their inputs explicitly (`ResolvedInput`s, `hf_rlhf.hub.resolve`): sources and lineage are built from
them alone. Writing a manifest never pushes; a stage asked to push calls `hf_rlhf.hub.push.push_stage` itself, once
the manifest is complete. What is pushed is `shared_manifest`: this machine's records and paths left out.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tempfile
import time
from typing import Any

from .errors import IncompleteStageError
from .hub import remote_code
from .hub.cards import inherited_license, render_card, write_card
from .hub.resolve import ResolvedInput, repo_file

MANIFEST = "hf_rlhf_manifest.json"
HUB_RECORD = "hf_rlhf_hub.json"  # in a dataset directory pushed by `push_dataset`: where it went (no manifest there)
PICKLED_TRAINER_FILES = ("training_args.bin",)  # the resolved config goes to the manifest as JSON instead
CARD_STAGES = ("pretrain", "sft", "reward", "rl", "sample")  # a model card each; `sample` gets a dataset card
LINEAGE_INPUTS = ("model", "reward_model", "dataset", "adapter")  # inputs that may be upstream stages
LOCAL_ONLY_KEYS = ("hub", "pipeline_args_hash")  # manifest keys that describe this machine's copy only
HUB_CACHE_PATH = re.compile(r"(models|datasets)--(?P<org>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<commit>[0-9a-f]{40})")


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


def finish_stage(
    output_dir: str,
    stage: str,
    *,
    configs: dict[str, Any],
    inputs: dict[str, Any],
    metrics: dict[str, Any],
    extra: dict[str, Any] | None = None,
    push: Any = None,
    final_dir: str | None = None,
) -> dict[str, Any]:
    """Write the card and the manifest, last, with the completion flag. Pickled trainer files are removed.

    Stages call `hf_rlhf.outputs.finish_stage`, which writes with this into the partial directory and then swaps it
    in; called directly, this finishes `output_dir` in place.

    Args:
        inputs: input name -> `ResolvedInput` (or `{"name": ResolvedInput, ...}`, e.g. with a dataset fingerprint),
            or a plain value (`reward_funcs`, "from scratch"...). Sources and lineage come from these alone; a
            `"sources"` entry (from another manifest, e.g. a merged adapter's) is kept.
        push: the stage's push request (`hf_rlhf.hub.push.PushRequest`), recorded so that `hf-rlhf push` knows
            where the stage was asked to go. Nothing is pushed here.
        final_dir: where the stage will be found, when `output_dir` is where it is built (its partial directory,
            in the same parent): the card is named after it.

    Returns:
        `dict`: the manifest.
    """
    for name in PICKLED_TRAINER_FILES:
        path = os.path.join(output_dir, name)
        if os.path.exists(path):
            os.remove(path)
    run_dir = _run_dir(output_dir)
    resolved = {key: r for key, r in ((k, _resolved(v)) for k, v in inputs.items() if k != "sources") if r}
    for key, value in inputs.items():  # a mixture's datasets (`hf_rlhf.data.loading.resolve_dataset`): one each
        while isinstance(value, dict) and isinstance(value.get("name"), dict):  # {"name": mixture, "fingerprint"}
            value = value["name"]
        for index, part in enumerate(value.get("datasets") or [] if isinstance(value, dict) else []):
            if isinstance(part, ResolvedInput):
                resolved[f"{key}[{index}]"] = part
    sources = dict(inputs.get("sources") or {})
    for key, item in resolved.items():
        if item.repo_id:
            sources[key] = item.record()
        elif os.path.isdir(item.path):
            sources[key] = local_source(item.path, run_dir)
    manifest = {
        "stage": stage,
        "configs": {k: config_dict(v) if dataclasses.is_dataclass(v) else v for k, v in configs.items()},
        "inputs": {**{k: _named(v) for k, v in inputs.items() if k != "sources"}, "sources": sources},
        "lineage": lineage(resolved, run_dir),
        "metrics": metrics,
        **(extra or {}),
        **({"remote_code": remote_code.run_records()} if remote_code.run_records() else {}),
        **({"push": push.record()} if push is not None else {}),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "complete": True,
    }
    if stage in CARD_STAGES and stage != "sample":
        base = resolved.get("model") or resolved.get("adapter")
        manifest["license"] = inherited_license(base.path if base else None)
    if stage in CARD_STAGES and final_dir is None:
        write_card(output_dir, manifest)
    elif stage in CARD_STAGES:  # rendered where the files are, named as `write_card` in `final_dir` would name it
        repo_id = (manifest.get("hub") or manifest.get("push") or {}).get("repo_id")
        name = repo_id or os.path.basename(os.path.normpath(final_dir))
        render_card(output_dir, manifest, name).save(os.path.join(output_dir, "README.md"))
    atomic_write_json(os.path.join(output_dir, MANIFEST), manifest)  # last: the completion flag
    return manifest


def update_manifest(stage_dir: str, **fields: Any) -> dict[str, Any]:
    """Add fields to a finished stage's manifest (rewritten atomically, still complete) and re-render its card."""
    manifest = {**require_complete(stage_dir), **fields}
    if manifest["stage"] in CARD_STAGES:
        write_card(stage_dir, manifest)
    atomic_write_json(os.path.join(stage_dir, MANIFEST), manifest)
    return manifest


# ---------------------------------------------------------------------------------------- sources and lineage
def _resolved(value: Any) -> ResolvedInput | None:
    """The `ResolvedInput` an input entry carries; a local directory named by a plain string (an input copied from
    another manifest) counts as one."""
    if isinstance(value, dict):
        value = value.get("name")
    if isinstance(value, ResolvedInput):
        return value
    return ResolvedInput(path=value) if isinstance(value, str) and os.path.isdir(value) else None


def _named(value: Any) -> Any:
    """An input entry as the manifest keeps it: a `ResolvedInput` by its name (Hub id or path as given)."""
    if isinstance(value, dict):
        return {k: _named(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_named(v) for v in value]
    return value.name if isinstance(value, ResolvedInput) else value


def _run_dir(stage_dir: str) -> str:
    """The directory a stage directory sits in (a pipeline's output directory): local paths are relative to it."""
    return os.path.dirname(os.path.abspath(stage_dir))


def local_source(path: str, run_dir: str) -> dict[str, Any]:
    """A local input directory: its name, its path relative to the run (this machine's only: never pushed), and the
    repo and commit it was pushed to, if it was."""
    rel = os.path.relpath(os.path.abspath(path), run_dir)
    return {"local": os.path.basename(os.path.normpath(path)), "path": rel, **pushed_record(path)}


def pushed_record(directory: str) -> dict[str, Any]:
    """Where a local stage (its manifest's `hub`) or dataset (`HUB_RECORD`, if it still holds the data pushed) was
    pushed: `repo_id`, `repo_type`, `commit`; empty if it was not."""
    hub = (read_manifest(directory) or {}).get("hub")
    if not hub and os.path.isfile(os.path.join(directory, HUB_RECORD)):
        with open(os.path.join(directory, HUB_RECORD)) as f:
            hub = json.load(f)
        if hub.get("fingerprints") != dataset_fingerprints(directory):
            hub = None  # the dataset was written again since
    return {k: hub[k] for k in ("repo_id", "repo_type", "commit") if k in hub} if hub else {}


def dataset_fingerprints(directory: str) -> dict[str, str]:
    """The `datasets` fingerprint of each split of a `save_to_disk` directory (read from its `state.json` files)."""
    out = {}
    for root, _, files in os.walk(directory):
        if "state.json" in files:
            with open(os.path.join(root, "state.json")) as f:
                out[os.path.relpath(root, directory)] = json.load(f).get("_fingerprint")
    return out


def lineage(inputs: dict[str, ResolvedInput], run_dir: str) -> list[dict[str, Any]]:
    """The upstream stages of a stage, oldest first: each input stage's own lineage, then that stage.

    An entry is `{"stage", "repo_id", "commit"}` for a stage read from the Hub, or `{"stage", "local", "path"}` (its
    directory's name and its path relative to the run; plus `repo_id` and `commit` if it was pushed) for a local one.
    """
    chain: list[dict[str, Any]] = []
    for key in LINEAGE_INPUTS:
        item = inputs.get(key)
        upstream = upstream_manifest(item)
        if not upstream or not upstream.get("stage"):
            continue
        inherited = upstream.get("lineage", [])  # as pushed (no local paths) for a stage read from the Hub
        if item.repo_id:
            entry = {"stage": upstream["stage"], "repo_id": item.repo_id, "commit": item.commit}
        else:
            entry = {"stage": upstream["stage"], **local_source(item.path, run_dir)}
            inherited = [_rebased(e, _run_dir(item.path), run_dir) for e in inherited]
        for record in [*inherited, entry]:
            if not any(_same_stage(record, other) for other in chain):
                chain.append(record)
    return chain


def upstream_manifest(item: ResolvedInput | None) -> dict[str, Any] | None:
    """The manifest of an input that may be a stage: in its directory, or pushed with a Hub dataset that `datasets`
    reads straight from the repo (no snapshot directory: the comparisons of a `sample` stage on the Hub)."""
    if item is None:
        return None
    if os.path.isdir(item.path):
        return read_manifest(item.path)
    path = repo_file(item, MANIFEST)
    if path is None:
        return None
    with open(path) as f:
        return json.load(f)


def _rebased(entry: dict[str, Any], from_dir: str, to_dir: str) -> dict[str, Any]:
    """An upstream's lineage entry with its local path made relative to this stage's run."""
    if not entry.get("path"):
        return entry
    return {**entry, "path": os.path.relpath(os.path.normpath(os.path.join(from_dir, entry["path"])), to_dir)}


def _same_stage(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a["stage"] != b["stage"]:
        return False
    if a.get("path") and b.get("path"):
        return os.path.normpath(a["path"]) == os.path.normpath(b["path"])
    if a.get("commit") and b.get("commit"):
        return a["commit"] == b["commit"]
    return (a.get("local"), a.get("repo_id")) == (b.get("local"), b.get("repo_id"))


def with_upstream_pushes(manifest: dict[str, Any], stage_dir: str) -> dict[str, Any]:
    """The manifest with the pushes its local upstream stages and datasets made since it finished: a stage run
    locally and pushed afterwards names its base model, datasets and lineage by repo and commit."""
    run_dir = _run_dir(stage_dir)

    def refreshed(entry: dict[str, Any]) -> dict[str, Any]:
        path = os.path.join(run_dir, entry["path"]) if entry.get("path") else None
        return {**entry, **pushed_record(path)} if path and os.path.isdir(path) else entry

    inputs = manifest.get("inputs", {})
    sources = {key: refreshed(source) for key, source in inputs.get("sources", {}).items()}
    return {
        **manifest,
        "inputs": {**inputs, "sources": sources},
        "lineage": [refreshed(entry) for entry in manifest.get("lineage", [])],
    }


# --------------------------------------------------------------------------------------- what is pushed
def shared_manifest(manifest: dict[str, Any], stage_dir: str) -> dict[str, Any]:
    """The manifest as pushed: without this machine's records (`hub`, `pipeline_args_hash`, local input paths), and
    every absolute path in it (configs' `output_dir`, `model_name_or_path`, inputs...) replaced by a portable name:
    `org/name@commit` for a snapshot in the Hub cache, the path relative to the run for a path inside it, else the
    last component."""
    shared = {k: v for k, v in manifest.items() if k not in LOCAL_ONLY_KEYS}
    inputs = shared.get("inputs", {})
    if inputs.get("sources"):
        sources = {k: {f: v for f, v in s.items() if f != "path"} for k, s in inputs["sources"].items()}
        shared["inputs"] = {**inputs, "sources": sources}
    shared["lineage"] = [{f: v for f, v in e.items() if f != "path"} for e in shared.get("lineage", [])]
    return _portable(shared, _run_dir(stage_dir))


def portable_path(path: str, run_dir: str) -> str:
    """A local path as something that means the same off this machine (see `shared_manifest`)."""
    cached = HUB_CACHE_PATH.search(path)
    if cached:
        return f"{cached['org']}/{cached['name']}@{cached['commit']}"
    path = os.path.normpath(path)
    if path.startswith(run_dir.rstrip(os.sep) + os.sep):
        return os.path.relpath(path, run_dir)
    return os.path.basename(path)


def _portable(value: Any, run_dir: str) -> Any:
    if isinstance(value, dict):
        return {k: _portable(v, run_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, run_dir) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        return portable_path(value, run_dir)
    return value


# --------------------------------------------------------------------------------------------- reading
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
