"""Stage 2: supervised finetuning on demonstrations with TRL `SFTTrainer`.

Accepts TRL's prompt-completion (standard or conversational), conversational `messages` and `text` formats. The
loss is on the response tokens by default: the completion for prompt-completion data (TRL's `completion_only_loss`),
the assistant turns for `messages` data (`assistant_only_loss`, turned on here when the tokenizer's chat template
marks assistant turns with `{% generation %}`, as hf_rlhf's does). The SFT model is deployable.
"""

from __future__ import annotations

import logging
import math
import os

from transformers import set_seed
from trl import ModelConfig, SFTTrainer, TrlParser

from ..configs import DataArguments, SFTStageConfig
from ..data.formats import SFT_FORMATS, check_sft_dataset, is_conversational_dataset, sft_ignored_columns
from ..data.loading import dataset_label, load_stage_dataset, resolve_dataset, row_counts
from ..encoding import encode_sft_row
from ..errors import DataValidationError
from ..hub import remote_code
from ..hub.push import push_request, push_stage, without_push
from ..model_roles import check_model
from ..modeling import load_causal_lm, load_tokenizer, peft_config_for, resolve_model, trainable_parameters
from ..outputs import check_output, save_trainer_stage, start_stage
from ..plan import rows
from ..plan.context import Context, StagePlan, describe_data
from ..recipes import RecipeError, parse_command_line
from ..resilience import resilient

logger = logging.getLogger(__name__)


def arguments(algorithm: str | None = None) -> tuple[type, ...]:
    """The dataclasses of this stage, in the order `run` takes them."""
    return (DataArguments, SFTStageConfig, ModelConfig)


def make_parser(prog: str | None = None) -> TrlParser:
    return TrlParser(arguments(), prog=prog)


def check_arguments(data_args: DataArguments, training_args: SFTStageConfig, model_args: ModelConfig) -> None:
    """What `run` checks of the recipe before reading data (`plan` checks the same)."""
    if not model_args.model_name_or_path:
        raise RecipeError("sft needs `model_name_or_path` (the pretraining output)")
    if not training_args.output_dir:
        raise RecipeError("sft needs `output_dir`")
    path = training_args.chat_template_path
    if path and path.endswith((".jinja", ".j2")) and not os.path.isfile(path):
        raise RecipeError(
            f"chat_template_path '{path}' does not exist (it is read relative to the working directory: run from "
            "the repository root)"
        )


def encode_demonstrations(dataset, tokenizer, training_args: SFTStageConfig):
    """The rows tokenized as TRL's `SFTTrainer` would (`hf_rlhf.encoding.encode_sft_row`: same ids and masks), but
    with content never read as special tokens; the original columns stay, so that `SFTTrainer` still sees the
    format (prompt-completion: `completion_only_loss`; messages: `assistant_only_loss`) and takes the rows as
    processed."""
    from trl.data_utils import maybe_convert_to_chatml

    def encode(row):
        return encode_sft_row(
            tokenizer,
            maybe_convert_to_chatml(dict(row)),
            assistant_only_loss=training_args.assistant_only_loss,
            text_field=training_args.dataset_text_field,
        )

    return dataset.map(encode, desc="Tokenizing demonstrations")


def check_response_tokens(dataset, training_args: SFTStageConfig, where: str) -> None:
    """Before any model loads: refuse a `max_length` that leaves no row a token to learn from. TRL's `SFTTrainer`
    cuts each row to `max_length` (`truncation_mode`) and drops the rows left without a loss token (a prompt that
    fills `max_length`); the manifest counts them (`rows.dropped`), and when that is every row, training cannot
    start. Reads the masks `encode_demonstrations` made: loss tokens are where every mask is 1."""
    limit = training_args.max_length
    if limit is None or training_args.packing or not len(dataset):
        return
    masks = [c for c in ("completion_mask", "assistant_masks") if c in dataset.column_names]
    if training_args.completion_only_loss is False:
        masks = [c for c in masks if c != "completion_mask"]
    if not masks:
        return  # every token is a loss token
    cut = slice(None, limit) if training_args.truncation_mode == "keep_start" else slice(-limit, None)
    starts = []  # per row, where its loss tokens begin
    for row in zip(*(dataset[c] for c in masks), strict=True):
        loss = [all(bits) for bits in zip(*row, strict=True)]
        if any(loss[cut]):
            return
        starts.append(loss.index(True) if any(loss) else len(loss))
    shortest = min(range(len(starts)), key=starts.__getitem__)
    raise DataValidationError(
        f"{where}: max_length={limit} ({training_args.truncation_mode}) leaves no row a response token to train on; "
        f"the shortest prompt is {starts[shortest]} tokens (row {shortest}): raise max_length above it"
    )


