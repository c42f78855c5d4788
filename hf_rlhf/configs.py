"""Configuration dataclasses of every stage, and the recipe parser.

Each stage is configured like a TRL script: a data dataclass, the stage's trainer config (a subclass of the upstream
config, adding only what is new) and TRL's `ModelConfig` for the model, LoRA and quantization flags. They are parsed
with TRL's `TrlParser` from a YAML recipe plus command-line overrides, and a notebook builds the same dataclasses
directly.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import yaml
from transformers import TrainingArguments
from trl import SFTConfig, TrlParser


class RecipeError(ValueError):
    """A recipe file or command line that cannot be used: names the file and the key at fault."""


@dataclass
class DataArguments:
    """Where a stage's data comes from.

    `dataset_name` is a directory written by `datasets.save_to_disk` (a `Dataset` or a `DatasetDict`), or a data
    file (`.jsonl`, `.json`, `.csv`, `.parquet`).
    """

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Dataset: a `save_to_disk` directory or a .jsonl/.json/.csv/.parquet file."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name, if any."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(
        default="test", metadata={"help": "Held-out split for evaluation; made from the train split if missing."}
    )
    eval_split_size: float = field(
        default=0.05,
        metadata={"help": "Fraction of the train split held out when the dataset has no test split (0 to disable)."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Truncate the train split to this many rows (for quick runs)."}
    )


@dataclass
class PretrainConfig(TrainingArguments):
    """`TrainingArguments` for next-token pretraining on raw documents, plus the model and tokenizer to build.

    Defaults that differ from `TrainingArguments`: `logging_steps=10` (tiny runs are short), `save_strategy="no"`
    (the stage saves its final model itself; set it to "steps" for resumable long runs), `eval_strategy="no"` (the
    stage evaluates once at the end).
    """

    model_type: str | None = field(
        default=None,
        metadata={
            "help": "Train from scratch: any `AutoConfig` model type (e.g. 'llama', 'gpt2', 'qwen2'). "
            "Leave unset and give --model_name_or_path to continue from a checkpoint."
        },
    )
    model_config_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Config values for a from-scratch model, as a mapping or a JSON string."},
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Existing tokenizer to use. If unset (and no checkpoint), train a byte-level BPE."},
    )
    vocab_size: int = field(default=1024, metadata={"help": "Vocabulary size of the trained BPE tokenizer."})
    block_size: int = field(default=128, metadata={"help": "Length of the packed training blocks, in tokens."})
    text_column: str = field(default="text", metadata={"help": "Column that holds the documents."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow custom model code shipped with a model (off unless a recipe turns it on)."},
    )
    logging_steps: float = field(default=10, metadata={"help": "Log every X update steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpoint strategy: 'no', 'steps' or 'epoch'."})

    def __post_init__(self):
        if isinstance(self.model_config_kwargs, str):
            self.model_config_kwargs = json.loads(self.model_config_kwargs)
        super().__post_init__()


@dataclass
class SFTStageConfig(SFTConfig):
    """TRL's `SFTConfig` as the SFT stage uses it.

    Defaults that differ from `SFTConfig`: `activation_checkpointing=False` (TRL turns gradient checkpointing on;
    it only slows the small models of the tiny world, so recipes for large models turn it on) and `bf16=False`
    unless asked (CPU runs; the real-model recipes set it).
    Loss is on the completion (prompt-completion data) or assistant turns (`assistant_only_loss`) as upstream.
    """

    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of `activation_checkpointing` (transformers v5)."}
    )
    activation_checkpointing: bool | None = field(
        default=False, metadata={"help": "Recompute activations in the backward pass to save memory."}
    )
    bf16: bool | None = field(default=False, metadata={"help": "Use bf16 mixed precision."})


# ------------------------------------------------------------------------------------------------ parsing
def parser_keys(parser: TrlParser) -> set[str]:
    return {action.dest for action in parser._actions if action.dest != "help"}


def load_yaml_mapping(path: str) -> dict:
    """Read a YAML file that must hold a mapping, with the file named in every error."""
    if not os.path.isfile(path):
        raise RecipeError(f"recipe file '{path}' does not exist")
    try:
        with open(path) as f:
            content = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe file '{path}' is not valid YAML: {e}") from e
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise RecipeError(f"recipe file '{path}' must hold a mapping of keys to values, got {type(content).__name__}")
    return content


def check_keys(keys: dict | list, valid: set[str], where: str) -> None:
    """Raise a `RecipeError` naming `where` and the first key that no dataclass of the stage knows."""
    for key in keys:
        if key not in valid and key != "env":
            close = difflib.get_close_matches(str(key), sorted(valid), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise RecipeError(f"{where}: unknown key '{key}'.{hint}")


def parse_stage_args(parser: TrlParser, args: list[str] | None = None) -> tuple:
    """`TrlParser.parse_args_and_config` with errors that name the recipe file and the key at fault."""
    import sys

    args = list(sys.argv[1:] if args is None else args)
    valid = parser_keys(parser)
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise RecipeError("--config needs a path to a YAML recipe")
        path = args[i + 1]
        check_keys(load_yaml_mapping(path), valid, f"recipe file '{path}'")
    flags = [a[2:].split("=", 1)[0].replace("-", "_") for a in args if a.startswith("--")]
    check_keys([f for f in flags if f not in ("config", "help")], valid, "command line")
    parsed = parser.parse_args_and_config(args)
    from .hub import pin_model_revision  # `model_revision` of a Hub model: `org/name@revision`

    for config in parsed:
        pin_model_revision(config)
    return parsed


def to_cli_args(values: dict[str, Any]) -> list[str]:
    """Turn a mapping of overrides into `--key value` strings that `TrlParser` parses back."""
    out = []
    for key, value in values.items():
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, dict):
            value = json.dumps(value)
        elif isinstance(value, list):
            out.append(f"--{key}")
            out.extend(str(v) for v in value)
            continue
        out.extend([f"--{key}", str(value)])
    return out


@dataclass
class WorldArguments:
    """The tiny world's datasets: documents, demonstrations and prompts, written with `save_to_disk`."""

    output_dir: str = field(default="data/tiny_world", metadata={"help": "Directory for the generated datasets."})
    seed: int = field(default=0, metadata={"help": "Seed of the world's facts and of every generator."})
    num_documents: int = field(default=6000, metadata={"help": "Raw documents for pretraining."})
    num_demonstrations: int = field(default=3000, metadata={"help": "Contractor demonstrations for SFT."})
    num_eval_prompts: int = field(default=200, metadata={"help": "Held-out prompts, never seen in demonstrations."})
    test_fraction: float = field(default=0.05, metadata={"help": "Held-out fraction of documents and demonstrations."})
