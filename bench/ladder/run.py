"""The tiny-world ladder across seeds: base zero-shot < few-shot < SFT < best-of-N <= RL, on every seed.

The world and pretraining stay fixed; the seeds of everything after pretraining (SFT, sampling the comparisons,
reward modeling, RL) vary. Each seed runs the tiny pipeline (`recipes/tiny/pipeline.yaml`, or its LoRA / QLoRA
variant) in one working directory, so the pipeline's own reuse of finished stages skips the world and pretraining
after the first seed (same arguments, same digest); the seed's stage outputs and report are then moved to
`<output_dir>/<variant>/seed-<seed>/`. A seed whose report is already there is not run again, so an interrupted
ladder resumes where it stopped.

    python3 bench/ladder/run.py                          # full fine-tuning, seeds 42 43 44
    python3 bench/ladder/run.py --variant all            # full, LoRA and QLoRA
    python3 bench/ladder/run.py --seeds 42 --check       # one seed; exit 1 unless its ladder holds
    python3 bench/ladder/run.py --dry-run                # what would run, nothing trained
    python3 bench/ladder/run.py --table-only             # the table of the seeds already finished
    python3 bench/ladder/run.py --variant quick --seeds 1 2   # minutes: recipes/tiny/quick.yaml, checks the script

The table has one row per rung with each seed's gold score (95% bootstrap interval), the mean and standard deviation
over seeds, then each step of the ladder per seed: ordered (means) and apart (the lower rung's interval ends below
the upper rung's; RL needs only to be at least best-of-N, as the issue states it). Everything goes to
`<output_dir>/<variant>/ladder.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import time
from typing import Any

REPO_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPES = {
    "full": os.path.join(REPO_DIR, "recipes", "tiny", "pipeline.yaml"),
    "lora": os.path.join(REPO_DIR, "recipes", "tiny", "pipeline_lora.yaml"),
    "qlora": os.path.join(REPO_DIR, "recipes", "tiny", "pipeline_qlora.yaml"),
    "quick": os.path.join(REPO_DIR, "recipes", "tiny", "quick.yaml"),  # a smoke run of this script, not a ladder
}
LADDER = ("full", "lora", "qlora")  # --variant all
SEEDED_STAGES = ("sft", "sample", "reward", "rl")  # what varies with the seed; world and pretraining do not
MOVED = ("sft", "sft.merged", "sample", "reward", "reward.merged", "rl", "rl.merged", "report.json", "report.md")
# (rung, pattern of its report row's model name), in ladder order
RUNGS = (
    ("base zero-shot", r"base \(zero-shot\)"),
    ("base few-shot", r"base \(\d+-shot\)"),
    ("SFT", r"SFT"),
    ("best-of-N", r"SFT best-of-\d+.*"),
    ("RL", r"RL \(.*\)"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=[*RECIPES, "all"], default="full", help="Pipeline recipe (default full).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="Seeds after pretraining.")
    parser.add_argument("--output_dir", default=os.path.join(REPO_DIR, "outputs", "ladder"))
    parser.add_argument("--dry-run", action="store_true", help="Print what would run; train nothing.")
    parser.add_argument("--table-only", action="store_true", help="Only print the table of finished seeds.")
    parser.add_argument("--check", action="store_true", help="Exit 1 unless the ladder holds on every seed.")
    return parser.parse_args(argv)


def seeded_recipe(variant: str, work_dir: str, seed: int):
    """The variant's pipeline recipe writing to `work_dir`, with `seed` for every stage after pretraining."""
    from hf_rlhf.recipes import load_pipeline_recipe

    recipe = load_pipeline_recipe(RECIPES[variant], work_dir)
    for name in SEEDED_STAGES:
        if name in recipe.stages:
            recipe.stages[name]["overrides"] = {**(recipe.stages[name].get("overrides") or {}), "seed": seed}
    return recipe