def run(data_args: DataArguments, training_args: SFTStageConfig, model_args: ModelConfig) -> dict:
    """Finetune `model_args.model_name_or_path` on demonstrations; save model, tokenizer and manifest.

    Returns:
        `dict`: the stage manifest (metrics include held-out `eval_loss` and `perplexity` on responses).
    """
    check_arguments(data_args, training_args, model_args)
    remote_code.start_run(data_args.trust_remote_code_repos)  # whose remote code may run; recorded
    check_output(training_args.output_dir, data_args.overwrite)  # a complete stage there is kept
    if os.path.isdir(
        model_args.model_name_or_path
    ):  # in the wrong role, a local model stops here, a Hub one before it loads
        check_model(model_args.model_name_or_path, "policy", "model_name_or_path")  # a causal LM, not a reward model
    set_seed(training_args.seed)

    data = load_stage_dataset(data_args, seed=training_args.seed)
    formats = {
        split: check_sft_dataset(ds, f"{dataset_label(data_args)}, split '{split}'") for split, ds in data.items()
    }
    ignored: dict[str, list[str]] = {}
    for split, ds in data.items():  # e.g. UltraChat's `prompt` beside `messages`, which TRL would misread
        ignored[split] = sft_ignored_columns(formats[split], ds.column_names)
        if ignored[split]:
            data[split] = ds.remove_columns(ignored[split])
            logger.info("%s, split '%s': ignoring column(s) %s", dataset_label(data_args), split, ignored[split])
    inputs = {
        "model": resolve_model(model_args.model_name_or_path),
        "dataset": resolve_dataset(data_args),
    }
    tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=training_args.trust_remote_code)
    if training_args.chat_template_path and training_args.chat_template_path.endswith((".jinja", ".j2")):
        with open(training_args.chat_template_path) as f:  # as SFTTrainer will, so lengths count the same tokens
            tokenizer.chat_template = f.read()
    conversational = is_conversational_dataset(data["train"])
    if conversational and not tokenizer.chat_template and not training_args.chat_template_path:
        raise RecipeError(
            f"dataset '{data_args.dataset_name}' is conversational but the tokenizer of "
            f"'{model_args.model_name_or_path}' has no chat template; set `chat_template_path`"
        )
    if formats["train"] == "conversational" and "{% generation %}" in (tokenizer.chat_template or ""):
        training_args.assistant_only_loss = True
    data = {split: encode_demonstrations(ds, tokenizer, training_args) for split, ds in data.items()}
    over = {}
    if training_args.max_length is not None and not training_args.packing:
        for split, ds in data.items():
            over[split] = sum(len(ids) > training_args.max_length for ids in ds["input_ids"])
            if over[split]:
                logger.warning(
                    "%s, split '%s': %d of %d rows are longer than max_length=%d and are truncated (%s)",
                    dataset_label(data_args),
                    split,
                    over[split],
                    len(ds),
                    training_args.max_length,
                    training_args.truncation_mode,
                )
    check_response_tokens(data["train"], training_args, f"{dataset_label(data_args)}, split 'train'")
    push = push_request(training_args)  # checked now: a push that cannot happen fails before training
    start_stage(training_args, data_args.overwrite)  # written in <output_dir>.partial, swapped in when complete

    model = load_causal_lm(model_args, tokenizer=tokenizer, trust_remote_code=training_args.trust_remote_code)
    trainer = resilient(SFTTrainer)(  # complete checkpoints, NaN/inf loss stop, SIGTERM (hf_rlhf.resilience)
        model=model,
        args=without_push(training_args),  # the trainer never pushes; the stage does, once complete
        train_dataset=data["train"],
        eval_dataset=data.get("test"),
        processing_class=tokenizer,
        peft_config=peft_config_for(model_args),
    )
    prepared = {"train": trainer.train_dataset, "test": trainer.eval_dataset}
    rows_of = {}
    for split, ds in data.items():
        used = len(prepared[split]) if not training_args.packing else len(ds)
        rows_of[split] = row_counts(
            used,
            dropped={"no_loss_tokens_after_truncation": len(ds) - used},  # dropped by TRL after truncating
            truncated={"over_max_length": over.get(split, 0) - (len(ds) - used)},  # kept, cut to max_length
        )
        if ignored[split]:
            rows_of[split]["ignored_columns"] = ignored[split]
    if rows_of["train"]["used"] == 0:
        raise DataValidationError(
            f"{dataset_label(data_args)}: no training row has a response token left after truncating to "
            f"max_length={training_args.max_length}: raise max_length"
        )
    trainable, total = trainable_parameters(trainer.model)
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = {"train_loss": train_result.training_loss, "format": formats["train"], "rows": rows_of}
    metrics.update(trainable_parameters=trainable, total_parameters=total)
    if "test" in data and rows_of["test"]["used"] > 0:
        eval_loss = trainer.evaluate()["eval_loss"]
        metrics.update(eval_loss=eval_loss, perplexity=math.exp(min(eval_loss, 50)))

    manifest = save_trainer_stage(
        trainer,
        tokenizer,
        "sft",
        data_args=data_args,
        training_args=training_args,
        model_args=model_args,
        train_dataset=data["train"],
        metrics=metrics,
        inputs=inputs,
        push=push,
    )
    if push is not None and trainer.is_world_process_zero():
        manifest = push_stage(training_args.output_dir, push)
    return manifest


