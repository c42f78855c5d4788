"""The GPU check suite (`make test-gpu`): three pipelines run in this process on one GPU, and what they must show.

- `tiny_bf16`: recipes/tiny/quick.yaml, every training stage in bf16, a few PPO updates;
- `qlora_shared_base`: recipes/tiny/pipeline_qlora.yaml's SFT, comparisons, reward and shared-base PPO (policy,
  reference, value and reward on one 4-bit base) on `tiny_bf16`'s pretrained model; in the CPU smoke mode its LoRA
  variant (`lora_shared_base`), bitsandbytes 4-bit being a CUDA layout;
- `llama_135m`: the same stages after SFT on a random-weight Llama of SmolLM2-135M's shapes (a tiny one in the
  smoke mode), built from a config and saved locally: no download.

For each: every parameter and buffer of every PPO role on the device, KL 0 at initialisation, every rollout tensor
on the device (log-probabilities and what follows from them in fp32), each stage's peak memory against the dry
run's estimate, and PPO seconds per update. Sized for well under 8 minutes on one H200.
"""

from __future__ import annotations

import math
import os

import pytest

from .suite import (
    KL_TOLERANCE,
    MEMORY_TOLERANCE,
    Mode,
    PipelineRun,
    measure_pipeline,
    memory_figures,
    random_llama,
    write_recipe,
)

pytestmark = pytest.mark.gpu

RUNS = ["tiny_bf16", "qlora_shared_base", "llama_135m"]
SMOLLM2_135M_PARAMETERS = 134_515_008
FP32_FIELDS = ("logprobs", "ref_logprobs", "entropy", "kl", "advantages", "returns")  # the precision policy


@pytest.fixture(scope="module")
def tiny_bf16(mode: Mode, tmp_path_factory) -> PipelineRun:
    recipe = write_recipe(str(tmp_path_factory.mktemp("tiny_bf16") / "pipeline.yaml"), mode)
    return measure_pipeline("tiny_bf16", recipe, mode.device)


@pytest.fixture(scope="module")
def qlora_shared_base(mode: Mode, tiny_bf16: PipelineRun, tmp_path_factory) -> PipelineRun:
    pretrained = os.path.join(os.path.dirname(tiny_bf16.recipe), "run", "pretrain")
    if not os.path.isdir(pretrained):
        pytest.fail(f"needs the tiny_bf16 pipeline's pretrained model: {tiny_bf16.error}", pytrace=False)
    name = "qlora_shared_base" if mode.cuda else "lora_shared_base"
    recipe = write_recipe(
        str(tmp_path_factory.mktemp(name) / "pipeline.yaml"),
        mode,
        variant="pipeline_qlora.yaml",
        stages=["sft", "sample", "reward", "rl"],
        extra={"sft": {"model_name_or_path": pretrained}},
        quantized=mode.cuda,
    )
    return measure_pipeline(name, recipe, mode.device)


@pytest.fixture(scope="module")
def llama_135m(mode: Mode, tmp_path_factory) -> PipelineRun:
    root = tmp_path_factory.mktemp("llama_135m")
    parameters = random_llama(str(root / "random"), mode.shapes())
    recipe = write_recipe(
        str(root / "pipeline.yaml"),
        mode,
        stages=["sft", "sample", "reward", "rl"],
        extra={
            "sft": {"model_name_or_path": str(root / "random"), "max_steps": 30},
            # a model trained from random weights for a few steps ties many completions: every comparison trains
            "sample": {"num_completions": 4, "max_prompts": 80, "test_split_size": 0.0},
            "reward": {"eval_split_size": 0.0},
        },
    )
    run = measure_pipeline("llama_135m", recipe, mode.device)
    run.parameters = parameters
    return run


@pytest.fixture(scope="module", params=RUNS)
def run(request) -> PipelineRun:
    return request.getfixturevalue(request.param)


def test_process_device(mode, expected_device, figures):
    figures.update(mode=mode.name, process_device=str(mode.device))
    assert expected_device == mode.device and (mode.smoke or mode.cuda)


