"""Agreement figures against hand-computed and published values; aggregation; the export the stages read."""

from __future__ import annotations

import json
import math
import os

import pytest

pytest.importorskip("sqlalchemy")
from datasets import load_from_disk  # noqa: E402

from hf_rlhf.data.formats import check_sft_dataset  # noqa: E402
from hf_rlhf.data.preference import to_groups  # noqa: E402
from hf_rlhf.errors import DataValidationError, RecipeError  # noqa: E402
from hf_rlhf.label import cli  # noqa: E402
from hf_rlhf.label.agreement import agreement, kendall_tau_b, krippendorff_alpha  # noqa: E402
from hf_rlhf.label.db import Database  # noqa: E402
from hf_rlhf.label.export import borda, comparison_rows, export_project, mean_rank  # noqa: E402
from hf_rlhf.label.projects import add_labeler, create_project  # noqa: E402
from hf_rlhf.label.tasks import Submission, next_assignment, submit  # noqa: E402
from hf_rlhf.manifest import require_complete  # noqa: E402

from .label_fixtures import ranking_rows  # noqa: E402


def test_kendall_tau_b_hand_values():
    assert kendall_tau_b([1, 2, 3], [1, 2, 3]) == 1.0
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == -1.0
    # pairs (0,1): tied in b; (0,2), (1,2): concordant -> (2 - 0) / sqrt(3 * 2)
    assert kendall_tau_b([1, 2, 3], [1, 1, 3]) == pytest.approx(2 / math.sqrt(6))
    assert kendall_tau_b([1, 1, 1], [1, 2, 3]) is None


def test_krippendorff_alpha_matches_the_published_example():
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", 4 coders x 12 units with missing values:
    # alpha interval 0.849, ordinal 0.815.
    coders = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    ]
    units = [[v for v in unit if v is not None] for unit in zip(*coders, strict=True)]
    assert krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=5e-4)
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert krippendorff_alpha([[1, 1], [2, 2], [3, 3]], "interval") == 1.0


def test_agreement_per_labeler_and_overall():
    rows = [
        {"item_id": 1, "labeler": "a", "ranking": [1, 2, 3]},
        {"item_id": 1, "labeler": "b", "ranking": [1, 2, 3]},
        {"item_id": 1, "labeler": "c", "ranking": [3, 2, 1]},
        {"item_id": 2, "labeler": "a", "ranking": [1, 2, 3]},  # nobody shares item 2
    ]
    figures = agreement(rows)
    assert figures["pairs"] == 3 and figures["shared_items"] == 1
    assert figures["kendall_tau"] == pytest.approx((1 - 1 - 1) / 3)
    assert figures["labelers"]["a"] == {"kendall_tau": 0.0, "pairs": 2, "items": 2}
    assert figures["labelers"]["c"]["kendall_tau"] == -1.0


def test_borda_and_mean_rank_with_ties():
    assert borda([[1, 2, 3], [2, 1, 3]]) == [1, 1, 3]
    assert borda([[1, 1, 3], [1, 2, 3]]) == [1, 2, 3]  # points 3.5, 2.5, 0
    assert borda([[1, 2, 2], [3, 1, 1]]) == [1, 1, 1]  # points 2, 2, 2: the labelers cancel out
    assert mean_rank([[1, 2, 2], [3, 1, 1]]) == [3, 1, 1]  # means 2, 1.5, 1.5
    rows = [
        {"item_id": i, "position": i, "split": "train", "prompt": "p", "completions": ["x", "y", "z"],
         "labeler": name, "ranking": r, "all_unacceptable": False, "flags": None, "comment": ""}
        for i, name, r in [(0, "a", [1, 2, 3]), (0, "b", [2, 1, 3]), (1, "a", [1, 2, 2]), (1, "b", [3, 1, 1])]
    ]  # fmt: skip
    out, dropped = comparison_rows(rows, "borda")
    assert [r["ranking"] for r in out["train"]] == [[1, 1, 3]] and dropped == 1  # item 1: all tied, dropped
    out, dropped = comparison_rows(rows, "none")
    assert len(out["train"]) == 4 and dropped == 0 and out["train"][0]["labeler"] == "a"


def label(db: Database, project: int, rankings: dict[str, list[list[int]]]) -> None:
    """Each labeler ranks its items in order: the i-th task gets rankings[name][i] (a skip for None)."""
    for name, ranks in rankings.items():
        labeler_id = add_labeler(db, "p", name) and _labeler_id(db, name)
        for r in ranks:
            assignment = next_assignment(db, labeler_id)
            submit(db, labeler_id, assignment, Submission(nonce=f"{name}{assignment}", ranking=r, skipped=r is None))


def _labeler_id(db: Database, name: str) -> int:
    from sqlalchemy import select

    from hf_rlhf.label.models import Labeler

    with db.session() as s:
        return s.scalar(select(Labeler.id).where(Labeler.name == name))


