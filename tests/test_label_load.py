"""Load and crash tests of the labeling app over HTTP, against real `hf-rlhf label serve` processes on loopback.

* 8 concurrent writers (labelers in threads, each with its own HTTP client) share a ranking project with overlap 3
  through two server processes on the same database, so the database (not one server's event loop) sees concurrent
  transactions; some forms are sent twice at once (a double click). Every answer is stored once, with the ranks
  the labeler sent; each item gets exactly `overlap` answers.
* A server killed with SIGKILL while labelers are submitting, then restarted: every submit it acknowledged is in
  the database, a form loaded before the crash is accepted after it, and resending forms whose reply was lost
  stores nothing twice.

Bounded: a fixed number of items, 30 s HTTP timeouts, a 120 s deadline per phase. The checks take a database URL
so tests/test_label_postgres.py runs them against PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest

pytest.importorskip("starlette")
pytest.importorskip("sqlalchemy")
httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.slow  # server processes started 3-4 times and hundreds of requests: about a minute

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HTTP_TIMEOUT_S = 30
PHASE_DEADLINE_S = 120
SERVER_START_S = 60
WRITERS = 8


# ------------------------------------------------------------------------------------------------ server processes
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(db_url: str, port: int, log_path: str) -> subprocess.Popen:
    """`python -m hf_rlhf.label.cli serve` on 127.0.0.1:`port`, ready to answer (its output goes to `log_path`)."""
    log = open(log_path, "ab")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "hf_rlhf.label.cli", "serve", "--db", db_url, "--host", "127.0.0.1"]
    process = subprocess.Popen(
        [*command, "--port", str(port)], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    log.close()
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {open(log_path).read()[-2000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return process
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the server did not answer on port {port} within {SERVER_START_S} s")


def kill(process: subprocess.Popen) -> None:
    """SIGKILL: no shutdown handler runs, as in a crash or an OOM kill."""
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


@contextlib.contextmanager
def servers(db_url: str, count: int, log_dir: str) -> Iterator[list[str]]:
    processes, urls = [], []
    try:
        for n in range(count):
            port = free_port()
            processes.append(start_server(db_url, port, os.path.join(log_dir, f"server{n}.log")))
            urls.append(f"http://127.0.0.1:{port}")
        yield urls
    finally:
        for process in processes:
            kill(process)


# ------------------------------------------------------------------------------------------------ a labeler over HTTP
class _FormParser(HTMLParser):
    """The task form's fields (`input` name -> value) and the completions' original indices as shown."""

    def __init__(self):
        super().__init__()
        self.action, self.fields, self.shown, self._in_form = None, {}, [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "form" and attrs.get("id") == "task-form":
            self.action, self._in_form = attrs.get("action"), True
        elif tag == "input" and self._in_form and attrs.get("type") == "hidden":
            self.fields[attrs["name"]] = attrs.get("value", "")
        elif tag == "li" and "completion" in (attrs.get("class") or "").split():
            self.shown.append(int(attrs["data-index"]))

    def handle_endtag(self, tag):
        if tag == "form":
            self._in_form = False


def competition_ranks(order: list[int], tied: list[int]) -> list[int]:
    """Rank of each original index, written independently of the app: position 1 is rank 1, a tied card shares the
    rank of the card above, the next untied card's rank is its position."""
    ranks, rank = {}, 1
    for position, index in enumerate(order):
        if position > 0 and not tied[position - 1]:
            rank = position + 1
        ranks[index] = rank
    return [ranks[i] for i in range(len(order))]


class Labeler:
    """A labeler's browser, over HTTP: a login link's cookie, the task pages' forms."""

    def __init__(self, base_url: str, token: str):
        self.client = httpx.Client(base_url=base_url, timeout=HTTP_TIMEOUT_S, follow_redirects=False)
        self.token = token
        self.login()

    def login(self) -> None:
        response = self.client.get(f"/login/{self.token}")
        assert response.status_code == 303, response.text[:300]

    def open_task(self) -> tuple[str, dict[str, str], list[int]] | None:
        """The next task's form (action, hidden fields, shown order), or None when the labeler is done."""
        response = self.client.get("/task")
        if response.status_code == 200:
            assert 'id="all-done"' in response.text, response.text[:300]
            return None
        assert response.status_code == 303, (response.status_code, response.text[:300])
        page = self.client.get(response.headers["location"])
        assert page.status_code == 200, (page.status_code, page.text[:300])
        parser = _FormParser()
        parser.feed(page.text)
        assert parser.action and "csrf" in parser.fields and "nonce" in parser.fields, page.text[:500]
        return parser.action, parser.fields, parser.shown

    def post(self, action: str, data: dict[str, str]) -> int:
        response = self.client.post(action, data=data)
        assert response.status_code == 303, (action, response.status_code, response.text[:300])
        return response.status_code

    def close(self) -> None:
        self.client.close()


