"""PPO's experience: the seeded prompt order, sampling, the `Rollout` batch and its statistics, and `PolicyAndValue`,
the forward pass that rollout and update share."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..encoding import encode_prompt, left_padded
from ..generation_backend import HFBackend, logprob_mismatch
from ..sampling import GenerationBackend
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
    raw_scores: torch.Tensor | None = None
    score_parts: dict[str, torch.Tensor] | None = None
    rewards: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    sampler_logprobs: torch.Tensor | None = None  # the generating engine's (vLLM), when it is not the trainer
    importance_weights: torch.Tensor | None = None  # truncated importance sampling (`vllm_importance_sampling_cap`)

    def select(self, index: torch.Tensor) -> Rollout:
        """The rows `index` of every tensor field (lists and dicts are left whole)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Rollout(**{k: v[index] if isinstance(v, torch.Tensor) else v for k, v in values.items()})


class PolicyAndValue(nn.Module):
    """Policy and value model as one module: one optimizer, one `accelerator.prepare`, one DDP wrapper."""

    def __init__(self, policy: PreTrainedModel, value_model: PreTrainedModel):
        super().__init__()
        self.policy, self.value_model = policy, value_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int, ptx=None):
        """Logits and values that predict the response tokens: positions context_length-1 .. end-1 (the LM head is
        not applied to the prompt's positions, `response_logits`). With `ptx` = (ids, mask) of PPO-ptx rows, also
        the policy's logits on them (one forward call, so DDP sees one pass)."""
        position_ids = core.position_ids_from_mask(attention_mask)
        logits = response_logits(self.policy, input_ids, attention_mask, position_ids, context_length)
        values = sequence_values(self.value_model, input_ids, attention_mask, position_ids)
        if ptx is None:
            return logits, values[:, context_length - 1 : -1]
        ptx_logits = self.policy(input_ids=ptx[0], attention_mask=ptx[1]).logits
        return logits, values[:, context_length - 1 : -1], ptx_logits

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


def accepts_logits_to_keep(model: nn.Module) -> bool:
    """Whether a causal LM (plain or peft-wrapped) computes its LM head on the last `logits_to_keep` positions only
    (most transformers causal LMs since v4.45; peft passes the keyword through)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return _forward_takes_logits_to_keep(type(model))


@functools.cache
def _forward_takes_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def response_logits(model: nn.Module, input_ids, attention_mask, position_ids, context_length: int) -> torch.Tensor:
    """The logits at positions context_length-1 .. end-1 (those that predict the response tokens), (B, T, V).

    With `logits_to_keep` the LM head runs on the last T + 1 positions only, not on the prompt's: the hidden
    states, and so the logits kept, are the same as those of a full forward (the head is applied per position).
    """
    kept = input_ids.shape[1] - context_length + 1
    kwargs = {"logits_to_keep": kept} if accepts_logits_to_keep(model) else {}
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs).logits
    return logits[:, -kept:-1]


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
    policy: PreTrainedModel,
    query_ids,
    query_mask,
    generation_config: GenerationConfig,
    batch_size: int,
    backend: GenerationBackend | None = None,
    return_logprobs: bool = False,
):
    """The generated tokens (B, T) after each query, right-padded with PAD (T: the longest response), cut after EOS.

    Args:
        backend (`GenerationBackend`, *optional*): Who generates (`hf_rlhf.generation_backend.make_backend`); default:
            HF `generate` on the policy, `batch_size` queries per call. A vLLM backend first syncs the policy's
            weights when they changed since its last sync, so every rollout samples from the current policy.
        return_logprobs (`bool`): Also return the sampler's log-probabilities (B, T), 0 on padding (`None` with HF).
    """
    backend = backend or HFBackend()
    rows = [ids[mask.bool()].tolist() for ids, mask in zip(query_ids, query_mask, strict=True)]
    generations = backend.generate(policy, rows, generation_config, batch_size=batch_size)
    responses, logprobs = generations.padded(generation_config.pad_token_id, query_ids.device)
    return (responses, logprobs) if return_logprobs else responses


def rollout_statistics(rollout: Rollout, kl_coef: float, shaped: bool = False) -> dict[str, torch.Tensor]:
    """This process's statistics of a scored rollout with advantages, over valid tokens only (scalars).

    `score` is the weighted reward with the missing-EOS penalty (`raw_scores`); with `shaped` (a group baseline,
    running normalisation or clipping on) `score/shaped` is the score PPO optimises (`scores`).
    """
    mask = rollout.response_mask.float()
    kl_per_seq = rollout.kl.sum(-1)
    return {
        "score": rollout.raw_scores.mean(),
        **({"score/shaped": rollout.scores.mean()} if shaped else {}),
        "rlhf_reward": (rollout.scores + (-kl_coef * kl_per_seq)).mean(),
        "kl": kl_per_seq.mean(),
        "entropy": core.masked_mean(rollout.entropy, mask),
        "response_length": mask.sum(-1).mean(),
        "missing_eos_rate": (~rollout.has_eos).float().mean(),
        "value/explained_variance": core.explained_variance(rollout.values, rollout.returns, mask),
        **{f"reward/{name}": part.nanmean() for name, part in rollout.score_parts.items()},  # over scored prompts
        **(
            {"rollout/logprob_mismatch": logprob_mismatch(rollout.sampler_logprobs, rollout.logprobs, mask)}
            if rollout.sampler_logprobs is not None
            else {}
        ),
    }
