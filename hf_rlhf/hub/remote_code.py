"""Remote model code, pinned: what a config's `auto_map` may run under `trust_remote_code`, and at which commit.

With `trust_remote_code`, transformers runs the classes that a model directory's `config.json` and
`tokenizer_config.json` name in `auto_map`: `module.Class` from the directory's own files, or `org/repo--module.Class`
from another Hub repo, which `transformers.dynamic_module_utils.get_class_from_dynamic_module` fetches from that
repo's `main` unless `from_pretrained` is given `code_revision`. Before anything loads, `remote_code_kwargs`:

- runs the model's own code from the directory loaded. For a Hub model that is the snapshot of its resolved commit;
  `resolve_input` never downloads `.py` files, so the modules named (and their relative imports) are fetched into it
  at that commit;
- lets another repo's code run only if the recipe lists the repo in `trust_remote_code_repos` (`org/name` or
  `org/name@revision`). The repo is resolved to a commit (`resolve_commit`), its modules are fetched at that commit,
  and `code_revision=<commit>` makes transformers read exactly those. transformers takes one `code_revision` per
  load, used for every foreign reference, so code from two other repos in one model is refused.

Each load gives records (repo, revision, commit, files with their sha256) for the stage's manifest
(`remote_code_sources`). With `trust_remote_code` off nothing is read: transformers refuses any `auto_map` itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
from contextvars import ContextVar
from typing import Any

from huggingface_hub import hf_hub_download
from transformers.dynamic_module_utils import get_relative_imports

from ..errors import RemoteCodeError
from .resolve import ResolvedInput, endpoint, parse_hub_id, resolve_commit, scrub

logger = logging.getLogger(__name__)

CODE_CONFIGS = ("config.json", "tokenizer_config.json")  # the files whose `auto_map` transformers follows
RECORD_ATTR = "hf_rlhf_remote_code"  # attribute of a loaded model / tokenizer: the records of the code it runs
OPTION = "trust_remote_code_repos"


def auto_map_references(directory: str) -> list[tuple[str, str, str]]:
    """Every class reference in the `auto_map` of a directory's `config.json` and `tokenizer_config.json`.

    Values are a string, or a list (`[slow, fast]` tokenizers, either may be None); a tokenizer config's legacy
    `auto_map` is the list itself. A missing or unreadable file contributes nothing: transformers reports it.

    Returns:
        `list`: (config file, auto_map key, class reference) tuples, in file order.
    """
    references = []
    for name in CODE_CONFIGS:
        try:
            with open(os.path.join(directory, name)) as f:
                config = json.load(f)
        except (OSError, ValueError):
            continue
        auto_map = config.get("auto_map") if isinstance(config, dict) else None
        if isinstance(auto_map, list | tuple):
            auto_map = {"AutoTokenizer": auto_map}
        for key, value in (auto_map or {}).items() if isinstance(auto_map, dict) else ():
            for reference in value if isinstance(value, list | tuple) else [value]:
                if isinstance(reference, str) and reference:
                    references.append((name, key, reference))
    return references


def split_reference(reference: str) -> tuple[str | None, str]:
    """`org/repo--module.Class` as (`org/repo`, `module.py`); `module.Class` as (None, `module.py`), as
    `get_class_from_dynamic_module` splits it."""
    repo_id, _, class_reference = reference.rpartition("--")
    return repo_id or None, class_reference.split(".")[0] + ".py"


def allowed_repos_map(allowed_repos: list[str] | None) -> dict[str, str | None]:
    """`trust_remote_code_repos` as {repo id: revision or None}.

    Raises:
        RemoteCodeError: an entry that is not `org/name[@revision]`, or a repo listed twice at different revisions.
    """
    allowed: dict[str, str | None] = {}
    for entry in allowed_repos or []:
        parsed = parse_hub_id(entry)
        if parsed is None:
            raise RemoteCodeError(f"{OPTION}: '{entry}' is not a Hub repo id 'org/name' or 'org/name@revision'")
        repo_id, revision = parsed
        if repo_id in allowed and allowed[repo_id] != revision:
            raise RemoteCodeError(f"{OPTION} lists '{repo_id}' twice, at different revisions; keep one")
        allowed[repo_id] = revision
    return allowed


def remote_code_kwargs(
    source: ResolvedInput, trust_remote_code: bool, allowed_repos: list[str] | None = None, *, what: str = "model"
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Check and pin the remote code a model directory would run, before `from_pretrained` is called on it.

    Args:
        source: the model (or tokenizer) directory, as resolved (`hf_rlhf.hub.resolve.resolve_input`).
        trust_remote_code: the recipe's `trust_remote_code`; off, nothing is read and `[]` is recorded.
        allowed_repos: the recipe's `trust_remote_code_repos`: repos other than the model's whose code may run.
        what: what is loaded ("model", "tokenizer", "reward model"...), for messages.

    Returns:
        `tuple`: the `from_pretrained` keyword arguments (`trust_remote_code`, and `code_revision` when another
        repo's code is pinned), and one record per repo whose code runs (see `code_record`).

    Raises:
        RemoteCodeError: code from a repo the recipe does not list, from more than one other repo, or a module
            that is missing.
    """
    if not trust_remote_code:
        return {"trust_remote_code": False}, []
    own: dict[str, str] = {}  # module file -> the reference naming it
    other: dict[str, dict[str, str]] = {}  # repo id -> {module file: reference}
    allowed = allowed_repos_map(allowed_repos)
    for config_file, key, reference in auto_map_references(source.path):
        repo_id, module = split_reference(reference)
        if repo_id is None:
            own.setdefault(module, reference)
            continue
        if repo_id != source.repo_id and repo_id not in allowed:
            raise RemoteCodeError(
                f"{what} '{source.name}': {config_file} auto_map.{key} = '{reference}' runs code from the Hub repo "
                f"'{repo_id}', which is not the model's own; trust_remote_code runs it only if the recipe lists it: "
                f"add `{OPTION}: [{repo_id}]` (or '{repo_id}@<commit>') to the recipe, or `--{OPTION} {repo_id}`"
            )
        other.setdefault(repo_id, {}).setdefault(module, reference)
    if len(other) > 1:
        raise RemoteCodeError(
            f"{what} '{source.name}': its auto_map names code from {len(other)} other repos ({', '.join(other)}); "
            "transformers pins one (`code_revision`) per load, so only one can run at a known commit"
        )
    kwargs: dict[str, Any] = {"trust_remote_code": True}
    records = [code_record(source, own, source.repo_id, source.revision, source.commit, what)] if own else []
    for repo_id, modules in other.items():
        if repo_id == source.repo_id:  # the model's repo named with `--`: transformers reads it as another repo's
            revision, commit = source.revision, source.commit
        else:
            name = repo_id if allowed[repo_id] is None else f"{repo_id}@{allowed[repo_id]}"
            pinned = resolve_commit(name, repo_type="model", what=f"remote code of {what} '{source.name}'")
            revision, commit = pinned.revision, pinned.commit
        records.append(code_record(source, modules, repo_id, revision, commit, what))
        kwargs["code_revision"] = commit
    return kwargs, records


