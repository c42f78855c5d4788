"""Configuration dataclasses of every stage.

Each stage is configured like a TRL script: a data dataclass, the stage's trainer config (a subclass of the upstream
config, adding only what is new) and TRL's `ModelConfig` for the model, LoRA and quantization flags. `hf_rlhf.recipes`
parses them from a YAML recipe plus command-line overrides (or the pipeline's values); a notebook builds the same
dataclasses directly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from transformers import TrainingArguments
from trl import GRPOConfig, RewardConfig, RLOOConfig, ScriptArguments, SFTConfig

from .errors import RecipeError
from .generation_backend import GenerationBackendArguments  # the sample and evaluation options of who generates
from .ppo.config import PPOConfig


@dataclass
class StageArguments:
    """What every stage's command takes besides its data and trainer: how to treat an existing output, and whose
    remote code may run."""

    overwrite: bool = field(
        default=False,
        metadata={
            "help": "Replace a complete stage already in `output_dir`. The old output stays until the new one is "
            "complete (built in `<output_dir>.partial`, then swapped in)."
        },
    )
    trust_remote_code_repos: list[str] | None = field(
        default=None,
        metadata={
            "help": "With `trust_remote_code`: repos other than the model's whose code a config's `auto_map` may "
            "name (`org/name` or `org/name@revision`); each is pinned to a resolved commit."
        },
    )


@dataclass
class DataArguments(ScriptArguments, StageArguments):
    """TRL's `ScriptArguments` (`dataset_name`, `dataset_config`, `dataset_train_split`, `dataset_test_split`,
    `dataset_streaming`) plus `datasets.load_dataset`'s `data_dir` / `data_files`, TRL-style mixtures, and how a
    stage carves a held-out split and caps its rows.

    `dataset_name` is anything `datasets.load_dataset` reads (a Hub dataset id `org/name` or `org/name@revision`, a
    local folder laid out as a Hub dataset repo, a data file) or a `datasets.save_to_disk` directory
    (`hf_rlhf.data.loading`). `datasets` lists several such datasets (TRL's `DatasetMixtureConfig` entries: `path`,
    `name`, `data_dir`, `data_files`, `split`, `columns`, `fraction`, plus `revision` and `test_split`), concatenated
    into one train split.
    """

    dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Dataset: a Hub id (org/name[@revision]), a local dataset folder or data file, or a "
            "`save_to_disk` directory."
        },
    )
    dataset_data_dir: str | None = field(
        default=None,
        metadata={"help": "`load_dataset`'s data_dir: a subset stored in a folder of the repo (e.g. 'helpful-base')."},
    )
    dataset_data_files: str | None = field(
        default=None,
        metadata={"help": "`load_dataset`'s data_files: a file or glob inside the dataset (overrides its configs)."},
    )
    datasets: list[dict[str, Any]] | None = field(
        default=None,
        metadata={
            "help": "A mixture: a list of {path, name, data_dir, data_files, split, columns, fraction, "
            "revision, test_split} (TRL's DatasetMixtureConfig). Replaces dataset_name."
        },
    )
    dataset_format: str | None = field(
        default=None,
        metadata={
            "help": "Force a format instead of detecting it (e.g. 'hh-rlhf' for '\\n\\nHuman: ... "
            "\\n\\nAssistant: ...' dialogues). Unset: detected from the columns and reported."
        },
    )
    eval_split_size: float = field(
        default=0.05,
        metadata={"help": "Fraction of the train split held out when the dataset has no test split (0 to disable)."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Truncate the train split to this many rows (for quick runs)."}
    )

    def __post_init__(self):
        if self.ignore_bias_buffers:
            raise RecipeError("`ignore_bias_buffers` is not supported by hf_rlhf's stages: leave it unset")
        if self.datasets is not None and self.dataset_name:
            raise RecipeError("set either `dataset_name` or `datasets` (a mixture), not both")
        if not 0 <= self.eval_split_size < 1:
            raise RecipeError(f"eval_split_size must be a fraction in [0, 1), got {self.eval_split_size}")
        if self.max_train_samples is not None and self.max_train_samples < 1:
            raise RecipeError(
                f"max_train_samples must be at least 1 (unset it for every row), got {self.max_train_samples}"
            )
        if self.datasets is not None and (not isinstance(self.datasets, list) or not self.datasets):
            raise RecipeError(f"`datasets` must be a non-empty list of dataset entries, got {self.datasets!r}")


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


@dataclass
class WorldArguments:
    """The tiny world's datasets: documents, demonstrations and prompts, written with `save_to_disk`."""

    output_dir: str = field(default="data/tiny_world", metadata={"help": "Directory for the generated datasets."})
    seed: int = field(default=0, metadata={"help": "Seed of the world's facts and of every generator."})
    num_documents: int = field(default=6000, metadata={"help": "Raw documents for pretraining."})
    num_demonstrations: int = field(default=3000, metadata={"help": "Contractor demonstrations for SFT."})
    num_eval_prompts: int = field(default=200, metadata={"help": "Held-out prompts, never seen in demonstrations."})
    test_fraction: float = field(default=0.05, metadata={"help": "Held-out fraction of documents and demonstrations."})


