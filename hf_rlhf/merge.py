"""`hf-rlhf merge`: turn a LoRA stage output into a full model for deployment (or for a next stage that needs one).

The adapter is merged into its base in full precision: a base that was loaded in 4/8-bit for QLoRA training is read
unquantized (and a pre-quantized base checkpoint is dequantized) before merging, so the merged weights are plain
safetensors any `from_pretrained` loads. A chain of adapters (a LoRA reward model on a LoRA SFT model) is merged all
the way down. The output is a finished stage directory: weights, tokenizer, card and a manifest that names the
adapter it came from.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from trl import ModelConfig

from .manifest import read_manifest
from .modeling import adapter_base, adapter_task, is_adapter_dir, load_pretrained, load_tokenizer, resolve_model
from .outputs import check_output, finish_stage, open_output
from .recipes import RecipeError
from .storage import check_space, writing

logger = logging.getLogger(__name__)


def merge(
    adapter_dir: str,
    output_dir: str,
    *,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    overwrite: bool = False,
) -> dict:
    """Merge the adapter in `adapter_dir` into its base and save the full model to `output_dir`.

    Like a stage, it is written in `<output_dir>.partial` and swapped in once complete (`hf_rlhf.outputs`); a
    complete stage already in `output_dir` is replaced only with `overwrite`.

    Returns:
        `dict`: the manifest of the merged output (same stage as the adapter's, with `merged_from`).
    """
    check_output(output_dir, overwrite)  # before anything loads
    adapter = resolve_model(adapter_dir, "adapter")
    path = adapter.path
    if not is_adapter_dir(path):
        raise RecipeError(f"'{adapter_dir}' holds full weights, not a LoRA adapter: nothing to merge")
    if os.path.abspath(output_dir) == os.path.abspath(path):
        raise RecipeError("merge: `output_dir` must differ from the adapter directory")
    reward = adapter_task(path) == "SEQ_CLS"
    model_class = AutoModelForSequenceClassification if reward else AutoModelForCausalLM
    partial = open_output(output_dir, overwrite)
    model = load_pretrained(
        model_class,
        path,
        model_args=ModelConfig(dtype=dtype),
        trust_remote_code=trust_remote_code,
        quantize=False,
        **({"num_labels": 1} if reward else {}),
    )
    check_space(partial, model)  # the merged weights fit on the disk, or a one-line error
    with writing(partial):
        model.save_pretrained(partial, safe_serialization=True)
        load_tokenizer(path, trust_remote_code=trust_remote_code).save_pretrained(partial)
    source = read_manifest(path) or {}
    merged_from = {"adapter": adapter_dir, "base": adapter_base(path)}
    logger.info("merged %s into %s -> %s", adapter_dir, merged_from["base"], output_dir)
    return finish_stage(
        partial,
        source.get("stage", "merge"),
        configs=source.get("configs", {}),
        inputs={**source.get("inputs", {}), "adapter": adapter},
        metrics=source.get("metrics", {}),
        extra={"merged_from": merged_from, **({"model_kind": source["model_kind"]} if "model_kind" in source else {})},
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`hf-rlhf merge ADAPTER_DIR OUTPUT_DIR`: merge a LoRA stage output into a full model."""
    parser = argparse.ArgumentParser(prog="hf-rlhf merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("adapter_dir", help="A stage output that holds a LoRA adapter (adapter_config.json).")
    parser.add_argument("output_dir", help="Where to write the merged full model.")
    parser.add_argument("--dtype", default=None, help="Dtype of the merged weights (default: the base's).")
    parser.add_argument("--trust_remote_code", action="store_true", help="Allow custom model code.")
    parser.add_argument(
        "--overwrite", action="store_true", help="Replace a complete stage in OUTPUT_DIR (kept until the new one is)."
    )
    args = parser.parse_args(argv)
    manifest = merge(
        args.adapter_dir,
        args.output_dir,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
        overwrite=args.overwrite,
    )
    print(f"merged {args.adapter_dir} -> {args.output_dir} ({manifest['stage']} model, full weights)")
    return manifest
