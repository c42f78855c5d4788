"""The labeling database: an engine for any SQLAlchemy URL, the schema version and its migrations.

SQLite (the default, `sqlite:///labels.db`) runs in WAL mode with a busy timeout, so readers never block the writer
and concurrent writers wait their turn instead of failing; foreign keys are enforced. Nothing here is SQLite-only:
`postgresql+psycopg://user@host/db` works unchanged (the ORM and `Table` objects generate the SQL).

Schema changes are migrations, numbered from 1 (the first release): `MIGRATIONS[n]` brings a database at version
`n - 1` to version `n`, in one transaction with the update of `schema_version`. `open_database` applies the missing
ones; a database newer than this code is refused (an older hf_rlhf must not write into a schema it does not know).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, event, inspect, select
from sqlalchemy.orm import Session, sessionmaker

from ..errors import RecipeError
from .models import Base, SchemaVersion, Setting

SQLITE_BUSY_TIMEOUT_MS = 30_000  # concurrent writers wait up to this long for the write lock


def _migration_1(connection: Connection) -> None:
    """Release 1: projects, items, labelers, admins, assignments, answers, settings (the CSRF secret)."""
    Base.metadata.create_all(connection)
    connection.execute(Setting.__table__.insert().values(key="secret", value=secrets.token_hex(32)))


MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _migration_1}
SCHEMA_VERSION = max(MIGRATIONS)


def make_engine(url: str) -> Engine:
    """An engine for `url` (an SQLAlchemy URL: `sqlite:///labels.db`, `postgresql+psycopg://...`)."""
    if "://" not in url:
        raise RecipeError(f"--db must be an SQLAlchemy URL such as sqlite:///labels.db, got {url!r}")
    if url.startswith("postgresql://"):  # the driver installed with the `postgres` extra
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    sqlite = url.startswith("sqlite")
    kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}} if sqlite else {}
    try:
        engine = create_engine(url, pool_pre_ping=not sqlite, **kwargs)
    except Exception as e:  # an unknown dialect or a missing driver
        raise RecipeError(f"cannot open database {url.split('@')[-1]!r}: {e}") from None
    if sqlite:

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers and one writer at a time, without blocking
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")  # durable across a crash of the server (WAL)
            cursor.close()

    return engine


def schema_version(connection: Connection) -> int:
    """The database's schema version (0: empty)."""
    if not inspect(connection).has_table(SchemaVersion.__tablename__):
        return 0
    return connection.execute(select(SchemaVersion.version)).scalar() or 0


def migrate(engine: Engine) -> int:
    """Apply the missing migrations, each in its own transaction; returns the version reached."""
    with engine.begin() as connection:
        if not inspect(connection).has_table(SchemaVersion.__tablename__):
            SchemaVersion.__table__.create(connection)
            connection.execute(SchemaVersion.__table__.insert().values(id=1, version=0))
    while True:
        with engine.begin() as connection:
            version = connection.execute(
                select(SchemaVersion.version).where(SchemaVersion.id == 1).with_for_update()
            ).scalar_one()
            if version > SCHEMA_VERSION:
                raise RecipeError(
                    f"the labeling database has schema version {version}, newer than this hf_rlhf's "
                    f"{SCHEMA_VERSION}: upgrade hf_rlhf"
                )
            if version == SCHEMA_VERSION:
                return version
            MIGRATIONS[version + 1](connection)
            connection.execute(SchemaVersion.__table__.update().values(version=version + 1))


class Database:
    """An opened, migrated labeling database: `session()` for a unit of work (one transaction)."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        migrate(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose work commits when the block ends, or rolls back on an error."""
        with self._sessions.begin() as session:
            yield session

    def setting(self, key: str) -> str:
        with self.session() as session:
            return session.get(Setting, key).value

    def close(self) -> None:
        self.engine.dispose()


def open_database(url: str) -> Database:
    """`Database(url)`: the engine, with the schema created or migrated."""
    return Database(url)
