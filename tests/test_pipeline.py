"""The quick preset of the tiny pipeline end to end: pretrain then SFT, the manifests, the report, reuse."""

import json
import math
import os

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_rlhf.manifest import MANIFEST, IncompleteStageError, require_complete
from hf_rlhf.pipeline import run_pipeline
from hf_rlhf.recipes import load_pipeline_recipe
from hf_rlhf.stages import STAGES

from .conftest import RECIPES


def quick_recipe():
    return load_pipeline_recipe(os.path.join(RECIPES, "tiny", "quick.yaml"), "unused")


def test_outputs_load_with_auto_classes_and_generate(quick_pipeline):
    out, _ = quick_pipeline
    for stage in ("pretrain", "sft"):
        path = os.path.join(out, stage)
        assert os.path.isfile(os.path.join(path, "model.safetensors"))
        assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in os.listdir(path))  # no pickles
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        assert tokenizer.pad_token_id != tokenizer.eos_token_id
        inputs = tokenizer("What color is the fox?", return_tensors="pt")
        ids = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        assert ids.shape[1] > inputs["input_ids"].shape[1]


def test_sft_changed_the_pretrained_weights(quick_pipeline):
    out, _ = quick_pipeline
    base = AutoModelForCausalLM.from_pretrained(os.path.join(out, "pretrain")).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(os.path.join(out, "sft")).state_dict()
    assert any(not torch.equal(base[k], tuned[k]) for k in base)


def test_manifests_record_stage_inputs_and_completion(quick_pipeline):
    out, _ = quick_pipeline
    pre = require_complete(os.path.join(out, "pretrain"))
    sft = require_complete(os.path.join(out, "sft"))
    assert pre["stage"] == "pretrain" and sft["stage"] == "sft"
    assert sft["inputs"]["model"] == os.path.join(out, "pretrain")
    assert sft["inputs"]["dataset"]["fingerprint"]
    assert pre["metrics"]["perplexity"] > 1 and "eval_loss" in sft["metrics"]
    assert pre["configs"]["training"]["max_steps"] == quick_recipe().stages["pretrain"]["overrides"]["max_steps"]
    assert "hub_token" not in json.dumps(pre)


def test_report_has_every_row_with_intervals_and_samples(quick_pipeline):
    out, report = quick_pipeline
    assert [r["model"] for r in report["rows"]] == [
        "base (zero-shot)",
        "base (3-shot)",
        "SFT",
        "SFT best-of-3 (reward model)",
        "RL (PPO)",
    ]
    rl_row = report["rows"][-1]
    assert math.isfinite(rl_row["kl_to_sft"]) and report["rows"][2]["kl_to_sft"] == 0.0
    for row in report["rows"]:
        g = row["gold"]
        assert 0 <= g["ci_low"] <= g["mean"] <= g["ci_high"] <= 1 and g["n"] == quick_recipe().world.num_eval_prompts
    assert len(report["samples"]) == 2 and set(report["samples"][0]) >= {
        "prompt",
        "base (zero-shot)",
        "base (3-shot)",
        "SFT",
    }
    with open(os.path.join(out, "report.json")) as f:
        assert json.load(f)["rows"] == report["rows"]
    text = open(os.path.join(out, "report.md")).read()
    assert "| SFT |" in text and "95% interval" in text


def small_recipe(tmp_path) -> str:
    """The quick preset made smaller still (a tiny world, a few steps per stage), for a private run to rerun."""
    with open(os.path.join(RECIPES, "tiny", "quick.yaml")) as f:
        raw = yaml.safe_load(f)
    for spec in raw["stages"].values():
        spec["recipe"] = os.path.join(RECIPES, "tiny", spec["recipe"])
    raw["world"].update(num_documents=120, num_demonstrations=60, num_eval_prompts=4)
    for stage in ("pretrain", "sft"):
        raw["stages"][stage]["overrides"]["max_steps"] = 3
    raw["stages"]["reward"]["overrides"]["max_steps"] = 1
    raw["stages"]["rl"]["overrides"].update(max_steps=1, max_new_tokens=6)
    raw["evaluation"].update(max_new_tokens=6, best_of_n=2, bootstrap_resamples=20)
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_rerun_skips_finished_stages_and_reruns_unfinished(tmp_path, capsys):
    # A private run: this test deletes and reruns stages, which the shared quick_pipeline must never see.
    out = str(tmp_path / "run")
    recipe = load_pipeline_recipe(small_recipe(tmp_path), out)
    run_pipeline(recipe)
    capsys.readouterr()
    mtime = os.path.getmtime(os.path.join(out, "pretrain", "model.safetensors"))
    # Simulate an SFT run that died before its manifest was written: it must be rerun, never handed on.
    os.remove(os.path.join(out, "sft", MANIFEST))
    with pytest.raises(IncompleteStageError):
        require_complete(os.path.join(out, "sft"))
    run_pipeline(recipe)
    printed = capsys.readouterr().out
    assert "pretrain: already complete" in printed and "[hf-rlhf] sft: hf-rlhf sft" in printed
    assert os.path.getmtime(os.path.join(out, "pretrain", "model.safetensors")) == mtime
    require_complete(os.path.join(out, "sft"))
    # SFT was rerun, so every stage that reads the SFT model was rerun after it, with the new SFT model
    for stage in ("sample", "reward", "rl"):
        assert f"[hf-rlhf] {stage}: hf-rlhf {stage}" in printed, stage
    # A third run has nothing left to do: every stage is skipped and no stage's output is written again.
    outputs = [os.path.join(out, s, "model.safetensors") for s in STAGES if s != "sample"]
    outputs.append(os.path.join(out, "sample", "comparisons_train.jsonl"))
    stamps = [os.path.getmtime(path) for path in outputs]
    run_pipeline(recipe)
    again = capsys.readouterr().out
    assert all(f"{stage}: already complete" in again for stage in STAGES)
    assert not any(f"[hf-rlhf] {stage}: hf-rlhf {stage}" in again for stage in STAGES), again
    assert [os.path.getmtime(path) for path in outputs] == stamps


def test_report_table_rows_have_as_many_cells_as_the_header(quick_pipeline):
    out, _ = quick_pipeline
    lines = open(os.path.join(out, "report.md")).read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| model | gold score"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    assert "KL to SFT" in table[0] and "reward model score" in table[0]
    assert {line.count("|") for line in table} == {table[0].count("|")}
