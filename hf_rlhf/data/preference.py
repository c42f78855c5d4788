"""Comparison data for the reward stage: TRL's preference formats and ranked K-way comparisons, as groups.

Every accepted row becomes one **group**: a prompt, its K >= 2 completions and the pairs (i, j) in which completion i
is preferred to completion j, each with an optional margin. A TRL preference row (`chosen`/`rejected`, with or
without `prompt`, standard or conversational, optional `margin`) is a group of K=2 with one pair. A ranked row
(`prompt`, `completions`, `ranking`) expands to every pair with a strict preference: K(K-1)/2 for a full order, fewer
with ties. As in InstructGPT, a group is one batch element: each completion is scored once and the loss is averaged
over the group's pairs, so a prompt with many completions is not overweighted and its pairs are never split across
batches or epochs.

`ranking[i]` is the rank of `completions[i]`: 1 is the best, larger is worse, equal numbers are ties (so "best first"
reads `[1, 2, 3]` for completions already in order).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from datasets import Dataset

from .formats import PREFERENCE_FORMATS, DataValidationError

INVALID_REASONS = {
    "chosen_equals_rejected": "a chosen completion equal to its rejected one",
    "bad_ranking": "a ranking that is not a ranking of the row's completions",
    "too_few_completions": "fewer than 2 completions",
    "empty_completion": "an empty completion",
    "all_tied": "a ranking with no strict preference (every completion tied)",
}


def preference_format(dataset: Dataset, where: str) -> str:
    """'ranked' (`prompt`, `completions`, `ranking`) or 'pairwise' (`chosen`, `rejected`, optional `prompt`)."""
    return PREFERENCE_FORMATS.detect(dataset.column_names, where)[0]


def pairs_from_ranking(ranking: list[int]) -> list[tuple[int, int]]:
    """Every (better, worse) index pair with a strict preference; ties give no pair."""
    return [(i, j) for i in range(len(ranking)) for j in range(len(ranking)) if ranking[i] < ranking[j]]


def _text(value: Any) -> str | None:
    """The text of a completion: a string, or the content of the last message of a conversational completion."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and isinstance(value[-1].get("content"), str):
        return value[-1]["content"]
    return None


def _problem(row: dict[str, Any], fmt: str) -> tuple[str, str] | None:
    """The first thing wrong with a row, as (reason key, detail), or None."""
    if fmt == "pairwise":
        chosen, rejected = _text(row["chosen"]), _text(row["rejected"])
        if chosen is None or rejected is None:
            return "empty_completion", "expected 'chosen' and 'rejected' as strings or lists of messages"
        if not chosen.strip() or not rejected.strip():
            return "empty_completion", "column 'chosen' or 'rejected' is empty"
        if row["chosen"] == row["rejected"]:
            return "chosen_equals_rejected", f"column 'chosen' equals column 'rejected' ({chosen[:40]!r})"
        return None
    completions, ranking = row["completions"], row["ranking"]
    if not isinstance(completions, list) or len(completions) < 2:
        return "too_few_completions", f"column 'completions' has {len(completions or [])} completions, expected >= 2"
    texts = [_text(c) for c in completions]
    if any(t is None or not t.strip() for t in texts):
        index = next(i for i, t in enumerate(texts) if t is None or not t.strip())
        return "empty_completion", f"column 'completions', item {index} is empty"
    if (
        not isinstance(ranking, list)
        or len(ranking) != len(completions)
        or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in ranking)
    ):
        return "bad_ranking", (
            f"column 'ranking' is {ranking!r}: expected {len(completions)} ranks (integers >= 1, 1 = best, "
            "equal for ties), one per completion"
        )
    if not pairs_from_ranking(ranking):
        return "all_tied", f"column 'ranking' {ranking!r} ties every completion"
    return None


def split_implicit_prompt(prompt: Any, chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """TRL's implicit-prompt preference rows: without a `prompt`, conversations share their leading messages (the
    prompt) and differ in the rest. Returns (prompt, chosen, rejected) with the shared messages as the prompt."""
    if prompt is not None or not (isinstance(chosen, list) and isinstance(rejected, list)):
        return ("" if prompt is None else prompt), chosen, rejected
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def to_groups(
    dataset: Dataset, where: str, on_invalid: str = "error"
) -> tuple[list[dict[str, Any]], dict[str, int], str]:
    """Check every row and turn it into a group; invalid rows stop the stage or are dropped and counted.

    Args:
        dataset (`Dataset`): Pairwise or ranked comparisons.
        where (`str`): How errors name the dataset and split.
        on_invalid (`str`): 'error' to stop at the first invalid row (naming it), 'drop' to drop and count them.

    Returns:
        `(groups, dropped, format)`: groups have `prompt`, `completions`, `pairs` and `margins`; `dropped` counts the
        dropped rows by reason.
    """
    if on_invalid not in ("error", "drop"):
        raise ValueError(f"on_invalid must be 'error' or 'drop', got {on_invalid!r}")
    fmt = preference_format(dataset, where)
    groups, dropped = [], Counter()
    for index, row in enumerate(dataset):
        problem = _problem(row, fmt)
        if problem is not None:
            reason, detail = problem
            if on_invalid == "error":
                raise DataValidationError(
                    f"{where}: row {index}: {detail}. Fix the row, or set `invalid_rows: drop` to drop and count "
                    f"rows with {INVALID_REASONS[reason]}"
                )
            dropped[reason] += 1
            continue
        if fmt == "pairwise":
            prompt, chosen, rejected = split_implicit_prompt(row.get("prompt"), row["chosen"], row["rejected"])
            groups.append(
                {
                    "prompt": prompt,
                    "completions": [chosen, rejected],
                    "pairs": [(0, 1)],
                    "margins": [float(row["margin"]) if row.get("margin") is not None else 0.0],
                    "ranks": [1, 2],
                }
            )
        else:
            pairs = pairs_from_ranking(row["ranking"])
            groups.append(
                {
                    "prompt": row["prompt"],
                    "completions": list(row["completions"]),
                    "pairs": pairs,
                    "margins": [0.0] * len(pairs),
                    "ranks": list(row["ranking"]),
                }
            )
    return groups, dict(dropped), fmt
