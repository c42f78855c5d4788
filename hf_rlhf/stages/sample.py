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
from ..data.formats import PROMPT_FORMATS
from ..data.loading import resolve_dataset
from ..errors import RecipeError
from ..eval.generation import format_prompts, generate
from ..hub.push import push_request, push_stage
from ..manifest import finish_stage, require_complete, start_stage
from ..plan import rows
from ..plan.context import Context, StagePlan, describe_data
from ..plan.memory import Role, estimate, rollout_activations
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


def check_arguments(data_args: DataArguments, args: SampleArguments) -> None:
    """What `run` checks of the recipe before reading data (`plan` checks the same)."""
    if args.num_completions < 2:
        raise RecipeError(f"num_completions must be at least 2, got {args.num_completions}")
    if args.labeler not in LABELERS:
        raise RecipeError(f"labeler must be one of {LABELERS}, got {args.labeler!r}")
    if not args.output_dir or not args.model_name_or_path:
        raise RecipeError("sample needs `model_name_or_path` and `output_dir`")


def run(data_args: DataArguments, args: SampleArguments) -> dict[str, Any]:
    """Write the comparison dataset (and JSONL exports) to `args.output_dir`; returns the manifest."""
    from ..data.loading import load_stage_dataset
    from ..modeling import load_model_for_inference, resolve_model

    check_arguments(data_args, args)
    data = load_stage_dataset(DataArguments(**{**vars(data_args), "eval_split_size": 0.0}))
    where = f"dataset '{data_args.dataset_name}', split '{data_args.dataset_train_split}'"
    PROMPT_FORMATS.detect(data["train"].column_names, where)
    prompts = data["train"]["prompt"][: args.max_prompts]
    inputs = {
        "model": resolve_model(args.model_name_or_path),
        "dataset": {"name": resolve_dataset(data_args.dataset_name)},
    }
    state = process_state()
    if not state.is_main_process:  # under `accelerate launch` the main process samples and writes; the rest wait
        state.wait_for_everyone()
        return require_complete(args.output_dir)
    push = push_request(args)  # checked now: a push that cannot happen fails before sampling
    start_stage(args.output_dir)

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
        inputs=inputs,
        metrics={"num_prompts": len(prompts), "num_completions": args.num_completions, "labeler": args.labeler},
        push=push,
    )
    if push is not None:
        manifest = push_stage(args.output_dir, push)
    state.wait_for_everyone()
    return manifest


def plan(data_args: DataArguments, args: SampleArguments, ctx: Context) -> StagePlan:
    """The dry run of `run`: the same checks, then what it would generate (`hf_rlhf.plan`)."""
    check_arguments(data_args, args)
    out = StagePlan("sample")
    arch, label = ctx.model(args.model_name_or_path, "model_name_or_path")
    rows.model_rows(out, arch, label)
    text, info = describe_data(data_args, ctx, PROMPT_FORMATS, test_split="test")
    out.rows.append(("data", text))
    k, seq = args.num_completions, rows.prompt_tokens(info, arch, args.max_new_tokens) + args.max_new_tokens
    out.rows.append(
        (
            "sampling",
            f"K={k} completions per prompt, temperature {args.temperature:g}, <= {args.max_new_tokens} new "
            f"tokens, {args.batch_size} sequences at a time; ranked by: {args.labeler}",
        )
    )
    out.roles = [Role("model", arch, dtype="float32", prepared=False)]
    out.rows.append(("activations", f"generation of {args.batch_size} x {seq} tokens"))
    out.memory = estimate(out.roles, rollout_activations(arch, args.batch_size, seq, 4), ctx.launch)
    out.extra["num_completions"] = k
    return out


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
    from ..recipes import parse_command_line

    manifest = run(*parse_command_line(arguments, argv, prog="hf-rlhf sample"))
    print(json.dumps(manifest["metrics"]))
    return manifest
