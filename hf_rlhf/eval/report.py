"""The pipeline report: stage metrics, and every model measured on the same held-out prompts.

The prompts are `evaluation.eval_dataset`, else the RL dataset's test split (the tiny world's held-out prompts in
the demo). Rows: each deployable model (SFT, best-of-N sampling from the SFT model with the trained reward model,
the RL model, and `evaluation.models`) sampled with the same settings and measured by `hf_rlhf.eval.measure`
against `evaluation.reference_model` (the SFT model by default): the reward model's score with its 95% bootstrap
interval, its win rate on the same prompt (ties half), an optional judge's win rate, the KL to the reference, mean
length, missing-EOS rate and distinct-1/2. The tiny world adds the gold labeler's score with its interval and the
base model's zero-shot and few-shot rows; the reward model's held-out quality checks and its agreement with the
gold labeler get their own section. `hf-rlhf evaluate` (`hf_rlhf.eval.evaluate`) runs the same code on given models.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
from dataclasses import asdict
from typing import Any

from datasets import load_from_disk

from ..configs import DataArguments, EvaluationArguments
from ..data.world import TinyWorld, is_world_question
from ..errors import DataValidationError, HubError
from ..hub.cards import display_name
from ..manifest import atomic_write_json, require_complete
from ..modeling import load_model_for_inference
from ..reward.scorer import RewardModelScorer
from .measure import Candidate, load_prompts, measure, sample, sample_models, samples_table
from .tables import TINY_WORLD_PROMPTS, markdown_table

logger = logging.getLogger(__name__)


def gold_agreement(gold: list[list[float]], predicted: list[list[float]]) -> tuple[float, int]:
    """Fraction of pairs (within each prompt's candidates, gold scores differing) the reward model orders as gold does."""
    agree, total = 0.0, 0
    for g, p in zip(gold, predicted, strict=True):
        for i in range(len(g)):
            for j in range(i + 1, len(g)):
                if g[i] != g[j]:
                    total += 1
                    d = (p[i] - p[j]) * (g[i] - g[j])
                    agree += 1.0 if d > 0 else 0.5 if d == 0 else 0.0
    return (agree / total if total else float("nan")), total


def evaluation_prompts(
    ev: EvaluationArguments, stage_dirs: dict[str, str], prompts_dir: str | None
) -> tuple[list[Any] | None, dict[str, Any]]:
    """The held-out prompts and where they come from (`{"dataset", "split", "num_prompts"}`), or None and a note
    saying why there are none (the report then holds the stage metrics only)."""
    if ev.eval_dataset:
        data_args = DataArguments(dataset_name=ev.eval_dataset, dataset_train_split=ev.eval_split)
        prompts = load_prompts(data_args, "train", ev.max_eval_prompts)
        source = {"dataset": display_name(ev.eval_dataset), "split": ev.eval_split}
    elif prompts_dir is not None:  # the tiny world's prompts: the RL dataset of the demo
        prompts = load_from_disk(prompts_dir)["test"]["prompt"][: ev.max_eval_prompts]
        source = {"dataset": TINY_WORLD_PROMPTS, "split": "test"}
    elif "rl" in stage_dirs:
        saved = require_complete(stage_dirs["rl"]).get("configs", {}).get("data") or {}
        known = {f.name for f in dataclasses.fields(DataArguments) if f.init}
        data_args = DataArguments(**{k: v for k, v in saved.items() if k in known})
        try:
            prompts = load_prompts(data_args, "test", ev.max_eval_prompts)
        except (DataValidationError, HubError) as e:  # after hours of training: a note, not a traceback
            return None, {"note": f"the RL dataset's test split could not be read ({e}): set evaluation.eval_dataset"}
        if prompts is None:
            return None, {"note": "the RL dataset has no test split: set evaluation.eval_dataset to held-out prompts"}
        name = data_args.dataset_name or f"mixture of {len(data_args.datasets or [])} datasets"
        source = {"dataset": display_name(name), "split": data_args.dataset_test_split or "test"}
    else:
        return None, {"note": "no RL stage and no evaluation.eval_dataset: no prompts to measure the models on"}
    return prompts, {**source, "num_prompts": len(prompts)}


def build_report(
    output_dir: str,
    ev: EvaluationArguments,
    stage_dirs: dict[str, str],
    prompts_dir: str | None,
    world_seed: int | None,
) -> dict[str, Any]:
    """Collect stage metrics and measure every model on the held-out prompts (with gold scores in the tiny world).

    One process builds it; every model it loads (`load_model_for_inference`, `RewardModelScorer`) is frozen on that
    process's device (`hf_rlhf.placement`), and only the SFT model stays loaded while another is sampled.
    """
    report: dict[str, Any] = {
        "output_dir": output_dir,
        "stages": {name: require_complete(path)["metrics"] for name, path in stage_dirs.items()},
        "evaluation": asdict(ev),
        "rows": [],
        "samples": [],
    }
    deployable = {"SFT": (stage_dirs["sft"], "sft")} if "sft" in stage_dirs else {}
    if "rl" in stage_dirs:
        algorithm = require_complete(stage_dirs["rl"])["metrics"].get("algorithm", "ppo").upper()
        deployable[f"RL ({algorithm})"] = (stage_dirs["rl"], "rl")
    deployable.update({name: (path, None) for name, path in (ev.models or {}).items()})
    if not deployable and "pretrain" not in stage_dirs:
        return report
    prompts, source = evaluation_prompts(ev, stage_dirs, prompts_dir)
    if prompts is None:
        logger.warning("report: %s", source["note"])
        return {**report, **source}
    report["prompts"] = source
    world = TinyWorld(world_seed) if world_seed is not None and all(map(is_world_question, prompts)) else None
    questions = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
    gold = (lambda completions: world.gold_scores(questions, completions)) if world is not None else None
    scorer = RewardModelScorer(stage_dirs["reward"]) if "reward" in stage_dirs else None

    candidates: list[Candidate] = []
    if world is not None and "pretrain" in stage_dirs:  # the ladder's first rungs: the base model prompted
        model, tokenizer = load_model_for_inference(stage_dirs["pretrain"])
        rng = random.Random(ev.seed)
        few_shot = [
            world.few_shot_prefix(world.find_prompt(q).animal, rng, ev.few_shot_examples) + q + "\nA:"
            for q in questions
        ]
        texts, ids = sample(model, tokenizer, [q + "\n" for q in questions], ev, "base")
        candidates.append(Candidate("base (zero-shot)", "pretrain", texts, tokenizer, ids=ids))
        name = f"base ({ev.few_shot_examples}-shot)"
        texts, _ = sample(model, tokenizer, few_shot, ev, name, cut=True)  # cut at the newline: no EOS to count
        candidates.append(Candidate(name, "pretrain", texts, tokenizer))
        del model  # models are on this process's device (`hf_rlhf.placement`): only those still needed stay there
    reference = ev.reference_model if ev.reference_model in deployable else None
    if deployable:
        best_of_n_from = "SFT" if "SFT" in deployable else None
        sampled, best_of = sample_models(deployable, reference, prompts, ev, scorer, best_of_n_from)
        candidates += sampled
        if best_of and world is not None:
            n = ev.best_of_n
            gold_n = [world.gold_scores([q] * n, c) for q, c in zip(questions, best_of["candidates"], strict=True)]
            agreement, pairs = gold_agreement(gold_n, best_of["rewards"])
            report["reward_model"] = {"gold_agreement": agreement, "gold_agreement_pairs": pairs}
    report["reference"] = reference
    report["rows"] = measure(candidates, prompts, reference, ev, scorer, gold)
    report["samples"] = samples_table(prompts, candidates, ev.num_samples_shown)
    return report


# ------------------------------------------------------------------------------------------------ formatting
def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _rows_text(counts: dict[str, Any]) -> str:
    """`used 120; dropped: too_long_dropped 3; truncated: over_max_length 5` (a split's row counts)."""
    parts = [f"used {counts.get('used') if counts.get('used') is not None else 'streamed'}"]
    for kind in ("dropped", "truncated", "converted"):
        if counts.get(kind):
            parts.append(f"{kind}: " + ", ".join(f"{reason} {n}" for reason, n in counts[kind].items()))
    return "; ".join(parts)


def models_table(report: dict[str, Any]) -> list[str]:
    """The model section of `report.md`: how the models were sampled and compared, then their table."""
    ev, source, rows = report["evaluation"], report.get("prompts") or {}, report["rows"]
    where = f"{source.get('num_prompts', '?')} prompts from {source.get('dataset', 'the held-out prompts')}"
    where += f" ({source['split']} split)" if source.get("split") else ""
    reference = report.get("reference")
    text = (
        f"{where}; every model sampled at temperature {ev['temperature']}, at most {ev['max_new_tokens']} new tokens, "
        f"seed {ev['seed']}. Intervals: 95% bootstrap over prompts ({ev['bootstrap_resamples']} resamples)."
    )
    if reference:
        text += (
            f" Win rate: the share of prompts on which the model's completion beats {reference}'s on the same prompt "
            "(ties count half), by the reward model's scores"
        )
        text += (
            "; by the judge, asked in both orders (a tie when the orders disagree)."
            if any("judge_win_rate" in r for r in rows)
            else "."
        )
    if any("gold" in r for r in rows):
        text += " Gold score: the tiny world's gold labeler, in [0, 1]."
    return ["## Models on held-out prompts", "", text, "", *markdown_table(rows, reference)]


def format_report(report: dict[str, Any]) -> str:
    """The report as Markdown: stage metrics, the model table, reward model checks, samples side by side."""
    lines = [f"# {report.get('title', 'hf_rlhf pipeline report')}"]
    if report["stages"]:
        lines += ["", "## Stages", "", "| stage | metric | value |", "|---|---|---|"]
    for stage, metrics in report["stages"].items():
        for key, value in metrics.items():
            if not isinstance(value, dict | list):
                lines.append(f"| {stage} | {key} | {_fmt(value)} |")
        for split, counts in (metrics.get("rows") or {}).items():  # hf_rlhf.data.loading.row_counts
            if isinstance(counts, dict):
                lines.append(f"| {stage} | rows ({split}) | {_rows_text(counts)} |")
    if report.get("note"):
        lines += ["", "## Models", "", f"Not measured: {report['note']}."]
    if report["rows"]:
        lines += ["", *models_table(report)]
    reward = report["stages"].get("reward")
    if reward and "eval" in reward:
        q = reward["eval"]
        lines += ["", "## Reward model checks (held-out comparisons)", ""]
        lines.append(f"- pairwise accuracy: {q['accuracy']:.3f} on {q['num_pairs']} pairs")
        if "reward_model" in report:
            agreement = report["reward_model"]
            lines.append(
                f"- agreement with the gold labeler on held-out prompts' SFT samples: "
                f"{agreement['gold_agreement']:.3f} on {agreement['gold_agreement_pairs']} pairs"
            )
        by = ", ".join(f"{k}: {v:.3f}" for k, v in q["accuracy_by_rank_distance"].items())
        lines.append(f"- accuracy by rank distance: {by}")
        lines.append(
            f"- reward gap (better - worse): {q['reward_gap']:.3f}; expected calibration error: {q['ece']:.3f}"
        )
        if "reward_centring" in reward:
            c = reward["reward_centring"]
            lines.append(
                f"- centred on {c['num_rows']} reference rows: mean {c['mean_before']:.3f} -> 0, std {c['std']:.3f}"
            )
        lines += ["", "| P(a > b) bin | predicted | observed | pairs |", "|---|---|---|---|"]
        lines += [
            f"| {c['bin']} | {c['predicted']:.3f} | {c['observed']:.3f} | {c['count']} |" for c in q["calibration"]
        ]
    if report["samples"]:
        names = [k for k in report["samples"][0] if k != "prompt"]
        lines += ["", "## Samples", "", "| prompt | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
        for sample in report["samples"]:
            cells = [sample["prompt"]] + [sample[n] for n in names]
            lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", "⏎") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], output_dir: str) -> None:
    atomic_write_json(os.path.join(output_dir, "report.json"), json.loads(json.dumps(report, default=str)))
    text = format_report(report)
    with open(os.path.join(output_dir, "report.md"), "w") as f:
        f.write(text)
    print(text)


def stage_evaluations(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each stage's part of the report, for its manifest and card (and its repo on the Hub): its rows of the model
    table, the reference model's row beside them, where the prompts came from and its sample generations, e.g.
    `{"rl": {"rows": [...], "reference_row": {...}, "samples": [{"prompt", "model", "response"}], ...}}`.
    Rows of models that are no stage of the run (`evaluation.models`) go to no stage."""
    out: dict[str, dict[str, Any]] = {}
    reference = report.get("reference")
    ref_row = next((r for r in report["rows"] if r["model"] == reference), None)
    ev = report["evaluation"]
    for row in report["rows"]:
        if row.get("stage") is None:
            continue
        stage = out.setdefault(
            row["stage"],
            {
                "temperature": ev["temperature"],
                "max_new_tokens": ev["max_new_tokens"],
                "prompts": report.get("prompts"),
                "reference": reference,
                "rows": [],
            },
        )
        stage["rows"].append(row)
    for stage in out.values():
        models = [row["model"] for row in stage["rows"]]
        if ref_row is not None and reference not in models:
            stage["reference_row"] = ref_row
        stage["samples"] = [
            {"prompt": sample["prompt"], "model": model, "response": sample[model]}
            for sample in report["samples"]
            for model in [*models, *([reference] if "reference_row" in stage else [])]
            if model in sample
        ]
    return out
