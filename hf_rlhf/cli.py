"""`hf-rlhf <command>`: a dict from command name to the function that runs it, nothing else.

Every command is a thin layer over a Python function that a notebook can call with the same dataclasses.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module:function taking argv, one-line help)
    "world": ("hf_rlhf.data.world:main", "Generate the tiny world's datasets (documents, demonstrations, prompts)."),
    "pretrain": ("hf_rlhf.stages.pretrain:main", "Stage 1: pretrain a causal LM on raw documents."),
    "sft": ("hf_rlhf.stages.sft:main", "Stage 2: supervised finetuning on demonstrations (TRL SFTTrainer)."),
    "sample": ("hf_rlhf.comparisons:main", "Write K completions per prompt for ranking (comparison collection)."),
    "reward": ("hf_rlhf.stages.reward:main", "Stage 3: reward modeling on comparisons (TRL RewardTrainer)."),
    "rl": ("hf_rlhf.stages.rl:main", "Stage 4: RL against the reward model (PPO, or GRPO / RLOO via TRL)."),
    "score": ("hf_rlhf.rewards:main", "Score (prompt, response) rows with a reward model."),
    "generate": (
        "hf_rlhf.evaluation:main",
        "Sample completions from a model, optionally best-of-N with a reward model.",
    ),
    "pipeline": ("hf_rlhf.pipeline:main", "Run the stages of a pipeline recipe in order and write the report."),
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
    from .configs import RecipeError
    from .data.formats import DataValidationError
    from .modeling import ModelNotFoundError

    try:
        _load(COMMANDS[name][0])(rest)
    except (RecipeError, DataValidationError, ModelNotFoundError) as e:
        print(f"hf-rlhf {name}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
