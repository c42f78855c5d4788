"""The labeling app over HTTP (starlette's TestClient): login, tasks, answers stored once, security, admin pages.

Runs against a temporary SQLite file, or `HF_RLHF_LABEL_TEST_DB` (see tests/label_fixtures.py).
"""

from __future__ import annotations

import re
import threading

import pytest

pytest.importorskip("starlette")
from sqlalchemy import select  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from hf_rlhf.label.app import MAX_BODY_BYTES, create_app  # noqa: E402
from hf_rlhf.label.db import SCHEMA_VERSION, Database, schema_version  # noqa: E402
from hf_rlhf.label.models import Item, SchemaVersion  # noqa: E402
from hf_rlhf.label.projects import add_admin, add_labeler, create_project  # noqa: E402
from hf_rlhf.label.tasks import (  # noqa: E402
    MAX_COMMENT_CHARS,
    BadAnswer,
    answers,
    next_assignment,
    progress,
    ranks_from_order,
    shown_order,
)

from .label_fixtures import field, fresh_db_url, ranking_rows  # noqa: E402


def login(app, token: str) -> TestClient:
    client = TestClient(app)
    response = client.get(f"/login/{token}")
    assert response.status_code == 200, response.text
    return client


def open_task(client: TestClient):
    response = client.get("/task")
    assert response.status_code == 200 and "/task/" in str(response.url), response.text
    return response, str(response.url.path)


def rank_form(page: str, tied: str | None = None, **extra) -> dict:
    form = {k: field(page, k) for k in ("csrf", "nonce", "order", "tied", "started")}
    if tied is not None:
        form["tied"] = tied
    return {**form, "action": "submit", **extra}


def test_ranks_from_order_hand_values():
    assert ranks_from_order([2, 0, 1], [True, False]) == [1, 3, 1]
    assert ranks_from_order([0, 1, 2, 3], [False, True, True]) == [1, 2, 2, 2]
    assert ranks_from_order([1, 0], [False]) == [2, 1]
    with pytest.raises(BadAnswer, match="order all 3 completions"):
        ranks_from_order([0, 0, 1], [False, False])


def test_rank_submit_stores_ranks_by_original_index_once(db):
    project = create_project(db, "p", "ranking", ranking_rows(2), overlap=1, seed=7)
    token = add_labeler(db, "p", "alice")
    client = login(create_app(db), token)
    page, path = open_task(client)
    shown = [int(i) for i in field(page.text, "order").split(",")]
    assert sorted(shown) == [0, 1, 2] and "Answer briefly." in page.text  # the system turn is shown
    # the labeler puts the shown bottom card first, ties the other two, flags one, comments
    order = [shown[2], shown[0], shown[1]]
    form = rank_form(page.text, tied="0,1", order=",".join(map(str, order)), comment="close call")
    form[f"flag_{shown[0]}"] = ["unsafe", "wrong"]
    first = client.post(path, data=form, follow_redirects=False)
    again = client.post(path, data=form, follow_redirects=False)  # the double click
    assert first.status_code == again.status_code == 303
    stored = answers(db, project)
    assert len(stored) == 1
    expected = [0, 0, 0]
    expected[shown[2]], expected[shown[0]], expected[shown[1]] = 1, 2, 2
    assert stored[0]["ranking"] == expected and stored[0]["comment"] == "close call"
    assert stored[0]["flags"][shown[0]] == ["unsafe", "wrong"] and stored[0]["flags"][shown[2]] == []
    # the next task is the other item; then nothing is left
    page, second = open_task(client)
    assert second != path
    client.post(second, data=rank_form(page.text, action="skip"), follow_redirects=False)
    assert "All done" in client.get("/task").text
    figures = progress(db, project)
    assert figures["answered"] == 1 and figures["skipped"] == 1


def test_shown_order_is_seeded_per_labeler():
    orders = {tuple(shown_order(0, labeler, 5, 4)) for labeler in range(12)}
    assert len(orders) > 3  # position bias spread over labelers
    assert shown_order(0, 1, 5, 4) == shown_order(0, 1, 5, 4) and sorted(shown_order(3, 2, 1, 6)) == list(range(6))