@dataclass
class EvaluationArguments(GenerationBackendArguments):
    """How the pipeline's report (and `hf-rlhf evaluate`) measures each model on held-out prompts
    (`hf_rlhf.eval.report`, docs/evaluation.md).

    The prompts are `eval_dataset`'s `eval_split`, else the RL dataset's test split (the tiny world's held-out
    prompts in the demo). Every deployable model (SFT, SFT best-of-N, RL, and `models`) is sampled on them with the
    same settings and compared with `reference_model`: reward-model score, win rate judged by the reward model (and
    by `judge_model`, if set), KL, length, missing-EOS rate, distinct-n. The tiny world adds its gold labeler's score
    and the base model's zero-shot and few-shot rows.
    """

    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of every model (0: greedy)."})
    max_new_tokens: int = field(default=32, metadata={"help": "Tokens sampled at most per completion."})
    few_shot_examples: int = field(default=3, metadata={"help": "Examples in the tiny world's few-shot base row."})
    best_of_n: int = field(default=8, metadata={"help": "N of the SFT best-of-N row (1: no such row)."})
    num_samples_shown: int = field(default=4, metadata={"help": "Prompts shown with every model's completion."})
    batch_size: int = field(default=50, metadata={"help": "Sequences sampled or scored at a time."})
    bootstrap_resamples: int = field(default=2000, metadata={"help": "Resamples of the 95% bootstrap intervals."})
    seed: int = field(default=0, metadata={"help": "Seed of the sampling and of the bootstrap."})
    eval_dataset: str | None = field(
        default=None,
        metadata={"help": "Prompts (a dataset hf_rlhf reads, `prompt` column). Unset: the RL dataset's test split."},
    )
    eval_split: str = field(default="test", metadata={"help": "The split of `eval_dataset` to use."})
    max_eval_prompts: int | None = field(default=None, metadata={"help": "Use the first N prompts (unset: all)."})
    models: dict[str, str] | str | None = field(
        default=None,
        metadata={"help": "More deployable models to measure, {row name: directory or Hub id} (a mapping or JSON)."},
    )
    reference_model: str = field(
        default="SFT", metadata={"help": "The row every other model is compared with: 'SFT' or a name in `models`."}
    )
    judge_model: str | None = field(
        default=None,
        metadata={"help": "An instruct model (directory or Hub id) judging each model against the reference."},
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom code of `models` / the judge."})

    def __post_init__(self):
        if isinstance(self.models, str):
            try:
                self.models = json.loads(self.models)
            except json.JSONDecodeError as e:
                raise RecipeError(f"evaluation `models` must be a mapping or JSON object, got {self.models!r}") from e
        if self.models is not None and (
            not isinstance(self.models, dict)
            or not all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in self.models.items())
        ):
            raise RecipeError(f"evaluation `models` must map row names to model paths, got {self.models!r}")
        reserved = [n for n in self.models or {} if n == "SFT" or n.startswith(("SFT best-of", "RL (", "base ("))]
        if reserved:
            raise RecipeError(f"evaluation `models`: '{reserved[0]}' is the name of a pipeline row; choose another")
        if self.reference_model not in ("SFT", *(self.models or {})):
            raise RecipeError(
                f"evaluation `reference_model` '{self.reference_model}' must be 'SFT' or a name in `models` "
                f"({', '.join(self.models or {}) or 'none given'})"
            )
        for name in ("max_new_tokens", "best_of_n", "batch_size", "bootstrap_resamples", "num_samples_shown"):
            minimum = 0 if name == "num_samples_shown" else 1
            if not isinstance(getattr(self, name), int) or getattr(self, name) < minimum:
                raise RecipeError(f"evaluation `{name}` must be an integer >= {minimum}, got {getattr(self, name)!r}")
        if self.max_eval_prompts is not None and self.max_eval_prompts < 1:
            raise RecipeError(
                f"evaluation `max_eval_prompts` must be at least 1 (or unset), got {self.max_eval_prompts}"
            )
        if not self.temperature >= 0:
            raise RecipeError(f"evaluation `temperature` must be >= 0 (0: greedy), got {self.temperature}")


