"""Stage 3: reward modeling on comparisons with TRL `RewardTrainer`: a scalar read at the last token.

The reward model is `AutoModelForSequenceClassification(num_labels=1)` initialised from the SFT model; the reward is
read at the last non-pad token (PAD differs from EOS). Comparisons are pairwise (TRL's preference formats) or ranked
K-way; both train as groups (see `hf_rlhf.data.preference` and `hf_rlhf.reward.trainer`). After training the reward
is centred so that its mean over a reference set (the SFT demonstrations by default) is 0, and the held-out quality
checks (accuracy, accuracy by rank distance, reward gap, calibration) go into the manifest. Not a chat model: it
serves the RL stage.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from datasets import Dataset
from transformers import set_seed
from trl import ModelConfig, TrlParser

from ..configs import DataArguments, RewardStageConfig
from ..data.formats import DataValidationError, load_stage_dataset
from ..data.preference import to_groups
from ..manifest import save_trainer_stage, start_stage
from ..modeling import (
    is_quantized,
    load_reward_model,
    load_tokenizer,
    peft_config_for,
    resolve_model_path,
    torch_dtype,
    trainable_parameters,
)
from ..recipes import RecipeError, parse_stage_args
from ..resilience import resilient
from ..reward.scorer import encode_for_reward, score_sequences, shift_reward
from ..reward.trainer import GroupedPreferenceCollator, GroupedRewardTrainer, plot_calibration, quality_report

logger = logging.getLogger(__name__)


def arguments(algorithm: str | None = None) -> tuple[type, ...]:
    """The dataclasses of this stage, in the order `run` takes them."""
    return (DataArguments, RewardStageConfig, ModelConfig)


def make_parser(prog: str | None = None) -> TrlParser:
    return TrlParser(arguments(), prog=prog)


def encode_groups(groups: list[dict], tokenizer, args: RewardStageConfig, where: str) -> tuple[list[dict], dict]:
    """Tokenize every completion of every group; rows over `max_length` are dropped, truncated or an error."""
    encoded, counts = [], {"too_long_dropped": 0, "too_long_truncated": 0}
    for index, group in enumerate(groups):
        ids = [encode_for_reward(tokenizer, group["prompt"], c) for c in group["completions"]]
        longest = max(map(len, ids))
        if args.max_length is not None and longest > args.max_length:
            if args.too_long == "error":
                raise DataValidationError(
                    f"{where}: row {index} has a sequence of {longest} tokens, over max_length={args.max_length}"
                )
            if args.too_long == "drop":
                counts["too_long_dropped"] += 1
                continue
            ids = [seq[-args.max_length :] for seq in ids]  # keep the end: the reward is read at the last token
            counts["too_long_truncated"] += 1
        encoded.append(
            {"input_ids": ids, "pairs": group["pairs"], "margins": group["margins"], "ranks": group["ranks"]}
        )
    return encoded, counts


def reference_pairs(name: str, max_samples: int) -> tuple[list[Any], list[Any]]:
    """(prompts, completions) of a demonstration dataset: prompt-completion or `messages`."""
    data = load_stage_dataset(DataArguments(dataset_name=name, eval_split_size=0.0))["train"]
    rows = data.select(range(min(max_samples, len(data))))
    if {"prompt", "completion"} <= set(rows.column_names):
        return rows["prompt"], rows["completion"]
    if "messages" in rows.column_names:
        return [m[:-1] for m in rows["messages"]], [m[-1:] for m in rows["messages"]]
    raise DataValidationError(f"reference dataset '{name}': expected ('prompt', 'completion') or ('messages',)")


def run(data_args: DataArguments, training_args: RewardStageConfig, model_args: ModelConfig) -> dict[str, Any]:
    """Train, centre and check a reward model; save it with its tokenizer, calibration plot and manifest."""
    if training_args.invalid_rows not in ("error", "drop") or training_args.too_long not in (
        "drop",
        "truncate",
        "error",
    ):
        raise RecipeError("invalid_rows must be 'error' or 'drop'; too_long must be 'drop', 'truncate' or 'error'")
    if not model_args.model_name_or_path or not training_args.output_dir:
        raise RecipeError("reward needs `model_name_or_path` (the SFT model) and `output_dir`")
    set_seed(training_args.seed)

    data = load_stage_dataset(data_args, seed=training_args.seed)
    resolve_model_path(model_args.model_name_or_path)
    tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=training_args.trust_remote_code)
    encoded, dropped, fmt = {}, {}, None
    for split, ds in data.items():
        where = f"dataset '{data_args.dataset_name}', split '{split}'"
        groups, bad, fmt = to_groups(ds, where, training_args.invalid_rows)
        encoded[split], long_rows = encode_groups(groups, tokenizer, training_args, where)
        dropped.update({f"{split}_{k}": v for k, v in {**bad, **long_rows}.items() if v})
        if not encoded[split]:
            raise DataValidationError(f"{where}: no usable comparisons left (dropped: {dropped})")
    for key, count in dropped.items():
        logger.warning("reward stage: %s = %d rows", key, count)
    if training_args.reference_dataset:
        ref_prompts, ref_completions = reference_pairs(
            training_args.reference_dataset, training_args.reference_max_samples
        )
    start_stage(training_args.output_dir, training_args)  # takes over push_to_hub: one push, when complete

    model = load_reward_model(
        model_args.model_name_or_path, trust_remote_code=training_args.trust_remote_code, model_args=model_args
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    training_args.prediction_loss_only = True
    columns = ["input_ids", "pairs", "margins"]
    trainer = resilient(GroupedRewardTrainer)(  # complete checkpoints, NaN/inf loss stop, SIGTERM
        model=model,
        args=training_args,
        train_dataset=Dataset.from_list([{k: g[k] for k in columns} for g in encoded["train"]]),
        eval_dataset=Dataset.from_list([{k: g[k] for k in columns} for g in encoded["test"]])
        if "test" in encoded
        else None,
        processing_class=tokenizer,
        data_collator=GroupedPreferenceCollator(tokenizer.pad_token_id),
        peft_config=peft_config_for(model_args, "reward"),
    )
    if is_quantized(model):  # TRL casts trainable parameters of a k-bit model to bf16; the head meets the
        for name, param in trainer.model.named_parameters():  # hidden states in the compute dtype
            if param.requires_grad and ".score." in name:
                param.data = param.data.to(torch_dtype(model_args.dtype))
    trainable, total = trainable_parameters(trainer.model)
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics: dict[str, Any] = {"train_loss": train_result.training_loss, "format": fmt, **dropped}
    metrics.update(trainable_parameters=trainable, total_parameters=total)
    model = trainer.model

    # Centre: shift the head so the mean reward over the reference set is 0; keep mean/std for the RL stage.
    if training_args.reference_dataset:
        ref = [encode_for_reward(tokenizer, p, c) for p, c in zip(ref_prompts, ref_completions, strict=True)]
        raw = score_sequences(model, ref, tokenizer.pad_token_id).numpy()
        shift_reward(model, -float(raw.mean()))
        metrics["reward_centring"] = {
            "reference_dataset": training_args.reference_dataset,
            "num_rows": len(ref),
            "mean_before": float(raw.mean()),
            "mean": 0.0,
            "std": float(raw.std()),
        }

    if "test" in encoded:
        rewards = [score_sequences(model, g["input_ids"], tokenizer.pad_token_id).tolist() for g in encoded["test"]]
        quality = quality_report(encoded["test"], rewards, training_args.calibration_bins)
        metrics["eval"] = quality
        metrics["eval_accuracy"] = quality["accuracy"]
        if trainer.is_world_process_zero():
            os.makedirs(training_args.output_dir, exist_ok=True)
            plot_calibration(quality["calibration"], os.path.join(training_args.output_dir, "calibration.png"))

    return save_trainer_stage(
        trainer,
        tokenizer,
        "reward",
        data_args=data_args,
        training_args=training_args,
        model_args=model_args,
        train_dataset=data["train"],
        metrics=metrics,
        extra={"model_kind": "reward model (AutoModelForSequenceClassification, num_labels=1); not a chat model"},
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    data_args, training_args, model_args = parse_stage_args(make_parser("hf-rlhf reward"), argv)
    return run(data_args, training_args, model_args)
