"""Run the stages of a pipeline recipe in order, each stage's output feeding the next, and write the report.

A pipeline recipe (see `recipes/tiny/pipeline.yaml`) names an output directory, optionally the tiny world to
generate, the stages to run with their own stage recipes and overrides, and how to evaluate. A stage whose
directory already holds a complete manifest made from the same arguments is skipped; anything else is rerun, and a
directory without a complete manifest is never handed to the next stage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from . import comparisons
from .artifacts import MANIFEST, atomic_write_json, is_complete, read_manifest, require_complete
from .configs import RecipeError, WorldArguments, check_keys, load_yaml_mapping, to_cli_args
from .report import EvaluationArguments, build_report, write_report
from .stages import pretrain, reward, rl, sft

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSpec:
    """How the pipeline wires a stage: its module (`make_parser`, `run`) and where its inputs come from."""

    module: Any
    model_from: str | None = None  # stage whose output is this stage's `model_name_or_path`
    data_from: str | None = None  # a stage output, or a tiny-world dataset, used as `dataset_name`
    wired: tuple[tuple[str, str], ...] = ()  # (option, tiny-world dataset or stage) pairs wired in as well


# In pipeline order. `sample` is the comparison collection between SFT and reward modeling.
STAGES: dict[str, StageSpec] = {
    "pretrain": StageSpec(pretrain, data_from="documents"),
    "sft": StageSpec(sft, model_from="pretrain", data_from="demonstrations"),
    "sample": StageSpec(comparisons, model_from="sft", data_from="prompts", wired=(("world_seed", "world_seed"),)),
    "reward": StageSpec(
        reward, model_from="sft", data_from="sample", wired=(("reference_dataset", "demonstrations"),)
    ),
    "rl": StageSpec(
        rl,
        model_from="sft",
        data_from="prompts",
        wired=(("reward_model_path", "reward"), ("world_seed", "world_seed")),
    ),
}


@dataclass
class PipelineRecipe:
    path: str
    output_dir: str
    stages: dict[str, dict[str, Any]]
    world: WorldArguments | None = None
    evaluation: EvaluationArguments = field(default_factory=EvaluationArguments)


def load_pipeline_recipe(path: str, output_dir: str | None = None) -> PipelineRecipe:
    """Read and check a pipeline recipe; every error names the file and the key at fault."""
    raw = load_yaml_mapping(path)
    where = f"pipeline recipe '{path}'"
    check_keys(raw, {"output_dir", "world", "stages", "evaluation"}, where)
    stages = raw.get("stages") or {}
    if not isinstance(stages, dict) or not stages:
        raise RecipeError(f"{where}: 'stages' must map stage names ({', '.join(STAGES)}) to their settings")
    check_keys(stages, set(STAGES), f"{where}, 'stages'")
    base = os.path.dirname(os.path.abspath(path))
    for name, spec in stages.items():
        spec = spec or {}
        check_keys(spec, {"recipe", "overrides"}, f"{where}, stage '{name}'")
        if "recipe" in spec:
            spec["recipe"] = os.path.join(base, spec["recipe"])
            if not os.path.isfile(spec["recipe"]):
                raise RecipeError(f"{where}, stage '{name}': recipe file '{spec['recipe']}' does not exist")
        stages[name] = spec
    world = raw.get("world")
    if world is not None:
        check_keys(world, {f.name for f in fields(WorldArguments)} - {"output_dir"}, f"{where}, 'world'")
    evaluation = raw.get("evaluation") or {}
    check_keys(evaluation, {f.name for f in fields(EvaluationArguments)}, f"{where}, 'evaluation'")
    out = output_dir or raw.get("output_dir")
    if not out:
        raise RecipeError(f"{where}: set 'output_dir' in the recipe or pass --output_dir")
    return PipelineRecipe(
        path=path,
        output_dir=out,
        stages={name: stages[name] for name in STAGES if name in stages},
        world=WorldArguments(output_dir=os.path.join(out, "data"), **world) if world is not None else None,
        evaluation=EvaluationArguments(**evaluation),
    )


def stage_argv(recipe: PipelineRecipe, name: str, outputs: dict[str, str]) -> list[str]:
    """The command line the pipeline gives a stage: its recipe, then what the pipeline wires in, then overrides.

    `outputs` maps finished stages and tiny-world datasets to their directories. A key the stage recipe sets itself
    is never overridden by the wiring.
    """
    spec, stage = STAGES[name], recipe.stages[name]
    in_recipe = load_yaml_mapping(stage["recipe"]) if "recipe" in stage else {}
    wanted = {"output_dir": name, "model_name_or_path": spec.model_from, "dataset_name": spec.data_from}
    wanted.update(dict(spec.wired))
    wired = {"output_dir": os.path.join(recipe.output_dir, name)}
    for option, source in wanted.items():
        if option != "output_dir" and source in outputs and option not in in_recipe:
            wired[option] = outputs[source]
    argv = ["--config", stage["recipe"]] if "recipe" in stage else []
    return argv + to_cli_args(wired) + to_cli_args(stage.get("overrides") or {})


def _args_hash(argv: list[str], upstream: list[Any]) -> str:
    """What a stage's output depends on: its arguments, its recipe file's text, and the runs of its inputs (the
    world's settings and the finish time of each upstream stage it reads), so a rerun upstream reruns it too."""
    payload = [*argv, *upstream]
    if "--config" in argv:
        with open(argv[argv.index("--config") + 1]) as f:
            payload.append(f.read())
    return hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()[:16]


def run_pipeline(recipe: PipelineRecipe, overwrite: bool = False) -> dict[str, Any]:
    """Run every stage of `recipe`, then evaluate and write `report.json` and `report.md` in its output directory.

    Returns:
        `dict`: the report.
    """
    os.makedirs(recipe.output_dir, exist_ok=True)
    data: dict[str, str] = {}
    if recipe.world is not None:
        from .data.world import WORLD_DATASETS, build_world_datasets, read_world

        existing = read_world(recipe.world.output_dir)
        if overwrite or existing is None or existing.get("args") != asdict(recipe.world):
            data = build_world_datasets(recipe.world)
        else:
            data = {n: os.path.join(recipe.world.output_dir, n) for n in WORLD_DATASETS}

    if recipe.world is not None:
        data["world_seed"] = str(recipe.world.seed)
    stage_dirs: dict[str, str] = {}
    for name, spec in STAGES.items():
        if name not in recipe.stages:
            continue
        module = spec.module
        argv = stage_argv(recipe, name, {**data, **stage_dirs})
        out_dir = os.path.join(recipe.output_dir, name)
        upstream = [asdict(recipe.world) if recipe.world is not None else None]
        upstream += [read_manifest(d).get("finished_at") for d in stage_dirs.values() if d in argv]
        digest = _args_hash(argv, upstream)
        manifest = read_manifest(out_dir)
        if not overwrite and is_complete(out_dir) and manifest.get("pipeline_args_hash") == digest:
            logger.warning("stage '%s' is already complete in %s; skipping", name, out_dir)
            print(f"[hf-rlhf] {name}: already complete in {out_dir}, skipped")
        else:
            print(f"[hf-rlhf] {name}: hf-rlhf {name} {' '.join(argv)}")
            module.main(argv)
            manifest = require_complete(out_dir)
            atomic_write_json(os.path.join(out_dir, MANIFEST), {**manifest, "pipeline_args_hash": digest})
        stage_dirs[name] = out_dir

    world_seed = recipe.world.seed if recipe.world is not None else None
    report = build_report(recipe.output_dir, recipe.evaluation, stage_dirs, data.get("prompts"), world_seed)
    write_report(report, recipe.output_dir)
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="hf-rlhf pipeline",
        description="Run the stages of a pipeline recipe in order and write report.json / report.md.",
    )
    parser.add_argument("recipe", help="Pipeline recipe, e.g. recipes/tiny/pipeline.yaml.")
    parser.add_argument("--output_dir", help="Override the recipe's output directory.")
    parser.add_argument("--overwrite", action="store_true", help="Rerun stages even if they are already complete.")
    args = parser.parse_args(argv)
    return run_pipeline(load_pipeline_recipe(args.recipe, args.output_dir), overwrite=args.overwrite)