@dataclass
class RewardStageConfig(RewardConfig):
    """TRL's `RewardConfig`, plus how bad rows, long rows and centring are handled.

    Defaults that differ from `RewardConfig`: `activation_checkpointing=False` and `bf16=False` (as for SFT).
    """

    invalid_rows: str = field(
        default="error",
        metadata={"help": "Invalid comparison rows: 'error' stops naming the row, 'drop' drops and counts them."},
    )
    too_long: str = field(
        default="drop",
        metadata={"help": "Sequences over max_length: 'drop' the row, 'truncate' (keep the end), or 'error'."},
    )
    rating_score: str = field(
        default="overall_score",
        metadata={
            "help": "Rated completions (openbmb/UltraFeedback's `completions[]`): the score that ranks them, "
            "'overall_score', 'fine-grained_score' or 'aspects' (the mean of `rating_aspects`' ratings)."
        },
    )
    rating_aspects: list[str] | None = field(
        default=None,
        metadata={"help": "With rating_score 'aspects': the `annotations` aspects averaged (default: all four)."},
    )
    score_columns: dict[str, str] | str | None = field(
        default=None,
        metadata={
            "help": "Per-response score columns, {response column: score column} (a mapping or JSON), "
            "ranked by score with ties for equal scores."
        },
    )
    reference_dataset: str | None = field(
        default=None,
        metadata={"help": "Dataset whose mean reward is centred to 0 (the SFT demonstrations). Unset: no centring."},
    )
    reference_max_samples: int = field(default=1000, metadata={"help": "Reference rows used for centring."})
    calibration_bins: int = field(default=10, metadata={"help": "Bins of the held-out calibration table."})
    reward_head_init: str = field(
        default="stiennon",
        metadata={"help": "A new score head: 'stiennon' N(0, std 1/sqrt(d+1)), bias 0; 'model': the model's init."},
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of `activation_checkpointing` (transformers v5)."}
    )
    activation_checkpointing: bool | None = field(default=False, metadata={"help": "Recompute activations."})
    bf16: bool | None = field(default=False, metadata={"help": "Use bf16 mixed precision."})

    def __post_init__(self):
        if isinstance(self.score_columns, str):
            try:
                self.score_columns = json.loads(self.score_columns)
            except json.JSONDecodeError as e:
                raise RecipeError(
                    f"score_columns must be a mapping or a JSON object, got {self.score_columns!r}"
                ) from e
        super().__post_init__()


@dataclass
class PromptLengthArguments:
    """How `sample` and `rl` treat prompts too long for the policy (`hf_rlhf.data.prompts`)."""

    max_prompt_length: int | None = field(
        default=None,
        metadata={"help": "Longest prompt in tokens (default: the model's positions minus max_new_tokens)."},
    )
    long_prompts: str = field(
        default="drop",
        metadata={"help": "Prompts over max_prompt_length: 'drop' (counted), 'truncate' (keep the end) or 'error'."},
    )


