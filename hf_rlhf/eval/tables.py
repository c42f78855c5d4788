"""The model table of the report and of the cards: one row per model, the columns its rows have.

`hf_rlhf.eval.report` writes it into `report.md`, `hf_rlhf.hub.cards` into each stage's card, so both read the same.
"""

from __future__ import annotations

import functools
from typing import Any

TINY_WORLD_PROMPTS = "tiny world held-out prompts"  # how the report and the cards name the tiny world's prompts


def interval_text(value: dict[str, Any]) -> str:
    """`0.625 [0.438, 0.812]`: a mean with its interval (`Interval.as_dict`, a win rate)."""
    return f"{value['mean']:.3f} [{value['ci_low']:.3f}, {value['ci_high']:.3f}]"


def number_text(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"  # NaN: e.g. no n-gram to count


def _cell(row: dict[str, Any], key: str, fmt: Any, reference: str | None, marks_reference: bool) -> str:
    if key in row:
        return fmt(row[key])
    if key == "kl_to_sft" and "kl_to_sft_bound" in row:  # best-of-N: an upper bound, not an estimate
        return f"<= {row['kl_to_sft_bound']:.3f}"
    return "reference" if marks_reference and row["model"] == reference else "-"


def table_columns(rows: list[dict[str, Any]], reference: str | None) -> list[tuple[str, Any]]:
    """The columns some row of `rows` has, as (header, row -> cell text)."""
    ref = reference or "the reference"
    columns = [  # (header, row key, text of row[key])
        ("gold score", "gold", lambda g: f"{g['mean']:.3f}"),
        ("95% interval", "gold", lambda g: f"[{g['ci_low']:.3f}, {g['ci_high']:.3f}]"),
        ("n", "n", str),
        ("reward model score", "reward_model_score", number_text),
        ("RM 95% interval", "reward_model_ci", lambda c: f"[{c[0]:.3f}, {c[1]:.3f}]"),
        (f"RM win rate vs {ref} (95% CI)", "rm_win_rate", interval_text),
        ("RM ties", "rm_win_rate", lambda w: number_text(w["tie_rate"])),
        (f"judge win rate vs {ref} (95% CI)", "judge_win_rate", interval_text),
        ("judge ties", "judge_win_rate", lambda w: number_text(w["tie_rate"])),
        ("judge order agreement", "judge_win_rate", lambda w: number_text(w["order_agreement"])),
        (f"KL to {ref}", "kl_to_sft", number_text),
        ("mean length", "mean_length", lambda v: f"{v:.1f}"),
        ("missing EOS", "missing_eos_rate", number_text),
        ("distinct-1", "distinct_1", number_text),
        ("distinct-2", "distinct_2", number_text),
    ]

    def present(key: str) -> bool:
        return any(key in r or (key == "kl_to_sft" and "kl_to_sft_bound" in r) for r in rows)

    return [
        (header, functools.partial(_cell, key=key, fmt=fmt, reference=reference, marks_reference="win rate" in header))
        for header, key, fmt in columns
        if present(key)
    ]


def markdown_table(rows: list[dict[str, Any]], reference: str | None) -> list[str]:
    """The model table as Markdown lines, each with as many cells as the header (`|` in a model name escaped)."""
    columns = table_columns(rows, reference)
    lines = ["| model | " + " | ".join(h for h, _ in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row in rows:
        cells = [row["model"].replace("|", "\\|"), *(cell(row) for _, cell in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