def plan(data_args: DataArguments, training_args: SFTStageConfig, model_args: ModelConfig, ctx: Context) -> StagePlan:
    """The dry run of `run`: the same checks, then what it would train (`hf_rlhf.plan`)."""
    check_arguments(data_args, training_args, model_args)
    out = StagePlan("sft")
    arch, label = ctx.model(model_args.model_name_or_path, "model_name_or_path", model_args.model_revision)
    rows.model_rows(out, arch, label)
    text, info = describe_data(data_args, ctx, SFT_FORMATS)
    ignored = sft_ignored_columns(info["format"], info["columns"]) if "format" in info else []
    if ignored:
        text += f"; {', '.join(ignored)} dropped (TRL's SFTTrainer reads a row with a 'prompt' as prompt-completion)"
    out.rows.append(("data", text))
    out.rows.append(("loss", loss_row(training_args, info.get("format"))))
    if training_args.chat_template_path:
        out.notes.append(f"chat template from {training_args.chat_template_path}")
    seq = training_args.max_length or 1024
    rows.trained_model(out, arch, "lm", data_args, training_args, model_args, ctx, seq, logits=True)
    return out


def loss_row(args: SFTStageConfig, fmt: str | None) -> str:
    """Which tokens the loss is on, by format (TRL's defaults; `run` turns assistant_only_loss on for `messages`
    data when the chat template marks assistant turns with `{% generation %}`)."""
    if args.assistant_only_loss:
        return "assistant turns only (assistant_only_loss)"
    if fmt == "prompt-completion" and args.completion_only_loss is not False:
        return "completion tokens only (TRL's default for prompt-completion data)"
    if fmt == "conversational":
        return "assistant turns when the chat template marks them with {% generation %}, else every token"
    return "every token" if fmt else "by format: completion only (prompt-completion), else per the chat template"


def main(argv: list[str] | None = None) -> dict:
    return run(*parse_command_line(arguments, argv, prog="hf-rlhf sft"))