def test_every_role_on_device(run, mode, expected_device, figures):
    run.require()
    roles = run.ppo["roles"]
    figures.update(
        pipeline=run.name,
        device=str(expected_device),
        roles={
            role: {**r, "misplaced": r.get("misplaced", [])[:5], "misplaced_count": len(r.get("misplaced", []))}
            for role, r in roles.items()
        },
        policy_4bit_layers=run.ppo["policy_4bit_layers"],
    )
    assert {"policy", "value", "reference"} <= set(roles) and any(r.startswith("reward:") for r in roles), roles
    if run.name.endswith("shared_base"):
        assert "shared" in roles["reference"], "shared_base: the reference is the policy's base, adapters off"
    if run.name == "qlora_shared_base":
        assert run.ppo["policy_4bit_layers"] > 0, "the QLoRA policy holds no bitsandbytes 4-bit layer"
    if run.name == "llama_135m" and not mode.smoke:
        figures["parameters"] = run.parameters
        assert run.parameters == SMOLLM2_135M_PARAMETERS
    off = {role: r["misplaced"] for role, r in roles.items() if r.get("misplaced")}
    assert not off, "not on " + str(expected_device) + ": " + "; ".join(f"{k}: {v[:3]}" for k, v in off.items())


def test_kl_at_initialisation_is_zero(run, figures):
    run.require()
    direct = run.ppo["kl_direct_rollout"]
    first = run.history[0]["kl"] if run.history else None
    figures.update(pipeline=run.name, tolerance=KL_TOLERANCE, direct_rollout=direct, first_update_kl=first)
    assert direct["response_tokens"] > 0
    assert direct["max_abs_token_logprob_diff"] <= KL_TOLERANCE, direct
    assert first is not None and abs(first) <= KL_TOLERANCE, f"first PPO update's kl metric: {first}"


def test_rollout_tensors_on_device(run, expected_device, figures):
    run.require()
    figures.update(pipeline=run.name, devices=run.ppo["rollout_devices"], off_device=run.ppo["rollout_off_device"])
    assert run.ppo["rollout_devices"], "the rollout held no tensor"
    assert not run.ppo["rollout_off_device"], (
        f"rollout tensors not on {expected_device}: {run.ppo['rollout_off_device']}"
    )


def test_rollout_statistics_in_fp32(run, figures):
    run.require()
    dtypes = run.ppo["rollout_dtypes"]
    figures.update(pipeline=run.name, dtypes=dtypes)
    wrong = {f: dtypes.get(f) for f in FP32_FIELDS if dtypes.get(f) != "float32"}
    assert not wrong, f"expected float32: {wrong}"


def test_stage_memory_against_estimate(run, mode, figures):
    """Each stage's peak is at most (1 + MEMORY_TOLERANCE) x the dry run's estimate, and at least half the weights
    it estimates: every stage holds its models on the GPU throughout, so a lower peak means one stayed off it."""
    run.require()
    stages = {name: memory_figures(stage) for name, stage in run.stages.items()}
    figures.update(pipeline=run.name, tolerance=MEMORY_TOLERANCE, pipeline_seconds=run.seconds, stages=stages)
    assert all(s.get("estimate", True) is not None for s in stages.values()), "a stage without a dry-run estimate"
    if not mode.cuda:
        return  # the smoke mode checks the estimates exist; there is no allocator peak to hold them against
    over = {
        name: s["ratio_measured_to_estimate"]
        for name, s in stages.items()
        if s["measured_peak_mib"] is None or s["ratio_measured_to_estimate"] > 1 + MEMORY_TOLERANCE
    }
    off = {
        name: (s["measured_peak_mib"], s["estimated_weights_mib"])
        for name, s in stages.items()
        if s["measured_peak_mib"] is not None and s["measured_peak_mib"] < 0.5 * s["estimated_weights_mib"]
    }
    assert not over, f"measured peak / dry-run estimate above {1 + MEMORY_TOLERANCE:g}: {over}"
    assert not off, f"peak below half the estimated weights (a model off the GPU?), (peak, weights) MiB: {off}"


def test_ppo_seconds_per_update(run, figures):
    run.require()
    timing = run.seconds_per_update()
    figures.update(pipeline=run.name, rl_stage_seconds=run.stages.get("rl", {}).get("seconds"), **timing)
    assert timing["updates"] >= 2, "too few PPO updates to time"
    assert all(math.isfinite(s) and s > 0 for s in timing["seconds_per_update"])
