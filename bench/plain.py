"""The plain baseline: the tiny world's pretraining and SFT written directly against transformers, TRL and datasets.

This is the script a user would write without hf_rlhf. It does the same work as `hf_rlhf.stages.pretrain.run` and
`hf_rlhf.stages.sft.run` (same recipe values, data, tokenizer, model, packing, trainer arguments, final evaluation
and save) and nothing else: no dataset checks, no manifest, no recipe-key validation. `bench/run.py` times both.

The training values come from the same YAML recipe the hf_rlhf side reads (keys that are not trainer arguments,
such as the model shape, are taken out first), so the two sides cannot drift apart when a recipe changes.

Run alone (from the repository root; the SFT model directory is a pretraining output):
    python3 bench/plain.py pretrain --dataset DIR --output_dir DIR --max_steps 30
    python3 bench/plain.py sft --dataset DIR --model DIR --output_dir DIR --max_steps 30
"""

from __future__ import annotations

import argparse
import json
from itertools import chain
from typing import Any

import yaml
from datasets import DatasetDict, load_from_disk
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)
from trl import SFTConfig, SFTTrainer

from hf_rlhf.tokenizer import train_bpe_tokenizer

PRETRAIN_RECIPE = "recipes/tiny/pretrain.yaml"
SFT_RECIPE = "recipes/tiny/sft.yaml"
# Recipe keys that describe the model and tokenizer rather than the trainer; the plain script handles them itself.
MODEL_KEYS = ("model_type", "model_config_kwargs", "vocab_size", "block_size", "text_column")


def read_recipe(path: str) -> dict[str, Any]:
    """The recipe as a plain dict (the same YAML file hf_rlhf parses)."""
    with open(path) as f:
        return yaml.safe_load(f) or {}


def pack(dataset, tokenizer: PreTrainedTokenizerBase, column: str, block_size: int):
    """Tokenize, append EOS to each document, concatenate and cut into `block_size` blocks (the tail is dropped)."""

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        return {"input_ids": [ids + [tokenizer.eos_token_id] for ids in tokenizer(batch[column])["input_ids"]]}

    def group(batch: dict[str, list]) -> dict[str, list]:
        ids = list(chain.from_iterable(batch["input_ids"]))
        n = len(ids) // block_size * block_size
        blocks = [ids[i : i + block_size] for i in range(0, n, block_size)]
        return {
            "input_ids": blocks,
            "labels": [b[:] for b in blocks],
            "attention_mask": [[1] * block_size] * len(blocks),
        }

    tokenized = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names)
    return tokenized.map(group, batched=True, batch_size=1000)


def pretrain(dataset_dir: str, output_dir: str, recipe: str = PRETRAIN_RECIPE, **overrides: Any) -> dict[str, Any]:
    """Pretrain a from-scratch Llama on the `text` column of a `save_to_disk` DatasetDict; save model and tokenizer.

    The byte-level BPE tokenizer is trained on the corpus with hf_rlhf's `train_bpe_tokenizer`, as the hf_rlhf
    stage does: a plain script would need the same tokenizer, and the tokenizer is not what is compared.

    Returns:
        `dict`: train and eval loss.
    """
    values = read_recipe(recipe)
    model_values = {key: values.pop(key) for key in MODEL_KEYS if key in values}
    args = TrainingArguments(output_dir=output_dir, **{**values, **overrides})
    set_seed(args.seed)

    data: DatasetDict = load_from_disk(dataset_dir)
    column = model_values.get("text_column", "text")
    tokenizer = train_bpe_tokenizer(data["train"][column], model_values["vocab_size"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **model_values.get("model_config_kwargs", {}),
    )
    model = LlamaForCausalLM(config)
    blocks = {split: pack(ds, tokenizer, column, model_values["block_size"]) for split, ds in data.items()}

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=blocks["train"],
        eval_dataset=blocks["test"],
        processing_class=tokenizer,
        data_collator=default_data_collator,
    )
    train_loss = trainer.train().training_loss
    eval_loss = trainer.evaluate()["eval_loss"]
    trainer.save_model(output_dir)
    tokenizer.save_pretrained(output_dir)
    return {"train_loss": train_loss, "eval_loss": eval_loss}


def sft(
    dataset_dir: str, model_dir: str, output_dir: str, recipe: str = SFT_RECIPE, **overrides: Any
) -> dict[str, Any]:
    """Finetune `model_dir` with TRL's `SFTTrainer` on a prompt-completion DatasetDict; save model and tokenizer.

    Returns:
        `dict`: train and eval loss.
    """
    args = SFTConfig(output_dir=output_dir, **{**read_recipe(recipe), **overrides})
    set_seed(args.seed)

    data: DatasetDict = load_from_disk(dataset_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=data["train"], eval_dataset=data["test"], processing_class=tokenizer
    )
    train_loss = trainer.train().training_loss
    eval_loss = trainer.evaluate()["eval_loss"]
    trainer.save_model(output_dir)
    tokenizer.save_pretrained(output_dir)
    return {"train_loss": train_loss, "eval_loss": eval_loss}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["pretrain", "sft"])
    parser.add_argument("--dataset", required=True, help="`save_to_disk` DatasetDict with train and test splits.")
    parser.add_argument("--model", help="Pretrained model directory (sft).")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_steps", type=int, default=-1)
    a = parser.parse_args(argv)
    if a.stage == "pretrain":
        metrics = pretrain(a.dataset, a.output_dir, max_steps=a.max_steps)
    else:
        metrics = sft(a.dataset, a.model, a.output_dir, max_steps=a.max_steps)
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
