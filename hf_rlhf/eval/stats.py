"""The numbers the report gives each model, as pure functions of its completions and scores.

- `win_rate`: the share of prompts on which a model's completion beats the reference model's (ties count half),
  with a percentile bootstrap interval over prompts and the tie rate;
- `distinct_n`: distinct n-grams over all n-grams of all completions (Li et al., 2016), words split on whitespace
  so that models with different tokenizers are comparable;
- `missing_eos_rate`: the share of completions that stopped at `max_new_tokens` instead of at EOS;
- `best_of_n_kl_bound`: the KL of best-of-N sampling to its sampler is at most log N - (N - 1) / N (Beirami et al.,
  2024), the figure the report gives best-of-N rows, whose completions are not sampled from one model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .generation import bootstrap_ci


def pairwise_outcomes(
    scores: Sequence[float], reference_scores: Sequence[float], identical: Sequence[bool] | None = None
) -> list[float]:
    """Per prompt, 1.0 when `scores[i] > reference_scores[i]`, 0.5 when they are equal or the two completions are
    `identical[i]` (the same text may score a hair apart in another batch's padding), 0.0 when lower."""
    if len(scores) != len(reference_scores):
        raise ValueError(f"win rate: {len(scores)} scores against {len(reference_scores)} reference scores")
    same = identical if identical is not None else [False] * len(scores)
    return [
        0.5 if tie or s == r else 1.0 if s > r else 0.0
        for s, r, tie in zip(scores, reference_scores, same, strict=True)
    ]


def win_rate(outcomes: Sequence[float], num_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The mean of per-prompt outcomes (1 win, 0.5 tie, 0 loss) with its 95% bootstrap interval over prompts.

    Returns:
        `dict`: `mean`, `ci_low`, `ci_high`, `n` (prompts), `wins`, `ties`, `losses` and `tie_rate`.
    """
    if any(o not in (0.0, 0.5, 1.0) for o in outcomes):
        raise ValueError("win rate outcomes must be 1 (win), 0.5 (tie) or 0 (loss)")
    interval = bootstrap_ci(outcomes, num_resamples, seed=seed).as_dict()
    ties = sum(o == 0.5 for o in outcomes)
    return {
        **interval,
        "wins": sum(o == 1.0 for o in outcomes),
        "ties": ties,
        "losses": sum(o == 0.0 for o in outcomes),
        "tie_rate": ties / len(outcomes),
    }


def both_orders_outcomes(first: Sequence[float], second: Sequence[float]) -> list[float]:
    """Per prompt, a judge's verdict asked in both orders: `first[i]` is its preference for the model's completion
    shown first, `second[i]` for it shown second (> 0: the model's is better). A win when both orders prefer the
    model, a loss when both prefer the reference, a tie when the orders disagree (the judge followed the position)
    or it has no preference."""
    if len(first) != len(second):
        raise ValueError(f"judge: {len(first)} verdicts in one order, {len(second)} in the other")
    return [1.0 if a > 0 and b > 0 else 0.0 if a < 0 and b < 0 else 0.5 for a, b in zip(first, second, strict=True)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams of `texts` (words split on whitespace); NaN when no text has n words."""
    if n < 1:
        raise ValueError(f"distinct-n needs n >= 1, got {n}")
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def missing_eos_rate(completion_ids: Sequence[Sequence[int]], eos_token_id: int) -> float:
    """The share of sampled completions (token ids, cut after their first EOS) that do not end with EOS."""
    if not completion_ids:
        raise ValueError("missing-EOS rate needs at least one completion")
    return sum(not ids or ids[-1] != eos_token_id for ids in completion_ids) / len(completion_ids)


def best_of_n_kl_bound(n: int) -> float:
    """log N - (N - 1) / N: an upper bound on KL(best-of-N || sampler), 0 for N = 1."""
    if n < 1:
        raise ValueError(f"best-of-N needs N >= 1, got {n}")
    return math.log(n) - (n - 1) / n
