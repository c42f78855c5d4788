"""Training curves of an RL run as one PNG: score, KL and every logged reward component per update."""

from __future__ import annotations


def plot_training_curves(history: list[dict[str, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    keys = ["score", "kl"] + sorted(k for k in history[0] if k.startswith("reward/"))
    keys = [k for k in keys if k in history[0]]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3), dpi=110, squeeze=False)
    steps = [h.get("step", i + 1) for i, h in enumerate(history)]
    for ax, key in zip(axes[0], keys, strict=True):
        ax.plot(steps, [h[key] for h in history], marker=".")
        ax.set_title(key.replace("reward/", "reward: "))
        ax.set_xlabel("PPO update")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
