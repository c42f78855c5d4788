"""The labeling app against a real PostgreSQL server (`make test-slow`; skipped without Debian's `postgresql`).

One server for the session (tests/pg_server.py: initdb in a temporary directory, loopback only, removed after):
the load and crash checks of tests/test_label_load.py run on it, each on a fresh database, and the labeling app's
own tests (tests/test_label_*.py, and the browser test when Playwright and Chromium are there) run on it in a
pytest subprocess with `HF_RLHF_LABEL_TEST_DB` set (tests/label_fixtures.py gives each test a fresh database).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import uuid

import pytest

from .label_fixtures import ENV
from .pg_server import create_database, postgres_url  # noqa: F401  (the session's server: a fixture)
from .test_label_load import check_concurrent_writers, check_kill_restart

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP_TESTS = ["tests/test_label_app.py", "tests/test_label_export.py", "tests/test_label_training.py"]
SUBPROCESS_TIMEOUT_S = 900


def fresh_database(server_url: str) -> str:
    return create_database(server_url, f"load_{uuid.uuid4().hex[:12]}")


def run_pytest(server_url: str, *args: str) -> str:
    """Run pytest on the labeling tests with the PostgreSQL server's URL in `HF_RLHF_LABEL_TEST_DB`; its output."""
    env = {**os.environ, ENV: server_url, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} failed on PostgreSQL:\n{output[-4000:]}"
    summary = output.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary) and "skipped" not in summary, summary
    return summary


def test_eight_concurrent_writers_postgres(postgres_url, tmp_path):  # noqa: F811
    figures = check_concurrent_writers(fresh_database(postgres_url), str(tmp_path))
    assert figures["answers"] == 72 and figures["double_submits"] > 0
    print("concurrent writers (postgresql):", figures)


def test_kill_and_restart_loses_nothing_postgres(postgres_url, tmp_path):  # noqa: F811
    figures = check_kill_restart(fresh_database(postgres_url), str(tmp_path))
    print("kill and restart (postgresql):", figures)


def test_the_labeling_apps_tests_pass_on_postgres(postgres_url):  # noqa: F811
    print("labeling tests (postgresql):", run_pytest(postgres_url, *APP_TESTS))


def test_the_browser_test_passes_on_postgres(postgres_url):  # noqa: F811
    from .ui.conftest import find_chromium

    if importlib.util.find_spec("playwright") is None or find_chromium() is None:
        pytest.skip("the browser test needs playwright and Chromium (make test-ui installs them)")
    print("browser test (postgresql):", run_pytest(postgres_url, "-m", "ui", "tests/ui"))