def test_export_writes_the_reward_stages_ranked_format_card_and_manifest(db, tmp_path):
    rows = ranking_rows(3) + ranking_rows(1, split="test")
    project = create_project(db, "p", "ranking", rows, overlap=2)
    label(
        db, project, {"a": [[1, 2, 3], [3, 2, 1], [1, 1, 1], [2, 1, 3]], "b": [[1, 2, 3], [3, 1, 2], None, [1, 2, 3]]}
    )
    out = str(tmp_path / "labels")
    manifest = export_project(db, "p", out)
    data = load_from_disk(out)
    assert set(data) == {"train", "test"} and len(data["test"]) == 1  # the source's splits kept
    groups, dropped, fmt = to_groups(data["train"], "export", "error")  # what the reward stage reads
    assert fmt == "ranked" and not dropped and len(groups) == 2  # the all-tied item was dropped
    # item 1: Borda points a [0, 1, 2] + b [0, 2, 1] = [0, 3, 3]
    assert data["train"][0]["ranking"] == [1, 2, 3] and data["train"][1]["ranking"] == [3, 1, 1]
    assert manifest["metrics"]["dropped_all_tied"] == 1 and manifest["metrics"]["answers"] == 7
    assert require_complete(out)["stage"] == "label"
    card = open(os.path.join(out, "README.md")).read()
    tau = manifest["metrics"]["agreement"]["kendall_tau"]
    assert f"Kendall's tau-b between labelers: {tau:.3f}" in card and "| a | 4 |" in card
    assert str(tmp_path) not in card  # no local paths
    jsonl = [json.loads(line) for line in open(os.path.join(out, "comparisons_train.jsonl"))]
    assert jsonl[0]["completions"] == rows[0]["completions"]
    with pytest.raises(Exception, match="already holds a complete label stage"):
        export_project(db, "p", out)
    per_labeler = export_project(db, "p", out, aggregate="none", overwrite=True)
    assert per_labeler["metrics"]["rows"] == {"train": 4, "test": 2}  # a's all-tied ranking dropped
    assert per_labeler["metrics"]["dropped_all_tied"] == 1


def test_demonstration_export_is_sfts_prompt_completion_format(db, tmp_path):
    prompts = [{"prompt": [{"role": "user", "content": f"Q{i}"}]} for i in range(2)]
    project = create_project(db, "p", "demonstration", prompts)
    labeler_id = add_labeler(db, "p", "a") and _labeler_id(db, "a")
    for text in ("A0", "A1"):
        submit(db, labeler_id, next_assignment(db, labeler_id), Submission(nonce=text, demonstration=text))
    out = str(tmp_path / "demos")
    export_project(db, "p", out)
    data = load_from_disk(out)["train"]
    assert check_sft_dataset(data, "export") == "prompt-completion"
    assert data[0]["completion"] == [{"role": "assistant", "content": "A0"}] and data.column_names == [
        "prompt",
        "completion",
    ]
    assert project == 1


def test_bad_exports_are_one_line_errors(db, tmp_path, capsys):
    create_project(db, "p", "ranking", ranking_rows(2))
    with pytest.raises(RecipeError, match="no project 'nope' in .* \\(projects: 'p'\\)"):
        export_project(db, "nope", str(tmp_path / "x"))
    with pytest.raises(DataValidationError, match="has 0 rankings, none yet"):
        export_project(db, "p", str(tmp_path / "x"))
    with pytest.raises(RecipeError, match="aggregate must be one of"):
        export_project(db, "p", str(tmp_path / "x"), aggregate="vote")
    assert not os.path.exists(tmp_path / "x")


def test_cli_create_project_add_labeler_status(db, tmp_path, world_dir, capsys):
    url = db.url
    cli.main(["create-project", "--db", url, "--name", "demo", "--dataset", world_dir["prompts"], "--max_items", "4"])
    assert "project 'demo' (demonstration): 4 items" in capsys.readouterr().out
    link = cli.main(["add-labeler", "--db", url, "--project", "demo", "--name", "ann"])["link"]
    assert link.startswith("http://127.0.0.1:7860/login/") and len(link.rsplit("/", 1)[1]) >= 40
    status = cli.main(["status", "--db", url, "--json"])
    assert status["demo"]["items"] == 4 and status["demo"]["labelers"][0]["name"] == "ann"
    with pytest.raises(RecipeError, match="already exists"):
        cli.main(["create-project", "--db", url, "--name", "demo", "--dataset", world_dir["prompts"]])
    with pytest.raises(DataValidationError, match="needs 'completions'"):
        cli.main(
            ["create-project", "--db", url, "--name", "r", "--dataset", world_dir["prompts"], "--kind", "ranking"]
        )
    with pytest.raises(RecipeError, match="SQLAlchemy URL"):
        cli.main(["status", "--db", "labels.db"])
