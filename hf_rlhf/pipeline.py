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
import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .artifacts import atomic_write_json, is_complete, read_manifest, require_complete
from .configs import RecipeError, WorldArguments, check_keys, load_yaml_mapping, parse_stage_args, to_cli_args
from .evaluation import bootstrap_ci, chat_prompts, generate
from .stages import pretrain, sft

logger = logging.getLogger(__name__)

STAGES = {"pretrain": pretrain, "sft": sft}  # stage name -> module with `make_parser` and `run`, in pipeline order


@dataclass
class EvaluationArguments:
    """How the pipeline measures each model with the gold labeler on the held-out prompts."""

    temperature: float = 1.0
    max_new_tokens: int = 32
    few_shot_examples: int = 3
    num_samples_shown: int = 4
    batch_size: int = 50
    bootstrap_resamples: int = 2000
    seed: int = 0


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


def stage_argv(recipe: PipelineRecipe, name: str, previous_dir: str | None, data: dict[str, str]) -> list[str]:
    """The command line the pipeline gives a stage: its recipe, then what the pipeline wires in, then overrides."""
    spec = recipe.stages[name]
    in_recipe = load_yaml_mapping(spec["recipe"]) if "recipe" in spec else {}
    wired = {"output_dir": os.path.join(recipe.output_dir, name)}
    if previous_dir is not None:
        wired["model_name_or_path"] = previous_dir
    default_data = {"pretrain": "documents", "sft": "demonstrations"}.get(name)
    if default_data in data and "dataset_name" not in in_recipe:
        wired["dataset_name"] = data[default_data]
    argv = ["--config", spec["recipe"]] if "recipe" in spec else []
    return argv + to_cli_args(wired) + to_cli_args(spec.get("overrides") or {})


def _args_hash(argv: list[str]) -> str:
    payload = list(argv)
    if "--config" in payload:
        with open(payload[payload.index("--config") + 1]) as f:
            payload.append(f.read())
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


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

    stage_dirs: dict[str, str] = {}
    previous = None
    for name, module in STAGES.items():
        if name not in recipe.stages:
            continue
        argv = stage_argv(recipe, name, previous, data)
        out_dir = os.path.join(recipe.output_dir, name)
        digest = _args_hash(argv)
        manifest = read_manifest(out_dir)
        if not overwrite and is_complete(out_dir) and manifest.get("pipeline_args_hash") == digest:
            logger.warning("stage '%s' is already complete in %s; skipping", name, out_dir)
            print(f"[hf-rlhf] {name}: already complete in {out_dir}, skipped")
        else:
            print(f"[hf-rlhf] {name}: hf-rlhf {name} {' '.join(argv)}")
            args = parse_stage_args(module.make_parser(f"hf-rlhf {name}"), argv)
            module.run(*args)
            manifest = require_complete(out_dir)
            atomic_write_json(
                os.path.join(out_dir, "hf_rlhf_manifest.json"), {**manifest, "pipeline_args_hash": digest}
            )
        stage_dirs[name] = out_dir
        previous = out_dir

    report = build_report(recipe, stage_dirs, data)
    write_report(report, recipe.output_dir)
    return report


# ------------------------------------------------------------------------------------------------- report
def build_report(recipe: PipelineRecipe, stage_dirs: dict[str, str], data: dict[str, str]) -> dict[str, Any]:
    """Stage metrics, and the gold labeler's score of every model on the same held-out prompts."""
    report: dict[str, Any] = {
        "output_dir": recipe.output_dir,
        "stages": {name: require_complete(path)["metrics"] for name, path in stage_dirs.items()},
        "evaluation": asdict(recipe.evaluation),
        "rows": [],
        "samples": [],
    }
    if recipe.world is None or "prompts" not in data:
        return report

    from datasets import load_from_disk

    from .data.world import TinyWorld
    from .modeling import load_model_for_inference

    world = TinyWorld(recipe.world.seed)
    ev = recipe.evaluation
    questions = [row["prompt"][-1]["content"] for row in load_from_disk(data["prompts"])["test"]]
    rng = random.Random(ev.seed)
    few_shot = [
        world.few_shot_prefix(world.find_prompt(q).animal, rng, ev.few_shot_examples) + q + "\nA:" for q in questions
    ]
    plans = []  # (row name, stage, formatted prompts, cut at newline)
    if "pretrain" in stage_dirs:
        plans.append(("base (zero-shot)", "pretrain", [q + "\n" for q in questions], False))
        plans.append((f"base ({ev.few_shot_examples}-shot)", "pretrain", few_shot, True))
    if "sft" in stage_dirs:
        plans.append(("SFT", "sft", None, False))

    responses: dict[str, list[str]] = {}
    for row_name, stage, prompts, cut in plans:
        model, tokenizer = load_model_for_inference(stage_dirs[stage])
        if prompts is None:
            prompts = chat_prompts(tokenizer, questions)
        completions = generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=ev.max_new_tokens,
            temperature=ev.temperature,
            batch_size=ev.batch_size,
            seed=ev.seed,
            stop_at_newline=cut,
            desc=f"sampling {row_name}",
        )
        scores = world.gold_scores(questions, completions)
        interval = bootstrap_ci(scores, ev.bootstrap_resamples, seed=ev.seed)
        lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions]
        report["rows"].append(
            {"model": row_name, "stage": stage, "gold": interval.as_dict(), "mean_length": sum(lengths) / len(lengths)}
        )
        responses[row_name] = completions
    for i in range(min(ev.num_samples_shown, len(questions))):
        report["samples"].append({"prompt": questions[i], **{name: r[i] for name, r in responses.items()}})
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as Markdown: stage metrics, the gold score table, and samples side by side."""
    lines = ["# hf_rlhf pipeline report", "", "## Stages", "", "| stage | metric | value |", "|---|---|---|"]
    for stage, metrics in report["stages"].items():
        for key, value in metrics.items():
            shown = f"{value:.4g}" if isinstance(value, float) else value
            lines.append(f"| {stage} | {key} | {shown} |")
    if report["rows"]:
        ev = report["evaluation"]
        lines += [
            "",
            f"## Gold labeler on held-out prompts (temperature {ev['temperature']}, 95% bootstrap interval)",
            "",
            "| model | gold score | 95% interval | n | mean length (tokens) |",
            "|---|---|---|---|---|",
        ]
        for row in report["rows"]:
            g = row["gold"]
            lines.append(
                f"| {row['model']} | {g['mean']:.3f} | [{g['ci_low']:.3f}, {g['ci_high']:.3f}] | {g['n']} "
                f"| {row['mean_length']:.1f} |"
            )
    if report["samples"]:
        names = [k for k in report["samples"][0] if k != "prompt"]
        lines += ["", "## Samples", "", "| prompt | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for sample in report["samples"]:
            cells = [sample["prompt"]] + [sample[n] for n in names]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", "⏎") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], output_dir: str) -> None:
    atomic_write_json(os.path.join(output_dir, "report.json"), report)
    text = format_report(report)
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write(text)
    print(text)


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
