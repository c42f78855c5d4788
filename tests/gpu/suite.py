"""What the GPU check suite runs and measures: pipeline recipes built from the tiny ones, each stage's peak memory
against the dry run's estimate, and what the PPO trainer holds and produces before its first update.

Everything goes through public entry points: `hf_rlhf.pipeline.run_pipeline` runs the stages in this process (so
`torch.cuda.max_memory_allocated` sees them; `run_stage` is wrapped to reset the peak before each stage),
`hf_rlhf.plan.pipeline.plan_pipeline` gives the dry run's estimate for the very same recipe file, and
`PPOTrainer.train` is wrapped to inspect the trainer (`inspect_trainer`) before it trains.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from ..conftest import RECIPES

TINY = os.path.join(RECIPES, "tiny")
TRAINED = ("pretrain", "sft", "reward", "rl")  # the stages with a TrainingArguments (bf16, use_cpu)
# The dry run calls its figure "an estimate (+-20%)" (hf_rlhf/plan/memory.py): a peak above it by more than that
# would make a "fits" verdict wrong within the margin the dry run itself advertises.
MEMORY_TOLERANCE = 0.20
KL_TOLERANCE = 1e-6  # policy and reference are the same weights at initialisation: KL 0 up to float noise
QUANTIZED = ("load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "use_bnb_nested_quant")

# SmolLM2-135M's shapes (134,515,008 parameters), random weights; the smoke mode's stand-in is tiny.
SMOLLM2_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    tie_word_embeddings=True,
    max_position_embeddings=2048,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
)
SMOKE_SHAPES = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=1024,  # larger than the tokenizer, as the 135M shapes' 49152 is
    tie_word_embeddings=True,
    max_position_embeddings=256,
)

# The smoke mode: a few steps of small batches, and a smaller model than the tiny recipe's for pretraining (CPU
# autocast in bf16 is slow on a hidden size of 128 already).
SMOKE_OVERRIDES: dict[str, dict[str, Any]] = {
    "pretrain": {
        "max_steps": 6,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 8,
        "model_config_kwargs": {k: v for k, v in SMOKE_SHAPES.items() if k != "vocab_size"},
    },
    "sft": {"max_steps": 6, "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8},
    "sample": {"max_prompts": 24, "max_new_tokens": 8},
    "reward": {"max_steps": 2, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 8},
    "rl": {"max_steps": 2, "max_new_tokens": 8, "per_device_train_batch_size": 4, "num_ppo_epochs": 2},
}


@dataclass(frozen=True)
class Mode:
    """How the suite runs: on CUDA at the sizes below, or the CPU smoke mode (same code, smallest sizes)."""

    device: torch.device
    smoke: bool

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def name(self) -> str:
        return run_mode(self.device.type == "cuda", self.smoke)

    def stage_overrides(self) -> dict[str, dict[str, Any]]:
        """bf16 for every training stage, a few PPO updates to time; in smoke mode far fewer steps, on the CPU."""
        overrides = {name: {"bf16": True} for name in TRAINED}
        overrides["rl"]["max_steps"] = 4
        if self.smoke:
            for name, values in SMOKE_OVERRIDES.items():
                overrides.setdefault(name, {}).update(values)
        if not self.cuda:  # TrainingArguments refuses bf16 without a GPU unless told to run on the CPU
            for name in TRAINED:
                overrides[name]["use_cpu"] = True
        return overrides

    def world(self) -> dict[str, Any]:
        return {"num_documents": 200, "num_demonstrations": 100, "num_eval_prompts": 8} if self.smoke else {}

    def evaluation(self) -> dict[str, Any]:
        return (
            {"max_new_tokens": 8, "best_of_n": 2, "bootstrap_resamples": 50, "num_samples_shown": 1}
            if self.smoke
            else {}
        )

    def shapes(self) -> dict[str, Any]:
        return SMOKE_SHAPES if self.smoke else SMOLLM2_135M


def run_mode(cuda: bool, smoke: bool) -> str:
    """The report's `mode`: cuda, cuda-smoke, cpu-smoke, or skipped (no CUDA)."""
    if smoke:
        return "cuda-smoke" if cuda else "cpu-smoke"
    return "cuda" if cuda else "skipped (no CUDA)"


def read_yaml(path: str) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


