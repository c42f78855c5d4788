"""PPO's experience: the seeded prompt order, sampling, the `Rollout` batch and its statistics, and `PolicyAndValue`,
the forward pass that rollout and update share."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..encoding import encode_prompt, left_padded
from ..sampling import generate_with
from . import core


@dataclass
class Rollout:
    """One batch of experience; tensors are (B, P) for queries and (B, T) for responses."""

    prompts: list[Any]
    completions: list[str]
    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    has_eos: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    entropy: torch.Tensor
    scores: torch.Tensor | None = None
    score_parts: dict[str, torch.Tensor] | None = None
    rewards: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> Rollout:
        """The rows `index` of every tensor field (lists and dicts are left whole)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Rollout(**{k: v[index] if isinstance(v, torch.Tensor) else v for k, v in values.items()})


class PolicyAndValue(nn.Module):
    """Policy and value model as one module: one optimizer, one `accelerator.prepare`, one DDP wrapper."""

    def __init__(self, policy: PreTrainedModel, value_model: PreTrainedModel):
        super().__init__()
        self.policy, self.value_model = policy, value_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int):
        """Logits and values that predict the response tokens: positions context_length-1 .. end-1."""
        position_ids = core.position_ids_from_mask(attention_mask)
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        values = sequence_values(self.value_model, input_ids, attention_mask, position_ids)
        return logits[:, context_length - 1 : -1], values[:, context_length - 1 : -1]

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """The trainable parameters of the policy and of the value model (its own adapter and head on a shared base),
        for the optimizer's groups and for clipping each model's gradients apart."""
        value = {id(p) for p in self.value_model.parameters()}
        if hasattr(self.value_model, "adapter_parameters"):  # a role of the shared base (`hf_rlhf.ppo.roles`)
            value |= {id(p) for p in self.value_model.adapter_parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        return {
            "policy": [p for p in trainable if id(p) not in value],
            "value": [p for p in trainable if id(p) in value],
        }


def sequence_values(model: PreTrainedModel, input_ids, attention_mask, position_ids) -> torch.Tensor:
    """A sequence-classification model's head applied at every position: (B, L).

    Works for a plain model, a peft-wrapped one (a LoRA value model) and a role of the shared base
    (`hf_rlhf.ppo.roles.AdapterScalarModel`).
    """
    if hasattr(model, "per_token_scores"):
        return model.per_token_scores(input_ids, attention_mask, position_ids)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
    return model.score(hidden).squeeze(-1)


def prompt_batches(train_dataset, batch_size: int, seed: int, world_size: int = 1, rank: int = 0) -> Iterator[list]:
    """Process `rank`'s `batch_size` prompts of each update, forever, in a seeded order a resumed run replays exactly.

    Each update takes the next `batch_size * world_size` rows of a permutation of the dataset (seed + epoch); a new
    permutation starts when the rest of the current one is too short for an update.
    """
    n, per_update = len(train_dataset), batch_size * world_size
    if per_update > n:
        raise ValueError(f"an update needs {per_update} prompts but the dataset has {n}")
    epoch, position, order = 0, 0, None
    while True:
        if order is None or position + per_update > n:
            generator = torch.Generator().manual_seed(seed + epoch)
            order, position, epoch = torch.randperm(n, generator=generator).tolist(), 0, epoch + 1
        chunk = order[position : position + per_update]
        position += per_update
        mine = chunk[rank * batch_size : (rank + 1) * batch_size]
        yield [train_dataset[i]["prompt"] for i in mine]


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[Any], device) -> tuple[torch.Tensor, ...]:
    """Left-padded query ids and attention mask (B, P) of text or conversational prompts (chat template), encoded by
    `hf_rlhf.encoding.encode_prompt`."""
    ids, mask = left_padded(tokenizer, [encode_prompt(tokenizer, p) for p in prompts])
    return ids.to(device), mask.to(device)


def generate_responses(
    policy: PreTrainedModel, query_ids, query_mask, generation_config: GenerationConfig, batch_size: int
) -> torch.Tensor:
    """The generated tokens (B, T) after each query, `batch_size` queries per `generate` call, right-padded."""
    chunks = []
    for start in range(0, len(query_ids), batch_size):
        q, m = query_ids[start : start + batch_size], query_mask[start : start + batch_size]
        # generate derives position ids from the attention mask, so left padding does not shift them
        out = generate_with(policy, generation_config, input_ids=q, attention_mask=m)
        chunks.append(out[:, q.shape[1] :])
    width, pad = max(c.shape[1] for c in chunks), generation_config.pad_token_id
    return torch.cat([nn.functional.pad(c, (0, width - c.shape[1]), value=pad) for c in chunks])


def rollout_statistics(rollout: Rollout, kl_coef: float) -> dict[str, torch.Tensor]:
    """This process's statistics of a scored rollout with advantages, over valid tokens only (scalars)."""
    mask = rollout.response_mask.float()
    kl_per_seq = rollout.kl.sum(-1)
    return {
        "score": rollout.scores.mean(),
        "rlhf_reward": (rollout.scores + (-kl_coef * kl_per_seq)).mean(),
        "kl": kl_per_seq.mean(),
        "entropy": core.masked_mean(rollout.entropy, mask),
        "response_length": mask.sum(-1).mean(),
        "missing_eos_rate": (~rollout.has_eos).float().mean(),
        "value/explained_variance": core.explained_variance(rollout.values, rollout.returns, mask),
        **{f"reward/{name}": part.nanmean() for name, part in rollout.score_parts.items()},  # over scored prompts
    }
