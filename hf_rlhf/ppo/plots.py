"""Training curves of an RL run as one PNG: the score, KL, entropy, length and every reward component per update.

Reads the keys of hf_rlhf's PPO history (`score`, `kl`, `entropy`, `response_length`, `reward/<name>`) and of TRL's
GRPO/RLOO `log_history` (`reward`, `kl`, `entropy`, `completions/mean_length`, `rewards/<name>/mean`); a curve
whose key no entry holds is left out, and entries without a value (None or NaN) are skipped.
"""

from __future__ import annotations

import math
import re
from typing import Any

CURVES = ["score", "reward", "kl", "entropy", "response_length", "completions/mean_length"]
COMPONENT = re.compile(
    r"^reward/(?P<ppo>.+)$|^rewards/(?P<trl>.+)/mean$"
)  # PPO's reward/<name>, TRL's rewards/<name>/mean
TITLES = {"response_length": "response length", "completions/mean_length": "completion length"}


def curve_keys(history: list[dict[str, Any]]) -> list[str]:
    """The keys plotted for `history`, in order: the main curves, then each reward component by name."""
    present = {k for h in history for k in h}
    components = sorted(k for k in present if COMPONENT.match(k))
    return [k for k in CURVES if k in present] + components


def title(key: str) -> str:
    if m := COMPONENT.match(key):
        return f"reward: {m['ppo'] or m['trl']}"
    return TITLES.get(key, key)


def plot_training_curves(history: list[dict[str, Any]], path: str, columns: int = 4) -> None:
    """Write the curves of `history` (one dict per logged update, with its `step`) to `path`; nothing to plot:
    no file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = curve_keys(history)
    if not keys:
        return
    ncols = min(columns, len(keys))
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 3 * nrows), dpi=110, squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        points = [
            (h.get("step", i + 1), h[key])
            for i, h in enumerate(history)
            if isinstance(h.get(key), (int, float)) and not math.isnan(h[key])
        ]
        ax.plot([s for s, _ in points], [v for _, v in points], marker=".")
        ax.set_title(title(key))
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
