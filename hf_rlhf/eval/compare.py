"""`hf-rlhf compare`: the reports of several pipeline runs side by side (full precision, LoRA, QLoRA...).

Each run directory holds the `report.json` that `hf-rlhf pipeline` (or `hf-rlhf evaluate`) wrote. The table has one
row per evaluated model (base, SFT, best-of-N, RL) and one column per run with the gold score and its 95% bootstrap
interval (the tiny world; elsewhere the reward model's win rate against the reference model), then each model's
reward-model win rate (tiny world), the reward model's held-out accuracy, the trainable share of each stage's
parameters, and the KL of the RL policy to its SFT model.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any


def load_report(run_dir: str) -> dict[str, Any]:
    path = os.path.join(run_dir, "report.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"'{run_dir}' has no report.json: run `hf-rlhf pipeline` for it first")
    with open(path) as f:
        return json.load(f)


def _interval(row: dict[str, Any] | None, key: str) -> str:
    if not row or key not in row:
        return "-"
    value = row[key]
    return f"{value['mean']:.3f} [{value['ci_low']:.3f}, {value['ci_high']:.3f}]"


def _trainable(stage: dict[str, Any]) -> str:
    if not stage.get("total_parameters"):
        return "-"
    return f"{stage['trainable_parameters'] / stage['total_parameters']:.1%} of {stage['total_parameters']:,}"


def compare(run_dirs: list[str], labels: list[str] | None = None) -> str:
    """A markdown table of the runs' reports, models as rows and runs as columns."""
    reports = [load_report(d) for d in run_dirs]
    labels = labels or [os.path.basename(os.path.normpath(d)) for d in run_dirs]
    models = list(dict.fromkeys(r["model"] for report in reports for r in report["rows"]))
    reference = next((rep.get("reference") for rep in reports if rep.get("reference")), "SFT")

    def row(report: dict[str, Any], model: str) -> dict[str, Any] | None:
        return next((r for r in report["rows"] if r["model"] == model), None)

    gold = any("gold" in r for rep in reports for r in rep["rows"])
    key, header = ("gold", "gold score") if gold else ("rm_win_rate", f"RM win rate vs {reference}")
    lines = [f"| {header} (95% CI) | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for model in models:
        lines.append(f"| {model} | " + " | ".join(_interval(row(rep, model), key) for rep in reports) + " |")
    if gold:  # the reward model's verdict next to the gold labeler's
        for model in models:
            cells = [_interval(row(rep, model), "rm_win_rate") for rep in reports]
            if any(c != "-" for c in cells):
                lines.append(f"| RM win rate vs {reference}: {model} | " + " | ".join(cells) + " |")
    extra = {
        "reward model held-out accuracy": [
            f"{rep['stages'].get('reward', {}).get('eval_accuracy', float('nan')):.3f}" for rep in reports
        ],
        "RL KL to SFT": [
            next((f"{r['kl_to_sft']:.3f}" for r in rep["rows"] if r.get("stage") == "rl"), "-") for rep in reports
        ],
        **{
            f"{stage} trainable parameters": [_trainable(rep["stages"].get(stage, {})) for rep in reports]
            for stage in ("sft", "reward", "rl")
        },
    }
    for name, cells in extra.items():
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    """`hf-rlhf compare RUN_DIR [RUN_DIR ...]`: pipeline reports side by side."""
    parser = argparse.ArgumentParser(prog="hf-rlhf compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="Pipeline output directories (each with a report.json).")
    parser.add_argument("--labels", nargs="+", help="Column names (default: the directory names).")
    parser.add_argument("--output", help="Also write the table to this markdown file.")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.run_dirs):
        parser.error(f"--labels has {len(args.labels)} names for {len(args.run_dirs)} runs")
    try:
        text = compare(args.run_dirs, args.labels)
    except FileNotFoundError as e:
        parser.error(str(e))
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")
    return text
