"""The tables of the labeling database (SQLAlchemy 2 ORM; portable SQL, JSON columns for prompts and rankings).

An `Item` is one task: a prompt and, for a ranking project, its K completions. A labeler gets an item through an
`Assignment` (one per (item, labeler), with the labeler's own seeded order of the completions); `Item.assigned`
counts the labelers holding it, raised only by a conditional UPDATE below `Project.overlap`, so concurrent requests
never assign an item to more labelers than asked. An `Answer` is unique per (item, labeler) and per form `nonce`:
a double-clicked submit stores one answer.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

RANKING, DEMONSTRATION = "ranking", "demonstration"
KINDS = (RANKING, DEMONSTRATION)
AGGREGATES = ("borda", "mean_rank", "none")  # how `export` merges several labelers' rankings of one item
DEFAULT_AGGREGATE = "borda"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class Setting(Base):
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(20))  # RANKING or DEMONSTRATION
    guidelines: Mapped[str] = mapped_column(Text, default="")  # markdown, shown beside every task
    overlap: Mapped[int] = mapped_column(Integer, default=1)  # labelers per item
    seed: Mapped[int] = mapped_column(Integer, default=0)  # of each labeler's completion order
    source: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # where the items came from
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)
    items: Mapped[list[Item]] = relationship(back_populates="project", order_by="Item.position")


class Item(Base):
    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("project_id", "position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # order within the project
    split: Mapped[str] = mapped_column(String(50), default="train")  # the source's split, kept in the export
    prompt: Mapped[Any] = mapped_column(JSON)  # a string or a list of {"role", "content"} messages
    completions: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)  # K strings (ranking projects)
    assigned: Mapped[int] = mapped_column(Integer, default=0)  # labelers holding it (<= project.overlap)
    project: Mapped[Project] = relationship(back_populates="items")


class Labeler(Base):
    __tablename__ = "labelers"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the login token
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)
    project: Mapped[Project] = relationship()


class Admin(Base):
    __tablename__ = "admins"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("item_id", "labeler_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    order: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)  # completion indices as shown, top first
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)
    item: Mapped[Item] = relationship()
    labeler: Mapped[Labeler] = relationship()


class Answer(Base):
    __tablename__ = "answers"
    __table_args__ = (UniqueConstraint("item_id", "labeler_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("items.id"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    nonce: Mapped[str] = mapped_column(String(64), unique=True)  # the form's: a resubmitted form stores nothing new
    skipped: Mapped[bool] = mapped_column(Boolean, default=False)
    ranking: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)  # rank of completions[i], 1 = best
    all_unacceptable: Mapped[bool] = mapped_column(Boolean, default=False)
    flags: Mapped[list[list[str]] | None] = mapped_column(JSON, nullable=True)  # per completion
    comment: Mapped[str] = mapped_column(Text, default="")
    demonstration: Mapped[str | None] = mapped_column(Text, nullable=True)
    seconds: Mapped[float | None] = mapped_column(nullable=True)  # from page load to submit
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)
    item: Mapped[Item] = relationship()
    labeler: Mapped[Labeler] = relationship()
