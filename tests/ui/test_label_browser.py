"""The labeling app end to end in a real headless Chromium (Debian's, driven by Playwright; see conftest.py).

A labeler (alice) opens her login link and ranks 3 items: the first with the mouse (drag and drop, a tie, a flag
checkbox, a double-clicked submit), the second and third with the keyboard only; then, with her link to a
demonstration project, writes one demonstration and skips the other prompt. A second labeler (bob), in his own
browser context, ranks the same items at the same time (overlap 2), his steps interleaved with hers. The answers
in the database are checked against what each did, the admin pages are opened, and the export trains the reward
stage and SFT for 2 steps each. Screenshots of every page go to the test's output directory
(HF_RLHF_UI_SCREENSHOTS, else tmp_path/screenshots); docs/screenshots/ holds a copy.

Runs on SQLite by default, on PostgreSQL with HF_RLHF_LABEL_TEST_DB (tests/label_fixtures.py).
"""

from __future__ import annotations

import os
import time

import pytest

pytest.importorskip("sqlalchemy")
pytest.importorskip("uvicorn")

from hf_rlhf.label.app import create_app  # noqa: E402
from hf_rlhf.label.db import Database  # noqa: E402
from hf_rlhf.label.export import export_project  # noqa: E402
from hf_rlhf.label.projects import add_admin, add_labeler, create_project  # noqa: E402
from hf_rlhf.label.tasks import answers  # noqa: E402

from ..conftest import RECIPES  # noqa: E402
from ..label_fixtures import fresh_db_url, ranking_rows  # noqa: E402
from ..test_label_load import competition_ranks, stored_by_assignment  # noqa: E402
from ..test_label_training import tiny_lm  # noqa: E402, F401  (a fixture: a 2-step pretrained tiny LM)
from .live_server import serve_app  # noqa: E402

pytestmark = pytest.mark.ui

XSS = '<img src="x" onerror="window.__xss = 1"><script>window.__xss = 2</script>'
DEMONSTRATION = "The capital of the tiny world is Alba. It lies on the river Brill."


def shown(page) -> list[int]:
    """The completions' original indices, top to bottom, as the page shows them now."""
    return [
        int(i)
        for i in page.eval_on_selector_all("#ranking-list li.completion", "els => els.map(e => e.dataset.index)")
    ]


def form_value(page, selector: str) -> str:
    return page.eval_on_selector(selector, "e => e.value")


def open_task(page, kind: str) -> list[int]:
    """Wait for the task page of `kind`; returns the shown order (ranking)."""
    page.wait_for_selector(f'body[data-page="{kind}"]')
    return shown(page) if kind == "ranking" else []


def drag(page, source: str, target: str, where: float) -> None:
    """Drag the card `source` onto `target`, at `where` (0 top, 1 bottom) of its height."""
    box = page.locator(target).bounding_box()
    page.drag_and_drop(source, target, target_position={"x": box["width"] / 2, "y": box["height"] * where})


def task_path(page) -> str:
    """The open task's assignment path, `/task/<id>`."""
    return page.get_attribute("#task-form", "action")


def submit_and_wait(page, action) -> None:
    with page.expect_navigation():
        action()


def bob_ranks_with_buttons(page, ranks: dict[str, list[int]]) -> None:
    """Bob moves the bottom card up with its button and submits by clicking; records the ranks he gave."""
    order = open_task(page, "ranking")
    page.click(f"#completion-{order[-1]} button.move-up")
    expected = order[:-2] + [order[-1], order[-2]]
    assert shown(page) == expected
    ranks[task_path(page)] = competition_ranks(expected, [0, 0])
    submit_and_wait(page, lambda: page.click("#submit"))


