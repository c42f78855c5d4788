"""PPO-ptx (InstructGPT, Ouyang et al. 2022): the language-model loss on pretraining or SFT data mixed into PPO's.

The objective is E[r - beta KL] + gamma E_ptx[log pi(x)], so each PPO micro-batch adds `ptx_coef` (gamma) times the
mean next-token cross-entropy of one micro-batch of this data to the policy's loss. Rows are text (`text`),
conversations (`messages`) or prompt-completion pairs (the loss on the completion only), encoded as the SFT stage
encodes them (`hf_rlhf.encoding.encode_sft_row`), cut to `ptx_max_length` tokens, and drawn in a seeded order that a
resumed run replays.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from ..encoding import encode_sft_row


def encode_ptx_rows(tokenizer: PreTrainedTokenizerBase, dataset, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(ids, loss mask) of every row, checked before training starts: a row of another format is refused by index."""
    out = []
    for i, row in enumerate(dataset):
        if not isinstance(row.get("text"), str) and row.get("messages") is None and row.get("completion") is None:
            raise ValueError(
                f"ptx_dataset row {i}: expected a `text` string, `messages` or `prompt` + `completion`, "
                f"got columns {sorted(row)}"
            )
        encoded = encode_sft_row(tokenizer, row)
        ids = encoded["input_ids"][:max_length]
        mask = encoded.get("completion_mask", [1] * len(encoded["input_ids"]))[:max_length]
        if sum(mask[1:]) == 0:
            raise ValueError(f"ptx_dataset row {i}: no token to train on within ptx_max_length={max_length}")
        out.append((ids, mask))
    if not out:
        raise ValueError("ptx_dataset is empty")
    return out


class PtxBatches:
    """Right-padded micro-batches `(input_ids, attention_mask, loss_mask)` of the encoded rows, forever.

    The order is a permutation per pass (seed + pass); `state_dict` / `load_state_dict` keep the position so a
    resumed run draws the same rows.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, dataset, max_length: int, seed: int):
        self.rows = encode_ptx_rows(tokenizer, dataset, max_length)
        self.pad, self.seed = tokenizer.pad_token_id, seed
        self.drawn = 0  # rows drawn so far
        self._orders: dict[int, list[int]] = {}

    def order(self, epoch: int) -> list[int]:
        """The permutation of pass `epoch` (seed + epoch)."""
        if epoch not in self._orders:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._orders = {epoch: torch.randperm(len(self.rows), generator=generator).tolist()}
        return self._orders[epoch]

    def indices(self, n: int) -> Iterator[int]:
        for k in range(self.drawn, self.drawn + n):
            epoch, position = divmod(k, len(self.rows))
            yield self.order(epoch)[position]
        self.drawn += n

    def next(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The next `n` rows as (n, L) tensors on `device`."""
        chosen = [self.rows[i] for i in self.indices(n)]
        width = max(len(ids) for ids, _ in chosen)
        ids = torch.full((n, width), self.pad, dtype=torch.long)
        attention, loss = torch.zeros(n, width, dtype=torch.long), torch.zeros(n, width, dtype=torch.long)
        for row, (tokens, mask) in enumerate(chosen):
            ids[row, : len(tokens)] = torch.tensor(tokens)
            attention[row, : len(tokens)] = 1
            loss[row, : len(tokens)] = torch.tensor(mask)
        return ids.to(device), attention.to(device), loss.to(device)

    def state_dict(self) -> dict[str, Any]:
        return {"drawn": self.drawn}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.drawn = state["drawn"]
