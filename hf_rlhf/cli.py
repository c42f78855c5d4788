"""`hf-rlhf <command>`: a dict from command name to the function that runs it, nothing else.

Every command is a thin layer over a Python function that a notebook can call with the same dataclasses.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from .launching import launch_or_continue, names_text

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module:function taking argv, one-line help)
    "world": ("hf_rlhf.data.world:main", "Generate the tiny world's datasets (documents, demonstrations, prompts)."),
    "pretrain": ("hf_rlhf.stages.pretrain:main", "Stage 1: pretrain a causal LM on raw documents."),
    "sft": ("hf_rlhf.stages.sft:main", "Stage 2: supervised finetuning on demonstrations (TRL SFTTrainer)."),
    "sample": ("hf_rlhf.stages.sample:main", "Write K completions per prompt for ranking (comparison collection)."),
    "reward": ("hf_rlhf.stages.reward:main", "Stage 3: reward modeling on comparisons (TRL RewardTrainer)."),
    "rl": ("hf_rlhf.stages.rl:main", "Stage 4: RL against the reward model (PPO, or GRPO / RLOO via TRL)."),
    "score": ("hf_rlhf.reward.scorer:main", "Score (prompt, response) rows with a reward model."),
    "generate": (
        "hf_rlhf.eval.generation:main",
        "Sample completions from a model, optionally best-of-N with a reward model.",
    ),
    "evaluate": (
        "hf_rlhf.eval.evaluate:main",
        "Compare models on held-out prompts: reward-model win rates vs a reference, KL, samples.",
    ),
    "merge": ("hf_rlhf.merge:main", "Merge a LoRA stage output into its base: a full model for deployment."),
    "compare": ("hf_rlhf.eval.compare:main", "Pipeline reports side by side (e.g. full precision, LoRA, QLoRA)."),
    "pipeline": ("hf_rlhf.pipeline:main", "Run the stages of a pipeline recipe in order and write the report."),
    "label": (
        "hf_rlhf.label.cli:main",
        "The labeling web app: serve, create projects and labelers, export rankings and demonstrations.",
    ),
    "vllm-serve": (
        "hf_rlhf.vllm_serve:main",
        "Serve a model with vLLM over HTTP for generation_backend: vllm (docs/vllm.md).",
    ),
    "push": (
        "hf_rlhf.hub.push:main",
        "Push a finished stage (or a dataset) to the Hub; retries a failed push.",
    ),
}


# `--dry-run`: the plan and memory estimate of a stage or pipeline, without loading weights (hf_rlhf.plan).
# These commands also take `--accelerate_config NAME|FILE` (hf_rlhf.launching), for the plan or the real run.
DRY_RUN = {
    "pipeline": "hf_rlhf.plan.pipeline:main",
    **dict.fromkeys(("pretrain", "sft", "sample", "reward", "rl"), "hf_rlhf.plan.pipeline:stage_main"),
}


def _load(target: str) -> Callable[[list[str]], object]:
    import importlib

    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: hf-rlhf <command> [options]", "", "Train a GPT assistant through the classic RLHF pipeline.", ""]
    lines += ["commands:"] + [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `hf-rlhf <command> --help` for the options of a command."]
    lines += ["Add --dry-run to a stage or pipeline command for its plan and GPU memory estimate (no weights loaded)."]
    lines += [
        "Add --accelerate_config NAME|FILE to a stage or pipeline command to run it under `accelerate launch`;",
        f"  named configs: {names_text()}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"hf-rlhf: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    from .errors import USER_ERRORS, TrainingInterrupted
    from .resilience import INTERRUPTED_EXIT_CODE, use_cpu_if_no_accelerator

    use_cpu_if_no_accelerator()  # `accelerate launch` of several processes on a machine without GPUs: CPU + gloo
    target = COMMANDS[name][0]
    if "--dry-run" in rest and name in DRY_RUN:
        target = DRY_RUN[name]
        rest = rest if name == "pipeline" else [name, *rest]
    try:
        if name in DRY_RUN and target == COMMANDS[name][0]:  # a real run: under `accelerate launch`, when asked
            default = _load("hf_rlhf.pipeline:recipe_accelerate_config") if name == "pipeline" else None
            code, rest = launch_or_continue(name, rest, default)
            if code is not None:
                return code
        _load(target)(rest)
    except USER_ERRORS as e:
        print(f"hf-rlhf {name}: error: {e}", file=sys.stderr)
        return 1
    except TrainingInterrupted as e:  # SIGTERM: a checkpoint was saved; the message says how to resume
        print(f"hf-rlhf {name}: interrupted: {e}", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