def test_labelers_rank_and_write_in_chromium(browser, screenshot_dir, tmp_path, tiny_lm):  # noqa: F811
    from hf_rlhf.stages import reward, sft

    started = time.monotonic()
    rows = ranking_rows(3, k=3)
    rows[2]["completions"][1] = XSS
    with fresh_db_url(tmp_path) as url:
        db = Database(url)
        rank_id = create_project(
            db, "rank", "ranking", rows, guidelines="# Rules\nPrefer **correct** answers.", overlap=2
        )
        demo_id = create_project(db, "demos", "demonstration", [{"prompt": "Capital?"}, {"prompt": "River?"}])
        alice, bob = add_labeler(db, "rank", "alice"), add_labeler(db, "rank", "bob")
        alice_writes, admin = add_labeler(db, "demos", "alice"), add_admin(db)
        alice_ranks, bob_ranks = {}, {}
        with serve_app(create_app(db)) as base:
            a_context, b_context = browser.new_context(), browser.new_context()
            a, b = a_context.new_page(), b_context.new_page()

            a.goto(f"{base}/login/{alice}")
            a.wait_for_selector('body[data-page="home"]')
            assert "Prefer" in a.text_content("#guidelines")
            a.screenshot(path=os.path.join(screenshot_dir, "home.png"), full_page=True)
            a.keyboard.press("Enter")  # start
            order = open_task(a, "ranking")
            assert a.text_content('.message[data-role="system"] .content') == "Answer briefly."

            b.goto(f"{base}/login/{bob}")
            b.wait_for_selector('body[data-page="home"]')
            b.click("#start")  # bob opens the same item while alice works on it
            b.wait_for_selector('body[data-page="ranking"]')
            assert b.text_content("#prompt") == a.text_content("#prompt")

            # Item 1, mouse: drag the bottom card onto the top of the first (-> first), then the new bottom card
            # onto the middle of the first (-> second, tied with it); flag one card with its checkbox.
            x, y, z = order
            drag(a, f"#completion-{z}", f"#completion-{x}", 0.1)
            assert shown(a) == [z, x, y]
            drag(a, f"#completion-{y}", f"#completion-{z}", 0.5)
            assert shown(a) == [z, y, x] and form_value(a, "#tied") == "1,0"
            assert a.get_attribute(f"#completion-{y}", "data-rank") == "1"
            a.check(f'#completion-{x} input[data-flag="wrong"]')
            a.screenshot(path=os.path.join(screenshot_dir, "ranking.png"), full_page=True)  # a tie and a flag
            bob_ranks_with_buttons(b, bob_ranks)  # bob submits first
            alice_ranks[task_path(a)] = competition_ranks([z, y, x], [1, 0])
            submit_and_wait(a, lambda: a.dblclick("#submit"))  # a double click stores one answer

            # Item 2, keyboard: select the third card, move it to the top, select the card below, tie it, flag
            # it unsafe, write a comment, submit with Ctrl+Enter from the comment.
            order = open_task(a, "ranking")
            x, y, z = order
            a.keyboard.press("3")
            a.keyboard.press("Shift+ArrowUp")
            a.keyboard.press("Shift+ArrowUp")
            assert shown(a) == [z, x, y]
            a.keyboard.press("j")
            a.keyboard.press("t")
            a.keyboard.press("x")
            assert form_value(a, "#tied") == "1,0" and a.is_checked(f'#completion-{x} input[data-flag="unsafe"]')
            a.keyboard.press("c")
            a.keyboard.type("ranked with the keyboard")
            bob_ranks_with_buttons(b, bob_ranks)
            alice_ranks[task_path(a)] = competition_ranks([z, x, y], [1, 0])
            submit_and_wait(a, lambda: a.keyboard.press("Control+Enter"))

            # Item 3 (an XSS completion), keyboard: move the first card down with J, all unacceptable, Enter.
            order = open_task(a, "ranking")
            assert XSS in a.text_content(f"#completion-{1} .content")  # shown as text
            assert a.evaluate("() => window.__xss === undefined") and a.locator("#ranking-list img").count() == 0
            x, y, z = order
            a.keyboard.press("1")
            a.keyboard.press("J")
            assert shown(a) == [y, x, z]
            a.keyboard.press("a")
            assert a.is_checked("#all-unacceptable")
            bob_ranks_with_buttons(b, bob_ranks)
            alice_ranks[task_path(a)] = competition_ranks([y, x, z], [0, 0])
            submit_and_wait(a, lambda: a.keyboard.press("Enter"))
            a.wait_for_selector("#all-done")
            b.goto(f"{base}/task")
            b.wait_for_selector("#all-done")
            a.screenshot(path=os.path.join(screenshot_dir, "done.png"), full_page=True)

            # Demonstrations: alice's link to the other project; type the response, submit; skip the next.
            a.goto(f"{base}/login/{alice_writes}")
            a.keyboard.press("Enter")
            open_task(a, "demonstration")
            assert a.evaluate("() => document.activeElement.id") == "demonstration"  # autofocus
            a.keyboard.press("Escape")
            a.keyboard.press("e")  # back into the response box
            a.keyboard.type(DEMONSTRATION)
            assert a.text_content("#demonstration-count") == str(len(DEMONSTRATION))
            a.screenshot(path=os.path.join(screenshot_dir, "demonstration.png"), full_page=True)
            submit_and_wait(a, lambda: a.keyboard.press("Control+Enter"))
            open_task(a, "demonstration")
            a.keyboard.press("Escape")
            submit_and_wait(a, lambda: a.keyboard.press("s"))
            a.wait_for_selector("#all-done")

            # The admin sees both projects' progress and the agreement of alice and bob.
            admin_page = browser.new_context().new_page()
            admin_page.goto(f"{base}/login/{admin}")
            admin_page.wait_for_selector("#projects")
            assert admin_page.inner_text('#projects tr[data-project="rank"]').split("\t")[1:4] == ["ranking", "3", "2"]
            admin_page.screenshot(path=os.path.join(screenshot_dir, "admin.png"), full_page=True)
            admin_page.click('#projects tr[data-project="rank"] a')
            admin_page.wait_for_selector("#agreement")
            assert admin_page.get_attribute("#project-progress", "value") == "6"
            assert "3 items, each for 2 labeler(s)" in admin_page.inner_text("main")
            for name in ("alice", "bob"):
                row = f'#labelers tr[data-labeler="{name}"]'
                assert (
                    "3 / 3" in admin_page.inner_text(row) and admin_page.get_attribute(f"{row} progress", "max") == "3"
                )
            admin_page.screenshot(path=os.path.join(screenshot_dir, "admin_project.png"), full_page=True)
            for context in browser.contexts:
                context.close()
        browser_seconds = time.monotonic() - started

        # The database holds exactly what each labeler did, once (the double click included).
        assert len(alice_ranks) == len(bob_ranks) == 3
        assert stored_by_assignment(url, "rank") == {**alice_ranks, **bob_ranks}
        stored = answers(db, rank_id)
        alice_rows = [r for r in stored if r["labeler"] == "alice"]
        assert [r["all_unacceptable"] for r in alice_rows] == [False, False, True]
        assert [r["comment"] for r in alice_rows] == ["", "ranked with the keyboard", ""]
        assert ["wrong"] in alice_rows[0]["flags"] and ["unsafe"] in alice_rows[1]["flags"]
        assert all(r["seconds"] is not None for r in stored)
        demos = answers(db, demo_id, include_skipped=True)
        assert [(r["demonstration"], r["skipped"]) for r in demos] == [(DEMONSTRATION, False), (None, True)]

        # The export trains the reward stage and SFT, 2 steps each.
        exported = export_project(db, "rank", str(tmp_path / "comparisons"))["metrics"]
        assert exported["rows"]["train"] + exported["dropped_all_tied"] == 3 and exported["answers"] == 6
        export_project(db, "demos", str(tmp_path / "demonstrations"))
        db.close()
    common = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--logging_steps", "1"]
    argv = ["--config", os.path.join(RECIPES, "tiny", "reward.yaml"), "--model_name_or_path", tiny_lm]
    argv += ["--dataset_name", str(tmp_path / "comparisons"), "--eval_split_size", "0"]
    manifest = reward.main(argv + ["--output_dir", str(tmp_path / "rm"), *common])
    assert manifest["metrics"]["format"] == "ranked"
    assert manifest["metrics"]["rows"]["train"]["used"] == exported["rows"]["train"]
    argv = ["--config", os.path.join(RECIPES, "tiny", "sft.yaml"), "--model_name_or_path", tiny_lm]
    argv += ["--dataset_name", str(tmp_path / "demonstrations"), "--eval_split_size", "0"]
    manifest = sft.main(argv + ["--output_dir", str(tmp_path / "sft"), *common])
    assert manifest["stage"] == "sft" and manifest["metrics"]["train_loss"] > 0
    print(f"\nbrowser part {browser_seconds:.1f} s, with training {time.monotonic() - started:.1f} s")
