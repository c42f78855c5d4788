"""Stage 1: pretraining a causal LM on raw documents with transformers `Trainer`.

Documents are tokenized, joined with EOS and packed into fixed blocks; the loss is next-token prediction on every
token. The model is built from scratch from any `AutoConfig` model type (with a byte-level BPE tokenizer trained on
the corpus unless the recipe names one), or continued from a checkpoint.
"""

from __future__ import annotations

import logging
import math
from itertools import chain, islice

from datasets import Dataset, IterableDataset
from transformers import Trainer, default_data_collator, set_seed
from trl import ModelConfig, TrlParser

from ..configs import DataArguments, PretrainConfig
from ..data.formats import check_text_dataset, text_formats
from ..data.loading import dataset_label, load_stage_dataset, resolve_dataset, row_counts
from ..hub import remote_code
from ..hub.push import push_request, push_stage, without_push
from ..modeling import load_causal_lm, load_tokenizer, model_from_config, resolve_model, sync_model_to_tokenizer
from ..outputs import check_output, save_trainer_stage, start_stage
from ..plan import rows
from ..plan.architecture import architecture, architecture_from_type, human
from ..plan.context import Context, StagePlan, describe_data
from ..plan.memory import Role, estimate, training_activations
from ..recipes import RecipeError, parse_command_line
from ..resilience import resilient
from ..tokenizer import train_bpe_tokenizer

logger = logging.getLogger(__name__)

STREAM_CHECKED_ROWS = 1000  # streamed corpora: documents checked before training (the rest are checked as read)
STREAM_TOKENIZER_DOCUMENTS = 100_000  # streamed corpora: documents a from-scratch BPE tokenizer is trained on


def arguments(algorithm: str | None = None) -> tuple[type, ...]:
    """The dataclasses of this stage, in the order `run` takes them."""
    return (DataArguments, PretrainConfig, ModelConfig)


def make_parser(prog: str | None = None) -> TrlParser:
    return TrlParser(arguments(), prog=prog)


def pack(dataset, tokenizer, column: str, block_size: int, num_proc: int | None = None):
    """Tokenize documents, append EOS to each, concatenate and cut into `block_size` blocks (the tail is dropped)."""

    def tokenize(batch):
        # documents are content: special-token text in them is split, never an EOS or a role marker
        ids = tokenizer(batch[column], split_special_tokens=True)["input_ids"]
        return {"input_ids": [row + [tokenizer.eos_token_id] for row in ids]}

    def group(batch):
        ids = list(chain.from_iterable(batch["input_ids"]))
        n = len(ids) // block_size * block_size
        blocks = [ids[i : i + block_size] for i in range(0, n, block_size)]
        return {
            "input_ids": blocks,
            "labels": [b[:] for b in blocks],
            "attention_mask": [[1] * block_size] * len(blocks),
        }

    if isinstance(dataset, IterableDataset):  # streamed: lazily, as the trainer reads
        columns = dataset.column_names or list(next(iter(dataset)).keys())
        return dataset.map(tokenize, batched=True, remove_columns=columns).map(group, batched=True, batch_size=1000)
    tokenized = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names, num_proc=num_proc)
    return tokenized.map(group, batched=True, batch_size=1000, num_proc=num_proc)


def drop_empty_documents(dataset, column: str, where: str, counts: dict[str, int]):
    """Check the documents and drop the empty ones, counting them in `counts["empty_document"]`.

    A streamed dataset is checked on its first `STREAM_CHECKED_ROWS` documents now; the rest are filtered (and
    counted) as the trainer reads them.
    """
    if not isinstance(dataset, IterableDataset):
        empty = check_text_dataset(dataset, where, column)
        counts["empty_document"] = empty
        if empty:
            logger.warning("%s: dropped %d empty documents", where, empty)
        return dataset.filter(lambda t: bool(t.strip()), input_columns=column) if empty else dataset
    check_text_dataset(Dataset.from_list(list(islice(dataset, STREAM_CHECKED_ROWS))), where, column)
    counts["empty_document"] = 0

    def keep(text) -> bool:
        kept = isinstance(text, str) and bool(text.strip())
        counts["empty_document"] += not kept
        return kept

    return dataset.filter(keep, input_columns=column)


