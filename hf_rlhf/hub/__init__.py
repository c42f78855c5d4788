"""The Hub: every stage input may be a Hub repo, and every finished stage may be pushed as one commit.

`resolve_input` turns a local path or a Hub id `org/name[@revision]` into a local directory and, for a Hub id, the
exact commit it was read at (a snapshot in the user's cache, through `huggingface_hub.snapshot_download`).
`push_stage` uploads a finished stage directory in one commit and records the repo and commit in its manifest and
card; `push_dataset` does the same for a `save_to_disk` dataset (as parquet, with a dataset card).

The unmodified `huggingface_hub` client does the transfers, so its settings apply: `HF_ENDPOINT`, `HF_HOME` /
`HF_HUB_CACHE`, `HF_HUB_OFFLINE`, and the token from `HF_TOKEN` or `hf auth login` (`get_token`). Only an
allow-list of files travels in either direction: weights as safetensors, JSON configs, tokenizer files, cards,
parquet/JSONL data, plots. Pickles (`*.bin`, `*.pt`, `*.pkl`: `training_args.bin`, optimizer, scheduler and RNG
states) and checkpoints never do. A token is never printed, logged, or written to a manifest, card, config dump or
error message.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import io
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    constants,
    get_token,
    snapshot_download,
)
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import HubError, HubInputError, HubPushError
from ..manifest import MANIFEST, atomic_write_json, read_manifest, require_complete

logger = logging.getLogger(__name__)

HUB_ID = re.compile(r"^(?P<repo_id>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")
# What may be downloaded from a repo and uploaded from a stage directory (matched on the file name).
ALLOWED_FILES = (
    "*.safetensors",
    "*.json",
    "*.jsonl",
    "*.parquet",
    "*.md",
    "*.txt",
    "*.jinja",
    "*.png",
    "*.yaml",
    "*.yml",
    "tokenizer.model",
)
NEVER_FILES = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt", "*.h5", "*.msgpack", "*.npy", "*.npz")
DATASET_STAGES = ("sample",)  # stages whose output is a dataset repo, not a model repo
LOCAL_ONLY_KEYS = ("hub", "pipeline_args_hash")  # manifest keys that describe this machine's copy only


# ------------------------------------------------------------------------------------------------ settings
_endpoint_override: str | None = None


def endpoint() -> str:
    """The Hub endpoint in use: a pipeline recipe's `hub.endpoint`, else `HF_ENDPOINT` (huggingface.co)."""
    return (_endpoint_override or constants.ENDPOINT).rstrip("/")


@contextlib.contextmanager
def use_endpoint(url: str | None) -> Iterator[None]:
    """Send every hf_rlhf Hub call to `url` (None: leave `HF_ENDPOINT` in charge) while the block runs."""
    global _endpoint_override
    previous, _endpoint_override = _endpoint_override, url or _endpoint_override
    try:
        yield
    finally:
        _endpoint_override = previous


def scrub(text: str, token: str | None = None) -> str:
    """`text` with any Hub token (the given one, the configured one, any bearer value) replaced by `***`."""
    for secret in {token, get_token()} - {None, ""}:
        text = text.replace(secret, "***")
    return re.sub(r"(?i)(bearer\s+)\S+", r"\1***", text)


# --------------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class ResolvedInput:
    """Where an input was read from: a local directory, plus the repo and exact commit when it came from the Hub."""

    path: str
    repo_id: str | None = None
    repo_type: str = "model"
    revision: str | None = None
    commit: str | None = None

    def record(self) -> dict[str, Any]:
        """What a manifest keeps of a Hub input (no local path: the cache layout is this machine's)."""
        return {"repo_id": self.repo_id, "repo_type": self.repo_type, "revision": self.revision, "commit": self.commit}


_resolved: dict[tuple, ResolvedInput] = {}  # one resolution per repo and revision per process: all roles agree
_by_name: dict[tuple, ResolvedInput] = {}  # (endpoint, cache, the input as given) -> its resolution (for manifests)


def parse_hub_id(name: str, revision: str | None = None) -> tuple[str, str | None] | None:
    """`org/name[@revision]` as (repo id, revision), or None if `name` is not shaped like a Hub id.

    A separate `revision` (a `*_revision` option; `main`, its default, counts as unset) must agree with `@revision`.
    """
    match = HUB_ID.match(name)
    if match is None:
        return None
    inline = match["revision"]
    explicit = revision if revision not in (None, "", "main") else None
    if inline and explicit and inline != explicit:
        raise HubInputError(f"'{name}' names revision '{inline}' but the revision option says '{explicit}'")
    return match["repo_id"], inline or explicit


