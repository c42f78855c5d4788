"""bench/ladder: the ladder table and its verdicts, and (slow) one seed of the tiny pipeline holding the ladder."""

from __future__ import annotations

import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("ladder", os.path.join(REPO, "bench", "ladder", "run.py"))
ladder = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ladder)


def report(*golds: tuple[float, float, float]) -> dict:
    names = ["base (zero-shot)", "base (3-shot)", "SFT", "SFT best-of-8 (reward model)", "RL (PPO)"]
    rows = [
        {"model": n, "gold": {"mean": m, "ci_low": lo, "ci_high": hi}}
        for n, (m, lo, hi) in zip(names, golds, strict=True)
    ]
    return {
        "rows": rows,
        "reward_model": {"gold_agreement": 0.806},
        "stages": {"reward": {"eval": {"accuracy": 0.75}}},
    }


def test_ladder_steps_and_table():
    good = report((0.07, 0.05, 0.09), (0.17, 0.13, 0.20), (0.60, 0.55, 0.65), (0.76, 0.72, 0.80), (0.78, 0.74, 0.82))
    # SFT -> best-of-N overlapping; RL below best-of-N
    bad = report((0.07, 0.05, 0.09), (0.17, 0.13, 0.20), (0.60, 0.55, 0.70), (0.68, 0.64, 0.72), (0.66, 0.62, 0.70))
    assert [(c["ordered"], c["apart"]) for c in ladder.steps(ladder.rungs(bad))] == [
        (True, True),
        (True, True),
        (True, False),
        (False, False),
    ]
    lines, holds = ladder.table("full", {42: good, 43: bad})
    assert not holds
    text = "\n".join(lines)
    assert "RL  " in text and "0.780 [0.740, 0.820]" in text and "0.720 +- 0.085 (0.660..0.780)" in text
    assert "seed 42: HOLDS" in text
    assert [line.split()[-2:] for line in lines if line.startswith("RM ")] == [["0.750", "0.750"], ["0.806", "0.806"]]
    assert "seed 43: FAILS (" in text and "SFT < best-of-N: ordered, intervals overlap" in text
    assert "best-of-N <= RL: NOT ordered" in text
    assert ladder.table("full", {42: good})[1]


def test_seeded_recipe_varies_only_the_stages_after_pretraining(tmp_path):
    recipe = ladder.seeded_recipe("qlora", str(tmp_path), 7)
    assert {n: (s.get("overrides") or {}).get("seed") for n, s in recipe.stages.items()} == {
        "pretrain": None,
        "sft": 7,
        "sample": 7,
        "reward": 7,
        "rl": 7,
    }
    assert recipe.world.seed == 0 and recipe.output_dir == str(tmp_path)


@pytest.mark.slow
def test_one_seed_of_the_tiny_pipeline_holds_the_ladder(tmp_path):
    assert ladder.main(["--seeds", "42", "--output_dir", str(tmp_path), "--check"]) == 0