def run_seed(variant: str, root: str, seed: int) -> None:
    """One pipeline run in `root/run`, its seed-dependent outputs then moved to `root/seed-<seed>`."""
    from hf_rlhf.pipeline import run_pipeline

    work, done = os.path.join(root, "run"), os.path.join(root, f"seed-{seed}")
    for name in MOVED:  # a run cut short leaves another seed's stages: the pipeline would rerun them anyway
        path = os.path.join(work, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
    start = time.perf_counter()
    run_pipeline(seeded_recipe(variant, work, seed))
    os.makedirs(done, exist_ok=True)
    for name in MOVED:
        if os.path.exists(os.path.join(work, name)):
            shutil.move(os.path.join(work, name), os.path.join(done, name))
    with open(os.path.join(done, "ladder_run.json"), "w") as f:
        json.dump({"variant": variant, "seed": seed, "seconds": time.perf_counter() - start}, f)


# ---------------------------------------------------------------------------------------------------- table
def rungs(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{rung: the row's gold interval {mean, ci_low, ci_high}} for the rungs present in a report."""
    out = {}
    for rung, pattern in RUNGS:
        row = next((r for r in report.get("rows", []) if re.fullmatch(pattern, r["model"]) and "gold" in r), None)
        if row is not None:
            out[rung] = row["gold"]
    return out


def steps(gold: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Each step of the ladder: ordered (means) and apart (intervals); RL must only reach best-of-N."""
    out = []
    names = [r for r, _ in RUNGS]
    for low, high in zip(names, names[1:], strict=False):
        if low not in gold or high not in gold:
            out.append({"step": f"{low} -> {high}", "ordered": None, "apart": None})
            continue
        a, b = gold[low], gold[high]
        if high == "RL":
            ordered = apart = b["mean"] >= a["mean"]
        else:
            ordered, apart = b["mean"] > a["mean"], a["ci_high"] < b["ci_low"]
        out.append({"step": f"{low} {'<=' if high == 'RL' else '<'} {high}", "ordered": ordered, "apart": apart})
    return out


def table(variant: str, per_seed: dict[int, dict[str, Any]]) -> tuple[list[str], bool]:
    seeds = sorted(per_seed)
    golds = {s: rungs(per_seed[s]) for s in seeds}
    lines = [f"ladder ({variant}): gold score [95% interval] per seed, world and pretraining fixed", ""]
    header = ["rung", *[f"seed {s}" for s in seeds], "mean +- sd (min..max)"]
    rows = []
    for rung, _ in RUNGS:
        cells = [
            f"{g[rung]['mean']:.3f} [{g[rung]['ci_low']:.3f}, {g[rung]['ci_high']:.3f}]" if rung in g else "-"
            for g in golds.values()
        ]
        values = [g[rung]["mean"] for g in golds.values() if rung in g]
        spread = "-"
        if values:
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            spread = f"{statistics.fmean(values):.3f} +- {sd:.3f} ({min(values):.3f}..{max(values):.3f})"
        rows.append([rung, *cells, spread])
    for name, key in (("RM held-out accuracy", "accuracy"), ("RM gold agreement", "gold_agreement")):
        cells = [fmt(find(per_seed[s], key)) for s in seeds]
        rows.append([name, *cells, ""])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    holds = True
    lines.append("")
    for s in seeds:
        checks = steps(golds[s])
        ok = all(c["ordered"] and c["apart"] for c in checks)
        holds &= ok
        text = ", ".join(f"{c['step']}: {mark(c)}" for c in checks)
        lines.append(f"seed {s}: {'HOLDS' if ok else 'FAILS'} ({text})")
    return lines, holds


def mark(check: dict[str, Any]) -> str:
    if check["ordered"] is None:
        return "missing"
    return "apart" if check["apart"] else "ordered, intervals overlap" if check["ordered"] else "NOT ordered"


def find(report: dict[str, Any], key: str) -> float | None:
    """A reward-model figure of a report (its reward_model section, or the reward stage's metrics)."""
    if key in (report.get("reward_model") or {}):
        return report["reward_model"][key]
    return ((report.get("stages") or {}).get("reward") or {}).get("eval", {}).get(key)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def load_reports(root: str, seeds: list[int]) -> dict[int, dict[str, Any]]:
    out = {}
    for s in seeds:
        path = os.path.join(root, f"seed-{s}", "report.json")
        if os.path.isfile(path):
            with open(path) as f:
                out[s] = json.load(f)
    return out


# ----------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, REPO_DIR)  # hf_rlhf from this checkout when it is not installed
    variants = list(LADDER) if args.variant == "all" else [args.variant]
    status = 0
    for variant in variants:
        root = os.path.join(os.path.abspath(args.output_dir), variant)
        finished = load_reports(root, args.seeds)
        todo = [s for s in args.seeds if s not in finished]
        if args.dry_run:
            for s in args.seeds:
                recipe = seeded_recipe(variant, os.path.join(root, "run"), s)  # the recipe loads and checks
                what = "done, kept" if s in finished else "to run"
                seeds = {n: recipe.stages[n]["overrides"]["seed"] for n in SEEDED_STAGES if n in recipe.stages}
                print(f"{variant} seed {s}: {what}; {RECIPES[variant]} in {recipe.output_dir}, seeds {seeds}")
            continue
        if not args.table_only:
            for s in todo:
                print(f"[ladder] {variant}, seed {s}: running the pipeline in {os.path.join(root, 'run')}", flush=True)
                run_seed(variant, root, s)
            finished = load_reports(root, args.seeds)
        if not finished:
            print(f"{variant}: no finished seed in {root}")
            status = 1
            continue
        lines, holds = table(variant, finished)
        print("\n".join(lines))
        with open(os.path.join(root, "ladder.json"), "w") as f:
            json.dump(
                {"variant": variant, "seeds": {s: rungs(r) for s, r in finished.items()}, "holds": holds}, f, indent=1
            )
        if args.check and not holds:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
