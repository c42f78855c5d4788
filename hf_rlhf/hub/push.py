"""Pushing to the Hub: a finished stage directory, or a `save_to_disk` dataset; and `hf-rlhf push`.

A stage asked to push (`push_to_hub`) checks the request before training (`push_request`: a token, a well-formed
repo id), trains with a copy of its config that does not push (`without_push`: no upstream trainer pushes at init
or on save), and calls `push_stage` once, after its manifest is complete. The transfers are the client's own:
`HfApi.upload_folder` selects the files by pattern and deletes what an earlier push of the stage left behind, and
`DatasetDict.push_to_hub` writes a dataset's parquet files. Only an allow-list of files travels: weights as
safetensors, JSON configs, tokenizer files, cards, parquet/JSONL data, plots; never pickles (`*.bin`, `*.pt`...) or
checkpoints. What is pushed holds no local path, and a token is never printed, logged or written anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from huggingface_hub import HfApi, get_token

from ..data.world import WORLD_DATASETS
from ..errors import HubError, HubPushError
from ..manifest import (
    HUB_RECORD,
    MANIFEST,
    atomic_write_json,
    dataset_fingerprints,
    read_manifest,
    require_complete,
    shared_manifest,
    with_upstream_pushes,
)
from .cards import render_card, render_dataset_card
from .resolve import ALLOWED_FILES, HUB_ID, NEVER_FILES, endpoint, forget_downloads, scrub

logger = logging.getLogger(__name__)

DATASET_STAGES = ("sample",)  # stages whose output is a dataset repo, not a model repo
NEVER_DIRS = ("checkpoint-*", "runs/*", ".*", "*/.*")  # checkpoints, TensorBoard logs, hidden files
REWRITTEN = (MANIFEST, "README.md", "adapter_config.json")  # pushed as their shared versions, not as on disk


# --------------------------------------------------------------------------------------------------- requests
@dataclass
class PushRequest:
    """A stage's `push_to_hub` settings, checked before training and carried out once the stage is complete."""

    repo_id: str
    private: bool | None = None
    revision: str | None = None
    token: str | None = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        """What the manifest keeps of the request (no token)."""
        return {"repo_id": self.repo_id, "private": self.private, "revision": self.revision or "main"}


def push_request(args: Any) -> PushRequest | None:
    """The push a stage config asks for (`push_to_hub`, `hub_model_id`, `hub_private_repo`, `hub_revision`,
    `hub_token`), or None. Fails now, before training, if no token is available or the repo id is malformed."""
    if not getattr(args, "push_to_hub", False):
        return None
    repo_id = getattr(args, "hub_model_id", None) or os.path.basename(os.path.normpath(args.output_dir))
    if "@" in repo_id or not (HUB_ID.match(repo_id) or HUB_ID.match(f"user/{repo_id}")):
        raise HubPushError(f"push_to_hub: '{repo_id}' is not a repo id: expected `org/name` or `name` (no revision)")
    private, revision = getattr(args, "hub_private_repo", None), getattr(args, "hub_revision", None)
    request = PushRequest(repo_id, private, revision, getattr(args, "hub_token", None))
    if not (request.token or get_token()):
        raise HubPushError(
            f"push_to_hub is set (repo '{repo_id}') but no Hugging Face token was found: set HF_TOKEN or run "
            "`hf auth login` (checked before training, nothing was run)"
        )
    return request


def without_push(args: Any) -> Any:
    """A copy of a stage config for the upstream trainers, with `push_to_hub` off: they never push (at init, on
    save); the stage pushes once, when complete. The user's config is left as it was."""
    if not getattr(args, "push_to_hub", False):
        return args
    trainer_args = copy.copy(args)
    trainer_args.push_to_hub = False
    return trainer_args