def test_wrong_token_no_cookie_and_admin_pages(db):
    create_project(db, "p", "ranking", ranking_rows(1))
    labeler = add_labeler(db, "p", "alice")
    app = create_app(db)
    anonymous = TestClient(app)
    assert anonymous.get("/login/not-a-token").status_code == 403
    assert anonymous.get("/").status_code == 403 and anonymous.get("/task").status_code == 403
    assert anonymous.get("/admin").status_code == 403
    client = login(app, labeler)
    assert client.get("/admin").status_code == 403 and client.get("/admin/projects/1").status_code == 403
    admin = login(app, add_admin(db))
    page = admin.get("/admin/projects/1")
    assert page.status_code == 200 and 'data-labeler="alice"' in page.text
    assert "1 items, each for 1 labeler(s)" in page.text and "0 / 1" in page.text  # counts, not dict methods
    assert "built-in method" not in admin.get("/admin").text


def test_a_labeler_cannot_see_or_answer_another_labelers_or_projects_tasks(db):
    create_project(db, "p", "ranking", ranking_rows(2), overlap=1)
    create_project(db, "q", "ranking", ranking_rows(2), overlap=1)
    app = create_app(db)
    alice = login(app, add_labeler(db, "p", "alice"))
    bob = login(app, add_labeler(db, "p", "bob"))
    carol = login(app, add_labeler(db, "q", "carol"))
    page, alice_path = open_task(alice)
    form = rank_form(page.text)
    for intruder in (bob, carol):
        assert intruder.get(alice_path).status_code == 404
        intruder_form = {**form, "csrf": field(open_task(intruder)[0].text, "csrf")}  # a valid token of its own
        assert intruder.post(alice_path, data=intruder_form).status_code == 404
    carol_page, carol_path = open_task(carol)
    assert "/task/" in carol_path and carol_path != alice_path
    assert alice.post(carol_path, data=form).status_code == 404
    with db.session() as s:  # no answer was written by anyone
        assert s.scalars(select(Item.id)).all() and not answers(db, 1) and not answers(db, 2)
    # alice's answers are hers alone: bob's page never shows them
    alice.post(alice_path, data={**form, "comment": "SECRET-NOTE"}, follow_redirects=False)
    assert "SECRET-NOTE" not in bob.get("/task").text and "SECRET-NOTE" not in bob.get("/").text


def test_html_in_prompts_completions_and_guidelines_is_text(db):
    rows = [{"prompt": "<img src=x onerror=alert(1)>", "completions": ["<script>alert('x')</script>", "fine"]}]
    create_project(db, "p", "ranking", rows, guidelines="# Rules\n\n<script>alert(2)</script> **bold**")
    client = login(create_app(db), add_labeler(db, "p", "alice"))
    page, _ = open_task(client)
    assert "<script>alert" not in page.text and "<img src=x" not in page.text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page.text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert "<h1>Rules</h1>" in page.text and "<strong>bold</strong>" in page.text  # markdown still renders
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["referrer-policy"] == "no-referrer"


def test_posts_need_the_sessions_csrf_token_and_have_size_limits(db):
    project = create_project(db, "p", "ranking", ranking_rows(1))
    app = create_app(db)
    alice = login(app, add_labeler(db, "p", "alice"))
    bob = login(app, add_labeler(db, "p", "bob"))
    page, path = open_task(alice)
    form = rank_form(page.text)
    assert alice.post(path, data={k: v for k, v in form.items() if k != "csrf"}).status_code == 403
    assert alice.post(path, data={**form, "csrf": field(bob.get("/").text, "csrf")}).status_code == 403
    too_long = alice.post(path, data={**form, "comment": "x" * (MAX_COMMENT_CHARS + 1)})
    assert too_long.status_code == 400 and "limit is 2000" in too_long.text
    huge = alice.post(path, data={**form, "comment": "x" * (MAX_BODY_BYTES + 10)})
    assert huge.status_code == 413
    assert not answers(db, project)
    assert alice.post(path, data=form, follow_redirects=False).status_code == 303 and len(answers(db, project)) == 1


def test_demonstration_task(db):
    project = create_project(
        db, "d", "demonstration", [{"prompt": "Say hi"}, {"prompt": [{"role": "user", "content": "Q"}]}]
    )
    client = login(create_app(db), add_labeler(db, "d", "alice"))
    page, path = open_task(client)
    assert 'id="demonstration"' in page.text
    form = {k: field(page.text, k) for k in ("csrf", "nonce", "started")}
    empty = client.post(path, data={**form, "demonstration": "   ", "action": "submit"})
    assert empty.status_code == 400 and "empty" in empty.text
    too_long = client.post(path, data={**form, "demonstration": "y" * 20_001, "action": "submit"})
    assert too_long.status_code == 400
    client.post(path, data={**form, "demonstration": "  Hi there!  ", "action": "submit"}, follow_redirects=False)
    assert [a["demonstration"] for a in answers(db, project)] == ["Hi there!"]


