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

from . import hub
from .eval.report import build_report, stage_evaluations, write_report
from .manifest import MANIFEST, atomic_write_json, is_complete, read_manifest, require_complete, update_manifest
from .recipes import PipelineRecipe, RecipeError, load_pipeline_recipe, load_yaml_mapping, to_cli_args
from .resilience import last_complete_checkpoint, process_state
from .stages import STAGES

logger = logging.getLogger(__name__)


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
    overrides = stage.get("overrides") or {}
    return argv + to_cli_args(wired) + to_cli_args(hub_options(recipe, name)) + to_cli_args(overrides)


def _args_hash(argv: list[str], upstream: list[Any]) -> str:
    """What a stage's output depends on: its arguments, its recipe file's text, and the runs of its inputs (the
    world's settings and the finish time of each upstream stage it reads), so a rerun upstream reruns it too."""
    payload = [*argv, *upstream]
    if "--config" in argv:
        with open(argv[argv.index("--config") + 1]) as f:
            payload.append(f.read())
    return hashlib.sha256(json.dumps(payload, default=str).encode()).hexdigest()[:16]


RUN_RECORD = ".hf_rlhf_run.json"  # in a stage directory: the pipeline arguments its current run started with


def resumable_checkpoint(stage_dir: str, digest: str) -> str | None:
    """The newest complete checkpoint of an unfinished run of this stage started with the same arguments, or None."""
    path = os.path.join(stage_dir, RUN_RECORD)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        if json.load(f).get("pipeline_args_hash") != digest:
            return None
    return last_complete_checkpoint(stage_dir)


def start_run(stage_dir: str, digest: str) -> None:
    """A stage starts from scratch: checkpoints of an earlier run (other arguments) go, and its arguments are noted."""
    old = [d for d in glob.glob(os.path.join(stage_dir, "checkpoint-*")) if os.path.isdir(d)]
    if old:
        _say(f"[hf-rlhf] discarding {len(old)} checkpoint(s) of an earlier run in {stage_dir}")
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    atomic_write_json(os.path.join(stage_dir, RUN_RECORD), {"pipeline_args_hash": digest})


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


def merged_output(stage_dir: str) -> str:
    """`<stage>-merged`: the stage's LoRA adapter merged into its base, made once per run of the stage; the stages
    after it (and the report) use it. A stage that wrote full weights is used as it is."""
    from .modeling import is_adapter_dir

    if not is_adapter_dir(stage_dir):
        return stage_dir
    merged = stage_dir.rstrip(os.sep) + "-merged"
    source = read_manifest(stage_dir)
    done = read_manifest(merged) if is_complete(merged) else None
    if done is None or done.get("merged_from", {}).get("finished_at") != source.get("finished_at"):
        from .merge import merge

        print(f"[hf-rlhf] merge: hf-rlhf merge {stage_dir} {merged}")
        manifest = merge(stage_dir, merged)
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
    os.makedirs(recipe.output_dir, exist_ok=True)
    data: dict[str, str] = {}
    if recipe.world is not None:
        from .data.world import WORLD_DATASETS, build_world_datasets, read_world

        with process_state().main_process_first():  # the main process writes the world, the others read it
            existing = read_world(recipe.world.output_dir)
            stale = overwrite or existing is None or existing.get("args") != asdict(recipe.world)
            if stale and process_state().is_main_process:
                data = build_world_datasets(recipe.world)
            else:
                data = {n: os.path.join(recipe.world.output_dir, n) for n in WORLD_DATASETS}

    if recipe.world is not None:
        data["world_seed"] = str(recipe.world.seed)
    refs = on_main(publish_world, recipe, data)  # with `hub.pull`: input name -> "org/name@commit", not dirs
    stage_dirs: dict[str, str] = {}
    for name, spec in STAGES.items():
        if name not in recipe.stages:
            pull_upstream(recipe, name, refs, stage_dirs)
            continue
        module = spec.module
        argv = stage_argv(recipe, name, {**data, **stage_dirs, **refs})
        out_dir = os.path.join(recipe.output_dir, name)
        upstream = [asdict(recipe.world) if recipe.world is not None else None]
        upstream += [read_manifest(d).get("finished_at") for n, d in stage_dirs.items() if {d, refs.get(n)} & {*argv}]
        digest = _args_hash(argv, upstream)
        manifest = read_manifest(out_dir)
        if not overwrite and is_complete(out_dir) and manifest.get("pipeline_args_hash") == digest:
            logger.warning("stage '%s' is already complete in %s; skipping", name, out_dir)
            print(f"[hf-rlhf] {name}: already complete in {out_dir}, skipped")
        else:
            resume = None if overwrite else resumable_checkpoint(out_dir, digest)
            process_state().wait_for_everyone()  # every process has decided before the main one changes the directory
            if resume:
                _say(f"[hf-rlhf] {name}: resuming {name} from {os.path.basename(resume)} (same arguments)")
                argv = [*argv, "--resume_from_checkpoint", resume]
            elif process_state().is_main_process:
                start_run(out_dir, digest)
            _say(f"[hf-rlhf] {name}: hf-rlhf {name} {' '.join(argv)}")
            module.main(argv)
            process_state().wait_for_everyone()  # the main process has written the manifest
            manifest = require_complete(out_dir)
            if process_state().is_main_process:
                atomic_write_json(os.path.join(out_dir, MANIFEST), {**manifest, "pipeline_args_hash": digest})
        stage_dirs[name] = on_main(merged_output, out_dir) if recipe.stages[name].get("merge") else out_dir
        refs.update(on_main(publish_stage, recipe, name, out_dir))

    if not process_state().is_main_process:  # under `accelerate launch`, the main process alone writes the report
        return {}
    world_seed = recipe.world.seed if recipe.world is not None else None
    report = build_report(recipe.output_dir, recipe.evaluation, stage_dirs, data.get("prompts"), world_seed)
    write_report(report, recipe.output_dir)
    publish_evaluation(recipe, report)
    return report


