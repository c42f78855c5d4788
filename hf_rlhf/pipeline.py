"""Run the stages of a pipeline recipe in order, each stage's output feeding the next, and write the report.

A pipeline recipe (see `recipes/tiny/pipeline.yaml`) names an output directory, optionally the tiny world to
generate, the stages to run with their own stage recipes and overrides, and how to evaluate. A stage whose
directory already holds a complete manifest made from the same arguments is skipped; anything else is rerun, and a
directory without a complete manifest is never handed to the next stage.

With a `hub:` section (`HubSettings`) every stage is pushed to `<namespace>/<repo_prefix><stage>` once complete (the
tiny world's datasets to dataset repos), and with `pull: true` each stage reads its inputs from those repos, pinned
to the commit just pushed, instead of from local directories; stages the recipe does not list are pulled from their
repos, so a pipeline can start from a middle stage on another machine.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict
from typing import Any

from transformers import HfArgumentParser

from .data.world import WORLD_DATASETS, build_world_datasets, read_world
from .errors import RecipeError
from .eval.report import build_report, write_report
from .hub import resolve as hub  # hub.use_endpoint
from .hub.publish import hub_options, publish_evaluation, publish_stage, publish_world, pull_upstream
from .label.pipeline import human_labels
from .launching import LAUNCH_OPTIONS, launched_config, names_text
from .manifest import MANIFEST, atomic_write_json, is_complete, read_manifest, require_complete
from .outputs import recover_output
from .recipes import (
    PipelineRecipe,
    check_keys,
    load_pipeline_recipe,
    parse_values,
    parser_actions,
    to_cli_args,
    typed_values,
)
from .resilience import last_complete_checkpoint, process_state
from .stages import STAGES
from .storage import partial_dir, writing

logger = logging.getLogger(__name__)


def stage_values(recipe: PipelineRecipe, name: str, sources: dict[str, str]) -> dict[str, Any]:
    """What the pipeline gives a stage: its recipe's values, then what it wires in, the Hub options, the overrides.

    `sources` maps finished stages and tiny-world datasets to their directories (or, with `hub.pull`, to
    `org/name@commit`). A key the stage recipe sets itself is never overridden by the wiring; `output_dir` always is.
    """
    stage, spec = STAGES[name], recipe.stages[name]
    values = dict(spec.get("values") or {})
    wired: dict[str, Any] = {"output_dir": os.path.join(recipe.output_dir, name)}
    for option, source in [("model_name_or_path", stage.model_from), ("dataset_name", stage.data_from), *stage.wired]:
        if option in values or source is None:
            continue
        if source == "world_seed":
            if recipe.world is not None:
                wired[option] = recipe.world.seed
        elif source in sources:
            wired[option] = sources[source]
    return {**values, **wired, **hub_options(recipe, name), **(spec.get("overrides") or {})}


def stage_arguments(recipe: PipelineRecipe, name: str, sources: dict[str, str], **extra: Any) -> tuple:
    """A stage's dataclasses exactly as the pipeline passes them to its `run` (and the dry run to its `plan`)."""
    return parse_stage_values(recipe, name, {**stage_values(recipe, name, sources), **extra})


def parse_stage_values(recipe: PipelineRecipe, name: str, values: dict[str, Any]) -> tuple:
    where = f"pipeline recipe '{recipe.path}', stage '{name}'"
    return parse_values(STAGES[name].arguments(values.get("algorithm")), values, where)


def command_line(recipe: PipelineRecipe, name: str, values: dict[str, Any]) -> str:
    """The `hf-rlhf <stage>` command that reproduces what the pipeline runs: the recipe, then what differs from it."""
    spec = recipe.stages[name]
    in_recipe = spec.get("values") or {}
    changed = {k: v for k, v in values.items() if k not in in_recipe or in_recipe[k] != v}
    config = ["--config", spec["recipe"]] if "recipe" in spec else []
    return " ".join(["hf-rlhf", name, *config, *to_cli_args(changed)])


