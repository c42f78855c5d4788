"""Sampling from a model and measuring it with a reward function (the tiny world's gold labeler, for one).

Generation is batched with left padding; sampling uses the configured temperature with every other option off
(`hf_rlhf.sampling`, nothing inherited from the model's `generation_config`), so what is measured is the policy's own
distribution (the one RL later optimises), not a greedy mode.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..checks import at_least, non_negative
from ..encoding import encode_prompt
from ..generation_backend import HFBackend, add_backend_arguments, make_backend
from ..modeling import load_model_for_inference
from ..placement import model_device
from ..ppo.core import logprobs_from_logits, position_ids_from_mask
from ..reward.scorer import RewardModelScorer, best_of_n
from ..sampling import GenerationBackend, sampling_config


@dataclass
class Interval:
    """A mean with its bootstrap confidence interval."""

    mean: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "n": self.n}


def bootstrap_ci(values: Sequence[float], num_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of the mean of `values`."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(num_resamples, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    return Interval(float(x.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)), x.size)


def user_turns(questions: Sequence[str]) -> list[list[dict[str, str]]]:
    """Plain questions as one-turn conversations (the user's), for a chat model."""
    return [[{"role": "user", "content": q}] for q in questions]


@torch.no_grad()
def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Any],
    *,
    max_new_tokens: int = 32,
    temperature: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
    stop_at_newline: bool = False,
    desc: str | None = None,
    return_ids: bool = False,
    backend: GenerationBackend | None = None,
):
    """Sample one completion per prompt, cut at EOS. A prompt is a conversation (a list of messages: the chat
    template with the assistant's turn opened) or plain text, encoded by `hf_rlhf.encoding.encode_prompt` (content
    never read as special tokens).

    Args:
        stop_at_newline (`bool`): Cut each completion at its first newline, the usual stop for few-shot prompts.
        return_ids (`bool`): Also return each completion's sampled token ids (up to and including EOS).
        backend (`GenerationBackend`, *optional*): Who generates (`hf_rlhf.generation_backend.make_backend`);
            default: HF `generate` on `model`. Sequence `i` gets the sampling seed `seed + i` (vLLM); HF samples from
            torch's generator seeded with `seed`.

    Returns:
        `list[str]`: The completions, without the prompt and without special tokens (and the ids if asked).
    """
    torch.manual_seed(seed)
    random.seed(seed)
    model.eval()
    backend = backend or HFBackend()
    config = sampling_config(tokenizer, max_new_tokens, temperature)  # nothing from the model's own config
    ids_out: list[list[int]] = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, disable=desc is None, leave=False):
        rows = [encode_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
        seeds = range(seed + start, seed + start + len(rows))
        ids_out.extend(backend.generate(model, rows, config, seeds, batch_size).token_ids)
    outputs = tokenizer.batch_decode(ids_out, skip_special_tokens=True)
    if stop_at_newline:
        outputs = [c.lstrip(" ").split("\n", 1)[0] for c in outputs]
    outputs = [c.strip() for c in outputs]
    return (outputs, ids_out) if return_ids else outputs


@torch.no_grad()
def sequence_kl(
    policy: PreTrainedModel,
    ref_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Any],
    completion_ids: Sequence[Sequence[int]],
    temperature: float = 1.0,
    batch_size: int = 32,
) -> list[float]:
    """Per sequence, sum over the sampled tokens of log p_policy - log p_ref (k1): a Monte Carlo estimate of
    KL(policy || ref) when the completions were sampled from the policy at this temperature."""
    out = []
    for start in range(0, len(prompts), batch_size):
        prompt_ids = [encode_prompt(tokenizer, p) for p in prompts[start : start + batch_size]]
        rows = [p + list(c) for p, c in zip(prompt_ids, completion_ids[start : start + batch_size], strict=True)]
        starts = [len(p) for p in prompt_ids]
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
        positions = position_ids_from_mask(mask)
        logps = []
        for model in (policy, ref_model):
            logits = (
                model(
                    input_ids=ids.to(model_device(model)),
                    attention_mask=mask.to(model_device(model)),
                    position_ids=positions.to(model_device(model)),
                )
                .logits.float()
                .cpu()
            )
            logps.append(logprobs_from_logits(logits[:, :-1] / temperature, ids[:, 1:]))
        diff = logps[0] - logps[1]
        for i, (row, s) in enumerate(zip(rows, starts, strict=True)):
            out.append(float(diff[i, s - 1 : len(row) - 1].sum()))
    return out


def score_rows(
    reward_fn: Callable[[list[str], list[str]], list[float]], questions: Sequence[str], completions: Sequence[str]
) -> list[float]:
    return [float(s) for s in reward_fn(list(questions), list(completions))]


def main(argv: list[str] | None = None) -> list[str]:
    """`hf-rlhf generate`: sample completions from a model; with --best_of N, the reward model's pick of N."""
    parser = argparse.ArgumentParser(prog="hf-rlhf generate", description=main.__doc__)
    parser.add_argument("--model", required=True, help="A finished stage directory (or any causal LM directory).")
    parser.add_argument("--prompt", action="append", required=True, help="A prompt; repeat for several.")
    parser.add_argument("--raw", action="store_true", help="Do not apply the chat template (base models).")
    parser.add_argument("--max_new_tokens", type=at_least(1), default=64, help="Tokens to sample at most.")
    parser.add_argument("--temperature", type=non_negative, default=1.0, help="Sampling temperature; 0 for greedy.")
    parser.add_argument("--seed", type=int, default=0, help="Sampling seed.")
    parser.add_argument(
        "--best_of", "--best-of", type=at_least(1), default=1, help="Keep the reward model's best of N completions."
    )
    parser.add_argument("--reward_model", "--reward-model", help="Reward stage directory (needed with --best_of).")
    parser.add_argument("--trust_remote_code", action="store_true", help="Allow custom model code.")
    add_backend_arguments(parser)
    args = parser.parse_args(argv)
    if args.best_of > 1 and not args.reward_model:
        parser.error("--best_of needs --reward_model")
    empty = [i + 1 for i, p in enumerate(args.prompt) if args.raw and not p]
    if empty:  # no chat template around it: nothing for the model to continue
        parser.error(f"--prompt number {empty[0]} is empty: with --raw the model needs at least one token to continue")
    try:
        backend = make_backend(args)  # checked before the model loads
    except ValueError as err:
        parser.error(str(err))
    model, tokenizer = load_model_for_inference(args.model, trust_remote_code=args.trust_remote_code)
    chat = not args.raw and bool(tokenizer.chat_template)
    prompts = user_turns(args.prompt) if chat else args.prompt
    n = max(1, args.best_of)
    flat = generate(
        model,
        tokenizer,
        [p for p in prompts for _ in range(n)],
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        backend=backend,
    )
    backend.close()
    candidates = [flat[i * n : (i + 1) * n] for i in range(len(prompts))]
    if n > 1:
        scorer = RewardModelScorer(args.reward_model, trust_remote_code=args.trust_remote_code)
        completions, scores = best_of_n(prompts, candidates, scorer)
        for prompt, completion, row in zip(args.prompt, completions, scores, strict=True):
            print(f">>> {prompt}\n{completion}\n(best of {n}; rewards {', '.join(f'{s:.2f}' for s in row)})\n")
        return completions
    completions = [c[0] for c in candidates]
    for prompt, completion in zip(args.prompt, completions, strict=True):
        print(f">>> {prompt}\n{completion}\n")
    return completions
