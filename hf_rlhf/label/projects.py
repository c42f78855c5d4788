"""Projects, their items and their labelers: what an admin creates (`hf-rlhf label create-project / add-labeler`).

A ranking project's items are prompts with K completions: the output of a `sample` stage (its splits kept), or any
dataset with `prompt` and `completions` columns. A demonstration project's items are prompts: any dataset with a
`prompt` column (the tiny world's `prompts`, a Hub dataset). Datasets are read with the package's one loader
(`hf_rlhf.data.loading.load_stage_dataset`): a local `save_to_disk` directory, JSON/CSV/parquet files, or a Hub
dataset `org/name[@revision]` with its config and split.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..errors import DataValidationError, RecipeError
from .auth import hash_token, new_token
from .db import Database
from .models import DEMONSTRATION, KINDS, RANKING, Admin, Item, Labeler, Project

MAX_ITEM_CHARS = 100_000  # a prompt or completion longer than this is refused when the project is created


def _message_text(value: Any) -> str | None:
    """A completion's text: a string, or the content of the last message of a list of messages."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and isinstance(value[-1].get("content"), str):
        return value[-1]["content"]
    return None


def check_prompt(prompt: Any, where: str) -> Any:
    """A prompt is a non-empty string or a non-empty list of {'role', 'content'} messages (returned as stored)."""
    if isinstance(prompt, str) and prompt.strip():
        return prompt
    if isinstance(prompt, list) and prompt:
        for i, m in enumerate(prompt):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise DataValidationError(f"{where}: message {i} of 'prompt' is not a {{'role', 'content'}} mapping")
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise DataValidationError(f"{where}: 'prompt' must be a non-empty string or list of messages, got {prompt!r:.60}")


def item_rows(rows: list[dict[str, Any]], kind: str, where: str) -> list[dict[str, Any]]:
    """Check dataset rows and keep what an item stores: `prompt`, `completions` (ranking) and `split`."""
    if kind not in KINDS:
        raise RecipeError(f"project kind must be one of {KINDS}, got {kind!r}")
    out = []
    for index, row in enumerate(rows):
        at = f"{where}, split '{row.get('split', 'train')}', row {index}"
        if "prompt" not in row:
            raise DataValidationError(f"{at}: no 'prompt' column (found {sorted(row)})")
        item = {"prompt": check_prompt(row["prompt"], at), "split": row.get("split", "train"), "completions": None}
        if kind == RANKING:
            completions = row.get("completions")
            texts = [_message_text(c) for c in completions] if isinstance(completions, list) else None
            if not texts or len(texts) < 2 or any(t is None for t in texts):
                raise DataValidationError(
                    f"{at}: a ranking project needs 'completions', a list of K >= 2 strings (or messages), got "
                    f"{completions!r:.60}"
                )
            item["completions"] = texts
        text = repr(item["prompt"]) + "".join(item["completions"] or [])
        if len(text) > MAX_ITEM_CHARS:
            raise DataValidationError(f"{at}: {len(text)} characters, more than the limit of {MAX_ITEM_CHARS}")
        out.append(item)
    if not out:
        raise DataValidationError(f"{where}: no rows")
    return out


def dataset_rows(
    dataset: str, *, config: str | None = None, split: str | None = None, max_items: int | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of a dataset read with `load_stage_dataset` (all of its train and test splits, or just `split`), each
    with its `split`; and the source as recorded in the project (a `sample` stage output named as such)."""
    from ..configs import DataArguments
    from ..data.loading import load_stage_dataset, resolve_dataset
    from ..manifest import read_manifest

    manifest = read_manifest(dataset) if os.path.isdir(dataset) else None
    if os.path.isdir(dataset) and manifest is not None and not manifest.get("complete"):
        raise DataValidationError(f"'{dataset}' is an unfinished stage output (no complete manifest)")
    args = DataArguments(dataset_name=dataset, dataset_config=config, eval_split_size=0.0)
    if split is not None:
        args.dataset_train_split = split
    data = load_stage_dataset(args)
    rows = [{**row, "split": name} for name, ds in data.items() for row in ds]
    rows = rows[:max_items] if max_items is not None else rows
    resolved = resolve_dataset(args)
    source = {
        "dataset": getattr(resolved, "name", None) or dataset,
        "commit": getattr(resolved, "commit", None),
        "stage": (manifest or {}).get("stage"),
        "finished_at": (manifest or {}).get("finished_at"),
    }
    return rows, {k: v for k, v in source.items() if v is not None}


def create_project(
    db: Database,
    name: str,
    kind: str,
    rows: list[dict[str, Any]],
    *,
    guidelines: str = "",
    overlap: int = 1,
    seed: int = 0,
    source: dict[str, Any] | None = None,
) -> int:
    """Create a project from rows (`prompt`, `completions` for ranking, optional `split`); returns its id."""
    if not name or len(name) > 200 or "/" in name:
        raise RecipeError(f"project name must be 1-200 characters without '/', got {name!r}")
    if overlap < 1:
        raise RecipeError(f"overlap (labelers per item) must be >= 1, got {overlap}")
    items = item_rows(rows, kind, f"project '{name}'")
    with db.session() as session:
        if session.scalar(select(Project.id).where(Project.name == name)) is not None:
            raise RecipeError(f"project '{name}' already exists in {db_label(db)}: choose another name")
        project = Project(name=name, kind=kind, guidelines=guidelines, overlap=overlap, seed=seed, source=source or {})
        session.add(project)
        session.flush()
        session.add_all(Item(project_id=project.id, position=i, **item) for i, item in enumerate(items))
        return project.id


def get_project(db: Database, name: str) -> Project:
    """The project called `name`, else a one-line error listing the projects there are."""
    with db.session() as session:
        project = session.scalar(select(Project).where(Project.name == name))
        if project is None:
            names = session.scalars(select(Project.name).order_by(Project.id)).all()
            known = ", ".join(f"'{n}'" for n in names) or "none yet"
            raise RecipeError(f"no project '{name}' in {db_label(db)} (projects: {known})")
        return project


def add_labeler(db: Database, project: str, name: str) -> str:
    """Add a labeler to a project; returns their login token (shown once, stored hashed)."""
    project_id = get_project(db, project).id
    token = new_token()
    try:
        with db.session() as session:
            session.add(Labeler(project_id=project_id, name=name, token_hash=hash_token(token)))
    except IntegrityError:
        raise RecipeError(
            f"project '{project}' already has a labeler '{name}': give another name, or a new login link from the "
            "admin page"
        ) from None
    return token


def new_login_link(db: Database, labeler_id: int) -> str:
    """A new login token for a labeler; the old link stops working."""
    token = new_token()
    with db.session() as session:
        labeler = session.get(Labeler, labeler_id)
        if labeler is None:
            raise RecipeError(f"no labeler with id {labeler_id}")
        labeler.token_hash = hash_token(token)
    return token


def add_admin(db: Database) -> str:
    """A new admin login token (shown once, stored hashed)."""
    token = new_token()
    with db.session() as session:
        session.add(Admin(token_hash=hash_token(token)))
    return token


def has_admin(db: Database) -> bool:
    with db.session() as session:
        return session.scalar(select(Admin.id).limit(1)) is not None


def db_label(db: Database) -> str:
    """How messages name a database: its URL without credentials."""
    url = db.url
    return url.split("://")[0] + "://" + url.split("@")[-1].split("://")[-1] if "@" in url else url


__all__ = [
    "DEMONSTRATION",
    "RANKING",
    "add_admin",
    "add_labeler",
    "create_project",
    "dataset_rows",
    "get_project",
    "item_rows",
    "new_login_link",
]
