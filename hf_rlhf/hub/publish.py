"""The pipeline's Hub steps (a recipe's `hub:` section, `HubSettings`): push the tiny world's datasets and each
finished stage, read the stages a recipe does not run from their repos (`hub.pull`), and re-push the stages whose
cards gained the report's evaluation rows."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import HubInputError, RecipeError
from ..eval.report import stage_evaluations
from ..manifest import is_complete, read_manifest, update_manifest
from ..stages import STAGES
from .push import DATASET_STAGES, push_dataset, push_stage
from .resolve import resolve_input

if TYPE_CHECKING:
    from ..recipes import PipelineRecipe


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
    from ..data.world import WORLD_DATASETS

    refs = {}
    for name in WORLD_DATASETS:
        repo_id, commit = push_dataset(
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
        record = push_stage(out_dir, repo_id, private=settings.private, revision=settings.revision)["hub"]
    print(f"[hf-rlhf] {name}: on the Hub as {record['repo_id']} at {record['commit']}")
    return {name: f"{record['repo_id']}@{record['commit']}"} if settings.pull else {}


def pull_upstream(recipe: PipelineRecipe, name: str, refs: dict[str, str], stage_dirs: dict[str, str]) -> None:
    """A stage the recipe does not run but a later one reads (`hub.pull`): read from its repo at `hub.revision`,
    pinned to the commit found there; its snapshot serves the report as well."""
    settings = recipe.hub
    needed = {source for n in recipe.stages for source in STAGES[n].sources()}
    if settings is None or not settings.pull or name not in needed:
        return
    repo_type = "dataset" if name in DATASET_STAGES else "model"
    ref = f"{settings.repo_id(name, recipe.output_dir)}@{settings.revision}"
    try:
        resolved = resolve_input(ref, repo_type=repo_type, what=f"stage '{name}' (not in the recipe)")
    except HubInputError as e:
        raise RecipeError(f"pipeline recipe '{recipe.path}': {e}; run that stage, or list it in 'stages'") from None
    print(f"[hf-rlhf] {name}: not in the recipe, read from {resolved.repo_id} at {resolved.commit}")
    refs[name] = f"{resolved.repo_id}@{resolved.commit}"
    stage_dirs[name] = resolved.path


def publish_evaluation(recipe: PipelineRecipe, report: dict[str, Any]) -> None:
    """Put each stage's rows of the report (`stage_evaluations`: reward-model score and win rate against the
    reference model, KL, length, missing EOS, distinct-n, gold scores in the tiny world, sample generations) in its
    manifest and card (`model-index` included); re-push the stages of a `hub:` pipeline so their cards on the Hub
    show them too. Rows of `evaluation.models` belong to no stage and go to no card."""
    for name, evaluation in stage_evaluations(report).items():
        out_dir = os.path.join(recipe.output_dir, name)
        if name not in recipe.stages or not is_complete(out_dir):
            continue
        manifest = update_manifest(out_dir, evaluation=evaluation)
        if recipe.hub is not None and manifest.get("hub"):
            push_stage(out_dir, commit_message=f"hf-rlhf {name}: evaluation results")