def write_recipe(
    path: str,
    mode: Mode,
    *,
    variant: str | None = None,
    stages: list[str] | None = None,
    extra: dict[str, dict[str, Any]] | None = None,
    quantized: bool = True,
) -> str:
    """A pipeline recipe file: recipes/tiny/quick.yaml's stages (or `stages`), each with the overrides of the tiny
    pipeline `variant` (e.g. pipeline_qlora.yaml), then quick's, the mode's, and `extra`. `quantized=False` drops
    the bitsandbytes keys (the LoRA variant of a QLoRA recipe). Stage recipes are named by absolute path."""
    quick = read_yaml(os.path.join(TINY, "quick.yaml"))
    base = read_yaml(os.path.join(TINY, variant))["stages"] if variant else {}
    layers = [mode.stage_overrides(), extra or {}]
    recipe: dict[str, Any] = {
        "output_dir": os.path.join(os.path.dirname(path), "run"),
        "world": {**quick["world"], **mode.world()},
        "evaluation": {**quick["evaluation"], **mode.evaluation()},
        "stages": {},
    }
    for name in stages or list(quick["stages"]):
        overrides = {
            **((base.get(name) or {}).get("overrides") or {}),
            **(quick["stages"][name].get("overrides") or {}),
        }
        for layer in layers:
            overrides.update(layer.get(name) or {})
        if not quantized:
            overrides = {k: v for k, v in overrides.items() if k not in QUANTIZED}
        recipe["stages"][name] = {
            "recipe": os.path.join(TINY, quick["stages"][name]["recipe"]),
            "overrides": copy.deepcopy(overrides),  # YAML merge keys share lists, which safe_dump writes as aliases
        }
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(recipe, f, sort_keys=False)
    return path


