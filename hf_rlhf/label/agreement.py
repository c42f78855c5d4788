"""Inter-annotator agreement on rankings: Kendall's tau-b between labelers, Krippendorff's alpha for a project.

* **Kendall's tau-b** of two labelers on one item: over the K(K-1)/2 pairs of completions, (concordant - discordant)
  / sqrt((pairs untied by the first) x (pairs untied by the second)); 1 is the same order, -1 the reverse, ties
  allowed. A labeler's figure is the mean over every item they share with another labeler and every such labeler;
  the project's, the mean over every (item, pair of labelers). Undefined (left out) when either ties everything.
* **Krippendorff's alpha**: the units are (item, completion), the values each labeler's rank of that completion,
  1 - observed / expected disagreement (Krippendorff, "Computing Krippendorff's Alpha-Reliability", 2011), with the
  ordinal metric (ranks as ordered categories) and the interval metric (squared differences). 1 is perfect
  agreement, 0 what chance gives, below 0 systematic disagreement. Units with one value carry no information.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from typing import Any


def kendall_tau_b(a: list[float], b: list[float]) -> float | None:
    """Kendall's tau-b of two rankings of the same K items (ranks, ties allowed); None when either ties all."""
    if len(a) != len(b):
        raise ValueError(f"rankings of different lengths: {len(a)} and {len(b)}")
    concordant = discordant = tied_a = tied_b = pairs = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        pairs += 1
        da, db = a[i] - a[j], b[i] - b[j]
        tied_a += da == 0
        tied_b += db == 0
        if da * db > 0:
            concordant += 1
        elif da * db < 0:
            discordant += 1
    denominator = math.sqrt((pairs - tied_a) * (pairs - tied_b))
    return (concordant - discordant) / denominator if denominator else None


def _interval(c: float, k: float, counts: Counter) -> float:
    return (c - k) ** 2


def _ordinal(c: float, k: float, counts: Counter) -> float:
    low, high = min(c, k), max(c, k)
    between = sum(n for value, n in counts.items() if low <= value <= high)
    return (between - (counts[low] + counts[high]) / 2) ** 2


METRICS = {"interval": _interval, "ordinal": _ordinal}


def krippendorff_alpha(units: list[list[float]], metric: str = "ordinal") -> float | None:
    """Krippendorff's alpha of `units`, each the list of values the coders gave it (missing values left out).

    Returns None when fewer than two units have two values, or every value is the same (no expected disagreement).
    """
    delta = METRICS[metric]
    pairable = [u for u in units if len(u) >= 2]
    values = [v for u in pairable for v in u]
    n = len(values)
    if len(pairable) < 1 or n < 2:
        return None
    counts = Counter(values)
    observed = (
        sum(
            sum(delta(u[i], u[j], counts) for i in range(len(u)) for j in range(len(u)) if i != j) / (len(u) - 1)
            for u in pairable
        )
        / n
    )
    distinct = sorted(counts)
    expected = sum(counts[c] * counts[k] * delta(c, k, counts) for c in distinct for k in distinct if c != k)
    expected /= n * (n - 1)
    return 1 - observed / expected if expected else None


def agreement(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Agreement of ranking answers (`hf_rlhf.label.tasks.answers` rows: `item_id`, `labeler`, `ranking`).

    Returns:
        `dict`: `kendall_tau` (project mean over labeler pairs on shared items, None without any), `pairs`,
        `shared_items` (items ranked by two or more labelers), `alpha_ordinal`, `alpha_interval`, and
        `labelers`: name -> {`kendall_tau`, `pairs`, `items`}.
    """
    by_item: dict[int, dict[str, list[int]]] = defaultdict(dict)
    for row in answers:
        if row.get("ranking") and not row.get("skipped"):
            by_item[row["item_id"]][row["labeler"]] = row["ranking"]
    taus: list[float] = []
    per: dict[str, list[float]] = defaultdict(list)
    items = Counter()
    units: list[list[float]] = []
    for rankings in by_item.values():
        for name in rankings:
            items[name] += 1
        for (na, ra), (nb, rb) in itertools.combinations(rankings.items(), 2):
            tau = kendall_tau_b(ra, rb)
            if tau is not None:
                taus.append(tau)
                per[na].append(tau)
                per[nb].append(tau)
        if len(rankings) >= 2:
            k = len(next(iter(rankings.values())))
            units += [[r[i] for r in rankings.values()] for i in range(k)]
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {
        "kendall_tau": mean(taus),
        "pairs": len(taus),
        "shared_items": sum(len(r) >= 2 for r in by_item.values()),
        "alpha_ordinal": krippendorff_alpha(units, "ordinal"),
        "alpha_interval": krippendorff_alpha(units, "interval"),
        "labelers": {
            name: {"kendall_tau": mean(per[name]), "pairs": len(per[name]), "items": items[name]} for name in items
        },
    }


def project_agreement(db, project_id: int) -> dict[str, Any]:
    """`agreement` of a project's stored rankings."""
    from .tasks import answers

    return agreement(answers(db, project_id))


def agreement_lines(figures: dict[str, Any]) -> list[str]:
    """The figures as markdown lines (the export's card)."""

    def show(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    lines = [
        f"- Kendall's tau-b between labelers: {show(figures['kendall_tau'])} (mean over {figures['pairs']} labeler "
        f"pairs on {figures['shared_items']} items ranked by two or more labelers)",
        f"- Krippendorff's alpha: ordinal {show(figures['alpha_ordinal'])}, interval {show(figures['alpha_interval'])}",
        "",
        "| labeler | items ranked | Kendall's tau-b with the others | pairs |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {name} | {f['items']} | {show(f['kendall_tau'])} | {f['pairs']} |"
        for name, f in sorted(figures["labelers"].items())
    ]
    return lines