def check_stage_keys(recipe: PipelineRecipe) -> None:
    """Every stage checked before anything runs (before the world is generated), each error naming the pipeline
    recipe, the stage and the file a value came from: keys its dataclasses know, values of the types they expect,
    numbers a run can use (`parse_values`), inputs that a listed stage or the world provides, and the stage's own
    `check_arguments`, all on the values the pipeline will pass it."""
    pulled = recipe.hub is not None and recipe.hub.pull  # stages the recipe does not list are read from the Hub
    planned = {n: os.path.join(recipe.output_dir, n) for n in STAGES if n in recipe.stages or pulled}
    if recipe.world is not None:
        planned.update({n: os.path.join(recipe.world.output_dir, n) for n in WORLD_DATASETS})
    for name, spec in recipe.stages.items():
        where = f"pipeline recipe '{recipe.path}', stage '{name}'"
        values = {**(spec.get("values") or {}), **(spec.get("overrides") or {})}
        actions = parser_actions(HfArgumentParser(STAGES[name].arguments(values.get("algorithm"))))
        origins: dict[str, str] = {}
        parts = [(spec.get("values"), f"recipe file '{spec.get('recipe')}' (stage '{name}')")]
        for part, origin in [*parts, (spec.get("overrides"), f"{where}, overrides")]:
            check_keys(part or {}, set(actions), origin)
            typed_values(part or {}, actions, origin)
            origins.update(dict.fromkeys(part or {}, origin))
        check_stage_inputs(recipe, name, values, planned)
        parsed = parse_values(
            STAGES[name].arguments(values.get("algorithm")), stage_values(recipe, name, planned), where, origins
        )
        try:
            STAGES[name].module.check_arguments(*parsed)
        except RecipeError as e:
            raise RecipeError(f"{where}: {e}") from None


def check_stage_inputs(recipe: PipelineRecipe, name: str, values: dict[str, Any], planned: dict[str, str]) -> None:
    """A stage's model and data come from its own values, or from a stage or tiny-world dataset the recipe provides
    (`planned`: what will exist by then); else a `RecipeError` saying which stage or section is missing."""
    stage, where = STAGES[name], f"pipeline recipe '{recipe.path}', stage '{name}'"
    for option, source in (("model_name_or_path", stage.model_from), ("dataset_name", stage.data_from)):
        given = values.get(option) or (option == "dataset_name" and values.get("datasets"))
        if source is None or source in planned or given:
            continue
        missing = f"stage '{source}', which the recipe does not list" if source in STAGES else None
        missing = missing or f"the tiny world's '{source}', and the recipe has no 'world' section"
        raise RecipeError(
            f"{where}: its '{option}' comes from {missing}: add it, or set '{option}' in this stage's overrides"
        )


def _digest(values: dict[str, Any], upstream: list[Any]) -> str:
    """What a stage's output depends on: its values (the recipe's included) and the runs of its inputs (the world's
    settings and the finish time of each upstream stage it reads), so a rerun upstream reruns it too."""
    payload = [sorted(values.items()), *upstream]
    return hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()[:16]


RUN_RECORD = ".hf_rlhf_run.json"  # in `<stage>.partial`: the pipeline arguments its current run started with


def resumable_checkpoint(stage_dir: str, digest: str) -> str | None:
    """The newest complete checkpoint of an unfinished run of this stage started with the same arguments, or None:
    the run is built in `<stage_dir>.partial` (`hf_rlhf.outputs`), its checkpoints and `RUN_RECORD` with it."""
    path = os.path.join(partial_dir(stage_dir), RUN_RECORD)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        if json.load(f).get("pipeline_args_hash") != digest:
            return None
    return last_complete_checkpoint(partial_dir(stage_dir))


def start_run(stage_dir: str, digest: str) -> None:
    """A stage starts from scratch: checkpoints of an earlier unfinished run (other arguments) go, and its arguments
    are noted; a complete output in `stage_dir` stays until the new run replaces it."""
    partial = partial_dir(stage_dir)
    old = [d for d in glob.glob(os.path.join(partial, "checkpoint-*")) if os.path.isdir(d)]
    if old:
        _say(f"[hf-rlhf] discarding {len(old)} checkpoint(s) of an earlier run in {partial}")
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    with writing(partial):
        atomic_write_json(os.path.join(partial, RUN_RECORD), {"pipeline_args_hash": digest})


def on_main(fn: Any, *args: Any) -> Any:
    """`fn(*args)` run by the main process alone (it writes or pushes), its result handed to every process."""
    from accelerate.utils import broadcast_object_list

    state = process_state()
    result = [fn(*args) if state.is_main_process else None]
    if state.num_processes > 1:
        broadcast_object_list(result)
    return result[0]


