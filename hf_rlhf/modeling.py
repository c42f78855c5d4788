"""The one place that loads tokenizers and models, for every stage and role.

Only safetensors are read (`use_safetensors=True`: loading never unpickles), `trust_remote_code` is off unless the
recipe turns it on, and a model path that does not exist is an error before anything is built.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig

from .tokenizer import PAD_TOKEN


class ModelNotFoundError(FileNotFoundError):
    """A model or tokenizer path that does not exist or holds no model."""


def resolve_model_path(name_or_path: str, what: str = "model") -> str:
    """Check that a model (or tokenizer) directory exists and return it.

    Hub ids (`org/name[@revision]`) are resolved by the Hub module once it lands; until then a path that is not a
    directory is an error that says so.
    """
    if os.path.isdir(name_or_path):
        return name_or_path
    raise ModelNotFoundError(f"{what} path '{name_or_path}' does not exist (expected a local directory)")


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Give the tokenizer a PAD token distinct from EOS. Returns True if a token was added (resize embeddings)."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    added = tokenizer.add_special_tokens({"pad_token": PAD_TOKEN}) > 0
    return added


def load_tokenizer(
    name_or_path: str, *, revision: str = "main", trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """Load a tokenizer and make sure PAD exists and differs from EOS."""
    path = resolve_model_path(name_or_path, "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    ensure_pad_token(tokenizer)
    return tokenizer


def torch_dtype(name: str | None) -> torch.dtype | str | None:
    if name in (None, "auto"):
        return name
    return getattr(torch, name)


def model_from_config(
    model_type: str, tokenizer: PreTrainedTokenizerBase, config_kwargs: dict[str, Any] | None = None
) -> PreTrainedModel:
    """A randomly initialised causal LM of any `AutoConfig` model type, sized to the tokenizer."""
    config = AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **(config_kwargs or {}),
    )
    return AutoModelForCausalLM.from_config(config)


def load_causal_lm(
    model_args: ModelConfig,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    trust_remote_code: bool = False,
    name_or_path: str | None = None,
) -> PreTrainedModel:
    """Load a causal LM from a directory (safetensors only) with the dtype and attention of `model_args`.

    If the tokenizer has more tokens than the embedding (a PAD token was added), the embeddings are resized.
    """
    path = resolve_model_path(name_or_path or model_args.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(
        path,
        revision=model_args.model_revision,
        dtype=torch_dtype(model_args.dtype),
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
    )
    if tokenizer is not None:
        sync_model_to_tokenizer(model, tokenizer)
    return model


def sync_model_to_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Resize embeddings to the tokenizer and use its PAD/EOS ids in the model and generation configs."""
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    for cfg in (model.config, model.generation_config):
        if cfg is not None:
            cfg.pad_token_id = tokenizer.pad_token_id
            cfg.eos_token_id = tokenizer.eos_token_id


def load_model_for_inference(
    path: str, *, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a finished stage's causal LM and tokenizer for generation, in eval mode."""
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    model = load_causal_lm(
        ModelConfig(model_name_or_path=path), tokenizer=tokenizer, trust_remote_code=trust_remote_code
    )
    return model.eval(), tokenizer
