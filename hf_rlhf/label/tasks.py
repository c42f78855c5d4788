"""Labeling work: who gets which item, storing answers exactly once, and progress.

* `next_assignment`: a labeler's open assignment, else a new one: the first item (most-assigned first, so overlaps
  fill and agreement can be measured early) that this labeler has not had and fewer than `overlap` labelers hold.
  The slot is taken by `UPDATE items SET assigned = assigned + 1 WHERE id = ? AND assigned < overlap`, atomic on
  SQLite and PostgreSQL alike, so concurrent labelers never push an item past its overlap.
* `submit`: one answer per (item, labeler) and per form nonce, in one transaction; a second submit of the same form
  (a double click, a retried request) is recognised and stores nothing. A skip records that this labeler passed and
  frees the slot for another labeler.
* Completions are shown in a per-labeler order (seeded by the project's seed, the labeler and the item) to spread
  position bias; answers are always stored by the completions' original indices.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from .db import Database
from .models import RANKING, Answer, Assignment, Item, Labeler, Project

FLAGS = {"unsafe": "Unsafe", "wrong": "Factually wrong", "instructions": "Does not follow instructions"}
MAX_COMMENT_CHARS = 2_000
MAX_DEMONSTRATION_CHARS = 20_000


class NotFound(LookupError):
    """An assignment, item or project this labeler may not see (the app answers 404, whether or not it exists)."""


class BadAnswer(ValueError):
    """A submitted form that cannot be stored (the app answers 400 with this message)."""


@dataclass
class Submission:
    """What a labeler sends for one assignment (a ranking project's fields, or a demonstration)."""

    nonce: str
    skipped: bool = False
    ranking: list[int] | None = None
    all_unacceptable: bool = False
    flags: list[list[str]] | None = None
    comment: str = ""
    demonstration: str | None = None
    seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def shown_order(seed: int, labeler_id: int, item_id: int, k: int) -> list[int]:
    """The order a labeler sees an item's K completions in (original indices, top first), fixed per labeler."""
    digest = hashlib.sha256(f"{seed}:{labeler_id}:{item_id}".encode()).digest()
    order = list(range(k))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return order


def ranks_from_order(order: list[int], tied: list[bool]) -> list[int]:
    """Competition ranks by original index from the order a labeler left the completions in (top = best) and, for
    each position after the first, whether it is tied with the one above: order [2, 0, 1], tied [True, False]
    -> completions 2 and 0 share rank 1, completion 1 is 3rd -> [1, 3, 1]."""
    k = len(order)
    if sorted(order) != list(range(k)) or len(tied) != k - 1:
        raise BadAnswer(f"the ranking must order all {k} completions once, got order {order} and ties {tied}")
    ranks, rank = [0] * k, 1
    for position, index in enumerate(order):
        if position and not tied[position - 1]:
            rank = position + 1
        ranks[index] = rank
    return ranks


def open_assignment(session, labeler: Labeler) -> Assignment | None:
    answered = select(Answer.item_id).where(Answer.labeler_id == labeler.id)
    return session.scalar(
        select(Assignment)
        .where(Assignment.labeler_id == labeler.id, Assignment.item_id.not_in(answered))
        .order_by(Assignment.id)
        .limit(1)
    )


def next_assignment(db: Database, labeler_id: int) -> int | None:
    """The id of this labeler's open assignment or of a new one; None when the project has nothing left for them."""
    for _ in range(50):  # lost races (another labeler took the last slot) retry with the next item
        with db.session() as session:
            labeler = session.get(Labeler, labeler_id)
            current = open_assignment(session, labeler)
            if current is not None:
                return current.id
            project = session.get(Project, labeler.project_id)
            had = select(Assignment.item_id).where(Assignment.labeler_id == labeler.id)
            candidates = session.scalars(
                select(Item)
                .where(Item.project_id == project.id, Item.assigned < project.overlap, Item.id.not_in(had))
                .order_by(Item.assigned.desc(), Item.position)
                .limit(10)
            ).all()
            if not candidates:
                return None
        for item in candidates:
            try:
                with db.session() as session:
                    taken = session.execute(
                        update(Item)
                        .where(Item.id == item.id, Item.assigned < project.overlap)
                        .values(assigned=Item.assigned + 1)
                    ).rowcount
                    if not taken:
                        continue
                    k = len(item.completions or [])
                    order = shown_order(project.seed, labeler_id, item.id, k) if k else None
                    assignment = Assignment(item_id=item.id, labeler_id=labeler_id, order=order)
                    session.add(assignment)
                    session.flush()
                    return assignment.id
            except IntegrityError:  # this labeler got the item in a concurrent request: use that one
                break
    return None


def load_assignment(db: Database, labeler_id: int, assignment_id: int) -> tuple[Assignment, Item, Answer | None]:
    """An assignment of this labeler (else `NotFound`), its item and this labeler's answer if any."""
    with db.session() as session:
        assignment = session.get(Assignment, assignment_id)
        if assignment is None or assignment.labeler_id != labeler_id:
            raise NotFound(assignment_id)
        item = session.get(Item, assignment.item_id)
        answer = session.scalar(select(Answer).where(Answer.item_id == item.id, Answer.labeler_id == labeler_id))
        return assignment, item, answer


def check_submission(item: Item, kind: str, sub: Submission) -> None:
    """Sizes and shapes of a submission, else `BadAnswer` naming the field."""
    if not sub.nonce or len(sub.nonce) > 64:
        raise BadAnswer("the form has no valid nonce: reload the page")
    if len(sub.comment) > MAX_COMMENT_CHARS:
        raise BadAnswer(f"the comment has {len(sub.comment)} characters, the limit is {MAX_COMMENT_CHARS}")
    if sub.skipped:
        return
    if kind == RANKING:
        k = len(item.completions)
        if sub.ranking is None or len(sub.ranking) != k or any(not 1 <= r <= k for r in sub.ranking):
            raise BadAnswer(f"a ranking needs {k} ranks between 1 and {k}, got {sub.ranking}")
        if sub.flags is not None and (len(sub.flags) != k or any(f not in FLAGS for fs in sub.flags for f in fs)):
            raise BadAnswer(f"flags must be {k} lists of {sorted(FLAGS)}")
    else:
        text = (sub.demonstration or "").strip()
        if not text:
            raise BadAnswer("the demonstration is empty: write the ideal response, or skip")
        if len(text) > MAX_DEMONSTRATION_CHARS:
            raise BadAnswer(f"the demonstration has {len(text)} characters, the limit is {MAX_DEMONSTRATION_CHARS}")


def submit(db: Database, labeler_id: int, assignment_id: int, sub: Submission) -> str:
    """Store a labeler's answer once: 'stored', or 'duplicate' when this form (or an earlier one) already answered."""
    assignment, item, existing = load_assignment(db, labeler_id, assignment_id)
    if existing is not None:
        return "duplicate"
    with db.session() as session:
        kind = session.get(Project, item.project_id).kind
    check_submission(item, kind, sub)
    try:
        with db.session() as session:
            session.add(
                Answer(
                    item_id=item.id,
                    labeler_id=labeler_id,
                    nonce=sub.nonce,
                    skipped=sub.skipped,
                    ranking=None if sub.skipped else sub.ranking,
                    all_unacceptable=sub.all_unacceptable and not sub.skipped,
                    flags=None if sub.skipped else sub.flags,
                    comment=sub.comment,
                    demonstration=None if sub.skipped else (sub.demonstration or "").strip() or None,
                    seconds=sub.seconds,
                )
            )
            session.flush()
            if sub.skipped:  # the slot goes back to the pool for another labeler
                session.execute(update(Item).where(Item.id == item.id).values(assigned=Item.assigned - 1))
    except IntegrityError:  # the same form (or another tab) got there first, in a concurrent request
        return "duplicate"
    return "stored"


def progress(db: Database, project_id: int) -> dict[str, Any]:
    """Items, answers wanted (items x overlap), answers given and skips, overall and per labeler."""
    with db.session() as session:
        project = session.get(Project, project_id)
        items = session.scalar(select(func.count(Item.id)).where(Item.project_id == project_id)) or 0
        rows = session.execute(
            select(Labeler.id, Labeler.name, Answer.skipped, func.count(Answer.id))
            .join(Answer, Answer.labeler_id == Labeler.id, isouter=True)
            .where(Labeler.project_id == project_id)
            .group_by(Labeler.id, Labeler.name, Answer.skipped)
            .order_by(Labeler.id)
        ).all()
    labelers: dict[int, dict[str, Any]] = {}
    for labeler_id, name, skipped, count in rows:
        entry = labelers.setdefault(labeler_id, {"id": labeler_id, "name": name, "answered": 0, "skipped": 0})
        if skipped is not None:
            entry["skipped" if skipped else "answered"] += count
    answered = sum(e["answered"] for e in labelers.values())
    wanted = items * project.overlap
    for entry in labelers.values():  # a labeler can answer each item once
        entry["fraction"] = entry["answered"] / items if items else 0.0
    return {
        "project": project.name,
        "kind": project.kind,
        "items": items,
        "overlap": project.overlap,
        "wanted": wanted,
        "answered": answered,
        "skipped": sum(e["skipped"] for e in labelers.values()),
        "fraction": min(1.0, answered / wanted) if wanted else 0.0,
        "labelers": list(labelers.values()),
    }


def answers(db: Database, project_id: int, include_skipped: bool = False) -> list[dict[str, Any]]:
    """Every stored answer of a project, oldest first, with its item (for export, agreement and tests)."""
    with db.session() as session:
        query = (
            select(Answer, Item, Labeler.name)
            .join(Item, Answer.item_id == Item.id)
            .join(Labeler, Answer.labeler_id == Labeler.id)
            .where(Item.project_id == project_id)
            .order_by(Answer.id)
        )
        out = []
        for answer, item, name in session.execute(query).all():
            if answer.skipped and not include_skipped:
                continue
            out.append(
                {
                    "answer_id": answer.id,
                    "item_id": item.id,
                    "position": item.position,
                    "split": item.split,
                    "prompt": item.prompt,
                    "completions": item.completions,
                    "labeler": name,
                    "labeler_id": answer.labeler_id,
                    "skipped": answer.skipped,
                    "ranking": answer.ranking,
                    "all_unacceptable": answer.all_unacceptable,
                    "flags": answer.flags,
                    "comment": answer.comment,
                    "demonstration": answer.demonstration,
                    "seconds": answer.seconds,
                }
            )
        return out


def elapsed(started: str | None) -> float | None:
    """Seconds since the page's `started` timestamp (the form carries it), None if absent or unreadable."""
    try:
        value = time.time() - float(started)
    except (TypeError, ValueError):
        return None
    return round(value, 1) if 0 <= value < 86_400 else None