def random_llama(directory: str, shapes: dict[str, Any]) -> int:
    """A random-weight Llama of `shapes` with a tokenizer trained on the tiny world, saved as a stage would save it
    (the SFT stage's starting point); returns its parameter count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_rlhf.data.world import TinyWorld
    from hf_rlhf.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(TinyWorld(0).documents(300), vocab_size=512)
    config = LlamaConfig(
        **shapes,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------ the PPO trainer
def on_device(tensor: torch.Tensor, device: torch.device) -> bool:
    return tensor.device.type == device.type and (device.index is None or tensor.device.index == device.index)


def role_models(trainer) -> dict[str, nn.Module]:
    """Every model PPO holds, by role: policy and value (`trainer.model`), the reference when it is a model of its
    own (else it is the policy's base with the adapters disabled) and each reward function holding a model."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    roles = {"policy": model.policy, "value": model.value_model}
    if trainer.ref_policy is not None:
        roles["reference"] = trainer.ref_policy
    for name, fn in zip(trainer.reward_names, trainer.reward_funcs, strict=True):
        if isinstance(getattr(fn, "model", None), nn.Module):
            roles[f"reward:{name}"] = fn.model
    return roles


def misplaced(module: nn.Module, device: torch.device) -> list[str]:
    """`name (device)` of every parameter and buffer of `module` that is not on `device`."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return [f"{name} ({t.device})" for name, t in tensors if not on_device(t, device)]


def rollout_tensors(rollout) -> dict[str, torch.Tensor]:
    """Every tensor of a `Rollout`, its `score_parts` included, by field name."""
    out = {}
    for f in dataclasses.fields(rollout):
        value = getattr(rollout, f.name)
        if isinstance(value, torch.Tensor):
            out[f.name] = value
        elif isinstance(value, dict):
            out.update({f"{f.name}[{k}]": v for k, v in value.items() if isinstance(v, torch.Tensor)})
    return out


def inspect_trainer(trainer, device: torch.device) -> dict[str, Any]:
    """Placement of every role, then one rollout of the first update's prompts before any update: where its
    tensors are, their dtypes, and the KL between policy and reference (0 at initialisation)."""
    roles = role_models(trainer)
    placement = {
        role: {"parameters": sum(1 for _ in m.parameters()), "misplaced": misplaced(m, device)}
        for role, m in roles.items()
    }
    if trainer.ref_policy is None:
        placement["reference"] = {"shared": "the policy's base with its adapters disabled"}
    prompts = next(trainer.prompt_batches())
    rollout = trainer.rollout(prompts)
    mask = rollout.response_mask.float()
    diff = ((rollout.logprobs - rollout.ref_logprobs) * mask).float()
    kl = {
        "max_abs_token_logprob_diff": diff.abs().max().item(),
        "mean_sequence_kl": (diff.sum(1).mean().item()),
        "response_tokens": int(mask.sum().item()),
    }
    rollout = trainer.compute_advantages(trainer.score(rollout))
    tensors = rollout_tensors(rollout)
    return {
        "roles": placement,
        "policy_4bit_layers": sum(1 for m in roles["policy"].modules() if type(m).__name__ == "Linear4bit"),
        "kl_direct_rollout": kl,
        "rollout_devices": {name: str(t.device) for name, t in tensors.items()},
        "rollout_off_device": sorted(name for name, t in tensors.items() if not on_device(t, device)),
        "rollout_dtypes": {name: str(t.dtype).removeprefix("torch.") for name, t in tensors.items()},
    }


# ------------------------------------------------------------------------------------------ a measured run
@dataclass
class PipelineRun:
    """What one pipeline run measured: per stage its peak memory and seconds, the dry run's estimate, and what
    the PPO trainer held (`inspect_trainer`) and logged."""

    name: str
    recipe: str
    device: torch.device
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    ppo: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    parameters: int | None = None  # of the model the pipeline starts from, when the suite built it

    def require(self) -> None:
        """Fail the calling check when the run itself failed (its error is each check's message)."""
        if self.error:
            pytest.fail(f"the {self.name} pipeline failed: {self.error}", pytrace=False)

    def seconds_per_update(self) -> dict[str, Any]:
        seconds = [h["seconds_per_update"] for h in self.history]
        steady = seconds[1:] or seconds  # the first update also warms up the kernels
        return {
            "updates": len(seconds),
            "seconds_per_update": [round(s, 4) for s in seconds],
            "median_after_first": round(statistics.median(steady), 4) if steady else None,
        }


def _memory_start() -> int:
    gc.collect()
    if not torch.cuda.is_available():
        return 0
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


@contextmanager
def measured(run: PipelineRun):
    """While it is open, each stage the pipeline runs records its peak memory and time in `run.stages`, and the
    PPO trainer is inspected before it trains."""
    from hf_rlhf import pipeline
    from hf_rlhf.ppo.trainer import PPOTrainer

    run_stage, train = pipeline.run_stage, PPOTrainer.train

    def measured_stage(recipe, name, *args, **kwargs):
        before, start = _memory_start(), time.perf_counter()
        try:
            return run_stage(recipe, name, *args, **kwargs)
        finally:
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.synchronize()
            run.stages.setdefault(name, {}).update(
                seconds=round(time.perf_counter() - start, 2),
                allocated_before_bytes=before if cuda else None,
                peak_bytes=torch.cuda.max_memory_allocated() if cuda else None,
            )

    def inspected_train(self, *args, **kwargs):
        run.ppo = inspect_trainer(self, run.device)
        history = train(self, *args, **kwargs)
        run.history = list(history)
        return history

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "run_stage", measured_stage)
        patch.setattr(PPOTrainer, "train", inspected_train)
        yield


def measure_pipeline(name: str, recipe_path: str, device: torch.device) -> PipelineRun:
    """Plan the recipe (the dry run's estimates, per stage), then run it in this process, measured. A failure is
    kept in `run.error` so that each check reports it."""
    from hf_rlhf.pipeline import run_pipeline as run_recipe
    from hf_rlhf.plan.pipeline import plan_pipeline
    from hf_rlhf.recipes import load_pipeline_recipe

    run = PipelineRun(name, recipe_path, device)
    start = time.perf_counter()
    try:
        for stage in plan_pipeline(recipe_path).stages:
            run.stages[stage.stage] = {"estimate": stage.memory}
        with measured(run):
            run_recipe(load_pipeline_recipe(recipe_path))
    except Exception as e:  # every check of this pipeline fails with it
        run.error = f"{type(e).__name__}: {e}"
    run.seconds = round(time.perf_counter() - start, 2)
    return run


def memory_figures(stage: dict[str, Any]) -> dict[str, Any]:
    """A stage's measured peak against its estimate: the ratio to the estimate's total, and to its formulas alone
    (the total without the 1 GiB allowed for the CUDA context, which `max_memory_allocated` never counts)."""
    estimate, peak = stage.get("estimate"), stage.get("peak_bytes")
    mib = 2**20
    out: dict[str, Any] = {"seconds": stage.get("seconds"), "measured_peak_mib": peak and round(peak / mib, 2)}
    if estimate is None:
        return {**out, "estimate": None}
    formulas = estimate.total - estimate.overhead
    out.update(
        estimated_total_mib=round(estimate.total / mib, 2),
        estimated_without_overhead_mib=round(formulas / mib, 2),
        estimate_parts_mib={
            p: round(getattr(estimate, p) / mib, 2)
            for p in ("weights", "gradients", "optimizer", "activations", "overhead")
        },
        estimated_weights_mib=round(estimate.weights / mib, 2),
        ratio_measured_to_estimate=round(peak / estimate.total, 4) if peak is not None else None,
        ratio_measured_to_estimate_without_overhead=round(peak / formulas, 4)
        if peak is not None and formulas
        else None,
    )
    return out