def code_record(
    source: ResolvedInput,
    modules: dict[str, str],
    repo_id: str | None,
    revision: str | None,
    commit: str | None,
    what: str,
) -> dict[str, Any]:
    """The record of one repo's code, its modules fetched first (Hub code, at `commit`) or found (local files).

    Returns:
        `dict`: `repo_id` (None: a local directory's own code), `repo_type`, `revision`, `commit`, `own` (the
        model's own code), `classes` (the `auto_map` references) and `files` ({module file: sha256}, relative
        imports included).
    """
    files: dict[str, str] = {}
    pending = sorted(modules)
    while pending:
        module = pending.pop(0)
        if module in files:
            continue
        path = _module_file(source, module, repo_id, commit, modules.get(module), what)
        with open(path, "rb") as f:
            files[module] = hashlib.sha256(f.read()).hexdigest()
        pending += [posixpath.join(posixpath.dirname(module), f"{name}.py") for name in get_relative_imports(path)]
    logger.info(
        "%s '%s': remote code from %s at commit %s: %s",
        what,
        source.name,
        repo_id or source.path,
        commit or "(local files)",
        ", ".join(files),
    )
    own = repo_id in (None, source.repo_id)
    return {
        "repo_id": repo_id,
        "repo_type": "model",
        "revision": revision,
        "commit": commit,
        "own": own,
        "classes": sorted(set(modules.values())),
        "files": files,
    }


