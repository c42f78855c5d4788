"""A throwaway PostgreSQL server for tests: initdb in a temporary data directory, pg_ctl on a free loopback port.

`postgres_server()` yields an SQLAlchemy URL (``postgresql+psycopg://hf_rlhf@127.0.0.1:PORT/postgres``) and stops
the server and deletes its data directory on exit; `create_database(url, name)` adds a fresh database to it so each
test can start from an empty schema. The server listens on 127.0.0.1 only, with no Unix socket, `trust`
authentication (nothing else can reach it) and `fsync=off` (the data is thrown away).

PostgreSQL refuses to run as root. Run as root (as in the CI containers), the server binaries are run through
`runuser` as the unprivileged `postgres` system user (Debian's `postgresql` package creates it), or `nobody` if
there is none, and the data directory is handed to that user.

Binaries are found on PATH, then in Debian's /usr/lib/postgresql/<version>/bin. Without them, or without the
`psycopg` driver, the `postgres_url` fixture skips with the reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator

import pytest

SERVER_USER = "hf_rlhf"  # the database superuser initdb creates
START_TIMEOUT_S = 60


def find_postgres_bin() -> str | None:
    """The directory holding initdb, pg_ctl and postgres, or None when PostgreSQL is not installed."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl") and shutil.which("postgres"):
        return os.path.dirname(initdb)
    for bin_dir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):  # Debian: newest version first
        if all(os.access(os.path.join(bin_dir, name), os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return bin_dir
    return None


def missing_requirements() -> str | None:
    """Why a PostgreSQL test cannot run here (one line), or None when it can."""
    if find_postgres_bin() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; install Debian's `postgresql` package"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed (pip install 'hf_rlhf[postgres]')"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root and `runuser` (util-linux) is missing, so postgres cannot drop to an unprivileged user"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither the `postgres` nor the `nobody` user exists to run postgres as")


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Run a fresh PostgreSQL server for the duration of the block.

    Yields:
        The SQLAlchemy URL of its `postgres` database, e.g. ``postgresql+psycopg://hf_rlhf@127.0.0.1:54321/postgres``.
    """
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        raise RuntimeError(missing_requirements())
    base = tempfile.mkdtemp(prefix="hf_rlhf_pg_")
    data_dir, log_file = os.path.join(base, "data"), os.path.join(base, "server.log")
    prefix: list[str] = []
    if os.geteuid() == 0:
        user = _unprivileged_user()
        os.chown(base, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", user.pw_name, "--"]

    def run(*args: str) -> subprocess.CompletedProcess:
        # cwd=base: postgres tools chdir-check the working directory, which the unprivileged user must be able to read.
        return subprocess.run([*prefix, *args], cwd=base, capture_output=True, text=True, timeout=START_TIMEOUT_S)

    started = False
    try:
        result = run(os.path.join(bin_dir, "initdb"), "-D", data_dir, "-U", SERVER_USER, "--auth=trust",
                     "--encoding=UTF8", "--locale=C", "--no-sync")  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed in {data_dir}: {result.stderr.strip() or result.stdout.strip()}")
        for _attempt in range(3):  # the free port can be taken between choosing it and binding it
            port = _free_port()
            options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories='' "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100")  # fmt: skip
            result = run(os.path.join(bin_dir, "pg_ctl"), "-D", data_dir, "-l", log_file, "-o", options,
                         "-w", "-t", str(START_TIMEOUT_S), "start")  # fmt: skip
            if result.returncode == 0:
                started = True
                break
        if not started:
            log = open(log_file).read()[-2000:] if os.path.exists(log_file) else ""
            raise RuntimeError(f"pg_ctl start failed: {result.stderr.strip()}\n{log}")
        yield f"postgresql+psycopg://{SERVER_USER}@127.0.0.1:{port}/postgres"
    finally:
        if started:
            run(os.path.join(bin_dir, "pg_ctl"), "-D", data_dir, "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def create_database(url: str, name: str) -> str:
    """Create the empty database `name` on the server at `url` and return its SQLAlchemy URL."""
    import sqlalchemy as sa

    if not name.isidentifier():
        raise ValueError(f"database name {name!r}: expected letters, digits and underscores")
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of a PostgreSQL server started once for the session (skips with the reason when it cannot run)."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    with postgres_server() as url:
        yield url
