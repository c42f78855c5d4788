"""The PPO half of the RL stage: its models in the recipe's layout, the PPO-ptx data, and the training run."""

from __future__ import annotations

import logging
import os
from typing import Any

from trl import ModelConfig

from ..configs import DataArguments, RLArguments
from ..data.loading import load_stage_dataset, resolve_dataset
from ..modeling import (
    is_quantized,
    load_causal_lm,
    load_reward_model,
    peft_config_for,
    resolve_model_path,
    trainable_parameters,
)
from ..recipes import RecipeError
from ..reward.scorer import RewardModelScorer
from ..storage import check_space, writing
from .rl_rewards import final_metrics

logger = logging.getLogger(__name__)


def check_ptx(rl_args: RLArguments, training_args) -> None:
    """PPO-ptx needs both `ptx_coef > 0` (PPO's config) and `ptx_dataset_name` (the stage's), and PPO."""
    coef = getattr(training_args, "ptx_coef", 0.0)
    if rl_args.ptx_dataset_name and rl_args.algorithm != "ppo":
        raise RecipeError("ptx_dataset_name (PPO-ptx) is an `algorithm: ppo` option")
    if bool(rl_args.ptx_dataset_name) != (coef > 0):
        raise RecipeError(
            f"PPO-ptx needs both `ptx_coef` > 0 and `ptx_dataset_name`; got ptx_coef {coef:g} and "
            f"ptx_dataset_name {rl_args.ptx_dataset_name!r}"
        )


def ptx_batches(rl_args: RLArguments, training_args, tokenizer, seed: int):
    """The PPO-ptx rows (`hf_rlhf.ppo.ptx.PtxBatches`) read with the stage loader, every row encoded and checked
    before any model loads, and the dataset's provenance for the manifest; `(None, None)` without PPO-ptx."""
    from ..ppo.ptx import PtxBatches

    if not rl_args.ptx_dataset_name:
        return None, None
    data_args = DataArguments(
        dataset_name=rl_args.ptx_dataset_name, dataset_train_split=rl_args.ptx_dataset_split, eval_split_size=0.0
    )
    rows = load_stage_dataset(data_args, seed=seed)["train"]
    where = f"ptx_dataset_name '{rl_args.ptx_dataset_name}', split '{rl_args.ptx_dataset_split}'"
    try:
        batches = PtxBatches(tokenizer, rows, training_args.ptx_max_length, seed)
    except ValueError as e:
        raise RecipeError(f"{where}: {e}") from e
    logger.info("PPO-ptx: %d rows of %s, weight %g", len(batches.rows), where, training_args.ptx_coef)
    return batches, resolve_dataset(data_args)


def ppo_models(
    policy, tokenizer, rl_args: RLArguments, training_args, model_args: ModelConfig, funcs: list, value_init: dict
):
    """(policy, reference, value model) for PPO in the recipe's layout; fills in the shared reward adapter.

    Full finetuning: a frozen copy of the SFT model is the reference, the value model starts from `value_init`
    (the reward model when it shares the policy's tokenizer, else the policy with a new head: `tokenizer_plan`).
    LoRA: the reference is the policy with its adapter disabled (one base). `shared_base`: the value and reward
    models are adapters of that base too (`hf_rlhf.ppo.roles`).
    """
    from peft import get_peft_model

    from ..ppo.roles import check_shared_base, shared_roles

    peft_config = peft_config_for(model_args)
    quantized = is_quantized(policy)
    if quantized and peft_config is None:
        raise RecipeError("a 4/8-bit policy cannot be trained in full: set `use_peft: true` (QLoRA)")
    if training_args.shared_base:
        try:
            check_shared_base(model_args.model_name_or_path, rl_args.reward_model_path)
        except ValueError as e:
            raise RecipeError(str(e)) from e
        policy = get_peft_model(policy, peft_config)
        value_model, reward_model = shared_roles(policy, rl_args.reward_model_path)
        reward_dir = resolve_model_path(rl_args.reward_model_path, "reward model")
        funcs[0] = RewardModelScorer(reward_model, tokenizer, directory=reward_dir)
        return policy, None, value_model
    value_path = value_init["path"]  # the reward model, value_model_path, or the policy (`tokenizer_plan`)
    value_model = load_reward_model(
        value_path,
        trust_remote_code=training_args.trust_remote_code,
        model_args=model_args,
        require_trained_head=False,
        what=f"value model (from {value_init['from']})",
    )
    if value_model.get_input_embeddings().num_embeddings < len(tokenizer):  # from a policy whose PAD was added
        value_model.resize_token_embeddings(len(tokenizer))
    value_model.config.pad_token_id = tokenizer.pad_token_id
    if peft_config is None:
        ref_policy = load_causal_lm(model_args, tokenizer=tokenizer, trust_remote_code=training_args.trust_remote_code)
        return policy, ref_policy, value_model
    value_model = get_peft_model(value_model, peft_config_for(model_args, "value"))
    return get_peft_model(policy, peft_config), None, value_model


def run_ppo(
    policy, tokenizer, train, rl_args, training_args, model_args, rewards, value_init, completions, ptx=None
) -> tuple[Any, dict[str, Any]]:
    """Train with hf_rlhf's PPO trainer and save the policy; returns the trainer and the stage's metrics/history.
    `completions`: the completions log (or None); `ptx`: the PPO-ptx batches (`ptx_batches`) or None."""
    from ..ppo.plots import plot_training_curves
    from ..ppo.trainer import PPOTrainer

    funcs, names, weights, stats = rewards
    policy, ref_policy, value_model = ppo_models(
        policy, tokenizer, rl_args, training_args, model_args, funcs, value_init
    )
    trainer = PPOTrainer(
        training_args,
        policy,
        ref_policy,
        value_model,
        tokenizer,
        train,
        funcs,
        weights,
        names,
        stats,
        completions_log=completions,
        ptx_dataset=ptx,
    )
    trainable, total = trainable_parameters(trainer.model)
    logger.info("PPO trains %d of %d parameters (%.2f%%)", trainable, total, 100 * trainable / max(total, 1))
    check_space(training_args.output_dir, trainer.model, training_args)  # the model and a checkpoint fit
    history = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    with writing(training_args.output_dir):  # a full disk: one line, the previous output kept
        trainer.save_model(training_args.output_dir)
    if trainer.accelerator.is_main_process:
        plot_training_curves(history, os.path.join(training_args.output_dir, "training_curves.png"))
    metrics = final_metrics(history)
    metrics.update(updates=len(history), trainable_parameters=trainable, total_parameters=total)
    return trainer, {"metrics": metrics, "history": history}
