"""Helpers of the labeling app's tests: a fresh database per test, a logged-in client, the forms of a page.

`HF_RLHF_LABEL_TEST_DB` runs the tests against another database: a PostgreSQL server URL
(`postgresql+psycopg://user@127.0.0.1:PORT/postgres`; each test gets a fresh database created on it and dropped
after) or any SQLAlchemy URL prefix. Unset, each test gets a temporary SQLite file.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

ENV = "HF_RLHF_LABEL_TEST_DB"


@contextmanager
def fresh_db_url(tmp_path) -> Iterator[str]:
    """An empty database's URL: a temporary SQLite file, or a new database on `HF_RLHF_LABEL_TEST_DB`'s server."""
    server = os.environ.get(ENV)
    if not server:
        yield f"sqlite:///{tmp_path}/labels.db"
        return
    if not server.startswith("postgresql"):
        yield server
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"label_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def field(html: str, name: str) -> str:
    """The value of the (first) input named `name` in a page."""
    match = re.search(rf'name="{name}"[^>]*value="([^"]*)"', html)
    assert match, f"no input {name!r} in the page"
    return match.group(1)


def ranking_rows(n: int = 3, k: int = 3, split: str = "train") -> list[dict]:
    """`n` ranking items with K completions, conversational prompts with a system turn."""
    return [
        {
            "prompt": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": f"Question {i}?"},
            ],
            "completions": [f"answer {i}.{j}" for j in range(k)],
            "split": split,
        }
        for i in range(n)
    ]


@pytest.fixture
def db(tmp_path):
    """An open `hf_rlhf.label.db.Database` on a fresh database (`fresh_db_url`), closed after the test."""
    from hf_rlhf.label.db import Database

    with fresh_db_url(tmp_path) as url:
        database = Database(url)
        yield database
        database.close()
