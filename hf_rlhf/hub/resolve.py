"""Reading from the Hub: the one `org/name[@revision]` parser, and inputs resolved to a local directory and a commit.

`resolve_input` turns a local path or a Hub id into a `ResolvedInput`: the local directory to load from and, for a
Hub id, the repo and the exact commit it was read at (a snapshot in the user's cache, through
`huggingface_hub.snapshot_download`). Stages resolve each input once and hand the `ResolvedInput` to the manifest
writer, which records where every input came from.

The unmodified client does the transfers, so its settings apply: `HF_ENDPOINT`, `HF_HOME` / `HF_HUB_CACHE`,
`HF_HUB_OFFLINE`, and the token from `HF_TOKEN` or `hf auth login`. Only an allow-list of files is downloaded:
weights as safetensors, JSON configs, tokenizer files, cards, parquet/JSONL data, plots; never pickles.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from huggingface_hub import HfApi, constants, get_token, hf_hub_download, snapshot_download, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import HubInputError

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


# ------------------------------------------------------------------------------------------------ settings
_endpoint_override: str | None = None  # a pipeline recipe's `hub.endpoint`, for the duration of `use_endpoint`


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


# --------------------------------------------------------------------------------------------------- Hub ids
def parse_hub_id(name: str, revision: str | None = None) -> tuple[str, str | None] | None:
    """`org/name[@revision]` as (repo id, revision), or None if `name` is not shaped like a Hub id.

    The one parser of Hub ids in hf_rlhf (stages, loaders, the dry run). A separate `revision` (a `*_revision`
    option; `main`, its default, counts as unset) must agree with `@revision`.

    Raises:
        HubInputError: the inline and the separate revision disagree.
    """
    match = HUB_ID.match(name) if isinstance(name, str) else None
    if match is None:
        return None
    inline = match["revision"]
    explicit = revision if revision not in (None, "", "main") else None
    if inline and explicit and inline != explicit:
        raise HubInputError(f"'{name}' names revision '{inline}' but the revision option says '{explicit}'")
    return match["repo_id"], inline or explicit


def is_hub_id(name: str | None) -> bool:
    """A string that is not a local path and is shaped like `org/name[@revision]`."""
    return isinstance(name, str) and not os.path.exists(name) and HUB_ID.match(name) is not None


def pin_model_revision(config: Any) -> None:
    """Fold TRL's `model_revision` into a Hub `model_name_or_path` (`org/name@revision`): the form every loader of
    hf_rlhf resolves, for every role that reads the model. Local directories have no revisions and are left alone."""
    name, revision = getattr(config, "model_name_or_path", None), getattr(config, "model_revision", None)
    if is_hub_id(name) and "@" not in name and revision not in (None, "", "main"):
        config.model_name_or_path = f"{name}@{revision}"


# --------------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class ResolvedInput:
    """Where an input was read from: a local directory (or file), plus the repo and exact commit when it came from
    the Hub."""

    path: str
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None
    repo_type: str = "model"

    @property
    def name(self) -> str:
        """The input as a stage names it: `org/name[@revision]` for a Hub input, else the local path."""
        if self.repo_id is None:
            return self.path
        return self.repo_id if self.revision in (None, "main") else f"{self.repo_id}@{self.revision}"

    def record(self) -> dict[str, Any]:
        """What a manifest keeps of a Hub input (no local path: the cache layout is this machine's)."""
        return {"repo_id": self.repo_id, "repo_type": self.repo_type, "revision": self.revision, "commit": self.commit}


# One download per repo and revision per process, so that every role reading a model (policy, reference, value...)
# gets the same commit even if the branch moves meanwhile. A cache of downloads, not a record of what was read: the
# manifest records what each stage passes it.
_downloads: dict[tuple, ResolvedInput] = {}


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
    if key not in _downloads:
        _downloads[key] = _download(name_or_path, repo_id, rev, repo_type, what)
    return _downloads[key]


def resolve_commit(
    name: str, revision: str | None = None, *, repo_type: str = "dataset", what: str = "dataset"
) -> ResolvedInput:
    """A Hub repo `org/name[@revision]` pinned to the commit its revision points to now, downloading nothing.

    Online, the dataset card's download (which names the commit); with `HF_HUB_OFFLINE`, the commit of the cached `README.md` at that revision (the
    file `datasets` always fetches first). Cached per process, as `resolve_input`, so every read of the input in
    this run loads the same commit. `path` is the repo id: the loader reads the files (`datasets.load_dataset`).
    """
    parsed = parse_hub_id(name, revision)
    if parsed is None:
        raise HubInputError(f"{what} '{name}' is not a Hub repo id 'org/name[@revision]'")
    repo_id, rev = parsed
    key = ("commit", endpoint(), constants.HF_HUB_CACHE, repo_type, repo_id, rev or "main")
    if key not in _downloads:
        if constants.HF_HUB_OFFLINE:
            cached = try_to_load_from_cache(repo_id, "README.md", revision=rev, repo_type=repo_type)
            if not isinstance(cached, str):
                raise HubInputError(
                    f"{what} '{name}': HF_HUB_OFFLINE is set and revision '{rev or 'main'}' of the Hub {repo_type} "
                    f"repo '{repo_id}' is not in the cache ({constants.HF_HUB_CACHE}); load it once online, or unset "
                    "HF_HUB_OFFLINE"
                )
            commit = os.path.basename(os.path.dirname(cached))
        else:
            try:  # the card, as `datasets` reads it first: its cache entry (refs/<revision>) serves offline runs
                card = hf_hub_download(repo_id, "README.md", repo_type=repo_type, revision=rev, endpoint=endpoint())
                commit = os.path.basename(os.path.dirname(card))
            except EntryNotFoundError:  # a repo without a card
                commit = HfApi(endpoint=endpoint()).repo_info(repo_id, repo_type=repo_type, revision=rev).sha
            except Exception as e:  # one message per failure, as for downloads
                raise _input_error(e, name, repo_id, rev, repo_type, what) from None
        logger.info("%s '%s': %s repo %s at commit %s", what, name, repo_type, repo_id, commit)
        _downloads[key] = ResolvedInput(
            path=repo_id, repo_id=repo_id, repo_type=repo_type, revision=rev or "main", commit=commit
        )
    return _downloads[key]


def repo_file(item: ResolvedInput, filename: str) -> str | None:
    """One file of a Hub input pinned to its commit (a dataset `resolve_commit` downloaded nothing of), from the
    cache or downloaded; `None` when the repo has no such file or it cannot be read (offline and not cached)."""
    if not item.repo_id or not item.commit:
        return None
    cached = try_to_load_from_cache(item.repo_id, filename, revision=item.commit, repo_type=item.repo_type)
    if isinstance(cached, str) or constants.HF_HUB_OFFLINE:
        return cached if isinstance(cached, str) else None
    try:
        return hf_hub_download(
            item.repo_id, filename, repo_type=item.repo_type, revision=item.commit, endpoint=endpoint()
        )
    except Exception as e:  # absent or unreadable: the caller goes on without it
        logger.info("%s repo %s has no readable %s at %s (%s)", item.repo_type, item.repo_id, filename, item.commit, e)
        return None


def forget_downloads(repo_id: str | None = None) -> None:
    """Resolve again next time: a repo this process just pushed to (its branch moved), or every repo."""
    for key in [k for k, v in _downloads.items() if repo_id is None or v.repo_id == repo_id]:
        del _downloads[key]


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