def pin_model_revision(config: Any) -> None:
    """Fold TRL's `model_revision` into a Hub `model_name_or_path` (`org/name@revision`): the form every loader of
    hf_rlhf resolves, for every role that reads the model. Local directories have no revisions and are left alone."""
    name, revision = getattr(config, "model_name_or_path", None), getattr(config, "model_revision", None)
    if is_hub_id(name) and "@" not in name and revision not in (None, "", "main"):
        config.model_name_or_path = f"{name}@{revision}"


def is_hub_id(name: str | None) -> bool:
    """A string that is not a local path and is shaped like `org/name[@revision]`."""
    return isinstance(name, str) and not os.path.exists(name) and HUB_ID.match(name) is not None


def resolve_input(
    name_or_path: str, revision: str | None = None, *, repo_type: str = "model", what: str = "model"
) -> ResolvedInput:
    """A local path as is, or a Hub repo (`org/name[@revision]`) downloaded into the user's cache.

    Args:
        name_or_path: a local path, or a Hub id `org/name`, optionally `@branch`, `@tag` or `@commit`.
        revision: the revision from a separate option (e.g. `model_revision`); must agree with `@revision`.
        repo_type: `"model"` or `"dataset"`.
        what: what the input is, for error messages ("model", "tokenizer", "dataset"...).

    Returns:
        `ResolvedInput`: the local directory (a snapshot), with repo id, revision and commit sha for a Hub input.
    """
    if os.path.exists(name_or_path):
        return ResolvedInput(path=name_or_path, repo_type=repo_type)
    parsed = parse_hub_id(name_or_path, revision)
    if parsed is None:
        raise HubInputError(f"{what} '{name_or_path}' is neither a local path nor a Hub repo id 'org/name[@revision]'")
    repo_id, rev = parsed
    key = (endpoint(), constants.HF_HUB_CACHE, repo_type, repo_id, rev or "main")
    if key not in _resolved:
        _resolved[key] = _download(name_or_path, repo_id, rev, repo_type, what)
    _by_name[(*key[:2], name_or_path)] = _resolved[key]
    return _resolved[key]


def _download(name: str, repo_id: str, revision: str | None, repo_type: str, what: str) -> ResolvedInput:
    try:
        path = snapshot_download(
            repo_id,
            repo_type=repo_type,
            revision=revision,
            endpoint=endpoint(),
            allow_patterns=list(ALLOWED_FILES),
            ignore_patterns=list(NEVER_FILES),
        )
    except Exception as e:  # the client raises many types; each becomes one message that says what to do
        raise _input_error(e, name, repo_id, revision, repo_type, what) from None
    commit = os.path.basename(os.path.normpath(path))  # cache layout: .../snapshots/<commit sha>
    logger.info("%s '%s': %s repo %s at commit %s", what, name, repo_type, repo_id, commit)
    return ResolvedInput(path=path, repo_id=repo_id, repo_type=repo_type, revision=revision or "main", commit=commit)


def _input_error(e: Exception, name: str, repo_id: str, revision: str | None, repo_type: str, what: str) -> Exception:
    where = (
        f"{what} '{name}' is not a local path, so it was read as the Hub {repo_type} repo '{repo_id}'"
        f" (revision '{revision or 'main'}', endpoint {endpoint()})"
    )
    if isinstance(e, RevisionNotFoundError):
        return HubInputError(f"{where}: the repo has no revision '{revision}'; give a branch, tag or commit of it")
    if isinstance(e, GatedRepoError):
        return HubInputError(f"{where}: the repo is gated; request access on its page, then log in (HF_TOKEN)")
    if isinstance(e, RepositoryNotFoundError):
        return HubInputError(
            f"{where}: no such repo (or it is private and your token cannot read it); check the id, or log in "
            "with `hf auth login` / HF_TOKEN"
        )
    if isinstance(e, HfHubHTTPError) and e.response is not None and e.response.status_code in (401, 403):
        return HubInputError(f"{where}: not authorised (HTTP {e.response.status_code}); check your token (HF_TOKEN)")
    if isinstance(e, LocalEntryNotFoundError | OfflineModeIsEnabled):  # incl. IncompleteSnapshotError
        if constants.HF_HUB_OFFLINE:
            return HubInputError(
                f"{where}: HF_HUB_OFFLINE is set and it is not in the cache ({constants.HF_HUB_CACHE}); "
                "download it once online, or unset HF_HUB_OFFLINE"
            )
        return HubInputError(f"{where}: the Hub cannot be reached and it is not in the cache; check the connection")
    return HubInputError(f"{where}: {type(e).__name__}: {scrub(str(e))}")


