"""`from_pretrained` keyword arguments for bitsandbytes 4/8-bit loading, from TRL's `ModelConfig`."""

from __future__ import annotations

from typing import Any

from trl import ModelConfig


def quantization_kwargs(model_args: ModelConfig) -> dict[str, Any]:
    """`from_pretrained` keyword arguments for bitsandbytes 4/8-bit loading (`{}` when not quantized).

    Built with TRL's `get_quantization_config` from `load_in_4bit`, `load_in_8bit`, `bnb_4bit_quant_type`,
    `use_bnb_nested_quant` and `dtype` (the 4-bit compute dtype: bfloat16 on CUDA, float32 elsewhere, when unset).
    Each process loads its copy straight onto its own device (`hf_rlhf.placement.load_device_map`).
    """
    if model_args.load_in_4bit and model_args.load_in_8bit:
        raise ValueError("choose one of `load_in_4bit` and `load_in_8bit`")
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return {}
    from trl import get_quantization_config

    from .placement import load_device_map, process_device

    device = process_device()
    if model_args.dtype in (None, "auto"):
        model_args.dtype = "bfloat16" if device.type == "cuda" else "float32"
    kwargs = {"quantization_config": get_quantization_config(model_args), "device_map": load_device_map()}
    if device.type == "cpu":
        # On CPU the unquantized tensors (embeddings, head, norms) would stay views into the memory-mapped
        # checkpoint, which keeps every page of the full-precision file resident: read it once instead, and let it go.
        kwargs["disable_mmap"] = True
    return kwargs