# ------------------------------------------------------------------------------------------------------ stages
def push_stage(
    output_dir: str,
    repo_id: str | PushRequest | None = None,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Push a finished stage directory to the Hub; record the repo and commit in its manifest and card.

    The pushed manifest and card are `shared_manifest`'s: no local paths, no records of this machine, the upstream
    stages and datasets named by the repos and commits they were pushed to (also when they were pushed after this
    stage finished), so pushing an unchanged stage again makes no new commit. A model stage is one commit; a
    `sample` stage is a dataset repo: its splits as parquet (`DatasetDict.push_to_hub`), then card and manifest.

    Args:
        output_dir: a finished stage directory.
        repo_id: `org/name` (or `name`, under the token's user) or the stage's `PushRequest`; default: the repo the
            stage was last pushed to, or the one its `push_to_hub` settings named.
        private: create the repo private (an existing repo keeps its visibility).
        revision: branch to commit to (created from `main` if missing); default `main`.
        commit_message: default "hf-rlhf <stage>: <directory name>".
        token: default `get_token()` (HF_TOKEN or the login cache).

    Returns:
        `dict`: the updated manifest; `manifest["hub"]` has `repo_id`, `repo_type`, `revision` and `commit`.
    """
    if isinstance(repo_id, PushRequest):
        request = repo_id
        repo_id, private, revision, token = request.repo_id, request.private, request.revision, request.token
    manifest = require_complete(output_dir)
    asked = manifest.get("hub") or manifest.get("push") or {}  # where it went last, else where it was asked to go
    repo_id = repo_id or asked.get("repo_id")
    if not repo_id:
        raise HubPushError(f"no repo to push '{output_dir}' to: pass --hub_model_id org/name")
    repo_type = "dataset" if manifest["stage"] in DATASET_STAGES else "model"
    revision = revision or asked.get("revision") or "main"
    private = asked.get("private") if private is None else private
    name = os.path.basename(os.path.normpath(output_dir))
    message = commit_message or f"hf-rlhf {manifest['stage']}: {name}"
    if repo_type == "model" and not any(f.endswith(".safetensors") for f in os.listdir(output_dir)):
        raise HubPushError(f"'{output_dir}' holds no safetensors weights to push")
    manifest = with_upstream_pushes(manifest, output_dir)
    with _push_session(output_dir, repo_id, token) as (api, repo_id):
        _create(api, repo_id, repo_type, private, revision)
        if repo_type == "dataset":
            _push_splits(output_dir, repo_id, private, revision, message, api.token)
        commit = _upload_stage(api, output_dir, manifest, repo_id, repo_type, revision, message)
    hub = {"repo_id": repo_id, "repo_type": repo_type, "revision": revision, "commit": commit, "endpoint": endpoint()}
    manifest = {**manifest, "hub": {**hub, "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    render_card(output_dir, manifest, repo_id).save(os.path.join(output_dir, "README.md"))
    atomic_write_json(os.path.join(output_dir, MANIFEST), manifest)
    return manifest


def _create(api: HfApi, repo_id: str, repo_type: str, private: bool | None, revision: str) -> None:
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    if revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)


def _upload_stage(
    api: HfApi, output_dir: str, manifest: dict[str, Any], repo_id: str, repo_type: str, revision: str, message: str
) -> str:
    """One `upload_folder` commit of the stage as shared: its files, with the manifest, card and adapter config
    replaced by their shared versions (a staging folder of links to the stage's files), stale files deleted."""
    shared = shared_manifest(manifest, output_dir)
    replaced = {
        MANIFEST: json.dumps(shared, indent=2),
        "README.md": render_card(output_dir, shared, repo_id).content,
        **_adapter_config(output_dir, shared),
    }
    if repo_type == "dataset":  # the splits went as parquet; the `save_to_disk` files stay local
        allow = [p for p in ALLOWED_FILES if p not in ("*.json", "*.parquet", "*.safetensors")] + [MANIFEST]
        ignore, delete = [*NEVER_FILES, *NEVER_DIRS, "*/*"], [p for p in ALLOWED_FILES if p != "*.parquet"]
    else:
        allow, ignore, delete = list(ALLOWED_FILES), [*NEVER_FILES, *NEVER_DIRS], ["*"]
    with tempfile.TemporaryDirectory(prefix="hf-rlhf-push-") as staging:
        for root, _, files in os.walk(output_dir):
            rel = os.path.relpath(root, output_dir)
            os.makedirs(os.path.join(staging, rel), exist_ok=True)
            for file in files:
                if os.path.normpath(os.path.join(rel, file)) not in replaced:
                    os.symlink(os.path.abspath(os.path.join(root, file)), os.path.join(staging, rel, file))
        for path, text in replaced.items():
            with open(os.path.join(staging, path), "w", encoding="utf-8") as f:
                f.write(text)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=staging,
            repo_type=repo_type,
            revision=revision,
            commit_message=message,
            allow_patterns=allow,
            ignore_patterns=ignore,
            delete_patterns=delete,
        )
    forget_downloads(repo_id)
    logger.info(
        "pushed %s to %s repo %s (revision %s) at commit %s", output_dir, repo_type, repo_id, revision, info.oid
    )
    return info.oid


def _adapter_config(output_dir: str, manifest: dict[str, Any]) -> dict[str, str]:
    """A LoRA adapter's config as pushed: its base named by Hub id and commit (peft's `revision`) instead of the path
    it had on this machine, when the base came from the Hub or was pushed there."""
    path = os.path.join(output_dir, "adapter_config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        config = json.load(f)
    base = manifest.get("inputs", {}).get("sources", {}).get("model") or {}
    if base.get("repo_id"):
        config.update(base_model_name_or_path=base["repo_id"], revision=base.get("commit"))
    else:
        logger.warning("%s: the adapter's base is a local directory that was not pushed; push the base first", path)
        config["base_model_name_or_path"] = os.path.basename(os.path.normpath(config["base_model_name_or_path"] or ""))
    return {"adapter_config.json": json.dumps(config, indent=2)}


# ---------------------------------------------------------------------------------------------------- datasets
@contextlib.contextmanager
def _datasets_endpoint() -> Iterator[None]:
    """`datasets` sends its Hub calls to its own `config.HF_ENDPOINT` (read from HF_ENDPOINT at import): point it at
    the endpoint in use (a pipeline's `hub.endpoint`) for the push."""
    from datasets import config

    previous, config.HF_ENDPOINT = config.HF_ENDPOINT, endpoint()
    try:
        yield
    finally:
        config.HF_ENDPOINT = previous


def _push_splits(
    dataset_dir: str, repo_id: str, private: bool | None, revision: str, message: str, token: str | None
) -> str:
    """A `save_to_disk` dataset's splits as the Hub stores datasets (`data/<split>-*.parquet`), through
    `DatasetDict.push_to_hub` (which also deletes the parquet files of an earlier push). Returns the commit sha."""
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(dataset_dir)
    data = data if isinstance(data, DatasetDict) else DatasetDict(train=data)
    with _datasets_endpoint():
        info = data.push_to_hub(repo_id, revision=revision, private=private, token=token, commit_message=message)
    return info.oid


def push_dataset(
    dataset_dir: str,
    repo_id: str,
    *,
    description: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    token: str | None = None,
) -> tuple[str, str]:
    """Push a `save_to_disk` dataset (e.g. a tiny-world dataset) as a Hub dataset repo: parquet and a dataset card.

    Where it went is recorded in the dataset directory (`hf_rlhf_hub.json`, with the splits' fingerprints), so the
    stages trained on it name it by repo and commit when they are pushed.

    Args:
        description: the card's description; default: the tiny world's entry for a dataset of that name.

    Returns:
        `tuple[str, str]`: the repo id and the commit sha.
    """
    revision = revision or "main"
    name = os.path.basename(os.path.normpath(dataset_dir))
    message = f"hf-rlhf dataset: {name}"
    with _push_session(dataset_dir, repo_id, token) as (api, repo_id):
        _create(api, repo_id, "dataset", private, revision)
        _push_splits(dataset_dir, repo_id, private, revision, message, api.token)
        card = render_dataset_card(dataset_dir, repo_id, description or _world_description(name))
        info = api.upload_file(
            path_or_fileobj=card.content.encode(),
            path_in_repo="README.md",
            repo_id=repo_id,
            repo_type="dataset",
            revision=revision,
            commit_message=f"{message} (card)",
        )
        forget_downloads(repo_id)
    record = {"repo_id": repo_id, "repo_type": "dataset", "revision": revision, "commit": info.oid}
    record.update(endpoint=endpoint(), fingerprints=dataset_fingerprints(dataset_dir))
    atomic_write_json(os.path.join(dataset_dir, HUB_RECORD), record)
    return repo_id, info.oid


def _world_description(name: str) -> str:
    return WORLD_DATASETS.get(name, {}).get("card", "")


# ------------------------------------------------------------------------------------------------------ session
@contextlib.contextmanager
def _push_session(source: str, repo_id: str, token: str | None) -> Iterator[tuple[HfApi, str]]:
    """An authenticated client and the full repo id (`name` goes under the token's user). Any failure inside
    becomes one `HubPushError` that names the source and the repo, says the local output is unchanged and how to
    retry, and never carries the token."""
    token = token or get_token()
    if not token:
        raise HubPushError(
            f"cannot push '{source}' to '{repo_id}': no Hugging Face token (set HF_TOKEN or run `hf auth login`); "
            "the local output is unchanged"
        )
    api = HfApi(endpoint=endpoint(), token=token)
    try:
        if "/" not in repo_id:
            repo_id = f"{api.whoami()['name']}/{repo_id}"
        yield api, repo_id
    except HubError:
        raise
    except Exception as e:  # HTTP errors, dropped connections, rejected commits: one message, never the token
        raise HubPushError(
            f"pushing '{source}' to the Hub repo '{repo_id}' ({endpoint()}) failed: {type(e).__name__}: "
            f"{scrub(_error_text(e), token)}. The local output is complete and unchanged; retry with "
            f"`hf-rlhf push {source} --hub_model_id {repo_id}`"
        ) from None


def _error_text(e: BaseException) -> str:
    """An exception's message, with the causes a client wraps around it (e.g. a dropped connection) appended."""
    parts: list[str] = []
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = " ".join(str(e).split())  # one line
        if text and not any(text in part for part in parts):
            parts.append(text)
        e = e.__cause__ or e.__context__
    return " <- ".join(parts)


# ------------------------------------------------------------------------------------------- `hf-rlhf push`
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`hf-rlhf push`: push (or retry pushing) a finished stage directory, or a `save_to_disk` dataset."""
    parser = argparse.ArgumentParser(
        prog="hf-rlhf push",
        description="Push a finished stage directory (or a save_to_disk dataset) to the Hub. Retries a failed push: "
        "files already uploaded are not sent again. The token comes from HF_TOKEN or `hf auth login`.",
    )
    parser.add_argument("directory", help="A finished stage directory (with a complete manifest), or a dataset.")
    parser.add_argument("--hub_model_id", help="Repo id, org/name (default: the repo the stage was asked to push to).")
    parser.add_argument("--hub_revision", help="Branch to commit to (default: main).")
    parser.add_argument("--hub_private_repo", action="store_true", default=None, help="Create the repo private.")
    parser.add_argument("--commit_message", help="Commit message.")
    args = parser.parse_args(argv)
    try:
        if read_manifest(args.directory) is None and os.path.isfile(os.path.join(args.directory, "dataset_dict.json")):
            if not args.hub_model_id:
                raise HubPushError("pushing a dataset needs --hub_model_id org/name")
            repo_id, commit = push_dataset(
                args.directory, args.hub_model_id, private=args.hub_private_repo, revision=args.hub_revision
            )
            result = {"repo_id": repo_id, "commit": commit}
        else:
            result = push_stage(
                args.directory,
                args.hub_model_id,
                private=args.hub_private_repo,
                revision=args.hub_revision,
                commit_message=args.commit_message,
            )["hub"]
    except (HubError, RuntimeError) as e:
        print(f"hf-rlhf push: error: {scrub(str(e))}", file=sys.stderr)
        raise SystemExit(1) from None
    print(json.dumps(result))
    return result
