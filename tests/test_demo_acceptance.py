"""The default demo's acceptance figures, end to end (about 7 minutes on 2 cores: `make test-slow`)."""

import os

import pytest

from .conftest import RECIPES


@pytest.mark.slow
def test_default_tiny_pipeline_meets_the_acceptance_figures(tmp_path):
    from hf_rlhf.pipeline import run_pipeline
    from hf_rlhf.recipes import load_pipeline_recipe

    report = run_pipeline(load_pipeline_recipe(os.path.join(RECIPES, "tiny", "pipeline.yaml"), str(tmp_path)))
    rows = {r["model"]: r for r in report["rows"]}
    sft, rl = rows["SFT"]["gold"], rows["RL (PPO)"]["gold"]
    for base in ("base (zero-shot)", "base (3-shot)"):
        assert rows[base]["gold"]["ci_high"] < sft["ci_low"], base  # SFT above the base model, intervals apart
    best = next(r for name, r in rows.items() if name.startswith("SFT best-of"))
    assert best["gold"]["mean"] > sft["mean"]
    assert report["stages"]["reward"]["eval_accuracy"] >= 0.75
    assert sft["ci_high"] < rl["ci_low"]  # RL above SFT, intervals apart
    assert rows["RL (PPO)"]["kl_to_sft"] > 0