def _say(message: str) -> None:
    if process_state().is_main_process:
        print(message)


def merged_dir(stage_dir: str) -> str:
    """`<stage>-merged`: where `merge: true` puts a LoRA stage merged into its base, for the stages after it."""
    return stage_dir.rstrip(os.sep) + "-merged"


def merged_output(stage_dir: str) -> str:
    """`<stage>-merged`: the stage's LoRA adapter merged into its base, made once per run of the stage; the stages
    after it (and the report) use it. A stage that wrote full weights is used as it is."""
    from .modeling import is_adapter_dir

    if not is_adapter_dir(stage_dir):
        return stage_dir
    merged = merged_dir(stage_dir)
    source = read_manifest(stage_dir)
    done = read_manifest(merged) if is_complete(merged) else None
    if done is None or done.get("merged_from", {}).get("finished_at") != source.get("finished_at"):
        from .merge import merge

        print(f"[hf-rlhf] merge: hf-rlhf merge {stage_dir} {merged}")
        manifest = merge(stage_dir, merged, overwrite=True)  # a merge of an earlier run of the stage is replaced
        manifest["merged_from"]["finished_at"] = source.get("finished_at")
        atomic_write_json(os.path.join(merged, MANIFEST), manifest)
    return merged


def run_pipeline(recipe: PipelineRecipe, overwrite: bool = False) -> dict[str, Any]:
    """Run every stage of `recipe`, then evaluate and write `report.json` and `report.md` in its output directory.

    Returns:
        `dict`: the report.
    """
    with hub.use_endpoint(recipe.hub.endpoint if recipe.hub is not None else None):
        return _run_pipeline(recipe, overwrite)


def _run_pipeline(recipe: PipelineRecipe, overwrite: bool) -> dict[str, Any]:
    check_stage_keys(recipe)
    os.makedirs(recipe.output_dir, exist_ok=True)
    datasets = make_world(recipe, overwrite)
    refs = on_main(publish_world, recipe, datasets)  # with `hub.pull`: input name -> "org/name@commit", not dirs
    stage_dirs: dict[str, str] = {}
    for name in STAGES:
        if name not in recipe.stages:
            pull_upstream(recipe, name, refs, stage_dirs)
            continue
        values = stage_values(recipe, name, {**datasets, **stage_dirs, **refs})
        out_dir = os.path.join(recipe.output_dir, name)
        read = set(map(str, values.values()))
        upstream = [asdict(recipe.world) if recipe.world is not None else None]
        upstream += [read_manifest(d).get("finished_at") for n, d in stage_dirs.items() if {d, refs.get(n)} & read]
        digest = _digest(values, upstream)
        on_main(recover_output, out_dir)  # a swap a crash cut short is finished first (hf_rlhf.outputs)
        complete = is_complete(out_dir)
        if not overwrite and complete and read_manifest(out_dir).get("pipeline_args_hash") == digest:
            _say(f"[hf-rlhf] {name}: already complete in {out_dir}, skipped")
        else:
            if complete:  # replaced deliberately: the stage is told to overwrite it
                why = "--overwrite" if overwrite else f"recipe or inputs changed since the complete run in {out_dir}"
                _say(f"[hf-rlhf] {name}: {why}; rerunning, the old output stays until the new one is complete")
            run_stage(recipe, name, values, digest, resume=not overwrite, overwrite=complete)
        stage_dirs[name] = on_main(merged_output, out_dir) if recipe.stages[name].get("merge") else out_dir
        refs.update(on_main(publish_stage, recipe, name, out_dir))
        if name == "sample" and values.get("labeler") == "human":  # people rank, in the labeling app
            labels = on_main(human_labels, values, out_dir, recipe.output_dir)
            if labels is None:  # not enough rankings yet: what to run was printed; a rerun resumes here
                return {"stopped_for": "labeling"}
            stage_dirs[name] = labels  # the reward stage reads the app's export
            refs.pop(name, None)

    if not process_state().is_main_process:  # under `accelerate launch`, the main process alone writes the report
        return {}
    world_seed = recipe.world.seed if recipe.world is not None else None
    report = build_report(recipe.output_dir, recipe.evaluation, stage_dirs, datasets.get("prompts"), world_seed)
    write_report(report, recipe.output_dir)
    publish_evaluation(recipe, report)
    return report


