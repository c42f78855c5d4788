"""Grouped comparisons on TRL's `RewardTrainer`: a collator, a loss, and the reward model's quality checks.

How this maps onto `RewardTrainer`: upstream takes one (chosen, rejected) pair per batch element and puts all chosen
sequences, then all rejected ones, in one forward pass. A group of K completions with P pairs fits the same shape
with two small changes and nothing else overridden:

* `GroupedPreferenceCollator` puts every completion of every group in the batch once (K forward rows per prompt,
  not 2P), with index tensors saying which rows form each pair and which group each pair belongs to;
* `GroupedRewardTrainer.compute_loss` scores the rows and calls `grouped_pairwise_loss`: -log sigmoid(r_w - r_l - m)
  per pair, averaged over each group's pairs, then over groups (InstructGPT's per-prompt averaging). For a batch of
  pairwise rows (K=2, one pair each) this is exactly upstream's loss.

`_prepare_dataset` is skipped because the stage tokenizes (and counts truncations and drops) itself.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch
from torch import nn
from trl import RewardTrainer


def grouped_pairwise_loss(
    rewards: torch.Tensor,
    chosen_index: torch.Tensor,
    rejected_index: torch.Tensor,
    pair_group: torch.Tensor,
    num_groups: int,
    margin: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bradley-Terry loss averaged over each group's pairs, then over groups.

    Args:
        rewards (`torch.Tensor` of shape `(num_rows,)`): One scalar per scored sequence.
        chosen_index, rejected_index (`torch.LongTensor` of shape `(num_pairs,)`): Rows of the preferred and the
            dispreferred completion of each pair.
        pair_group (`torch.LongTensor` of shape `(num_pairs,)`): Group (prompt) of each pair, in `[0, num_groups)`.
        num_groups (`int`): Number of groups in the batch; each must own at least one pair.
        margin (`torch.Tensor` of shape `(num_pairs,)`, *optional*): Required reward gap per pair.

    Returns:
        `torch.Tensor`: the scalar loss.
    """
    diff = rewards[chosen_index] - rewards[rejected_index]
    if margin is not None:
        diff = diff - margin
    per_pair = -nn.functional.logsigmoid(diff)
    sums = torch.zeros(num_groups, dtype=per_pair.dtype, device=per_pair.device).index_add(0, pair_group, per_pair)
    counts = torch.zeros(num_groups, dtype=per_pair.dtype, device=per_pair.device).index_add(
        0, pair_group, torch.ones_like(per_pair)
    )
    return (sums / counts).mean()


class GroupedPreferenceCollator:
    """Collate tokenized groups (`input_ids`: K lists, `pairs`: [[i, j], ...], `margins`) into one right-padded batch."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences, chosen, rejected, groups, margins = [], [], [], [], []
        for g, example in enumerate(examples):
            offset = len(sequences)
            sequences.extend(torch.tensor(ids) for ids in example["input_ids"])
            for (i, j), m in zip(example["pairs"], example["margins"], strict=True):
                chosen.append(offset + i)
                rejected.append(offset + j)
                groups.append(g)
                margins.append(m)
        length = max(len(s) for s in sequences)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, : len(seq)] = seq
            attention_mask[row, : len(seq)] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "chosen_index": torch.tensor(chosen, dtype=torch.long),
            "rejected_index": torch.tensor(rejected, dtype=torch.long),
            "pair_group": torch.tensor(groups, dtype=torch.long),
            "margin": torch.tensor(margins, dtype=torch.float),
            "num_groups": torch.tensor(len(examples)),
        }


class GroupedRewardTrainer(RewardTrainer):
    """TRL's `RewardTrainer` on grouped comparisons (see the module docstring); metrics as upstream logs them."""

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return dataset  # tokenized, truncated/dropped and counted by the reward stage

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["input_ids", "pairs", "margins"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        rewards = outputs.logits.squeeze(-1)
        margin = inputs["margin"] if bool(inputs["margin"].any()) else None
        loss = grouped_pairwise_loss(
            rewards,
            inputs["chosen_index"],
            inputs["rejected_index"],
            inputs["pair_group"],
            int(inputs["num_groups"]),
            margin,
        )
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * torch.mean(rewards**2)
        with torch.no_grad():
            diff = rewards[inputs["chosen_index"]] - rewards[inputs["rejected_index"]]
            gather = self.accelerator.gather_for_metrics
            self._metrics[mode]["accuracy"].append(gather((diff > 0).float().mean()).mean().item())
            self._metrics[mode]["margin"].append(gather(diff.mean()).mean().item())
            self._metrics[mode]["mean_reward"].append(gather(rewards.mean()).mean().item())
        return (loss, outputs) if return_outputs else loss


# ---------------------------------------------------------------------------------------------- quality
def quality_report(groups: list[dict[str, Any]], rewards: list[list[float]], bins: int = 10) -> dict[str, Any]:
    """Held-out quality of a reward model on ranked groups.

    Args:
        groups: Groups with `pairs` (better, worse) and `ranks`.
        rewards: The model's reward of each completion of each group.
        bins: Calibration bins over the predicted preference probability.

    Returns:
        `dict`: pairwise `accuracy` (ties in reward count half), `accuracy_by_rank_distance`, `reward_gap` (mean
        r_better - r_worse), and `calibration`: per bin the mean predicted probability sigmoid(r_a - r_b), the
        observed frequency that a was preferred, and the count (each pair counted in both orders, so the table is
        symmetric around 0.5), plus the expected calibration error `ece`.
    """
    diffs, distances = [], []
    for group, r in zip(groups, rewards, strict=True):
        for i, j in group["pairs"]:
            diffs.append(r[i] - r[j])
            distances.append(group["ranks"][j] - group["ranks"][i])
    diffs_np = np.asarray(diffs, dtype=np.float64)
    correct = (diffs_np > 0) + 0.5 * (diffs_np == 0)
    by_distance = defaultdict(list)
    for d, c in zip(distances, correct, strict=True):
        by_distance[int(d)].append(float(c))
    prob = 1 / (1 + np.exp(-np.concatenate([diffs_np, -diffs_np])))
    outcome = np.concatenate([np.ones_like(diffs_np), np.zeros_like(diffs_np)])
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(prob, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            predicted, observed = float(prob[mask].mean()), float(outcome[mask].mean())
            table.append(
                {
                    "bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}",
                    "predicted": predicted,
                    "observed": observed,
                    "count": int(mask.sum()),
                }
            )
            ece += mask.mean() * abs(predicted - observed)
    return {
        "num_pairs": len(diffs),
        "accuracy": float(correct.mean()) if len(diffs) else float("nan"),
        "accuracy_by_rank_distance": {str(k): float(np.mean(v)) for k, v in sorted(by_distance.items())},
        "reward_gap": float(diffs_np.mean()) if len(diffs) else float("nan"),
        "calibration": table,
        "ece": float(ece),
    }


def plot_calibration(calibration: list[dict[str, Any]], path: str) -> None:
    """Reliability diagram of `quality_report(...)["calibration"]` as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=120)
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.plot([c["predicted"] for c in calibration], [c["observed"] for c in calibration], "o-", label="reward model")
    ax.set_xlabel("predicted P(a preferred to b)")
    ax.set_ylabel("observed frequency")
    ax.set_title("Reward model calibration (held out)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
