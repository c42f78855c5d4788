"""What `--dry-run` knows of public models and datasets when it cannot read them.

`MODELS` is an offline fallback only: the dry run reads a model's real `config.json` (`hf_rlhf.plan.architecture`,
through the HF cache) and uses these fields (copied from each Hub repository's config.json; instruct variants share
their base's shape) only when that cannot be read, saying so in the plan ("config from hf_rlhf's bundled table: not
fetched"). Any other model is planned from its config.json: fetched once (`hf download <id> config.json`), or in a
local directory.

`DATASETS` holds the columns, splits and configurations of the public datasets the recipes in `recipes/` name, so the
dry run can check that a stage accepts a dataset's format. Any other Hub dataset is planned as "columns checked at
load time". `prompt_tokens` is a typical upper bound of the prompt length, used to size RL rollouts.
"""

from __future__ import annotations

from typing import Any

_SMOLLM2_135M = {
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 8192,
}
_SMOLLM2_360M = {
    "model_type": "llama",
    "hidden_size": 960,
    "intermediate_size": 2560,
    "num_hidden_layers": 32,
    "num_attention_heads": 15,
    "num_key_value_heads": 5,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 8192,
}
_SMOLLM2_1_7B = {
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 24,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "max_position_embeddings": 8192,
}
_LLAMA_3_1_8B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "max_position_embeddings": 131072,
}
_LLAMA_3_2_1B = {
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "tie_word_embeddings": True,
    "max_position_embeddings": 131072,
}
_QWEN2_5_0_5B = {
    "model_type": "qwen2",
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "max_position_embeddings": 32768,
}
_QWEN2_5_7B = {
    "model_type": "qwen2",
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
    "max_position_embeddings": 131072,
}
_MISTRAL_7B_V0_3 = {
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32768,
    "tie_word_embeddings": False,
    "max_position_embeddings": 32768,
}

# Hub id -> config.json fields. Published sizes, for the tests: SmolLM2-135M 134.5M, SmolLM2-360M 361.8M,
# SmolLM2-1.7B 1.71B, Llama-3.2-1B 1.24B, Llama-3.1-8B 8.03B, Qwen2.5-0.5B 0.49B, Qwen2.5-7B 7.62B, Mistral-7B 7.25B.
MODELS: dict[str, dict[str, Any]] = {
    "HuggingFaceTB/SmolLM2-135M": _SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-135M-Instruct": _SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-360M": _SMOLLM2_360M,
    "HuggingFaceTB/SmolLM2-360M-Instruct": _SMOLLM2_360M,
    "HuggingFaceTB/SmolLM2-1.7B": _SMOLLM2_1_7B,
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": _SMOLLM2_1_7B,
    "meta-llama/Llama-3.2-1B": _LLAMA_3_2_1B,
    "meta-llama/Llama-3.2-1B-Instruct": _LLAMA_3_2_1B,
    "meta-llama/Llama-3.1-8B": _LLAMA_3_1_8B,
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA_3_1_8B,
    "Qwen/Qwen2.5-0.5B": _QWEN2_5_0_5B,
    "Qwen/Qwen2.5-0.5B-Instruct": _QWEN2_5_0_5B,
    "Qwen/Qwen2.5-7B": _QWEN2_5_7B,
    "Qwen/Qwen2.5-7B-Instruct": _QWEN2_5_7B,
    "mistralai/Mistral-7B-v0.3": _MISTRAL_7B_V0_3,
    "mistralai/Mistral-7B-Instruct-v0.3": _MISTRAL_7B_V0_3,
}

# Hub id -> columns, splits and configurations (None: the dataset has a single default configuration); `data_dirs`:
# subsets kept in folders (load_dataset's data_dir), one of which must be chosen.
DATASETS: dict[str, dict[str, Any]] = {
    "HuggingFaceFW/fineweb-edu": {
        "columns": [
            "text",
            "id",
            "dump",
            "url",
            "file_path",
            "language",
            "language_score",
            "token_count",
            "score",
            "int_score",
        ],
        "splits": ["train"],
        "configs": ["default", "sample-10BT", "sample-100BT", "sample-350BT"],
        "more_configs": "one per Common Crawl dump, e.g. CC-MAIN-2024-10",
        "about": "educational web pages filtered from FineWeb (1.3T tokens; sample-10BT is a 10B-token sample)",
    },
    "HuggingFaceTB/smol-smoltalk": {
        "columns": ["messages", "source"],
        "splits": ["train", "test"],
        "configs": None,
        "about": "SmolTalk's subset sized for models under 1B parameters (SmolLM2-135M/360M-Instruct's SFT data)",
    },
    "HuggingFaceH4/ultrachat_200k": {
        "columns": ["prompt", "prompt_id", "messages"],
        "splits": ["train_sft", "test_sft", "train_gen", "test_gen"],
        "configs": None,
        "about": "200k filtered multi-turn UltraChat dialogues (Zephyr's SFT data)",
    },
    "trl-lib/hh-rlhf-helpful-base": {
        "columns": ["prompt", "chosen", "rejected"],
        "splits": ["train", "test"],
        "configs": None,
        "about": "Anthropic HH-RLHF helpful-base comparisons, conversational with an explicit prompt",
    },
    "Anthropic/hh-rlhf": {
        "columns": ["chosen", "rejected"],
        "splits": ["train", "test"],
        "configs": None,
        "data_dirs": ["harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled"],
        "about": "Anthropic's HH-RLHF comparisons as plain '\\n\\nHuman: ... \\n\\nAssistant: ...' dialogues "
        "(turned into conversations, the shared turns as the prompt)",
    },
    "HuggingFaceH4/ultrafeedback_binarized": {
        "columns": ["prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"],
        "splits": ["train_prefs", "test_prefs", "train_sft", "test_sft", "train_gen", "test_gen"],
        "configs": None,
        "about": "UltraFeedback binarized (Zephyr's DPO data): the best-rated completion against a random other one; "
        "chosen/rejected repeat the prompt as their user turn",
    },
    "openbmb/UltraFeedback": {
        "columns": ["source", "instruction", "models", "completions", "correct_answers", "incorrect_answers"],
        "splits": ["train"],
        "configs": None,
        "about": "64k instructions with 4 completions each, rated by GPT-4 (overall_score, per-aspect ratings)",
        "completions": 4,
    },
    "trl-lib/tldr": {
        "columns": ["prompt", "completion"],
        "splits": ["train", "validation", "test"],
        "configs": None,
        "about": "Reddit TL;DR posts and summaries (TRL's summarisation prompts)",
        "prompt_tokens": 512,
    },
    "trl-lib/ultrafeedback-prompt": {
        "columns": ["prompt"],
        "splits": ["train", "test"],
        "configs": None,
        "about": "UltraFeedback instructions as conversational prompts (at most 512 characters)",
        "prompt_tokens": 192,
    },
}