def _texts(dataset, column: str):
    """The documents a from-scratch tokenizer is trained on: all of them, or a streamed corpus' first ones."""
    if isinstance(dataset, IterableDataset):
        return (row[column] for row in islice(dataset, STREAM_TOKENIZER_DOCUMENTS))
    return dataset[column]


def _rows(dataset, counts: dict[str, int]) -> dict:
    """The manifest's row counts of a split (a streamed split: the documents read, as counted while training)."""
    used = None if isinstance(dataset, IterableDataset) else len(dataset)
    return row_counts(used, dropped=counts)


def check_arguments(data_args: DataArguments, training_args: PretrainConfig, model_args: ModelConfig) -> None:
    """What `run` checks of the recipe before reading data (`plan` checks the same)."""
    if bool(training_args.model_type) == bool(model_args.model_name_or_path):
        raise RecipeError("pretrain needs exactly one of `model_type` (from scratch) or `model_name_or_path`")
    if not training_args.output_dir:
        raise RecipeError("pretrain needs `output_dir`")
    if data_args.dataset_streaming and training_args.max_steps <= 0:
        raise RecipeError("dataset_streaming needs `max_steps`: a streamed corpus has no length to count epochs by")


def run(data_args: DataArguments, training_args: PretrainConfig, model_args: ModelConfig) -> dict:
    """Pretrain (or continue pretraining) and save model, tokenizer and manifest to `training_args.output_dir`.

    Returns:
        `dict`: the stage manifest (metrics include `eval_loss` and `perplexity` on held-out documents).
    """
    check_arguments(data_args, training_args, model_args)
    remote_code.start_run(data_args.trust_remote_code_repos)  # whose remote code may run; recorded
    check_output(training_args.output_dir, data_args.overwrite)  # a complete stage there is kept
    set_seed(training_args.seed)

    # Data first: bad input fails before any model is built.
    data = load_stage_dataset(data_args, seed=training_args.seed, allow_streaming=True)
    dropped: dict[str, dict[str, int]] = {}
    for split, ds in data.items():
        where = f"{dataset_label(data_args)}, split '{split}'"
        dropped[split] = {}
        data[split] = drop_empty_documents(ds, training_args.text_column, where, dropped[split])
    model_name, tokenizer_name = model_args.model_name_or_path, training_args.tokenizer_name_or_path
    inputs = {
        "model": resolve_model(model_name) if model_name else f"from scratch ({training_args.model_type})",
        "tokenizer": resolve_model(tokenizer_name or model_name, "tokenizer")
        if tokenizer_name or model_name
        else "trained byte-level BPE",
        "dataset": resolve_dataset(data_args),
    }
    push = push_request(training_args)  # checked now: a push that cannot happen fails before training
    start_stage(training_args, data_args.overwrite)  # written in <output_dir>.partial, swapped in when complete

    # Tokenizer: named, from the checkpoint, or trained on the corpus.
    tokenizer_source = training_args.tokenizer_name_or_path or model_args.model_name_or_path
    if tokenizer_source:
        tokenizer = load_tokenizer(tokenizer_source, trust_remote_code=training_args.trust_remote_code)
    else:  # trained by the main process; the others load its copy, so every process has the same token ids
        with training_args.main_process_first(local=False, desc="training the tokenizer"):
            if training_args.process_index == 0:
                tokenizer = train_bpe_tokenizer(
                    _texts(data["train"], training_args.text_column), training_args.vocab_size
                )
                if training_args.world_size > 1:
                    tokenizer.save_pretrained(training_args.output_dir)
            else:
                tokenizer = load_tokenizer(training_args.output_dir)

    if training_args.model_type:
        model = model_from_config(training_args.model_type, tokenizer, training_args.model_config_kwargs)
    else:
        model = load_causal_lm(model_args, tokenizer=tokenizer, trust_remote_code=training_args.trust_remote_code)
    sync_model_to_tokenizer(model, tokenizer)

    with training_args.main_process_first(desc="packing"):
        blocks = {
            split: pack(ds, tokenizer, training_args.text_column, training_args.block_size)
            for split, ds in data.items()
        }
    streaming = isinstance(blocks["train"], IterableDataset)
    if not streaming and len(blocks["train"]) == 0:
        raise RecipeError(f"{dataset_label(data_args)} has fewer tokens than one block of {training_args.block_size}")

    trainer = resilient(Trainer)(  # complete checkpoints, NaN/inf loss stop, SIGTERM (hf_rlhf.resilience)
        model=model,
        args=without_push(training_args),  # the trainer never pushes; the stage does, once complete
        train_dataset=blocks["train"],
        eval_dataset=blocks.get("test"),
        processing_class=tokenizer,
        data_collator=default_data_collator,
    )
    if streaming:  # count what training reads, not the documents the tokenizer was trained on
        for counts in dropped.values():  # the filters count into these dicts as they read
            counts["empty_document"] = 0
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = {
        "train_loss": train_result.training_loss,
        "train_tokens": (
            train_result.global_step
            * training_args.per_device_train_batch_size
            * training_args.world_size
            * training_args.gradient_accumulation_steps
            if streaming
            else len(blocks["train"])
        )
        * training_args.block_size,
    }
    if "test" in blocks and len(blocks["test"]):
        eval_loss = trainer.evaluate()["eval_loss"]
        metrics.update(eval_loss=eval_loss, perplexity=math.exp(min(eval_loss, 50)))
    metrics["num_parameters"] = model.num_parameters()
    metrics["rows"] = {split: _rows(data[split], counts) for split, counts in dropped.items()}

    manifest = save_trainer_stage(
        trainer,
        tokenizer,
        "pretrain",
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


def plan(data_args: DataArguments, training_args: PretrainConfig, model_args: ModelConfig, ctx: Context) -> StagePlan:
    """The dry run of `run`: the same checks, then what it would build and train (`hf_rlhf.plan`)."""
    check_arguments(data_args, training_args, model_args)
    args, out = training_args, StagePlan("pretrain")
    if args.model_type:
        if args.tokenizer_name_or_path:
            vocab = architecture(args.tokenizer_name_or_path).vocab
            tokenizer = f"tokenizer {args.tokenizer_name_or_path} ({vocab} tokens; +1 if a PAD token is added)"
        else:
            vocab, tokenizer = args.vocab_size, f"byte-level BPE trained on the corpus (vocab_size {args.vocab_size})"
        arch = architecture_from_type(
            args.model_type, args.model_config_kwargs, vocab, "the recipe's model_config_kwargs"
        )
        out.rows.append(("model", f"{arch.name}; {tokenizer}"))
        dtype = "float32"  # from_config builds fp32 weights
    else:
        arch, label = ctx.model(model_args.model_name_or_path, "model_name_or_path", model_args.model_revision)
        out.rows.append(("model", f"{label}, continued"))
        dtype = model_args.dtype
    total = arch.count()["total"]
    out.rows += [("architecture", arch.shape()), ("parameters", f"{total:,} ({human(total)})")]
    text, _ = describe_data(data_args, ctx, text_formats(args.text_column))
    out.rows.append(("data", text))
    precision, e = rows.precision_row(args, model_args, ctx.launch, dtype)
    out.rows.append(("precision", precision))
    batch, global_batch = rows.batch_row(args, ctx.launch, f"blocks of {args.block_size} tokens")
    out.rows.append(("batch", f"{batch} ({global_batch * args.block_size:,} tokens)"))
    out.rows.append(("schedule", rows.schedule_row(args, global_batch, data_args.max_train_samples)))
    if model_args.use_peft or model_args.load_in_4bit or model_args.load_in_8bit:
        out.notes.append("the pretrain stage trains every weight: use_peft and quantization are ignored")
    out.roles = [Role("model", arch, dtype=dtype, trainable=True, optim=args.optim, optim_args=args.optim_args)]
    checkpointing, micro = rows.uses_checkpointing(args, ctx.launch), args.per_device_train_batch_size
    logits = not rows.liger(args, out)
    acts = training_activations(arch, micro, args.block_size, e, checkpointing, logits, rows.uses_eager(model_args))
    out.rows.append(("activations", rows.activation_row(checkpointing, micro, args.block_size)))
    out.memory = estimate(out.roles, acts, ctx.launch)
    rows.optimizer_notes(out, args)
    out.produces = arch
    return out


def main(argv: list[str] | None = None) -> dict:
    return run(*parse_command_line(arguments, argv, prog="hf-rlhf pretrain"))
