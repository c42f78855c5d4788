"""The dry run's entry points: `hf-rlhf pipeline <recipe> --dry-run` and `hf-rlhf <stage> --config <recipe> --dry-run`.

A pipeline is planned stage by stage with each stage's own `plan(...)` (`STAGES[name].module.plan`), given the
dataclasses the pipeline would give its `run(...)` (`hf_rlhf.pipeline.stage_arguments`), each stage's output
feeding the next. A stage recipe that leaves its model or data to the pipeline (as every stage but the first does)
is planned as that stage of a pipeline recipe in the same folder: the one that lists it, else one with a stage of
the same name (with this recipe in its place). Command-line options after the recipe override it, as in a real run.
"""

from __future__ import annotations

import argparse
import glob
import os
from typing import Any

from ..data.world import WORLD_DATASETS
from ..errors import RecipeError
from ..launching import LAUNCH_OPTIONS, names_text
from ..pipeline import command_line, merged_dir, stage_arguments, stage_values
from ..recipes import PipelineRecipe, load_pipeline_recipe, load_yaml_mapping, parse_command_line
from ..stages import STAGES
from .context import HEADER, Context, PipelinePlan, StagePlan
from .launch import read_launch, shown
from .memory import FORMULA


def _cpu_fallback(parse, *args: Any) -> tuple:
    """bf16/fp16 recipes cannot be validated on a machine without a GPU: plan them as they are, on the CPU."""
    try:
        return parse(*args)
    except ValueError as e:
        if isinstance(e, RecipeError) or not any(flag in str(e) for flag in ("bf16", "fp16")):
            raise
        return parse(*args, cpu=True)


def plan_stage(stage: str, argv: list[str], ctx: Context) -> StagePlan:
    """The plan of `hf-rlhf <stage> <argv>`: the stage's dataclasses parsed as the real run parses them."""
    if stage not in STAGES:
        raise RecipeError(f"--dry-run plans the stages ({', '.join(STAGES)}) and pipelines, not '{stage}'")

    def parse(args, cpu=False):
        return parse_command_line(
            STAGES[stage].arguments, [*args, "--use_cpu", "true"] if cpu else args, f"hf-rlhf {stage}"
        )

    plan = STAGES[stage].module.plan(*_cpu_fallback(parse, list(argv)), ctx)
    plan.argv = list(argv)
    return plan


def _plan_in_pipeline(recipe: PipelineRecipe, name: str, sources: dict[str, str], extra: dict, ctx) -> StagePlan:
    values = {**stage_values(recipe, name, sources), **extra}

    def parse(cpu=False):
        return stage_arguments(recipe, name, sources, **extra, **({"use_cpu": True} if cpu else {}))

    plan = STAGES[name].module.plan(*_cpu_fallback(parse), ctx)
    plan.argv = command_line(recipe, name, values).split(" ")[2:]  # after "hf-rlhf <stage>"
    return plan


def plan_pipeline(
    path: str,
    output_dir: str | None = None,
    accelerate_config: str | None = None,
    gpu_memory_gb: float | None = None,
    *,
    until: str | None = None,
    replace: str | None = None,
    extra: dict[str, Any] | None = None,
    layout: dict[str, int] | None = None,
) -> PipelinePlan:
    """Plan every stage of a pipeline recipe (up to `until`), each stage's output feeding the next.

    Args:
        path (`str`): The pipeline recipe.
        output_dir (`str`, *optional*): Overrides the recipe's output directory.
        accelerate_config (`str`, *optional*): A named config or a file; overrides the recipe's
            `launch.accelerate_config`, as for the real run (`hf_rlhf.launching`).
        gpu_memory_gb (`float`, *optional*): GPU memory per device; default the recipe's `launch.gpu_memory_gb`, 80.
        until (`str`, *optional*): Plan the stages up to this one only.
        replace (`str`, *optional*): A stage recipe that takes the place of `until`'s recipe.
        extra (`dict`, *optional*): Values that override `until`'s (the command line of `hf-rlhf <stage>`).
        layout (`dict`, *optional*): `num_processes` / `num_machines` overriding the accelerate config's.
    """
    recipe = load_pipeline_recipe(path, output_dir)
    launch = read_launch(
        accelerate_config or recipe.launch.get("accelerate_config"),
        gpu_memory_gb or recipe.launch.get("gpu_memory_gb"),
        **(layout or {}),
    )
    ctx = Context(launch)
    sources: dict[str, str] = {}
    world = None
    if recipe.world is not None:
        w = recipe.world
        sources = {name: os.path.join(w.output_dir, name) for name in WORLD_DATASETS}
        ctx.world = {os.path.normpath(p): name for name, p in sources.items()}
        world = (
            f"the tiny world (seed {w.seed}): {w.num_documents} documents, {w.num_demonstrations} demonstrations, "
            f"{w.num_eval_prompts} held-out prompts, generated into {w.output_dir}"
        )
    if replace is not None:
        spec = recipe.stages.setdefault(until, {})
        spec["recipe"], spec["values"] = os.path.abspath(replace), load_yaml_mapping(replace)
        recipe.stages = {name: recipe.stages[name] for name in STAGES if name in recipe.stages}
    plans = []
    for name in recipe.stages:
        plan = _plan_in_pipeline(recipe, name, sources, (extra or {}) if name == until else {}, ctx)
        plans.append(plan)
        out_dir = os.path.join(recipe.output_dir, name)
        sources[name] = merged_dir(out_dir) if recipe.stages[name].get("merge") else out_dir
        ctx.outputs.update({os.path.normpath(out_dir): plan, os.path.normpath(sources[name]): plan})
        if name == until:
            break
    hub = None
    if recipe.hub is not None:
        reads = "the next stage reads it from there" if recipe.hub.pull else "the next stage reads the local directory"
        hub = (
            f"each stage is pushed to {recipe.hub.repo_id('<stage>', recipe.output_dir)} and {reads}; the dry run "
            "contacts no Hub and plans with the local directories"
        )
    return PipelinePlan(recipe.path, recipe.output_dir, launch, plans, world, hub)