def _resolution_of(name: Any) -> ResolvedInput | None:
    return _by_name.get((endpoint(), constants.HF_HUB_CACHE, name)) if isinstance(name, str) else None


def input_record(name: Any) -> dict[str, Any] | None:
    """The repo and commit an input string was resolved to in this process, or None (a local input)."""
    resolved = _resolution_of(name)
    return resolved.record() if resolved is not None else None


def input_path(name: Any) -> str | None:
    """The local directory an input string stands for: itself, or its Hub snapshot (None if neither)."""
    if isinstance(name, str) and os.path.isdir(name):
        return name
    resolved = _resolution_of(name)
    return resolved.path if resolved is not None else None


def forget_resolutions(repo_id: str | None = None) -> None:
    """Resolve again next time: a repo this process just pushed to (its branch moved), or every repo."""
    for key in [k for k, v in _resolved.items() if repo_id is None or v.repo_id == repo_id]:
        del _resolved[key]


# --------------------------------------------------------------------------------------------------- pushes
@dataclass
class PushRequest:
    """A stage's `push_to_hub` settings, held until the stage is complete (upstream trainers never push)."""

    repo_id: str
    private: bool | None = None
    revision: str | None = None
    token: str | None = field(default=None, repr=False)

    def record(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "private": self.private, "revision": self.revision or "main"}


def take_push_request(args: Any) -> PushRequest | None:
    """Read `push_to_hub` / `hub_model_id` / `hub_private_repo` / `hub_revision` / `hub_token` from a stage config
    and turn `push_to_hub` off on it, so that no upstream trainer pushes (at init, on save); `finish_stage` pushes
    once, after the manifest is complete. Fails now, before training, if no token is available."""
    if not getattr(args, "push_to_hub", False):
        return None
    repo_id = getattr(args, "hub_model_id", None) or os.path.basename(os.path.normpath(args.output_dir))
    request = PushRequest(
        repo_id,
        getattr(args, "hub_private_repo", None),
        getattr(args, "hub_revision", None),
        getattr(args, "hub_token", None),
    )
    if not (request.token or get_token()):
        raise HubPushError(
            f"push_to_hub is set (repo '{repo_id}') but no Hugging Face token was found: set HF_TOKEN or run "
            "`hf auth login` (checked before training, nothing was run)"
        )
    args.push_to_hub = False
    return request


