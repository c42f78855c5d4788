"""Collecting comparisons: the SFT model writes K completions per prompt, then a labeler ranks them.

`hf-rlhf sample` writes a dataset with `prompt`, `completions` and `ranking`, saved with `save_to_disk` and exported to
JSONL so people can rank by hand (fill `ranking` with one rank per completion, 1 = best, equal ranks for ties) and
hand the JSONL to the reward stage. `labeler` chooses who ranks: nobody (`none`), the tiny world's gold labeler
(`tiny_world`, the simulated contractors), a Python function, a reward model or a judge model
(`hf_rlhf.stages.sample_labelers`). The prompts are checked, and fitted to the model's positions, before any model
loads (`hf_rlhf.data.prompts`). Under `accelerate launch` the prompts are shared out over the processes, each
sampling and ranking its share on its own device, with the completions of one process (seeded per chunk of
`batch_size` sequences); the main process writes. With `push_to_hub` the finished comparisons become a Hub
dataset repo.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict
from tqdm.auto import tqdm

from ..configs import DataArguments, SampleArguments
from ..data.formats import PROMPT_FORMATS
from ..data.loading import resolve_dataset
from ..data.prompts import check_long_prompts, check_prompts, describe_policy, model_positions, prompt_length_limit
from ..data.world import is_world_question
from ..errors import RecipeError
from ..eval.generation import generate
from ..generation_backend import check_backend_options, make_backend
from ..hub import remote_code
from ..hub.push import push_request, push_stage
from ..manifest import require_complete
from ..outputs import check_output, finish_stage, start_stage
from ..placement import split_over_processes
from ..plan import rows
from ..plan.context import Context, StagePlan, describe_data
from ..plan.memory import Role, estimate, rollout_activations
from ..resilience import process_state
from ..storage import writing
from .sample_labelers import check_labeler, rank, ranks_from_scores

__all__ = ["ranks_from_scores", "run", "plan", "main"]
logger = logging.getLogger(__name__)


def chunk_seed(seed: int, index: int) -> int:
    """The sampling seed of chunk `index` of a run seeded with `seed` (numpy's `SeedSequence`: independent streams)."""
    return int(np.random.SeedSequence(seed % 2**64, spawn_key=(index,)).generate_state(1)[0])


def sample_completions(
    model, tokenizer, prompts: list[Any], args: SampleArguments, desc: str = "sampling comparisons"
) -> list[list[str]]:
    """K completions per prompt; conversational prompts get the chat template.

    The K x len(prompts) sequences are cut into chunks of `batch_size`, chunk `i` sampled with seed
    `chunk_seed(seed, i)`, and the chunks are shared out over the processes (`split_over_processes`): every process
    gets all the completions, the same for any number of processes.
    """
    k, size = args.num_completions, args.batch_size
    repeated = [p for p in prompts for _ in range(k)]
    chunks = list(enumerate(repeated[i : i + size] for i in range(0, len(repeated), size)))
    backend = make_backend(args)  # HF generate, or vLLM with the model's weights synced (docs/vllm.md)

    def sample_chunks(mine: list[tuple[int, list[Any]]]) -> list[list[str]]:
        shown = desc if process_state().is_local_main_process else None
        return [
            generate(
                model,
                tokenizer,
                chunk,
                max_new_tokens=args.max_new_tokens,
                temperature=args.temperature,
                batch_size=size,
                seed=chunk_seed(args.seed, i),
                backend=backend,
            )
            for i, chunk in tqdm(mine, desc=shown, disable=shown is None, leave=False)
        ]

    try:
        flat = [c for chunk in split_over_processes(chunks, sample_chunks) for c in chunk]
    finally:
        backend.close()
    return [flat[i * k : (i + 1) * k] for i in range(len(prompts))]


def rank_over_processes(args: SampleArguments, prompts: list[Any], completions: list[list[str]], function):
    """`rank` of each process's share of the prompts (its labeler model loaded on its own device), gathered."""

    def rank_share(rows: list[tuple[Any, list[str]]]) -> list[list[int]]:
        return rank(args, [p for p, _ in rows], [c for _, c in rows], function) if rows else []

    return split_over_processes(list(zip(prompts, completions, strict=True)), rank_share)


def check_arguments(data_args: DataArguments, args: SampleArguments):
    """What `run` checks of the recipe before reading data (`plan` checks the same); returns the labeler's
    function when it is `package.module:function`."""
    if args.num_completions < 2:
        raise RecipeError(f"num_completions must be at least 2, got {args.num_completions}")
    if not args.output_dir or not args.model_name_or_path:
        raise RecipeError("sample needs `model_name_or_path` and `output_dir`")
    check_long_prompts(args.long_prompts)
    try:
        check_backend_options(args)
    except ValueError as err:
        raise RecipeError(str(err)) from None
    return check_labeler(args.labeler, args.labeler_model)


def run(data_args: DataArguments, args: SampleArguments) -> dict[str, Any]:
    """Write the comparison dataset (and JSONL exports) to `args.output_dir`; returns the manifest."""
    from ..data.loading import load_stage_dataset
    from ..model_roles import check_model
    from ..modeling import load_model_for_inference, load_tokenizer, resolve_model

    function = check_arguments(data_args, args)
    remote_code.start_run(data_args.trust_remote_code_repos)  # whose remote code may run; recorded
    check_output(args.output_dir, data_args.overwrite)  # a complete stage there is kept
    if os.path.isdir(
        args.model_name_or_path
    ):  # in the wrong role, a local model stops here, a Hub one before it loads
        check_model(args.model_name_or_path, "policy", "model_name_or_path")  # it writes: a causal LM
    data = load_stage_dataset(DataArguments(**{**vars(data_args), "eval_split_size": 0.0}))
    where = f"dataset '{data_args.dataset_name}', split '{data_args.dataset_train_split}'"
    train = data["train"]
    if args.max_prompts is not None:
        train = train.select(range(min(args.max_prompts, len(train))))
    tokenizer = load_tokenizer(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    positions = model_positions(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    limit = prompt_length_limit(args.max_prompt_length, positions, args.max_new_tokens)
    train, prompt_rows = check_prompts(train, where, tokenizer, limit, args.long_prompts, min_rows=1)
    prompts = train["prompt"]
    inputs = {
        "model": resolve_model(args.model_name_or_path),
        "dataset": {"name": resolve_dataset(data_args)},
    }
    labeling = {"labeler": args.labeler}
    if args.labeler_model:
        inputs["labeler_model"] = resolve_model(args.labeler_model, "labeler_model")
        labeling["labeler_model"] = inputs["labeler_model"].name
    if args.labeler == "tiny_world":
        labeling["unranked_outside_world"] = sum(not is_world_question(p) for p in prompts)
        if labeling["unranked_outside_world"]:
            logger.warning(
                "%s: %d of %d prompts are not questions of the tiny world: labeler 'tiny_world' leaves their "
                "`ranking` empty (for people to fill in)", where, labeling["unranked_outside_world"], len(prompts),
            )  # fmt: skip
    state = process_state()
    push = push_request(args)  # checked now: a push that cannot happen fails before sampling
    if state.is_main_process:  # the main process writes, in <output_dir>.partial, swapped in when complete
        start_stage(args, data_args.overwrite)

    # under `accelerate launch` every process samples and ranks its share of the prompts on its own device
    model, tokenizer = load_model_for_inference(args.model_name_or_path, trust_remote_code=args.trust_remote_code)
    completions = sample_completions(model, tokenizer, prompts, args)
    del model  # a reward or judge labeler loads next
    rankings = rank_over_processes(args, prompts, completions, function)
    if not state.is_main_process:
        state.wait_for_everyone()
        return require_complete(args.output_dir)
    dataset = Dataset.from_dict({"prompt": prompts, "completions": completions, "ranking": rankings})
    splits = (
        dataset.train_test_split(test_size=args.test_split_size, seed=args.seed)
        if 0 < args.test_split_size < 1 and len(dataset) >= 2
        else DatasetDict(train=dataset)
    )
    with writing(args.output_dir):  # a full disk: one line, the previous output kept
        splits.save_to_disk(args.output_dir)
        if args.export_jsonl:
            for split, ds in splits.items():
                ds.to_json(os.path.join(args.output_dir, f"comparisons_{split}.jsonl"), lines=True)
    manifest = finish_stage(
        args.output_dir,
        "sample",
        configs={"data": data_args, "sample": args},
        inputs=inputs,
        metrics={
            "num_prompts": len(prompts),
            "num_completions": args.num_completions,
            **labeling,
            "rows": {"train": prompt_rows},
        },
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
    out.rows.append(
        (
            "prompts",
            describe_policy(args.max_prompt_length, arch.max_positions, args.max_new_tokens, args.long_prompts),
        )
    )
    k, seq = args.num_completions, rows.prompt_tokens(info, arch, args.max_new_tokens) + args.max_new_tokens
    out.rows.append(
        (
            "sampling",
            f"K={k} completions per prompt, temperature {args.temperature:g}, <= {args.max_new_tokens} new "
            f"tokens, {args.batch_size} sequences at a time; ranked by: {args.labeler}",
        )
    )
    out.roles = [Role("model", arch, dtype="float32", prepared=False)]
    if args.labeler in ("reward_model", "judge"):  # loaded after sampling; both counted: a bound
        labeler_arch, labeler_label = ctx.model(args.labeler_model, "labeler_model")
        out.rows.append(("labeler", f"{args.labeler} {labeler_label}"))
        head = "reward" if args.labeler == "reward_model" else "lm"
        out.roles.append(Role("labeler", labeler_arch, head, dtype="float32", prepared=False))
    out.rows.append(("activations", f"generation of {args.batch_size} x {seq} tokens"))
    out.memory = estimate(out.roles, rollout_activations(arch, args.batch_size, seq, 4), ctx.launch)
    out.extra["num_completions"] = k
    return out


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
