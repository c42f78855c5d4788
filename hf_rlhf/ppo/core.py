"""The pure maths of PPO for language models: masks, log-probabilities, KL, rewards, GAE, whitening, losses.

Shapes: `B` sequences (rollouts), `T` response tokens. `mask` is 1 on a valid response token (up to and including
the first EOS) and 0 after it. Every function is pure (no module state), so a user who wants another advantage
estimator or reward shaping passes their own function to the trainer instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


# ----------------------------------------------------------------------------------------------- masked stats
def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `values` where `mask` is 1 (over all elements, or along `dim`)."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `values` where `mask` is 1; Bessel-corrected by default (n / (n - 1))."""
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n < 2:
            return torch.zeros_like(var)
        var = var * n / (n - 1)
    return var


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    mean: torch.Tensor | None = None,
    var: torch.Tensor | None = None,
) -> torch.Tensor:
    """Whiten over the valid tokens only: (x - mean) / std, padding stays 0. `shift_mean=False` keeps the mean.

    `mean` and `var` default to the masked statistics of `values`; pass statistics reduced across processes to
    whiten a batch sharded over several ranks as one.
    """
    mean = masked_mean(values, mask) if mean is None else mean
    var = masked_var(values, mask) if var is None else var
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# ------------------------------------------------------------------------------------------------ sequences
def first_true_index(flags: torch.Tensor) -> torch.Tensor:
    """Index of the first True along the last dim; the length of that dim where there is none. Shape (B,)."""
    length = flags.shape[-1]
    positions = torch.arange(length, device=flags.device).expand_as(flags)
    return torch.where(flags, positions, torch.full_like(positions, length)).min(-1).values


def truncate_after_eos(
    response_ids: torch.Tensor, eos_token_id: int, pad_token_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut responses after their first EOS.

    Returns:
        `(ids, mask, has_eos)`: ids with every token after the first EOS replaced by PAD; the mask of valid tokens
        (the EOS included); a bool per sequence telling whether it produced an EOS at all.
    """
    eos = response_ids == eos_token_id
    first = first_true_index(eos)
    positions = torch.arange(response_ids.shape[1], device=response_ids.device)[None]
    mask = (positions <= first[:, None]).long()
    return torch.where(mask.bool(), response_ids, pad_token_id), mask, eos.any(-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on the first real token, so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


FP32_CHUNK_ELEMENTS = 2**26  # logits upcast to fp32 at most this many values at a time (256 MB)


def row_chunks(logits: torch.Tensor) -> range:
    """Start rows of the chunks in which (B, T, V) logits are upcast to fp32."""
    per_row = max(1, logits.shape[1] * logits.shape[2])
    return range(0, logits.shape[0], max(1, FP32_CHUNK_ELEMENTS // per_row))


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of each token under the logits, in fp32 whatever the logits' dtype: (B, T, V), (B, T) -> (B, T).

    Computed as the token's logit minus the log-sum-exp of its row, upcast one chunk of rows at a time, so a batch
    of bf16 logits never has a full-vocabulary fp32 copy (nor a stored log-softmax) all at once. `temperature`
    divides the upcast logits.
    """
    out = []
    step = row_chunks(logits).step
    for start in row_chunks(logits):
        chunk = logits[start : start + step].float() / temperature
        picked = torch.gather(chunk, 2, tokens[start : start + step].unsqueeze(-1)).squeeze(-1)
        out.append(picked - torch.logsumexp(chunk, -1))
    return torch.cat(out) if out else logits.new_zeros(tokens.shape, dtype=torch.float)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of each position's distribution, in fp32: (B, T, V) -> (B, T); upcast one chunk of rows at a time."""
    out = []
    step = row_chunks(logits).step
    for start in row_chunks(logits):
        chunk = logits[start : start + step].float() / temperature
        logp = chunk.log_softmax(-1)
        out.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(out) if out else logits.new_zeros(logits.shape[:2], dtype=torch.float)


# ------------------------------------------------------------------------------------------------ rewards
def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled tokens.

    `k1` is log p - log q (unbiased, can be negative per token); `k3` is (r - 1) - log r with r = q / p (unbiased,
    always >= 0, lower variance) [Schulman, "Approximating KL divergence"].
    """
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected 'k1' or 'k3'")


def compute_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -kl_coef * KL on every valid token, plus the sequence score on its last valid token (EOS).

    Returns:
        `(rewards, non_score_rewards)`, both (B, T) and 0 on padding.
    """
    non_score = -kl_coef * kl * mask
    last = (mask.sum(-1).long() - 1).clamp(min=0)
    rewards = non_score.clone()
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores
    return rewards * mask, non_score


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the valid tokens (the value after the last valid token is 0).

    Returns:
        `(advantages, returns)`, (B, T); returns = advantages + values.
    """
    values = values * mask
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last_gae)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = (delta + gamma * lam * last_gae) * mask[:, t]
        advantages[:, t] = last_gae
    return advantages, (advantages + values) * mask


# -------------------------------------------------------------------------------------------------- losses
def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
    dual_clip: float | None = None,
    importance_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, averaged over valid tokens; with the clip fraction, approx KL and ratio.

    Per token: max(-A r, -A clip(r, 1 - eps, 1 + eps)). `dual_clip` (c > 1, Ye et al. 2020, "Mastering Complex
    Control in MOBA Games with Deep RL") also bounds the loss of a token with A < 0 by c |A|:
    min(max(-A r, -A clip(r)), -c A), so a ratio far above 1 on a bad token cannot make the loss unbounded.
    `importance_weights` (B, T), no gradient, multiply each token's loss: truncated importance sampling for tokens
    another engine sampled (`hf_rlhf.generation_backend.truncated_importance_weights`).
    """
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - cliprange, 1 + cliprange)
    losses = torch.maximum(unclipped, clipped)
    stats = {
        "clipfrac": masked_mean((clipped > unclipped).float(), mask),
        "approxkl": 0.5 * masked_mean(log_ratio**2, mask),
        "ratio": masked_mean(ratio, mask),
    }
    if dual_clip is not None:
        bound = -dual_clip * advantages
        dual = (advantages < 0) & (losses > bound)
        losses = torch.where(dual, bound, losses)
        stats["dual_clipfrac"] = masked_mean(dual.float(), mask)
    if importance_weights is not None:
        losses = losses * importance_weights
    return masked_mean(losses, mask), stats


