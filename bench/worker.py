"""One timed benchmark run, in its own process: one stage (pretrain or sft) through one side (hf_rlhf or plain).

`bench/run.py` starts this script once per run, so neither side profits from imports, compiled kernels, allocator
state or `datasets` caches left behind by the other. It writes a JSON result file:

* `stage_s`: wall time of the whole stage call, from just before the stage is given its arguments until it returns:
  argument parsing, dataset loading (and, for hf_rlhf, its checks), for pretraining tokenizer training, model
  building and packing, for SFT tokenizer and model loading and TRL's tokenization, then training, the final
  evaluation and saving (for hf_rlhf, also the manifest). Library imports are done before the clock starts, on both
  sides, so the span is the same work; `run.py` also records the process wall time, which includes interpreter
  start and imports.
* `train_s`: wall time of `Trainer.train` alone (the training loop), on both sides taken by the same wrapper.
* `train_tokens`: non-padding tokens fed to the model in training forward passes, counted by the same forward hook.
* the resolved trainer arguments, so `run.py` can check that both sides trained with the same values.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch
import transformers

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
# Trainer arguments that name paths or runs and so legitimately differ between the two sides.
PATH_ARGS = ("output_dir", "logging_dir", "run_name", "hub_model_id")


class TrainProbe:
    """Wraps `transformers.Trainer.train` (which `SFTTrainer` inherits) to time it and count the tokens it trains on.

    The same probe is installed on both sides, so its (tiny) cost is paid equally.
    """

    def __init__(self) -> None:
        self.train_s = 0.0
        self.tokens = 0
        self.num_parameters = 0
        self.args: dict[str, Any] = {}
        self.global_step = 0

    def install(self) -> None:
        original = transformers.Trainer.train
        probe = self

        def train(trainer: transformers.Trainer, *args: Any, **kwargs: Any):
            handle = trainer.model.register_forward_pre_hook(probe.count_tokens, with_kwargs=True)
            start = time.perf_counter()
            try:
                return original(trainer, *args, **kwargs)
            finally:
                probe.train_s += time.perf_counter() - start
                handle.remove()
                probe.num_parameters = trainer.model.num_parameters()
                probe.global_step = trainer.state.global_step
                probe.args = {k: v for k, v in trainer.args.to_dict().items() if k not in PATH_ARGS}

        transformers.Trainer.train = train

    def count_tokens(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook: add the batch's non-padding tokens, in training mode only (evaluation is not counted)."""
        if not module.training:
            return
        mask = kwargs.get("attention_mask")
        if mask is not None:
            self.tokens += int(mask.sum())
        else:
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.tokens += ids.numel() if ids is not None else 0


def run_hf_rlhf(stage: str, a: argparse.Namespace) -> dict[str, Any]:
    """The stage exactly as `hf-rlhf <stage>` runs it: `parse_command_line` on a CLI argv, then `run`."""
    from hf_rlhf.recipes import parse_command_line
    from hf_rlhf.stages import pretrain, sft

    argv = ["--config", a.recipe, "--dataset_name", a.dataset, "--output_dir", a.output_dir]
    argv += ["--max_steps", str(a.max_steps)]
    if stage == "pretrain":
        module = pretrain  # from scratch, with a BPE tokenizer trained on the corpus (the recipe's default path)
    else:
        argv += ["--model_name_or_path", a.model]
        module = sft
    start = time.perf_counter()
    manifest = module.run(*parse_command_line(module.arguments, argv, prog=f"hf-rlhf {stage}"))
    stage_s = time.perf_counter() - start
    metrics = manifest["metrics"]
    return {"stage_s": stage_s, "train_loss": metrics["train_loss"], "eval_loss": metrics.get("eval_loss")}


def run_plain(stage: str, a: argparse.Namespace) -> dict[str, Any]:
    """The hand-written script of `bench/plain.py` (imported by `main` before the clock starts)."""
    import plain

    start = time.perf_counter()
    if stage == "pretrain":
        metrics = plain.pretrain(a.dataset, a.output_dir, recipe=a.recipe, max_steps=a.max_steps)
    else:
        metrics = plain.sft(a.dataset, a.model, a.output_dir, recipe=a.recipe, max_steps=a.max_steps)
    stage_s = time.perf_counter() - start
    return {"stage_s": stage_s, **metrics}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="One timed benchmark run (started by bench/run.py).")
    parser.add_argument("--side", choices=["hf_rlhf", "plain"], required=True)
    parser.add_argument("--stage", choices=["pretrain", "sft"], required=True)
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_steps", type=int, required=True)
    parser.add_argument("--model", help="Pretrained model directory (sft).")
    parser.add_argument("--result", required=True, help="Where to write the JSON result.")
    a = parser.parse_args(argv)

    # Import everything both sides need before any clock starts: the imports are not the work being compared.
    import datasets  # noqa: F401
    import trl  # noqa: F401

    if a.side == "hf_rlhf":
        import hf_rlhf.stages.pretrain  # noqa: F401
        import hf_rlhf.stages.sft  # noqa: F401
    else:
        sys.path.insert(0, BENCH_DIR)
        import plain  # noqa: F401

    probe = TrainProbe()
    probe.install()
    result = (run_hf_rlhf if a.side == "hf_rlhf" else run_plain)(a.stage, a)
    result.update(
        side=a.side,
        stage=a.stage,
        train_s=probe.train_s,
        train_tokens=probe.tokens,
        global_step=probe.global_step,
        num_parameters=probe.num_parameters,
        threads=torch.get_num_threads(),
        args=probe.args,
    )
    with open(a.result, "w") as f:
        json.dump(result, f, indent=2, default=str)


if __name__ == "__main__":
    main()
