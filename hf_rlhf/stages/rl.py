"""Stage 4: reinforcement learning against the reward model, with a KL penalty to the SFT model.

`algorithm: ppo` (default) runs hf_rlhf's own PPO trainer (`hf_rlhf.ppo`): policy = the SFT model, reference = a
frozen copy of it, value model initialised from the reward model. `algorithm: grpo | rloo` configure TRL's
`GRPOTrainer` / `RLOOTrainer` with the same inputs: the reward model and any reward functions become TRL reward
functions. Prompts are text or conversations (TRL's prompt-only format). The RL model is deployable.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from transformers import set_seed
from trl import ModelConfig, TrlParser

from ..configs import RL_CONFIGS, DataArguments, RLArguments
from ..data.formats import DataValidationError, dataset_fingerprint, load_stage_dataset
from ..manifest import finish_stage, read_manifest, start_stage
from ..modeling import (
    is_quantized,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    peft_config_for,
    resolve_model_path,
    trainable_parameters,
)
from ..recipes import RecipeError, parse_stage_args
from ..resilience import resilient
from ..reward.scorer import RewardModelScorer, resolve_reward_func

logger = logging.getLogger(__name__)


def algorithm_of(argv: list[str]) -> str:
    """The `algorithm` of a command line (or its --config recipe), read before choosing the config class."""
    from ..recipes import load_yaml_mapping

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--algorithm")
    known, _ = pre.parse_known_args(argv)
    algorithm = known.algorithm or (load_yaml_mapping(known.config).get("algorithm") if known.config else None)
    algorithm = algorithm or "ppo"
    if algorithm not in RL_CONFIGS:
        raise RecipeError(f"algorithm must be one of {sorted(RL_CONFIGS)}, got {algorithm!r}")
    return algorithm


def arguments(algorithm: str | None = None) -> tuple[type, ...]:
    """The dataclasses of this stage for `algorithm` (default ppo), in the order `run` takes them."""
    algorithm = algorithm or "ppo"
    if algorithm not in RL_CONFIGS:
        raise RecipeError(f"algorithm must be one of {sorted(RL_CONFIGS)}, got {algorithm!r}")
    return (DataArguments, RLArguments, RL_CONFIGS[algorithm], ModelConfig)


def make_parser(prog: str | None = None, algorithm: str = "ppo") -> TrlParser:
    return TrlParser(arguments(algorithm), prog=prog)


def reward_functions(
    rl_args: RLArguments, training_args, model_args: ModelConfig, tokenizer
) -> tuple[list, list[str], list[float], dict | None]:
    """The reward model (as a function) and named reward functions, with names, weights and the RM's stats.

    The reward model is loaded with the stage's precision and quantization (a 4-bit policy gets a 4-bit reward
    model); PPO's `shared_base` layout replaces it by an adapter of the policy's base (see `run_ppo`).
    """
    funcs, names, stats = [], [], None
    if rl_args.reward_model_path:
        reward_dir = resolve_model_path(rl_args.reward_model_path, "reward model")  # a Hub id: its snapshot
        if not getattr(training_args, "shared_base", False):
            model = load_reward_model(
                rl_args.reward_model_path, trust_remote_code=training_args.trust_remote_code, model_args=model_args
            )
            funcs.append(
                RewardModelScorer(model.eval().requires_grad_(False), load_tokenizer(rl_args.reward_model_path))
            )
        else:
            funcs.append(None)  # the shared base's reward adapter, made with the policy
        names.append("reward_model")
        manifest = read_manifest(reward_dir) or {}
        stats = manifest.get("metrics", {}).get("reward_centring")
    for name in rl_args.reward_funcs or []:
        try:
            funcs.append(resolve_reward_func(name, rl_args.world_seed))
        except ValueError as e:
            raise RecipeError(str(e)) from e
        names.append(name.split(":")[-1])
    if not funcs:
        raise RecipeError("rl needs `reward_model_path` and/or `reward_funcs`")
    weights = list(training_args.reward_weights) if training_args.reward_weights else [1.0] * len(funcs)
    if len(weights) != len(funcs):
        raise RecipeError(f"reward_weights has {len(weights)} entries for {len(funcs)} rewards ({', '.join(names)})")
    return funcs, names, weights, stats


def ppo_models(policy, tokenizer, rl_args: RLArguments, training_args, model_args: ModelConfig, funcs: list):
    """(policy, reference, value model) for PPO in the recipe's layout; fills in the shared reward adapter.

    Full finetuning: a frozen copy of the SFT model is the reference, the value model starts from the reward model.
    LoRA: the reference is the policy with its adapter disabled (one base). `shared_base`: the value and reward
    models are adapters of that base too (`hf_rlhf.ppo.roles`).
    """
    from peft import get_peft_model

    from ..ppo.roles import check_shared_base, shared_roles

    peft_config = peft_config_for(model_args)
    quantized = is_quantized(policy)
    if quantized and peft_config is None:
        raise RecipeError("a 4/8-bit policy cannot be trained in full: set `use_peft: true` (QLoRA)")
    value_path = rl_args.value_model_path or rl_args.reward_model_path
    if training_args.shared_base:
        if peft_config is None or not rl_args.reward_model_path or rl_args.value_model_path:
            raise RecipeError("shared_base needs use_peft, a LoRA `reward_model_path` and no `value_model_path`")
        try:
            check_shared_base(model_args.model_name_or_path, rl_args.reward_model_path)
        except ValueError as e:
            raise RecipeError(str(e)) from e
        policy = get_peft_model(policy, peft_config)
        value_model, reward_model = shared_roles(policy, rl_args.reward_model_path)
        funcs[0] = RewardModelScorer(reward_model, tokenizer)
        return policy, None, value_model
    if not value_path:
        raise RecipeError("ppo needs `value_model_path` or `reward_model_path` to initialise the value model")
    value_model = load_reward_model(
        value_path, trust_remote_code=training_args.trust_remote_code, model_args=model_args
    )
    value_model.config.pad_token_id = tokenizer.pad_token_id
    if peft_config is None:
        ref_policy = load_causal_lm(model_args, tokenizer=tokenizer, trust_remote_code=training_args.trust_remote_code)
        return policy, ref_policy, value_model
    value_model = get_peft_model(value_model, peft_config_for(model_args, "value"))
    return get_peft_model(policy, peft_config), None, value_model


def run_ppo(policy, tokenizer, train, rl_args, training_args, model_args, rewards) -> tuple[Any, dict[str, Any]]:
    from ..ppo.plots import plot_training_curves
    from ..ppo.trainer import PPOTrainer

    funcs, names, weights, stats = rewards
    policy, ref_policy, value_model = ppo_models(policy, tokenizer, rl_args, training_args, model_args, funcs)
    trainer = PPOTrainer(
        training_args, policy, ref_policy, value_model, tokenizer, train, funcs, weights, names, stats
    )
    trainable, total = trainable_parameters(trainer.model)
    logger.info("PPO trains %d of %d parameters (%.2f%%)", trainable, total, 100 * trainable / max(total, 1))
    history = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        plot_training_curves(history, os.path.join(training_args.output_dir, "training_curves.png"))
    last = history[-max(1, len(history) // 10) :]  # the last tenth of the updates
    metrics = {f"final_{k}": sum(h[k] for h in last) / len(last) for k in last[0] if k != "step"}
    metrics.update(updates=len(history), trainable_parameters=trainable, total_parameters=total)
    return trainer, {"metrics": metrics, "history": history}


def run_trl(algorithm, policy, tokenizer, train, rl_args, training_args, model_args, rewards):
    from trl import GRPOTrainer, RLOOTrainer

    funcs, names, weights, _ = rewards
    training_args.reward_weights = weights
    trainer_cls = resilient(GRPOTrainer if algorithm == "grpo" else RLOOTrainer)  # see hf_rlhf.resilience
    trainer = trainer_cls(
        model=policy,
        reward_funcs=[trl_reward(f, n) for f, n in zip(funcs, names, strict=True)],
        args=training_args,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=peft_config_for(model_args),
    )
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(training_args.output_dir)
    history = [h for h in trainer.state.log_history if "reward" in h]
    return trainer, {
        "metrics": {"train_loss": result.training_loss, "updates": trainer.state.global_step},
        "history": history,
    }


def trl_reward(fn, name: str):
    """Our `f(prompts, completions)` as a TRL reward function `f(prompts, completions, **kwargs)`."""

    def reward(prompts, completions, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return fn(prompts, texts)

    reward.__name__ = name
    return reward


def run(data_args: DataArguments, rl_args: RLArguments, training_args, model_args: ModelConfig) -> dict[str, Any]:
    """Train the policy with the chosen algorithm; save it with its tokenizer, curves and manifest."""
    if not model_args.model_name_or_path or not training_args.output_dir:
        raise RecipeError("rl needs `model_name_or_path` (the SFT model) and `output_dir`")
    set_seed(training_args.seed)
    data = load_stage_dataset(data_args, seed=training_args.seed)
    train = data["train"]
    if "prompt" not in train.column_names:
        raise DataValidationError(
            f"dataset '{data_args.dataset_name}': expected a 'prompt' column (prompt-only format), "
            f"found {train.column_names}"
        )
    resolve_model_path(model_args.model_name_or_path)
    tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=training_args.trust_remote_code)
    if rl_args.algorithm != "ppo" and getattr(training_args, "shared_base", False):
        raise RecipeError("shared_base is a PPO layout")
    rewards = reward_functions(rl_args, training_args, model_args, tokenizer)
    start_stage(training_args.output_dir, training_args)  # takes over push_to_hub: one push, when complete

    policy = load_causal_lm(model_args, tokenizer=tokenizer, trust_remote_code=training_args.trust_remote_code)
    if rl_args.algorithm == "ppo":
        trainer, result = run_ppo(policy, tokenizer, train, rl_args, training_args, model_args, rewards)
        main_process = trainer.accelerator.is_main_process
    else:
        trainer, result = run_trl(
            rl_args.algorithm, policy, tokenizer, train, rl_args, training_args, model_args, rewards
        )
        main_process = trainer.is_world_process_zero()
    if not main_process:
        return {}
    return finish_stage(
        training_args.output_dir,
        "rl",
        configs={"data": data_args, "rl": rl_args, "training": training_args, "model": model_args},
        inputs={
            "model": model_args.model_name_or_path,
            "reward_model": rl_args.reward_model_path,
            "reward_funcs": rl_args.reward_funcs or [],
            "dataset": {"name": data_args.dataset_name, "fingerprint": dataset_fingerprint(train)},
        },
        metrics={"algorithm": rl_args.algorithm, **result["metrics"]},
        extra={"history": result["history"]},
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    algorithm = algorithm_of(argv)
    data_args, rl_args, training_args, model_args = parse_stage_args(make_parser("hf-rlhf rl", algorithm), argv)
    return run(data_args, rl_args, training_args, model_args)