def make_world(recipe: PipelineRecipe, overwrite: bool) -> dict[str, str]:
    """The tiny world's datasets (name -> directory), generated by the main process unless they are up to date."""
    if recipe.world is None:
        return {}
    with process_state().main_process_first():  # the main process writes the world, the others read it
        existing = read_world(recipe.world.output_dir)
        stale = overwrite or existing is None or existing.get("args") != asdict(recipe.world)
        if stale and process_state().is_main_process:
            return build_world_datasets(recipe.world)
        return {n: os.path.join(recipe.world.output_dir, n) for n in WORLD_DATASETS}


def run_stage(
    recipe: PipelineRecipe, name: str, values: dict[str, Any], digest: str, resume: bool, overwrite: bool = False
) -> None:
    """Run one stage from its values, resuming an interrupted run made with the same values; mark it with `digest`.
    With `overwrite` the stage replaces the complete output in its directory (kept until the new one is complete)."""
    out_dir = values["output_dir"]
    if overwrite:
        values = {**values, "overwrite": True}
    checkpoint = resumable_checkpoint(out_dir, digest) if resume else None
    process_state().wait_for_everyone()  # every process has decided before the main one changes the directory
    if checkpoint:
        _say(f"[hf-rlhf] {name}: resuming {name} from {os.path.basename(checkpoint)} (same arguments)")
        values = {**values, "resume_from_checkpoint": checkpoint}
    elif process_state().is_main_process:
        start_run(out_dir, digest)
    _say(f"[hf-rlhf] {name}: {command_line(recipe, name, values)}")
    STAGES[name].module.run(*parse_stage_values(recipe, name, values))
    process_state().wait_for_everyone()  # the main process has written the manifest
    manifest = require_complete(out_dir)
    if process_state().is_main_process:
        record = {**manifest, "pipeline_args_hash": digest, "launch": launch_record()}
        atomic_write_json(os.path.join(out_dir, MANIFEST), record)


def launch_record() -> dict[str, Any]:
    """The layout a stage ran under, kept in its manifest: processes, accelerate's distributed type, and the
    accelerate config `hf-rlhf` launched it with (a name, or a file's name; `None` when it did not launch it)."""
    state = process_state()
    return {
        "num_processes": state.num_processes,
        "distributed_type": getattr(state.distributed_type, "value", str(state.distributed_type)),
        "accelerate_config": launched_config(),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-rlhf pipeline",
        description="Run the stages of a pipeline recipe in order and write report.json / report.md.",
        epilog="With --dry-run: each stage's plan and GPU memory estimate instead (hf_rlhf.plan.pipeline).",
    )
    parser.add_argument("recipe", help="Pipeline recipe, e.g. recipes/tiny/pipeline.yaml.")
    parser.add_argument("--output_dir", help="Override the recipe's output directory.")
    parser.add_argument("--overwrite", action="store_true", help="Rerun stages even if they are already complete.")
    launch = parser.add_argument_group(
        "launching (hf_rlhf.launching; `hf-rlhf` reads these before the recipe runs and passes them to accelerate)"
    )
    launch.add_argument(
        "--accelerate_config",
        metavar="NAME|FILE",
        help=f"Run under `accelerate launch` with this config; default the recipe's launch.accelerate_config. "
        f"Named configs: {names_text()}.",
    )
    for option in LAUNCH_OPTIONS:
        launch.add_argument(f"--{option}", help="Passed to `accelerate launch`, overriding the config's value.")
    return parser


def recipe_accelerate_config(argv: list[str]) -> str | None:
    """The accelerate config `hf-rlhf pipeline ARGV` launches under when the command line names none: the recipe's
    `launch.accelerate_config` (a named config, or a file relative to the recipe), `None` without one."""
    args = build_parser().parse_args(argv)
    return load_pipeline_recipe(args.recipe, args.output_dir).launch.get("accelerate_config")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`hf-rlhf pipeline <recipe>` in this process (`hf_rlhf.cli` has already launched it, if asked)."""
    args = build_parser().parse_args(argv)
    return run_pipeline(load_pipeline_recipe(args.recipe, args.output_dir), overwrite=args.overwrite)