# ------------------------------------------------------------------------------------------------- the Hub
def hub_options(recipe: PipelineRecipe, name: str) -> dict[str, Any]:
    """The Hub options the pipeline gives a stage: push to its repo once complete."""
    if recipe.hub is None:
        return {}
    options = {
        "push_to_hub": True,
        "hub_model_id": recipe.hub.repo_id(name, recipe.output_dir),
        "hub_revision": recipe.hub.revision,
    }
    if recipe.hub.private is not None:
        options["hub_private_repo"] = recipe.hub.private
    return options


def publish_world(recipe: PipelineRecipe, data: dict[str, str]) -> dict[str, str]:
    """Push the tiny world's datasets (`hub.push_datasets`); with `hub.pull`, their `org/name@commit` refs."""
    settings = recipe.hub
    if settings is None or recipe.world is None or not settings.push_datasets:
        return {}
    from .data.world import WORLD_DATASETS

    refs = {}
    for name in WORLD_DATASETS:
        repo_id, commit = hub.push_dataset(
            data[name],
            settings.repo_id(name, recipe.output_dir),
            private=settings.private,
            revision=settings.revision,
        )
        print(f"[hf-rlhf] {name}: pushed to dataset repo {repo_id} at {commit}")
        refs[name] = f"{repo_id}@{commit}"
    return refs if settings.pull else {}


def publish_stage(recipe: PipelineRecipe, name: str, out_dir: str) -> dict[str, str]:
    """Make sure a finished stage is on the Hub (a skipped stage whose push failed is pushed now); with `hub.pull`,
    its `org/name@commit` ref for the stages after it."""
    settings = recipe.hub
    if settings is None:
        return {}
    repo_id = settings.repo_id(name, recipe.output_dir)
    record = read_manifest(out_dir).get("hub") or {}
    if (record.get("repo_id"), record.get("revision")) != (repo_id, settings.revision):
        record = hub.push_stage(out_dir, repo_id, private=settings.private, revision=settings.revision)["hub"]
    print(f"[hf-rlhf] {name}: on the Hub as {record['repo_id']} at {record['commit']}")
    return {name: f"{record['repo_id']}@{record['commit']}"} if settings.pull else {}


def pull_upstream(recipe: PipelineRecipe, name: str, refs: dict[str, str], stage_dirs: dict[str, str]) -> None:
    """A stage the recipe does not run but a later one reads (`hub.pull`): read from its repo at `hub.revision`,
    pinned to the commit found there; its snapshot serves the report as well."""
    settings = recipe.hub
    needed = {source for n in recipe.stages for source in STAGES[n].sources()}
    if settings is None or not settings.pull or name not in needed:
        return
    repo_type = "dataset" if name in hub.DATASET_STAGES else "model"
    ref = f"{settings.repo_id(name, recipe.output_dir)}@{settings.revision}"
    try:
        resolved = hub.resolve_input(ref, repo_type=repo_type, what=f"stage '{name}' (not in the recipe)")
    except hub.HubInputError as e:
        raise RecipeError(f"pipeline recipe '{recipe.path}': {e}; run that stage, or list it in 'stages'") from None
    print(f"[hf-rlhf] {name}: not in the recipe, read from {resolved.repo_id} at {resolved.commit}")
    refs[name] = f"{resolved.repo_id}@{resolved.commit}"
    stage_dirs[name] = resolved.path


def publish_evaluation(recipe: PipelineRecipe, report: dict[str, Any]) -> None:
    """Put each stage's rows of the report (gold scores, sample generations) in its manifest and card; re-push the
    stages of a `hub:` pipeline so their cards on the Hub show them too."""
    for name, evaluation in stage_evaluations(report).items():
        out_dir = os.path.join(recipe.output_dir, name)
        if name not in recipe.stages or not is_complete(out_dir):
            continue
        manifest = update_manifest(out_dir, evaluation=evaluation)
        if recipe.hub is not None and manifest.get("hub"):
            hub.push_stage(out_dir, commit_message=f"hf-rlhf {name}: evaluation results")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="hf-rlhf pipeline",
        description="Run the stages of a pipeline recipe in order and write report.json / report.md.",
    )
    parser.add_argument("recipe", help="Pipeline recipe, e.g. recipes/tiny/pipeline.yaml.")
    parser.add_argument("--output_dir", help="Override the recipe's output directory.")
    parser.add_argument("--overwrite", action="store_true", help="Rerun stages even if they are already complete.")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="Print each stage's plan and GPU memory estimate instead of running: no weights, no downloads.",
    )
    parser.add_argument("--accelerate_config", help="--dry-run: plan for this accelerate config file.")
    parser.add_argument("--gpu_memory_gb", type=float, help="--dry-run: GPU memory per device, GiB (default 80).")
    args = parser.parse_args(argv)
    if args.dry_run:
        from .plan.dryrun import plan_pipeline

        plan = plan_pipeline(args.recipe, args.output_dir, args.accelerate_config, args.gpu_memory_gb)
        print(plan.format())
        return plan.to_dict()
    return run_pipeline(load_pipeline_recipe(args.recipe, args.output_dir), overwrite=args.overwrite)