def find_pipeline(recipe_path: str, stage: str) -> tuple[str, bool] | None:
    """A pipeline recipe beside `recipe_path` that lists it (`(path, False)`), else one with the same stage, in
    which it would take that stage's place (`(path, True)`); `pipeline.yaml` first."""
    folder = os.path.dirname(os.path.abspath(recipe_path))
    candidates = sorted(
        glob.glob(os.path.join(folder, "*.yaml")), key=lambda p: (os.path.basename(p) != "pipeline.yaml", p)
    )
    pipelines = []
    for candidate in candidates:
        try:
            raw = load_yaml_mapping(candidate)
        except RecipeError:
            continue
        if isinstance(raw.get("stages"), dict):
            pipelines.append((candidate, raw["stages"]))
    target = os.path.abspath(recipe_path)
    for candidate, stages in pipelines:
        spec = stages.get(stage) or {}
        if spec.get("recipe") and os.path.abspath(os.path.join(folder, spec["recipe"])) == target:
            return candidate, False
    for candidate, stages in pipelines:
        if stage in stages:
            return candidate, True
    return None


def argv_values(argv: list[str]) -> dict[str, Any]:
    """`--key value` / `--key=value` / a bare `--flag` (true) as a mapping of values (strings, parsed later)."""
    values: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise RecipeError(f"command line: expected an option (--key value), got '{arg}'")
        key, sep, value = arg[2:].partition("=")
        if not sep and (i + 1 == len(argv) or argv[i + 1].startswith("--")):
            value = "true"
        elif not sep:
            value, i = argv[i + 1], i + 1
        values[key.replace("-", "_")] = value
        i += 1
    return values


def add_launch_options(parser: argparse.ArgumentParser) -> None:
    """`--accelerate_config` and the options `hf-rlhf` passes to `accelerate launch`, as the real run takes them."""
    parser.add_argument(
        "--accelerate_config",
        metavar="NAME|FILE",
        help=f"Plan for this accelerate config (default the recipe's launch.accelerate_config): {names_text()}.",
    )
    for option in LAUNCH_OPTIONS:
        kind = int if option in ("num_processes", "num_machines") else str
        parser.add_argument(f"--{option}", type=kind, help="As for `accelerate launch` (the layout's size only).")


def launch_layout(args: argparse.Namespace) -> dict[str, int]:
    return {key: getattr(args, key) for key in ("num_processes", "num_machines") if getattr(args, key) is not None}


def stage_main(argv: list[str]) -> StagePlan:
    """`hf-rlhf <stage> --config <recipe> [options] --dry-run`: print the stage's plan and memory estimate."""
    stage, rest = argv[0], list(argv[1:])
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--dry-run", action="store_true")
    pre.add_argument("--gpu_memory_gb", type=float)
    pre.add_argument("--config")
    add_launch_options(pre)
    opts, extra = pre.parse_known_args(rest)
    config, layout = opts.config, launch_layout(opts)
    found = find_pipeline(config, stage) if config and os.path.isfile(config) else None
    if found is not None:
        pipeline_path, replaced = found
        pipeline = plan_pipeline(
            pipeline_path,
            accelerate_config=opts.accelerate_config,
            gpu_memory_gb=opts.gpu_memory_gb,
            until=stage,
            replace=config if replaced else None,
            extra=argv_values(extra),
            layout=layout,
        )
        plan, launch = pipeline.stages[-1], pipeline.launch
        how = f"in place of its '{stage}' recipe" if replaced else f"as its '{stage}' stage"
        header = f"hf-rlhf dry run of {config}, planned {how} in {shown(pipeline_path)} (inputs wired by the pipeline)"
    else:
        launch = read_launch(opts.accelerate_config, opts.gpu_memory_gb, **layout)
        plan = plan_stage(stage, (["--config", config] if config else []) + extra, Context(launch))
        header = f"hf-rlhf dry run of {config or 'the command line'}"
    print("\n".join([f"{header}: {HEADER}", f"launch  {launch.describe()}", ""]))
    print(plan.format() + "\n\n" + FORMULA)
    return plan


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`hf-rlhf pipeline <recipe> --dry-run`: print each stage's plan and GPU memory estimate."""
    parser = argparse.ArgumentParser(
        prog="hf-rlhf pipeline --dry-run",
        description="Print each stage's plan and GPU memory estimate instead of running: no weights loaded.",
    )
    parser.add_argument("recipe", help="Pipeline recipe, e.g. recipes/tiny/pipeline.yaml.")
    parser.add_argument("--dry-run", action="store_true", help="Plan only (what brings you here).")
    parser.add_argument("--output_dir", help="Override the recipe's output directory.")
    parser.add_argument("--overwrite", action="store_true", help="Ignored: a plan runs nothing.")
    parser.add_argument("--gpu_memory_gb", type=float, help="GPU memory per device, GiB (default 80).")
    add_launch_options(parser)
    args = parser.parse_args(argv)
    plan = plan_pipeline(
        args.recipe, args.output_dir, args.accelerate_config, args.gpu_memory_gb, layout=launch_layout(args)
    )
    print(plan.format())
    return plan.to_dict()
