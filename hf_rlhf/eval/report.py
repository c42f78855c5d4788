"""The pipeline report: stage metrics, and every model measured on the same held-out prompts.

Rows: the base model zero-shot and few-shot ("fake document" prompting), the SFT model, and best-of-N sampling
from the SFT model with the trained reward model; each with the gold labeler's mean score and 95% bootstrap interval,
the reward model's mean score (when there is one) and the mean response length. The reward model's held-out quality
checks and its agreement with the gold labeler get their own section.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict
from typing import Any

from datasets import load_from_disk

from ..configs import EvaluationArguments
from ..data.world import TinyWorld
from ..manifest import atomic_write_json, require_complete
from ..modeling import load_model_for_inference
from ..reward.scorer import RewardModelScorer, best_of_n
from .generation import bootstrap_ci, generate, sequence_kl


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


def build_report(
    output_dir: str,
    ev: EvaluationArguments,
    stage_dirs: dict[str, str],
    prompts_dir: str | None,
    world_seed: int | None,
) -> dict[str, Any]:
    """Collect stage metrics and, for a tiny-world run, measure every model on the held-out prompts.

    One process builds it; every model it loads (`load_model_for_inference`, `RewardModelScorer`) is frozen on that
    process's device (`hf_rlhf.placement`).
    """
    report: dict[str, Any] = {
        "output_dir": output_dir,
        "stages": {name: require_complete(path)["metrics"] for name, path in stage_dirs.items()},
        "evaluation": asdict(ev),
        "rows": [],
        "samples": [],
    }
    if world_seed is None or prompts_dir is None:
        return report

    world = TinyWorld(world_seed)
    questions = [row["prompt"][-1]["content"] for row in load_from_disk(prompts_dir)["test"]]
    scorer = RewardModelScorer(stage_dirs["reward"]) if "reward" in stage_dirs else None
    conversations = [[{"role": "user", "content": q}] for q in questions]

    def add_row(name: str, stage: str, completions: list[str], tokenizer, kl: list[float] | None = None) -> None:
        gold = bootstrap_ci(world.gold_scores(questions, completions), ev.bootstrap_resamples, seed=ev.seed)
        lengths = [len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in completions]
        row = {"model": name, "stage": stage, "gold": gold.as_dict(), "mean_length": sum(lengths) / len(lengths)}
        if kl is not None:
            row["kl_to_sft"] = sum(kl) / len(kl)
        if scorer is not None:
            rm = scorer(conversations, completions)
            row["reward_model_score"] = sum(rm) / len(rm)
        report["rows"].append(row)
        responses[name] = completions

    def sample(model, tokenizer, prompts, name, cut=False, seed=ev.seed, return_ids=False):
        return generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=ev.max_new_tokens,
            temperature=ev.temperature,
            batch_size=ev.batch_size,
            seed=seed,
            stop_at_newline=cut,
            desc=f"sampling {name}",
            return_ids=return_ids,
        )

    responses: dict[str, list[str]] = {}
    if "pretrain" in stage_dirs:
        model, tokenizer = load_model_for_inference(stage_dirs["pretrain"])
        rng = random.Random(ev.seed)
        few_shot = [
            world.few_shot_prefix(world.find_prompt(q).animal, rng, ev.few_shot_examples) + q + "\nA:"
            for q in questions
        ]
        add_row(
            "base (zero-shot)", "pretrain", sample(model, tokenizer, [q + "\n" for q in questions], "base"), tokenizer
        )
        name = f"base ({ev.few_shot_examples}-shot)"
        add_row(name, "pretrain", sample(model, tokenizer, few_shot, name, cut=True), tokenizer)
        del model  # models are on this process's device (`hf_rlhf.placement`): only those still needed stay there
    if "sft" in stage_dirs:
        sft_model, tokenizer = load_model_for_inference(stage_dirs["sft"])
        chat = conversations
        add_row(
            "SFT",
            "sft",
            sample(sft_model, tokenizer, chat, "SFT"),
            tokenizer,
            kl=[0.0] if "rl" in stage_dirs else None,
        )
        if scorer is not None and ev.best_of_n > 1:
            n = ev.best_of_n
            flat = sample(sft_model, tokenizer, [c for c in chat for _ in range(n)], f"SFT x{n}", seed=ev.seed + 1)
            candidates = [flat[i * n : (i + 1) * n] for i in range(len(questions))]
            best, rm_scores = best_of_n(conversations, candidates, scorer)
            add_row(f"SFT best-of-{n} (reward model)", "reward", best, tokenizer)
            gold = [world.gold_scores([q] * n, c) for q, c in zip(questions, candidates, strict=True)]
            agreement, pairs = gold_agreement(gold, rm_scores)
            report["reward_model"] = {"gold_agreement": agreement, "gold_agreement_pairs": pairs}
    if "rl" in stage_dirs and "sft" in stage_dirs:
        policy, tokenizer = load_model_for_inference(stage_dirs["rl"])  # sft_model: loaded for the SFT row
        chat = conversations
        completions, ids = sample(policy, tokenizer, chat, "RL", return_ids=True)
        kl = sequence_kl(policy, sft_model, tokenizer, chat, ids, ev.temperature, ev.batch_size)
        algorithm = require_complete(stage_dirs["rl"])["metrics"].get("algorithm", "ppo").upper()
        add_row(f"RL ({algorithm})", "rl", completions, tokenizer, kl)
    for i in range(min(ev.num_samples_shown, len(questions))):
        report["samples"].append({"prompt": questions[i], **{name: r[i] for name, r in responses.items()}})
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


def format_report(report: dict[str, Any]) -> str:
    """The report as Markdown: stage metrics, the gold score table, reward model checks, samples side by side."""
    lines = ["# hf_rlhf pipeline report", "", "## Stages", "", "| stage | metric | value |", "|---|---|---|"]
    for stage, metrics in report["stages"].items():
        for key, value in metrics.items():
            if not isinstance(value, dict | list):
                lines.append(f"| {stage} | {key} | {_fmt(value)} |")
        for split, counts in (metrics.get("rows") or {}).items():  # hf_rlhf.data.loading.row_counts
            if isinstance(counts, dict):
                lines.append(f"| {stage} | rows ({split}) | {_rows_text(counts)} |")
    if report["rows"]:
        ev = report["evaluation"]
        has_rm = any("reward_model_score" in r for r in report["rows"])
        has_kl = any("kl_to_sft" in r for r in report["rows"])
        lines += [
            "",
            f"## Gold labeler on held-out prompts (temperature {ev['temperature']}, 95% bootstrap interval)",
            "",
            "| model | gold score | 95% interval | n |"
            + (" reward model score |" if has_rm else "")
            + (" KL to SFT |" if has_kl else "")
            + " mean length |",
            "|---|---|---|---|" + ("---|" if has_rm else "") + ("---|" if has_kl else "") + "---|",
        ]
        for row in report["rows"]:
            g = row["gold"]
            rm = f" {row['reward_model_score']:.3f} |" if has_rm else ""
            if has_kl:
                rm += f" {row['kl_to_sft']:.3f} |" if "kl_to_sft" in row else " - |"
            lines.append(
                f"| {row['model']} | {g['mean']:.3f} | [{g['ci_low']:.3f}, {g['ci_high']:.3f}] | {g['n']} |{rm} "
                f"{row['mean_length']:.1f} |"
            )
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
    """Each stage's part of the report, for its manifest and card (and its repo on the Hub): its rows of the gold
    table and its sample generations, e.g. `{"sft": {"rows": [...], "samples": [{"prompt", "model", "response"}]}}`.
    """
    out: dict[str, dict[str, Any]] = {}
    for row in report["rows"]:
        stage = out.setdefault(row["stage"], {"temperature": report["evaluation"]["temperature"], "rows": []})
        stage["rows"].append(row)
    for stage in out.values():
        models = [row["model"] for row in stage["rows"]]
        stage["samples"] = [
            {"prompt": sample["prompt"], "model": model, "response": sample[model]}
            for sample in report["samples"]
            for model in models
            if model in sample
        ]
    return out