def kl_loss(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GRPO's KL term (`kl_in_loss`): the k3 estimate of KL(policy || reference) per token, averaged over valid
    tokens, differentiated through the policy's log-probabilities (DeepSeekMath, Shao et al. 2024)."""
    return masked_mean(kl_penalty(logprobs, ref_logprobs, "k3"), mask)


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy (PPO-ptx's language-model term), fp32, averaged over the tokens where `loss_mask` is
    1: (B, L, V) logits of (B, L) ids; the logit at position t predicts token t + 1."""
    logprobs = logprobs_from_logits(logits[:, :-1], input_ids[:, 1:])
    return -masked_mean(logprobs, loss_mask[:, 1:])


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss 0.5 * max((v - R)^2, (clip(v) - R)^2) over valid tokens, with its clip fraction."""
    clipped = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped_loss, clipped_loss = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_loss, clipped_loss), mask)
    return loss, {"vf_clipfrac": masked_mean((clipped_loss > unclipped_loss).float(), mask)}


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var[returns - values] / Var[returns] over valid tokens (1 is perfect, <= 0 is useless)."""
    var_returns = masked_var(returns, mask)
    return 1 - masked_var(returns - values, mask) / var_returns.clamp(min=1e-8)


# ---------------------------------------------------------------------------------------------- KL control
class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. (2019): move the coefficient so the KL tracks `target` over `horizon` samples.

    value *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        super().__init__(init_kl_coef)
        self.target, self.horizon = target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon


DROPOUT_ATTRIBUTES = ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop")


def config_dropout(model: nn.Module) -> dict[str, float]:
    """The dropout rates of a model's config (what `original_dropout` puts back when saving)."""
    config = getattr(model, "config", None)
    return {n: getattr(config, n) for n in DROPOUT_ATTRIBUTES if isinstance(getattr(config, n, None), float)}


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere: logprobs of the rollout and of the update must come from the same function.

    Covers `nn.Dropout` modules, and the float rates that attention layers copy from the config at init and apply
    functionally (e.g. `LlamaAttention.attention_dropout`), in the modules and in the config (read `config_dropout`
    first to put the original rates back in what is saved, `original_dropout`).
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in DROPOUT_ATTRIBUTES:
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    config = getattr(model, "config", None)
    for name in config_dropout(model):
        setattr(config, name, 0.0)


@contextlib.contextmanager
def original_dropout(model: nn.Module, rates: dict[str, float]) -> Iterator[None]:
    """Within the block the model's config holds its original dropout rates (for `save_pretrained`)."""
    config = getattr(model, "config", None)
    current = {name: getattr(config, name) for name in rates} if config is not None else {}
    for name, value in rates.items():
        setattr(config, name, value)
    try:
        yield
    finally:
        for name, value in current.items():
            setattr(config, name, value)
