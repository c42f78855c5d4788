"""`hf-rlhf evaluate`: bad arguments refused in one line before any model loads, then a run on tiny models."""

import json
import os

import pytest

from hf_rlhf.eval import evaluate, measure

from .test_report_pipeline import QUESTIONS, save_tiny_models


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    return save_tiny_models(tmp_path_factory.mktemp("evaluate"))


@pytest.fixture()
def no_model_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(measure, "load_model_for_inference", refuse)


def arguments(dirs, tmp_path, *extra):
    return ["--models", f"sft={dirs['sft']}", f"rl={dirs['rl']}", "--reward_model", dirs["reward"],
            "--prompts", dirs["prompts"], "--output_dir", str(tmp_path / "out"), *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a, d: a + ["--reference", "base"], "--reference 'base' is not among --models (sft, rl)"),
        (lambda a, d: [x.replace(d["rl"], d["rl"] + "-missing") for x in a], "--models rl '"),
        (lambda a, d: [x.replace(f"rl={d['rl']}", "rl") for x in a], "expects NAME=PATH entries, got 'rl'"),
        (lambda a, d: [x.replace("rl=", "sft=") for x in a], "--models names 'sft' twice"),
        (lambda a, d: a + ["--judge_model", d["prompts"]], "--judge_model '"),
        (lambda a, d: [x for x in a if x not in ("--reward_model", d["reward"])] + ["--best_of_n", "4"],
         "--best_of_n needs --reward_model"),
        (lambda a, d: a + ["--prompts_split", "validation"], "has no split 'validation'"),
        (lambda a, d: a + ["--max_new_tokens", "0"], "must be at least 1"),
    ],
)  # fmt: skip
def test_bad_arguments_fail_in_one_line_before_any_model_loads(
    change, message, dirs, tmp_path, capsys, no_model_loads
):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(change(arguments(dirs, tmp_path), dirs))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("hf-rlhf evaluate: error:") and message in error, error
    assert not os.path.exists(tmp_path / "out")


def test_a_missing_path_and_a_directory_that_is_not_a_model_are_named(dirs, tmp_path, capsys, no_model_loads):
    with pytest.raises(SystemExit):
        evaluate.main(arguments(dirs, tmp_path, "--judge_model", str(tmp_path / "nowhere")))
    assert f"--judge_model '{tmp_path / 'nowhere'}' does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.main(arguments(dirs, tmp_path, "--judge_model", dirs["prompts"]))
    assert "is a directory without config.json" in capsys.readouterr().err


def test_evaluate_writes_the_report_with_win_rates_against_the_reference(dirs, tmp_path):
    report = evaluate.main(
        arguments(dirs, tmp_path, "--max_new_tokens", "4", "--best_of_n", "2", "--judge_model", dirs["sft"],
                  "--bootstrap_resamples", "50", "--num_samples_shown", "3", "--max_prompts", "5")
    )  # fmt: skip
    rows = {r["model"]: r for r in report["rows"]}
    assert list(rows) == ["sft", "sft best-of-2 (reward model)", "rl"]
    assert report["reference"] == "sft" and report["prompts"]["num_prompts"] == 5
    for name in ("sft best-of-2 (reward model)", "rl"):
        w, j = rows[name]["rm_win_rate"], rows[name]["judge_win_rate"]
        assert w["n"] == j["n"] == 5 and 0 <= w["ci_low"] <= w["mean"] <= w["ci_high"] <= 1
        assert j["mean"] == pytest.approx((j["wins"] + 0.5 * j["ties"]) / 5)
    assert rows["rl"]["kl_to_sft"] != 0.0 and rows["sft"]["kl_to_sft"] == 0.0
    with open(tmp_path / "out" / "report.json") as f:
        assert json.load(f)["rows"] == json.loads(json.dumps(report["rows"]))
    text = (tmp_path / "out" / "report.md").read_text()
    assert text.startswith("# hf_rlhf evaluation report") and "## Stages" not in text
    assert "judge win rate vs sft (95% CI)" in text and "| sft | sft best-of-2 (reward model) | rl |" in text
    assert QUESTIONS[0] in text and len(report["samples"]) == 3
    assert report["models"] == {"sft": "sft", "rl": "rl"}  # local directories by name only
