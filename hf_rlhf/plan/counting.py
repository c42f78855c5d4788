"""Exact parameter counts of a model built on the meta device: no memory, no weights, the real module shapes.

With a peft config, the trainable parameters are counted as peft creates them, on the meta device too.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

from . import DryRunError


def meta_model(config: Any, head: str):
    """The model of `config` on the meta device: no memory, no weights, exact parameter shapes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = copy.deepcopy(config)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        if head == "reward":
            config.num_labels = 1
            return AutoModelForSequenceClassification.from_config(config)
        return AutoModelForCausalLM.from_config(config)


def peft_counts(model: Any, peft_config: Any, name: str) -> tuple[int, int]:
    """(trainable, total) parameters of `model` wrapped by peft, adapters created on the meta device too."""
    from accelerate import init_empty_weights
    from peft import get_peft_model

    try:
        with warnings.catch_warnings(), init_empty_weights():
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(model, copy.deepcopy(peft_config))
    except ValueError as e:
        raise DryRunError(f"LoRA settings do not fit {name}: {e}") from e
    return (
        sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
        sum(p.numel() for p in peft_model.parameters()),
    )


def _decoder_layers(model: Any, num_layers: int) -> Any:
    import torch

    return next(
        (m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == num_layers and num_layers > 1),
        None,
    )


def _with_layers(config: Any, n: int) -> Any:
    config = copy.deepcopy(config)
    config.num_hidden_layers = n
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:n]
    return config


def _smallpeft_counts(config: Any, head: str, peft_config: Any, name: str, n: int) -> tuple[int, int]:
    """(trainable, added) parameters of peft on an `n`-layer copy of the model."""
    small = meta_model(_with_layers(config, n), head)
    base = sum(p.numel() for p in small.parameters())
    trainable, total = peft_counts(small, peft_config, name)
    return trainable, total - base


def count_on_meta(config: Any, head: str, peft_config: Any, name: str) -> dict[str, Any]:
    """Parameter counts of a model built on the meta device; with a peft config, its trainable parameters as peft
    creates them. When every decoder layer has the same parameter shapes (and the peft config no per-layer
    patterns), peft wraps 1- and 2-layer copies and the counts are extended to L layers: exact, and faster."""
    import torch
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = meta_model(config, head)
        out = {"class": type(model).__name__, "total": sum(p.numel() for p in model.parameters())}
        out["linear"] = sum(
            m.weight.numel()
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.split(".")[-1] not in ("lm_head", "score")
        )
        out["trainable"] = out["total"]
        if peft_config is None:
            return out
        layers = _decoder_layers(model, config.num_hidden_layers)
        shapes = [[(n, p.shape) for n, p in layer.named_parameters()] for layer in layers] if layers else []
        patterns = any(getattr(peft_config, a, None) for a in ("layers_to_transform", "rank_pattern", "alpha_pattern"))
        if shapes and all(s == shapes[0] for s in shapes) and not patterns:
            (t1, a1), (t2, a2) = (_smallpeft_counts(config, head, peft_config, name, n) for n in (1, 2))
            extra = config.num_hidden_layers - 1
            out["trainable"] = t1 + extra * (t2 - t1)
            out["total"] += a1 + extra * (a2 - a1)
        else:
            out["trainable"], out["total"] = peft_counts(model, peft_config, name)
    finally:
        hf_logging.set_verbosity(verbosity)
    return out