def test_overlap_skips_and_concurrent_assignment(db):
    project = create_project(db, "p", "ranking", ranking_rows(4), overlap=2)
    ids = []
    with db.session() as s:
        from hf_rlhf.label.models import Labeler

        for name in ("a", "b", "c", "d", "e", "f"):
            add_labeler(db, "p", name)
        ids = s.scalars(select(Labeler.id)).all()
    got: dict[int, list[int]] = {}

    def work(labeler_id):  # each labeler takes tasks until none is left, all at once
        taken = []
        while (assignment := next_assignment(db, labeler_id)) is not None:
            from hf_rlhf.label.tasks import Submission, submit

            taken.append(assignment)
            submit(db, labeler_id, assignment, Submission(nonce=f"{labeler_id}-{assignment}", ranking=[1, 2, 3]))
        got[labeler_id] = taken

    threads = [threading.Thread(target=work, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = answers(db, project)
    per_item = {}
    for a in stored:
        per_item.setdefault(a["item_id"], []).append(a["labeler"])
    assert len(stored) == 8 and all(len(set(v)) == len(v) == 2 for v in per_item.values())  # exactly the overlap
    # a skip gives the slot back: the item goes to another labeler
    project2 = create_project(db, "q", "ranking", ranking_rows(1), overlap=1)
    app = create_app(db)
    first = login(app, add_labeler(db, "q", "x"))
    second = login(app, add_labeler(db, "q", "y"))
    page, path = open_task(first)
    assert "All done" in second.get("/task").text  # held by x
    first.post(path, data=rank_form(page.text, action="skip"), follow_redirects=False)
    assert "All done" in first.get("/task").text  # x never sees it again
    open_task(second)
    assert progress(db, project2)["skipped"] == 1


def test_restart_loses_nothing_and_migrations_run_once(tmp_path):
    with fresh_db_url(tmp_path) as url:
        db = Database(url)
        project = create_project(db, "p", "ranking", ranking_rows(2))
        token = add_labeler(db, "p", "alice")
        client = login(create_app(db), token)
        page, path = open_task(client)
        client.post(path, data=rank_form(page.text), follow_redirects=False)
        page2, path2 = open_task(client)  # open, not submitted, when the server dies
        db.close()
        restarted = Database(url)  # a new server process on the same database
        with restarted.engine.connect() as connection:
            assert schema_version(connection) == SCHEMA_VERSION == 1
        client = login(create_app(restarted), token)  # the login link still works
        assert len(answers(restarted, project)) == 1
        page3, path3 = open_task(client)
        assert path3 == path2  # the open task is handed back, not lost or doubled
        client.post(path3, data=rank_form(page3.text), follow_redirects=False)
        assert len(answers(restarted, project)) == 2
        with restarted.session() as s:  # a database from a newer hf_rlhf is refused
            s.get(SchemaVersion, 1).version = SCHEMA_VERSION + 1
        restarted.close()
        with pytest.raises(ValueError, match="newer than this hf_rlhf"):
            Database(url)


def test_admin_adds_labelers_and_replaces_links(db):
    create_project(db, "p", "ranking", ranking_rows(1), overlap=2)
    app = create_app(db, public_url="http://labels.example:7860")
    admin = login(app, add_admin(db))
    page = admin.get("/admin/projects/1")
    csrf = field(page.text, "csrf")
    assert admin.post("/admin/projects/1/labelers", data={"name": "zoe"}).status_code == 403  # no CSRF token
    added = admin.post("/admin/projects/1/labelers", data={"name": "zoe", "csrf": csrf})
    url = re.search(r'id="new-link-url" value="([^"]+)"|value="([^"]+)" id="new-link-url"', added.text)
    url = url.group(1) or url.group(2)
    assert url.startswith("http://labels.example:7860/login/")
    token = url.rsplit("/", 1)[1]
    zoe = login(app, token)
    assert "zoe" in zoe.get("/").text
    renewed = admin.post("/admin/labelers/1/link", data={"csrf": csrf})
    assert renewed.status_code == 200 and "login/" in renewed.text
    assert TestClient(app).get(f"/login/{token}").status_code == 403  # the old link is dead
    listing = admin.get("/admin")
    assert 'data-project="p"' in listing.text and "<progress" in listing.text