def ranking_answer(fields: dict[str, str], shown: list[int], rng: random.Random) -> tuple[dict[str, str], list[int]]:
    """A random order (with a random tie) of the shown completions: the form data and the ranks it must store."""
    order = shown[:]
    rng.shuffle(order)
    tied = [int(rng.random() < 0.25) for _ in order[1:]]
    data = {**fields, "order": ",".join(map(str, order)), "tied": ",".join(map(str, tied)), "action": "submit"}
    return data, competition_ranks(order, tied)


# ------------------------------------------------------------------------------------------------ projects and the DB
def make_ranking_project(db_url: str, name: str, items: int, k: int, overlap: int, labelers: int) -> list[str]:
    """A ranking project of `items` prompts with `k` completions; returns the labelers' login tokens."""
    from hf_rlhf.label.db import open_database
    from hf_rlhf.label.projects import add_labeler, create_project

    rows = [
        {"prompt": f"question {i}", "completions": [f"answer {i}.{j}" for j in range(k)], "split": "train"}
        for i in range(items)
    ]
    db = open_database(db_url)
    try:
        create_project(db, name, "ranking", rows, overlap=overlap, seed=7)
        return [add_labeler(db, name, f"labeler{n}") for n in range(labelers)]
    finally:
        db.close()


def stored_answers(db_url: str, name: str) -> list[dict]:
    from hf_rlhf.label.db import open_database
    from hf_rlhf.label.projects import get_project
    from hf_rlhf.label.tasks import answers

    db = open_database(db_url)
    try:
        return answers(db, get_project(db, name).id)
    finally:
        db.close()


def stored_by_assignment(db_url: str, name: str) -> dict[str, list[int]]:
    """Assignment path (`/task/<id>`) -> the ranks stored for it, for every answer of the project."""
    from sqlalchemy import select

    from hf_rlhf.label.db import open_database
    from hf_rlhf.label.models import Assignment

    rows = stored_answers(db_url, name)
    db = open_database(db_url)
    try:
        with db.session() as session:
            paths = {(a.item_id, a.labeler_id): f"/task/{a.id}" for a in session.scalars(select(Assignment))}
    finally:
        db.close()
    out = {paths[(r["item_id"], r["labeler_id"])]: r["ranking"] for r in rows}
    assert len(out) == len(rows), "two answers for one assignment"
    return out