def _module_file(
    source: ResolvedInput, module: str, repo_id: str | None, commit: str | None, reference: str | None, what: str
) -> str:
    """The local path of a code module: in the model's directory, or fetched from the Hub at `commit` (into the
    cache, where transformers' own read of it at that commit finds it)."""
    named = f" (named by auto_map '{reference}')" if reference else " (a relative import)"
    if repo_id is None and source.repo_id is None:
        path = os.path.join(source.path, module)
        if not os.path.isfile(path):
            raise RemoteCodeError(f"{what} '{source.name}': the code module '{path}'{named} does not exist")
        return path
    repo_id = repo_id or source.repo_id
    try:
        return hf_hub_download(repo_id, module, repo_type="model", revision=commit, endpoint=endpoint())
    except Exception as e:  # the client raises many types; one message naming the module, repo and commit
        raise RemoteCodeError(
            f"{what} '{source.name}': cannot fetch the code module '{module}'{named} from the Hub repo '{repo_id}' "
            f"at commit {commit}: {type(e).__name__}: {scrub(str(e))}"
        ) from None


_RUN_ALLOWED: ContextVar[list[str] | None] = ContextVar("trust_remote_code_repos", default=None)
_RUN_RECORDS: ContextVar[list[dict[str, Any]] | None] = ContextVar("remote_code_records", default=None)


def start_run(allowed_repos: list[str] | None) -> None:
    """A stage run starts: its recipe's `trust_remote_code_repos` apply to every load that does not pass its own,
    and the records of the remote code it runs are collected for its manifest (`run_records`)."""
    _RUN_ALLOWED.set(list(allowed_repos) if allowed_repos else None)
    _RUN_RECORDS.set([])


def run_records() -> list[dict[str, Any]]:
    """The remote code the loads since `start_run` ran (each repo's record once): the manifest's `remote_code`."""
    return list(_RUN_RECORDS.get() or [])


def from_pretrained_pinned(
    auto_class: type,
    source: ResolvedInput,
    trust_remote_code: bool,
    allowed_repos: list[str] | None = None,
    *,
    what: str = "model",
    **kwargs: Any,
) -> Any:
    """`auto_class.from_pretrained(source.path, ...)` with its remote code checked and pinned (`remote_code_kwargs`);
    the records of the code it runs are kept on the result (`loaded_remote_code`)."""
    allowed = allowed_repos if allowed_repos is not None else _RUN_ALLOWED.get()
    code, records = remote_code_kwargs(source, trust_remote_code, allowed, what=what)
    loaded = auto_class.from_pretrained(source.path, **code, **kwargs)
    setattr(loaded, RECORD_ATTR, records)
    collected = _RUN_RECORDS.get()
    if collected is not None:
        collected += [r for r in records if r not in collected]
    return loaded


def loaded_remote_code(*loaded: Any) -> list[dict[str, Any]]:
    """The records of the remote code that loaded models / tokenizers run (`[]` for none), duplicates once."""
    records: list[dict[str, Any]] = []
    for item in loaded:
        records += [r for r in getattr(item, RECORD_ATTR, None) or [] if r not in records]
    return records


def remote_code_sources(role: str, *loaded: Any) -> dict[str, dict[str, Any]]:
    """Manifest `inputs["sources"]` entries for the remote code a role's model and tokenizer run:
    `"<role>.code"`, `"<role>.code[1]"`... -> record (`finish_stage` keeps a given `"sources"` entry)."""
    records = loaded_remote_code(*loaded)
    return {f"{role}.code" + (f"[{i}]" if i else ""): record for i, record in enumerate(records)}
