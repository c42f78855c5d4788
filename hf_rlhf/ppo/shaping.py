"""What PPO does to the sequence scores before they become rewards: the group baseline of several samples per
prompt, and running normalisation across updates (statistics merged over every process).

Order in `PPOTrainer.score`: weighted sum of the rewards -> missing-EOS penalty -> group baseline
(`num_samples_per_prompt`, `group_baseline`) -> running normalisation (`running_reward_norm`) -> `reward_clip`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def group_baseline(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Each score minus the mean score of the other samples of its prompt (leave-one-out, as RLOO).

    `scores` holds `group_size` consecutive samples per prompt. For sample i of a group of K:
    s_i - (sum_j s_j - s_i) / (K - 1), which equals K / (K - 1) * (s_i - mean_j s_j) [Kool et al. 2019, "Buy 4
    REINFORCE samples, get a baseline for free!"; Ahmadian et al. 2024]. Unlike the plain group mean, the baseline of a
    sample does not contain the sample itself, so it is independent of it and the estimate stays unbiased.
    """
    if group_size < 2:
        raise ValueError(f"a group baseline needs at least 2 samples per prompt, got {group_size}")
    if scores.shape[0] % group_size:
        raise ValueError(f"{scores.shape[0]} scores are not groups of {group_size} samples per prompt")
    groups = scores.view(-1, group_size)
    others = (groups.sum(-1, keepdim=True) - groups) / (group_size - 1)
    return (groups - others).reshape(scores.shape)


class RunningMoments:
    """Running mean and (unbiased) variance of every score seen so far, over all processes.

    Each `update` merges the batch's count, sum and sum of squares, reduced with `reduce` (e.g.
    `accelerator.reduce(..., "sum")`, so every process holds the same statistics), with Chan et al.'s parallel
    formula: n = n_a + n_b, mean = mean_a + (mean_b - mean_a) n_b / n, M2 = M2_a + M2_b + (mean_b - mean_a)^2 n_a n_b / n.
    Kept in float64 so that long runs do not drift.
    """

    def __init__(self):
        self.count, self.mean, self.m2 = 0.0, 0.0, 0.0

    @property
    def var(self) -> float:
        return self.m2 / (self.count - 1) if self.count > 1 else 1.0

    @property
    def std(self) -> float:
        return max(self.var, 0.0) ** 0.5

    def update(self, values: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Merge `values` (this process's scores) into the statistics."""
        values = values.detach().double()
        sums = torch.stack([values.new_tensor(float(values.numel())), values.sum(), (values**2).sum()])
        if reduce is not None:
            sums = reduce(sums)
        n_b, total, total_sq = sums.tolist()
        if n_b == 0:
            return
        mean_b = total / n_b
        m2_b = max(total_sq - n_b * mean_b**2, 0.0)
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta**2 * self.count * n_b / n
        self.count = n

    def normalize(self, values: torch.Tensor) -> torch.Tensor:
        """(values - mean) / std with the current statistics."""
        return (values - self.mean) / max(self.std, 1e-8)

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]
