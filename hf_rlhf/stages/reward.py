"""Stage 3: reward modeling on comparisons with TRL `RewardTrainer`: a scalar read at the last token.

The reward model is `AutoModelForSequenceClassification(num_labels=1)` initialised from the SFT model; the reward is
read at the last non-pad token (PAD differs from EOS). Comparisons are pairwise (TRL's preference formats), ranked
K-way, or rated / scored completions ranked by their scores; all train as groups (see `hf_rlhf.data.preference` and
`hf_rlhf.reward.trainer`). The manifest counts each split's rows (`metrics["rows"]`): used, dropped, truncated and
converted, by reason. After training the reward is centred so that its mean over a reference set (the SFT
demonstrations by default) is 0, and the held-out quality checks (accuracy, accuracy by rank distance, reward gap,
calibration) go into the manifest. Not a chat model: it serves the RL stage.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch
from datasets import Dataset
from transformers import set_seed
from trl import ModelConfig, TrlParser

from ..configs import DataArguments, RewardStageConfig
from ..data.formats import PREFERENCE_DATASET_FORMATS, REFERENCE_FORMATS, DataValidationError, preference_formats
from ..data.loading import load_stage_dataset, resolve_dataset, row_counts
from ..data.preference import RATING_SCORES, PreferenceOptions, conversion_counts, describe_conversion, to_groups
from ..hub import remote_code
from ..hub.push import push_request, push_stage, without_push
from ..model_roles import describe_model
from ..modeling import (
    is_quantized,
    load_reward_model,
    load_tokenizer,
    peft_config_for,
    resolve_model,
    resolve_model_path,
    reward_head,
    torch_dtype,
    trainable_parameters,
)
from ..outputs import check_output, save_trainer_stage, start_stage
from ..plan import rows as plan_rows
from ..plan.context import Context, StagePlan, describe_data, describe_dataset
from ..recipes import RecipeError, parse_command_line
from ..resilience import resilient
from ..reward.scorer import REWARD_ENCODING, encode_for_reward, score_sequences, shift_reward
from ..reward.trainer import GroupedPreferenceCollator, GroupedRewardTrainer, plot_calibration, quality_report

logger = logging.getLogger(__name__)


def arguments(algorithm: str | None = None) -> tuple[type, ...]:
    """The dataclasses of this stage, in the order `run` takes them."""
    return (DataArguments, RewardStageConfig, ModelConfig)


def make_parser(prog: str | None = None) -> TrlParser:
    return TrlParser(arguments(), prog=prog)


def chat_encoded(groups: list[dict]) -> bool:
    """Whether the reward model reads chats (`encode_for_reward`'s `chat`): any prompt or completion is a list of
    messages. Recorded in the model's config, so that every later scorer encodes text pairs the same way."""
    return any(isinstance(g["prompt"], list) or any(isinstance(c, list) for c in g["completions"]) for g in groups)


def encode_groups(
    groups: list[dict], tokenizer, args: RewardStageConfig, where: str, chat: bool | None = None
) -> tuple[list[dict], dict]:
    """Tokenize every completion of every group; rows over `max_length` are dropped, truncated or an error."""
    encoded, counts = [], {"too_long_dropped": 0, "too_long_truncated": 0}
    for index, group in enumerate(groups):
        ids = [encode_for_reward(tokenizer, group["prompt"], c, chat) for c in group["completions"]]
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
    fmt, _ = REFERENCE_FORMATS.detect(rows.column_names, f"reference dataset '{name}'")
    if fmt == "prompt-completion":
        return rows["prompt"], rows["completion"]
    return [m[:-1] for m in rows["messages"]], [m[-1:] for m in rows["messages"]]


def init_reward_head(model, name_or_path: str, init: str) -> float | None:
    """Draw a new score head's weights from N(0, 1/sqrt(d+1)) (std, d the hidden size) and zero its bias.

    Stiennon et al. (2020, "Learning to summarize from human feedback") and InstructGPT initialise the reward head so
    that the initial rewards have about unit variance (lm-human-preferences: `init_scale=1/sqrt(d_model+1)`).
    Only a head the checkpoint at `name_or_path` does not hold (the SFT model's) is drawn; a trained one is kept.
    Returns the std used, or None (`init: model` or a head from the checkpoint: the weights as loaded).
    """
    directory = resolve_model_path(name_or_path, "model_name_or_path")
    if init == "model" or describe_model(directory).has_head is not False:
        return None
    head = reward_head(model)
    if not head.weight.is_floating_point():  # a quantized head (not the package's layout): left as loaded
        return None
    std = 1 / math.sqrt(head.in_features + 1)
    with torch.no_grad():
        head.weight.normal_(0.0, std)
        if head.bias is not None:
            head.bias.zero_()
    return std


def check_arguments(data_args: DataArguments, training_args: RewardStageConfig, model_args: ModelConfig) -> None:
    """What `run` checks of the recipe before reading data (`plan` checks the same)."""
    if training_args.invalid_rows not in ("error", "drop") or training_args.too_long not in (
        "drop",
        "truncate",
        "error",
    ):
        raise RecipeError("invalid_rows must be 'error' or 'drop'; too_long must be 'drop', 'truncate' or 'error'")
    if not model_args.model_name_or_path or not training_args.output_dir:
        raise RecipeError("reward needs `model_name_or_path` (the SFT model) and `output_dir`")
    if training_args.reward_head_init not in ("stiennon", "model"):
        raise RecipeError(f"reward_head_init must be 'stiennon' or 'model', got {training_args.reward_head_init!r}")
    if training_args.rating_score not in RATING_SCORES:
        raise RecipeError(
            f"rating_score must be one of {', '.join(RATING_SCORES)}, got {training_args.rating_score!r}"
        )
    aspects = training_args.rating_aspects
    if aspects is not None and (not aspects or not all(isinstance(a, str) for a in aspects)):
        raise RecipeError(f"rating_aspects must be a non-empty list of aspect names, got {aspects!r}")
    columns = training_args.score_columns
    pairs = list(columns.items()) if isinstance(columns, dict) else []
    if columns is not None and not (pairs and all(isinstance(name, str) for pair in pairs for name in pair)):
        raise RecipeError(f"score_columns must map response columns to score columns, got {columns!r}")
    if data_args.dataset_format not in (None, *PREFERENCE_DATASET_FORMATS):
        raise RecipeError(
            f"dataset_format {data_args.dataset_format!r} is not a comparison format: expected one of "
            f"{', '.join(PREFERENCE_DATASET_FORMATS)}, or unset to detect it from the columns"
        )
    if columns and data_args.dataset_format not in (None, "scored"):
        raise RecipeError(
            f"score_columns makes the format 'scored': unset dataset_format {data_args.dataset_format!r}"
        )


def split_rows(groups: list[dict], dropped: dict[str, int], long_rows: dict[str, int], used: int) -> dict[str, Any]:
    """The manifest's account of one split (`row_counts`): rows used, dropped (invalid or too long), truncated and
    converted by reason, and rated completions left out for want of a score."""
    converted, unscored = conversion_counts(groups)
    drops = {**dropped, "too_long_dropped": long_rows.get("too_long_dropped", 0)}
    rows = row_counts(used, drops, {"too_long_truncated": long_rows.get("too_long_truncated", 0)}, converted)
    if unscored:
        rows["completions_dropped"] = {"no_usable_score": unscored}
    return rows


def run(data_args: DataArguments, training_args: RewardStageConfig, model_args: ModelConfig) -> dict[str, Any]:
    """Train, centre and check a reward model; save it with its tokenizer, calibration plot and manifest."""
    check_arguments(data_args, training_args, model_args)
    remote_code.start_run(data_args.trust_remote_code_repos)  # whose remote code may run; recorded
    check_output(training_args.output_dir, data_args.overwrite)  # a complete stage there is kept
    set_seed(training_args.seed)

    data = load_stage_dataset(data_args, seed=training_args.seed)
    inputs = {
        "model": resolve_model(model_args.model_name_or_path),
        "dataset": resolve_dataset(data_args),
    }
    options = PreferenceOptions.from_args(data_args, training_args)
    groups = {
        split: to_groups(
            ds, f"dataset '{data_args.dataset_name}', split '{split}'", training_args.invalid_rows, options
        )
        for split, ds in data.items()
    }  # every row checked and converted before the tokenizer loads
    tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=training_args.trust_remote_code)
    encoded, rows, fmt = {}, {}, groups["train"][2]
    chat = chat_encoded(groups["train"][0])
    for split, (split_groups, bad, _) in groups.items():
        where = f"dataset '{data_args.dataset_name}', split '{split}'"
        encoded[split], long_rows = encode_groups(split_groups, tokenizer, training_args, where, chat)
        rows[split] = split_rows(split_groups, bad, long_rows, len(encoded[split]))
        if not encoded[split]:
            raise DataValidationError(f"{where}: no usable comparisons left ({rows[split]})")
        if len(rows[split]) > 1:  # more than `used`: rows dropped, truncated or converted (HH-RLHF detected, ...)
            logger.warning("reward stage, split '%s': %s", split, rows[split])
    if training_args.reference_dataset:
        ref_prompts, ref_completions = reference_pairs(
            training_args.reference_dataset, training_args.reference_max_samples
        )
        inputs["reference_dataset"] = resolve_dataset(training_args.reference_dataset)
    push = push_request(training_args)  # checked now: a push that cannot happen fails before training
    start_stage(training_args, data_args.overwrite)  # written in <output_dir>.partial, swapped in when complete

    model = load_reward_model(  # the SFT model under a new score head, which this stage trains
        model_args.model_name_or_path,
        trust_remote_code=training_args.trust_remote_code,
        model_args=model_args,
        require_trained_head=False,
        what="model_name_or_path",
    )
    head_std = init_reward_head(model, model_args.model_name_or_path, training_args.reward_head_init)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.update({REWARD_ENCODING: "chat" if chat else "text"})  # how every later scorer encodes text pairs
    training_args.prediction_loss_only = True
    columns = ["input_ids", "pairs", "margins"]
    trainer = resilient(GroupedRewardTrainer)(  # complete checkpoints, NaN/inf loss stop, SIGTERM
        model=model,
        args=without_push(training_args),  # the trainer never pushes; the stage does, once complete
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
    metrics: dict[str, Any] = {"train_loss": train_result.training_loss, "format": fmt, "rows": rows}
    metrics.update(trainable_parameters=trainable, total_parameters=total)
    if head_std is not None:  # a new head drawn from N(0, 1/sqrt(d+1))
        metrics["reward_head_init_std"] = head_std
    model = trainer.model

    # Centre: shift the head so the mean reward over the reference set is 0; keep mean/std for the RL stage.
    if training_args.reference_dataset:
        ref = [encode_for_reward(tokenizer, p, c, chat) for p, c in zip(ref_prompts, ref_completions, strict=True)]
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

    manifest = save_trainer_stage(
        trainer,
        tokenizer,
        "reward",
        data_args=data_args,
        training_args=training_args,
        model_args=model_args,
        train_dataset=data["train"],
        metrics=metrics,
        inputs=inputs,
        extra={
            "model_kind": "reward model (AutoModelForSequenceClassification, num_labels=1); not a chat model",
            "reward_encoding": "chat" if chat else "text",  # how `encode_for_reward` reads text pairs for it
        },
        push=push,
    )
    if push is not None and trainer.is_world_process_zero():
        manifest = push_stage(training_args.output_dir, push)
    return manifest


def plan(
    data_args: DataArguments, training_args: RewardStageConfig, model_args: ModelConfig, ctx: Context
) -> StagePlan:
    """The dry run of `run`: the same checks, then what it would train (`hf_rlhf.plan`)."""
    check_arguments(data_args, training_args, model_args)
    args, out = training_args, StagePlan("reward")
    arch, label = ctx.model(model_args.model_name_or_path, "model_name_or_path", model_args.model_revision)
    plan_rows.model_rows(out, arch, label, head="reward")
    options = PreferenceOptions.from_args(data_args, training_args)
    # the run's detector (`preference_format` is `preference_formats(...).detect`) on the known columns
    text, info = describe_data(data_args, ctx, preference_formats(options.dataset_format, options.score_columns))
    out.rows.append(("data", text))
    fmt, k = info.get("format"), 2
    if fmt in ("ranked", "rated"):
        k = info.get("completions") or 4
        assumed = "" if info.get("completions") else " (assumed; the rows say at load time)"
        out.rows.append(
            ("comparisons", f"K={k}{assumed} {fmt} completions per prompt: up to {k * (k - 1) // 2} pairs")
        )
    elif fmt == "scored":
        k = len(options.score_columns or {})
        out.rows.append(("comparisons", f"K={k} scored responses per prompt: up to {k * (k - 1) // 2} pairs"))
    elif fmt == "pairwise":
        out.rows.append(("comparisons", "pairs (K=2): one chosen, one rejected completion per prompt"))
    if (
        fmt in ("pairwise", "rated", "scored")
        and data_args.dataset_name
        and not os.path.exists(data_args.dataset_name)
    ):
        out.notes.append(
            f"comparisons come from a public {fmt} dataset: it replaces the tiny world's sample-and-rank step "
            "(`hf-rlhf sample` + a labeler)"
        )
    conversion = describe_conversion(fmt, options, info.get("columns"))
    if conversion:
        out.rows.append(("conversion", conversion))
    if args.reference_dataset:
        name = args.reference_dataset
        where = f"reference dataset '{name}'"
        _, ref = describe_dataset(name, ctx, REFERENCE_FORMATS, test_split=None, what="reference_dataset", where=where)
        fmt = ref.get("format", "columns checked at load time")
        out.rows.append(
            (
                "centring",
                f"the mean reward over {args.reference_max_samples} rows of {name} ({fmt}, split train) is set to 0",
            )
        )
    else:
        out.rows.append(("centring", "none (no reference_dataset): the RL stage cannot normalize_reward"))
    seq = args.max_length or 1024
    plan_rows.trained_model(
        out, arch, "reward", data_args, args, model_args, ctx, seq, logits=False, sequences_per_row=k
    )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(*parse_command_line(arguments, argv, prog="hf-rlhf reward"))