@dataclass
class SampleArguments(PromptLengthArguments, GenerationBackendArguments):
    """How `hf-rlhf sample` writes K completions per prompt."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "The model that writes (the SFT model)."})
    output_dir: str | None = field(default=None, metadata={"help": "Where the comparison dataset is written."})
    num_completions: int = field(default=4, metadata={"help": "K: completions per prompt (>= 2)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (top-k and top-p are off)."})
    max_new_tokens: int = field(default=32, metadata={"help": "Tokens to sample at most per completion."})
    batch_size: int = field(default=64, metadata={"help": "Sequences generated at a time."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use at most this many prompts."})
    labeler: str = field(
        default="none",
        metadata={
            "help": "Who fills `ranking`: 'none' (left empty), 'human' (people, in `hf-rlhf label`), 'tiny_world' "
            "(the gold labeler), 'package.module:function', 'reward_model' or 'judge' (with labeler_model)."
        },
    )
    # labeler 'human': the pipeline stops after sampling until the project has its rankings (hf_rlhf.label.pipeline)
    label_db: str | None = field(default=None, metadata={"help": "Labeling database URL (sqlite:///<run>/labels.db)."})
    label_project: str | None = field(default=None, metadata={"help": "Labeling project (default: <run dir>-rank)."})
    label_min_rankings: int | None = field(default=None, metadata={"help": "Rankings to wait for (default: all)."})
    labeler_model: str | None = field(
        default=None, metadata={"help": "The reward model or judge model of labeler 'reward_model' / 'judge'."}
    )
    world_seed: int = field(default=0, metadata={"help": "Seed of the tiny world whose gold labeler ranks."})
    test_split_size: float = field(default=0.1, metadata={"help": "Fraction of prompts held out as the test split."})
    export_jsonl: bool = field(default=True, metadata={"help": "Also write comparisons_<split>.jsonl for people."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code."})
    # The trainer stages' Hub options, same names: the comparisons are pushed as a dataset repo (parquet and a card)
    push_to_hub: bool = field(default=False, metadata={"help": "Push the comparisons to the Hub when complete."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Dataset repo id (org/name) to push to."})
    hub_private_repo: bool | None = field(default=None, metadata={"help": "Create the dataset repo private."})
    hub_revision: str | None = field(default=None, metadata={"help": "Branch to push to (default: main)."})


@dataclass
class RLArguments(PromptLengthArguments):
    """What the RL stage optimises: the algorithm and the rewards."""

    algorithm: str = field(default="ppo", metadata={"help": "'ppo' (hf_rlhf's own), 'grpo' or 'rloo' (TRL)."})
    reward_model_path: str | None = field(default=None, metadata={"help": "Reward stage output (or any RM)."})
    value_model_path: str | None = field(
        default=None, metadata={"help": "PPO value model initialisation (default: the reward model)."}
    )
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "Extra reward functions: 'tiny_world_gold' or 'package.module:function'."},
    )
    world_seed: int = field(default=0, metadata={"help": "Seed of the tiny world for 'tiny_world_gold'."})
    log_completions_steps: int = field(
        default=10,
        metadata={
            "help": "Every this many updates, log a table of sample completions (prompt, completion, reward-model "
            "score, each reward) to `completions.jsonl` and the `report_to` trackers (0: never)."
        },
    )
    log_completions_rows: int = field(
        default=8, metadata={"help": "Rows of each completions table (the first prompts of the update)."}
    )
    ptx_dataset_name: str | None = field(
        default=None, metadata={"help": "PPO-ptx: text, messages or prompt-completion rows trained with ptx_coef."}
    )
    ptx_dataset_split: str = field(default="train", metadata={"help": "Split of ptx_dataset_name."})

    def __post_init__(self):
        if self.log_completions_steps < 0 or self.log_completions_rows < 1:
            raise ValueError("log_completions_steps must be >= 0 and log_completions_rows >= 1")


RL_CONFIGS = {"ppo": PPOConfig, "grpo": GRPOConfig, "rloo": RLOOConfig}  # `algorithm` -> trainer config