def stage_files(output_dir: str) -> list[str]:
    """The files of a stage directory that may be pushed (relative paths): allow-listed names, no checkpoints."""
    selected = []
    for root, dirs, files in os.walk(output_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "checkpoint-", "runs")))
        for name in sorted(files):
            if name.startswith(".") or _matches(name, NEVER_FILES) or not _matches(name, ALLOWED_FILES):
                continue
            selected.append(os.path.relpath(os.path.join(root, name), output_dir).replace(os.sep, "/"))
    return selected


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def push_stage(
    output_dir: str,
    repo_id: str | None = None,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Push a finished stage directory to the Hub in one commit; record the repo and commit in its manifest.

    Only a complete stage is pushed, and only its allow-listed files (`stage_files`; a `sample` stage as a dataset
    repo of parquet files). The uploaded manifest and card are the stage's own without this machine's records
    (`hub`, `pipeline_args_hash`), so pushing an unchanged stage again makes no new commit. On success the local
    manifest (rewritten atomically, still complete) and card carry the repo id and commit sha.

    Args:
        output_dir: a finished stage directory.
        repo_id: `org/name` (or `name`, under the token's user); default: the repo the stage was last pushed to, or
            the one its `push_to_hub` settings named.
        private: create the repo private (an existing repo keeps its visibility).
        revision: branch to commit to (created from `main` if missing); default `main`.
        commit_message: default "hf-rlhf <stage>: <directory name>".
        token: default `get_token()` (HF_TOKEN or the login cache).

    Returns:
        `dict`: the updated manifest; `manifest["hub"]` has `repo_id`, `repo_type`, `revision` and `commit`.
    """
    from .cards import render_card

    manifest = require_complete(output_dir)
    request = manifest.get("hub") or manifest.get("push") or {}  # where it went last, else where it was asked to go
    repo_id = repo_id or request.get("repo_id")
    if not repo_id:
        raise HubPushError(f"no repo to push '{output_dir}' to: pass --hub_model_id org/name")
    with _push_session(output_dir, repo_id, token) as (api, repo_id):
        repo_type = "dataset" if manifest["stage"] in DATASET_STAGES else "model"
        shared = {k: v for k, v in manifest.items() if k not in LOCAL_ONLY_KEYS}
        files = _stage_upload(output_dir, shared, repo_type)
        files["README.md"] = render_card(output_dir, shared, repo_id).content.encode()
        revision = revision or request.get("revision") or "main"
        name = os.path.basename(os.path.normpath(output_dir))
        commit = _commit(
            api,
            repo_id,
            files,
            repo_type=repo_type,
            private=request.get("private") if private is None else private,
            revision=revision,
            message=commit_message or f"hf-rlhf {manifest['stage']}: {name}",
        )
    hub = {"repo_id": repo_id, "repo_type": repo_type, "revision": revision, "commit": commit, "endpoint": endpoint()}
    manifest = {**manifest, "hub": {**hub, "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    render_card(output_dir, manifest, repo_id).save(os.path.join(output_dir, "README.md"))
    atomic_write_json(os.path.join(output_dir, MANIFEST), manifest)
    return manifest


def _stage_upload(output_dir: str, manifest: dict[str, Any], repo_type: str) -> dict[str, Any]:
    """Path in repo -> local path or bytes: the stage's allow-listed files, its manifest as shared, and for a
    dataset stage its splits as parquet instead of the `save_to_disk` files."""
    files: dict[str, Any] = {p: os.path.join(output_dir, p) for p in stage_files(output_dir) if p != MANIFEST}
    if repo_type == "dataset":
        files = {p: f for p, f in files.items() if "/" not in p and not p.endswith(".json")}
        files.update(parquet_files(output_dir))
    elif not any(p.endswith(".safetensors") for p in files):
        raise HubPushError(f"'{output_dir}' holds no safetensors weights to push")
    files[MANIFEST] = json.dumps(manifest, indent=2).encode()
    files.update(_adapter_config(output_dir, manifest))
    return files


def _adapter_config(output_dir: str, manifest: dict[str, Any]) -> dict[str, bytes]:
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
    return {"adapter_config.json": json.dumps(config, indent=2).encode()}


def parquet_files(dataset_dir: str) -> dict[str, bytes]:
    """A `save_to_disk` dataset as the Hub stores datasets: `data/<split>-00000-of-00001.parquet` per split."""
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(dataset_dir)
    data = data if isinstance(data, DatasetDict) else DatasetDict(train=data)
    out = {}
    for split, dataset in data.items():
        buffer = io.BytesIO()
        dataset.to_parquet(buffer)
        out[f"data/{split}-00000-of-00001.parquet"] = buffer.getvalue()
    return out


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

    Returns:
        `tuple[str, str]`: the repo id and the commit sha.
    """
    from .cards import render_dataset_card

    with _push_session(dataset_dir, repo_id, token) as (api, repo_id):
        files: dict[str, Any] = parquet_files(dataset_dir)
        files["README.md"] = render_dataset_card(dataset_dir, repo_id, description).content.encode()
        name = os.path.basename(os.path.normpath(dataset_dir))
        commit = _commit(
            api,
            repo_id,
            files,
            repo_type="dataset",
            private=private,
            revision=revision or "main",
            message=f"hf-rlhf dataset: {name}",
        )
    return repo_id, commit


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


def _commit(
    api: HfApi,
    repo_id: str,
    files: dict[str, Any],
    *,
    repo_type: str,
    private: bool | None,
    revision: str,
    message: str,
) -> str:
    """Create the repo (and branch) if needed and commit exactly `files` (path in repo -> local path or bytes): one
    commit that adds them and deletes any other file of the branch. Returns the commit sha."""
    api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    if revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
    stale = set(api.list_repo_files(repo_id, repo_type=repo_type, revision=revision)) - set(files) - {".gitattributes"}
    operations = [CommitOperationAdd(path, content) for path, content in sorted(files.items())]
    operations += [CommitOperationDelete(path) for path in sorted(stale)]
    info = api.create_commit(repo_id, operations, commit_message=message, repo_type=repo_type, revision=revision)
    forget_resolutions(repo_id)
    logger.info("pushed to %s repo %s (revision %s) at commit %s", repo_type, repo_id, revision, info.oid)
    return info.oid


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
        description="Push a finished stage directory (or a save_to_disk dataset) to the Hub in one commit. Retries a "
        "failed push: files already uploaded are not sent again. The token comes from HF_TOKEN or `hf auth login`.",
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