# ------------------------------------------------------------------------------------------------ the checks
def check_concurrent_writers(
    db_url: str, log_dir: str, items: int = 24, overlap: int = 3, server_processes: int = 2
) -> dict:
    """8 writers through `server_processes` server processes: returns figures (answers, duplicates sent, seconds)."""
    tokens = make_ranking_project(db_url, "load", items=items, k=3, overlap=overlap, labelers=WRITERS)
    sent: dict[tuple[int, str], list[int]] = {}  # (labeler, assignment path) -> ranks
    errors: list[BaseException] = []
    doubles = [0] * WRITERS
    lock = threading.Lock()
    start = threading.Barrier(WRITERS)

    def writer(n: int, base_url: str) -> None:
        rng = random.Random(n)
        labeler = Labeler(base_url, tokens[n])
        try:
            start.wait(timeout=PHASE_DEADLINE_S)
            deadline = time.monotonic() + PHASE_DEADLINE_S
            while time.monotonic() < deadline:
                task = labeler.open_task()
                if task is None:
                    return
                action, fields, shown = task
                data, ranks = ranking_answer(fields, shown, rng)
                with lock:
                    assert (n, action) not in sent, f"labeler{n} was given {action} again after answering it"
                    sent[(n, action)] = ranks
                if rng.random() < 0.25:  # a double click: the same form twice at once, from a second connection
                    twin = Labeler(base_url, tokens[n])
                    thread = threading.Thread(target=twin.post, args=(action, data))
                    thread.start()
                    labeler.post(action, data)
                    thread.join(HTTP_TIMEOUT_S)
                    twin.close()
                    doubles[n] += 1
                else:
                    labeler.post(action, data)
            raise AssertionError(f"labeler{n} was not done after {PHASE_DEADLINE_S} s")
        except BaseException as e:  # reported by the main thread
            errors.append(e)
        finally:
            labeler.close()

    started = time.monotonic()
    with servers(db_url, server_processes, log_dir) as urls:
        threads = [threading.Thread(target=writer, args=(n, urls[n % len(urls)])) for n in range(WRITERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PHASE_DEADLINE_S + 2 * HTTP_TIMEOUT_S)
    seconds = time.monotonic() - started
    assert not errors, errors[0]
    assert not any(thread.is_alive() for thread in threads)

    rows = stored_answers(db_url, "load")
    keys = [(r["labeler"], r["item_id"]) for r in rows]
    assert len(keys) == len(set(keys)), "an item was answered twice by one labeler"
    assert len(rows) == items * overlap == len(sent), (len(rows), items * overlap, len(sent))
    per_item: dict[int, int] = {}
    for r in rows:
        per_item[r["item_id"]] = per_item.get(r["item_id"], 0) + 1
    assert sorted(per_item.values()) == [overlap] * items
    stored = stored_by_assignment(db_url, "load")  # every answer is the one its labeler sent
    assert stored == {action: ranks for (_, action), ranks in sent.items()}
    return {"answers": len(rows), "double_submits": sum(doubles), "seconds": round(seconds, 2)}


def check_kill_restart(db_url: str, log_dir: str, items: int = 16, writers: int = 4) -> dict:
    """Kill the server mid-task, restart it: nothing acknowledged is lost, nothing resent is stored twice."""
    tokens = make_ranking_project(db_url, "crash", items=items, k=3, overlap=1, labelers=writers + 1)
    port = free_port()
    base_url, log = f"http://127.0.0.1:{port}", os.path.join(log_dir, "crash_server.log")
    acknowledged: dict[str, list[int]] = {}  # assignment path -> ranks sent, for the submits answered 303
    unanswered: dict[int, tuple[str, dict[str, str], list[int]]] = {}  # writer -> the submit in flight at the kill
    lock = threading.Lock()

    def label(n: int, labeler: Labeler) -> None:
        """Label until done, or until the server goes away (then remember the submit whose reply was lost)."""
        rng = random.Random(100 + n)
        deadline = time.monotonic() + PHASE_DEADLINE_S
        while time.monotonic() < deadline:
            if n in unanswered:  # resend the form of the lost reply first, exactly as it was
                action, data, ranks = unanswered.pop(n)
            else:
                try:
                    task = labeler.open_task()
                except httpx.TransportError:
                    return
                if task is None:
                    return
                action, fields, shown = task
                data, ranks = ranking_answer(fields, shown, rng)
            try:
                labeler.post(action, data)
            except httpx.TransportError:
                unanswered[n] = (action, data, ranks)
                return
            with lock:
                acknowledged[action] = ranks

    def run_writers() -> None:
        threads = [threading.Thread(target=label, args=(n, labelers[n])) for n in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(PHASE_DEADLINE_S + 2 * HTTP_TIMEOUT_S)
        assert not any(thread.is_alive() for thread in threads)

    server = start_server(db_url, port, log)
    labelers = [Labeler(base_url, t) for t in tokens]
    try:
        # A labeler opens a task and is still reading it when the server dies.
        holder = labelers[writers]
        held_action, held_fields, held_shown = holder.open_task()
        # The writers label until the server is killed under them, once a third of the items is acknowledged.
        writing = threading.Thread(target=run_writers)
        writing.start()
        deadline = time.monotonic() + PHASE_DEADLINE_S
        while len(acknowledged) < items // 3 and time.monotonic() < deadline:
            time.sleep(0.005)
        kill(server)
        writing.join()
        before_kill = dict(acknowledged)
        assert len(before_kill) >= items // 3, f"only {len(before_kill)} answers before the deadline"
        stored = stored_by_assignment(db_url, "crash")
        lost = sorted(set(before_kill) - set(stored))
        assert not lost, f"acknowledged answers lost in the crash: {lost}"
        assert all(stored[a] == r for a, r in before_kill.items()), "an acknowledged answer was stored wrong"

        server = start_server(db_url, port, log)
        # The form loaded before the crash is accepted (same cookie, same CSRF token, same nonce).
        held_data, held_ranks = ranking_answer(held_fields, held_shown, random.Random(0))
        holder.post(held_action, held_data)
        acknowledged[held_action] = held_ranks
        in_flight = len(unanswered)
        run_writers()  # resend the forms whose replies were lost, then finish the project
    finally:
        kill(server)
        for labeler in labelers:
            labeler.close()
    assert not unanswered, f"forms never delivered: {unanswered}"
    stored = stored_by_assignment(db_url, "crash")
    assert stored == acknowledged, "stored answers differ from the acknowledged ones"
    assert len(stored) == items == len({r["item_id"] for r in stored_answers(db_url, "crash")})
    return {"acknowledged_before_kill": len(before_kill), "in_flight_at_kill": in_flight, "answers": len(stored)}


# ------------------------------------------------------------------------------------------------ the tests (SQLite)
def test_eight_concurrent_writers_sqlite(tmp_path):
    figures = check_concurrent_writers(f"sqlite:///{tmp_path / 'labels.db'}", str(tmp_path))
    assert figures["answers"] == 72 and figures["double_submits"] > 0
    print("concurrent writers (sqlite):", figures)


def test_kill_and_restart_loses_nothing_sqlite(tmp_path):
    figures = check_kill_restart(f"sqlite:///{tmp_path / 'labels.db'}", str(tmp_path))
    print("kill and restart (sqlite):", figures)
