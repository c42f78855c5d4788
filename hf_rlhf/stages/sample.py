"""Collecting comparisons: the SFT model writes K completions per prompt, then contractors rank them.

`hf-rlhf sample` writes a dataset with `prompt`, `completions` and an empty `ranking`, saved with `save_to_disk` and
exported to JSONL so people can rank by hand (fill `ranking` with one rank per completion, 1 = best, equal ranks for
ties) and hand the JSONL to the reward stage. In the tiny world the gold labeler ranks them (the simulated
contractors: `--labeler tiny_world`). With `push_to_hub` the finished comparisons become a Hub dataset repo.
"""

from __future__ import annotations

import json
import os
from typing import Any

from datasets import Dataset, DatasetDict

from ..configs import DataArguments, SampleArguments
from ..eval.generation import format_prompts, generate
from ..manifest import finish_stage, require_complete, start_stage
from ..resilience import process_state
from ..reward.scorer import as_messages

LABELERS = ("none", "tiny_world")


def ranks_from_scores(scores: list[float]) -> list[int]:
    """Competition ranks (1 = best, ties share a rank): [0.5, 1.0, 0.5] -> [2, 1, 2]."""
    return [1 + sum(other > s for other in scores) for s in scores]


def sample_completions(
    model, tokenizer, prompts: list[Any], args: SampleArguments, desc: str = "sampling comparisons"
) -> list[list[str]]:
    """K completions per prompt; conversational prompts get the chat template."""
    formatted = format_prompts(tokenizer, prompts)
    repeated = [f for f in formatted for _ in range(args.num_completions)]
    flat = generate(
        model,
        tokenizer,
        repeated,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        batch_size=args.batch_size,
        seed=args.seed,
        desc=desc,
    )
    k = args.num_completions
    return [flat[i * k : (i + 1) * k] for i in range(len(prompts))]


def run(data_args: DataArguments, args: SampleArguments) -> dict[str, Any]:
    """Write the comparison dataset (and JSONL exports) to `args.output_dir`; returns the manifest."""
    from ..data.formats import DataValidationError, load_stage_dataset
    from ..modeling import load_model_for_inference, resolve_model_path
    from ..recipes import RecipeError

    if args.num_completions < 2:
        raise RecipeError(f"num_completions must be at least 2, got {args.num_completions}")
    if args.labeler not in LABELERS:
        raise RecipeError(f"labeler must be one of {LABELERS}, got {args.labeler!r}")
    if not args.output_dir or not args.model_name_or_path:
        raise RecipeError("sample needs `model_name_or_path` and `output_dir`")
    data = load_stage_dataset(DataArguments(**{**vars(data_args), "eval_split_size": 0.0}))
    if "prompt" not in data["train"].column_names:
        raise DataValidationError(
            f"dataset '{data_args.dataset_name}': expected a 'prompt' column, found {data['train'].column_names}"
        )
    prompts = data["train"]["prompt"][: args.max_prompts]
    resolve_model_path(args.model_name_or_path)
    state = process_state()
    if not state.is_main_process:  # under `accelerate launch` the main process samples and writes; the rest wait
        state.wait_for_everyone()
        return require_complete(args.output_dir)
    start_stage(args.output_dir, args)

    model, tokenizer = load_model_for_inference(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    completions = sample_completions(model, tokenizer, prompts, args)
    if args.labeler == "tiny_world":
        from ..data.world import TinyWorld

        world = TinyWorld(args.world_seed)
        rankings = [
            ranks_from_scores(world.gold_scores([_question(p)] * len(c), c))
            for p, c in zip(prompts, completions, strict=True)
        ]
    else:
        rankings = [[] for _ in prompts]
    dataset = Dataset.from_dict({"prompt": prompts, "completions": completions, "ranking": rankings})
    splits = (
        dataset.train_test_split(test_size=args.test_split_size, seed=args.seed)
        if 0 < args.test_split_size < 1 and len(dataset) >= 2
        else DatasetDict(train=dataset)
    )
    splits.save_to_disk(args.output_dir)
    if args.export_jsonl:
        for split, ds in splits.items():
            ds.to_json(os.path.join(args.output_dir, f"comparisons_{split}.jsonl"), lines=True)
    manifest = finish_stage(
        args.output_dir,
        "sample",
        configs={"data": data_args, "sample": args},
        inputs={"model": args.model_name_or_path, "dataset": {"name": data_args.dataset_name}},
        metrics={"num_prompts": len(prompts), "num_completions": args.num_completions, "labeler": args.labeler},
    )
    state.wait_for_everyone()
    return manifest


def _question(prompt: Any) -> str:
    messages = as_messages(prompt)
    return messages[-1]["content"] if messages else prompt


def arguments(algorithm: str | None = None) -> tuple[type, ...]:
    """The dataclasses of this stage, in the order `run` takes them."""
    return (DataArguments, SampleArguments)


def make_parser(prog: str | None = None):
    from trl import TrlParser

    return TrlParser(arguments(), prog=prog)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`hf-rlhf sample`: K completions per prompt, ready to be ranked."""
    from ..recipes import parse_stage_args

    data_args, args = parse_stage_args(make_parser("hf-rlhf sample"), argv)
    manifest = run(data_args, args)
    print(json.dumps(manifest["metrics"]))
    return manifest
