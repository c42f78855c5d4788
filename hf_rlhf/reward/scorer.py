"""Reward models in use: one encoding of (prompt, completion), one scorer, best-of-N, reward functions.

The reward stage trains on sequences encoded by `encode_for_reward`, and everything that scores later (the `score`
command, best-of-N, the RL stage) encodes the same way, so the reward is read at the same last token it was trained
on. A reward function is anything with the signature `f(prompts, completions) -> list[float]`; `RewardModelScorer`
makes a trained reward model one.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..checks import at_least
from ..configs import DataArguments
from ..data.formats import DataValidationError
from ..data.loading import load_stage_dataset
from ..data.world import TinyWorld, is_world_question
from ..encoding import encode_chat, encode_text, strip_eos_text
from ..modeling import SCORE_BIAS_FLAG, load_reward_model, load_tokenizer, reward_head
from ..placement import frozen, load_kwargs, model_device

RewardFunction = Callable[[list[Any], list[Any]], list[float]]
REWARD_ENCODING = "hf_rlhf_reward_encoding"  # config attribute: "chat" or "text", how the reward model was trained


def as_messages(prompt: Any) -> list[dict[str, str]] | None:
    """A conversational prompt as a list of messages, or None for a plain-text prompt."""
    if isinstance(prompt, list):
        return prompt
    return None


def encode_for_reward(
    tokenizer: PreTrainedTokenizerBase, prompt: Any, completion: Any, chat: bool | None = None
) -> list[int]:
    """Token ids of a (prompt, completion) as the reward model reads them; the reward is read at the last one.

    The one encoding of a pair, used by reward training, `hf-rlhf score`, best-of-N, sample labelling, PPO, GRPO/RLOO
    and the report (`hf_rlhf.encoding`: content is never read as special tokens).

    Args:
        chat: How the reward model was trained (`REWARD_ENCODING` in its config): `True` puts a text prompt and
            completion through the chat template as a user turn and the assistant's reply, `False` reads text as
            `prompt + completion + EOS` (TRL's `RewardTrainer`). `None`: by the rows (conversational if the prompt or
            the completion is a list of messages). Conversations always go through the chat template, whitespace
            after the final EOS removed so that the last token is the EOS, where PPO places the score.
    """
    messages = as_messages(prompt)
    if chat or messages is not None or isinstance(completion, list):
        reply = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
        if messages is None:  # a text prompt with a conversational completion; none at all for implicit prompts
            messages = [{"role": "user", "content": prompt}] if prompt else []
        ids = list(encode_chat(tokenizer, messages + reply))
        eos = tokenizer.eos_token_id
        if eos in ids:  # templates end a turn with EOS then a newline: read the reward at the EOS
            last = len(ids) - 1 - ids[::-1].index(eos)
            if not tokenizer.decode(ids[last + 1 :]).strip():
                ids = ids[: last + 1]
        return ids
    return encode_text(tokenizer, strip_eos_text(tokenizer, prompt + completion)) + [tokenizer.eos_token_id]


def reward_encoding(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, directory: str | None = None
) -> bool | None:
    """The `chat` argument of `encode_for_reward` for a reward model: what its reward stage recorded (the config's
    `REWARD_ENCODING`, or the manifest's for a LoRA reward adapter, whose config is its base's), else the chat
    template for a reward model from elsewhere that has one (Skywork, ArmoRM... are trained on chats), else by the
    rows."""
    from ..manifest import read_manifest

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    recorded = getattr(getattr(base, "config", None), REWARD_ENCODING, None)
    path = directory or getattr(base, "name_or_path", None)
    if recorded is None and isinstance(path, str) and os.path.isdir(path):
        recorded = (read_manifest(path) or {}).get("reward_encoding")
    if recorded is not None:
        return recorded == "chat"
    return True if tokenizer.chat_template else None


# ------------------------------------------------------------------------------------------ the score head
def shift_reward(model: PreTrainedModel, offset: float) -> None:
    """Add `offset` to every reward by shifting the bias of the score head (adding a bias if it has none).

    The bias is saved as `score.bias` and `config.hf_rlhf_score_bias` is set; `load_reward_model` restores it
    (plain `from_pretrained` of an architecture whose head has no bias would drop it).
    """
    head = reward_head(model)
    if head.bias is None:
        head.bias = nn.Parameter(torch.zeros(head.out_features, dtype=head.weight.dtype, device=head.weight.device))
    with torch.no_grad():
        head.bias += offset
    (model.get_base_model() if hasattr(model, "get_base_model") else model).config.update({SCORE_BIAS_FLAG: True})


@torch.no_grad()
def score_sequences(
    model: PreTrainedModel, input_ids: Sequence[Sequence[int]], pad_token_id: int, batch_size: int = 32
) -> torch.Tensor:
    """Rewards of already-encoded sequences, right-padded in batches, on the model's device (`model_device`);
    returns a float tensor of shape (n,) on the CPU."""
    model.eval()
    device = model_device(model)
    out = []
    for start in range(0, len(input_ids), batch_size):
        batch = [torch.tensor(ids) for ids in input_ids[start : start + batch_size]]
        ids = nn.utils.rnn.pad_sequence(batch, batch_first=True, padding_value=pad_token_id).to(device)
        mask = (
            torch.arange(ids.shape[1], device=device)[None]
            < torch.tensor([len(b) for b in batch], device=device)[:, None]
        ).long()
        out.append(model(input_ids=ids, attention_mask=mask).logits[:, 0].float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


class RewardModelScorer:
    """A trained reward model as a reward function `f(prompts, completions) -> list[float]`.

    Args:
        path_or_model: A reward stage directory (or Hub id), loaded frozen on this process's device
            (`hf_rlhf.placement`); or an already loaded model, used where it is (the caller places it: PPO's
            shared-base reward adapter is part of the policy).
        tokenizer: Needed when a model object is given.
        batch_size: Sequences scored at a time.
        directory: The reward model's directory, where its encoding is recorded, when a model object is given
            whose own config does not say (a reward adapter loaded on a shared base).
    """

    def __init__(
        self,
        path_or_model: str | PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase | None = None,
        batch_size: int = 32,
        trust_remote_code: bool = False,
        directory: str | None = None,
    ):
        if isinstance(path_or_model, str):
            self.model = frozen(load_reward_model(path_or_model, trust_remote_code=trust_remote_code, **load_kwargs()))
            tokenizer = tokenizer or load_tokenizer(path_or_model, trust_remote_code=trust_remote_code)
        else:
            self.model = path_or_model
        if tokenizer is None:
            raise ValueError("RewardModelScorer needs a tokenizer when given a model object")
        self.tokenizer, self.batch_size = tokenizer, batch_size
        self.chat = reward_encoding(self.model, tokenizer, directory)
        self.__name__ = "reward_model"

    def encode(self, prompts: list[Any], completions: list[Any]) -> list[list[int]]:
        """The pairs as this reward model reads them (`encode_for_reward`, with its own tokenizer)."""
        return [encode_for_reward(self.tokenizer, p, c, self.chat) for p, c in zip(prompts, completions, strict=True)]

    def __call__(self, prompts: list[Any], completions: list[Any]) -> list[float]:
        encoded = self.encode(prompts, completions)
        return score_sequences(self.model, encoded, self.tokenizer.pad_token_id, self.batch_size).tolist()


def best_of_n(
    prompts: Sequence[Any], candidates: Sequence[Sequence[str]], reward_fn: RewardFunction
) -> tuple[list[str], list[list[float]]]:
    """For each prompt, the candidate with the highest reward (first one on ties), and all the rewards.

    Args:
        prompts: One prompt per row.
        candidates: N completions per row.
        reward_fn: Scores (prompt, completion) pairs.
    """
    flat_prompts = [p for p, cands in zip(prompts, candidates, strict=True) for _ in cands]
    flat = [c for cands in candidates for c in cands]
    scores = reward_fn(flat_prompts, flat)
    best, all_scores, i = [], [], 0
    for cands in candidates:
        row = list(scores[i : i + len(cands)])
        i += len(cands)
        all_scores.append(row)
        best.append(cands[max(range(len(row)), key=row.__getitem__)])
    return best, all_scores


def main(argv: list[str] | None = None) -> list[float]:
    """`hf-rlhf score`: score (prompt, response) rows with a reward model."""
    parser = argparse.ArgumentParser(prog="hf-rlhf score", description=main.__doc__)
    parser.add_argument("--reward_model", required=True, help="A reward stage directory.")
    parser.add_argument("--dataset_name", help="Rows with 'prompt' and 'response' (or 'completion') columns.")
    parser.add_argument("--prompt", action="append", help="A prompt (with --response); repeat for several.")
    parser.add_argument("--response", action="append", help="The response to the --prompt at the same position.")
    parser.add_argument("--output", help="Write the rows with a 'reward' column to this .jsonl file.")
    parser.add_argument("--batch_size", type=at_least(1), default=32, help="Sequences scored at a time.")
    parser.add_argument("--trust_remote_code", action="store_true", help="Allow custom model code.")
    args = parser.parse_args(argv)
    if args.dataset_name:
        data = load_stage_dataset(DataArguments(dataset_name=args.dataset_name, eval_split_size=0.0))["train"]
        column = "response" if "response" in data.column_names else "completion"
        if "prompt" not in data.column_names or column not in data.column_names:
            raise DataValidationError(
                f"dataset '{args.dataset_name}': expected columns 'prompt' and 'response' (or 'completion'), "
                f"found {data.column_names}"
            )
        prompts, responses = data["prompt"], data[column]
    elif args.prompt and args.response and len(args.prompt) == len(args.response):
        prompts, responses = args.prompt, args.response  # read as a JSONL row's text would be: one encoding
    else:
        parser.error("give --dataset_name, or as many --response as --prompt")
    scores = RewardModelScorer(
        args.reward_model, batch_size=args.batch_size, trust_remote_code=args.trust_remote_code
    )(list(prompts), list(responses))
    rows = [{"prompt": p, "response": r, "reward": s} for p, r, s in zip(prompts, responses, scores, strict=True)]
    if args.output:
        with open(args.output, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
        print(f"wrote {len(rows)} scored rows to {args.output}")
    else:
        for row in rows:
            print(json.dumps(row))
    return scores


# ------------------------------------------------------------------------------------ named reward functions
def tiny_world_gold(world_seed: int = 0) -> RewardFunction:
    """The tiny world's gold labeler as a reward function (prompts as text or messages).

    A prompt that is not one of the world's questions (`is_world_question`) gets NaN: the gold labeler cannot score
    it. TRL's GRPO/RLOO skip NaN rewards (`nansum`), hf_rlhf's PPO leaves rewards of weight 0 out of the score, and
    the RL stage refuses a non-zero weight on prompts outside the world before any model loads.
    """
    world = TinyWorld(world_seed)

    def gold(prompts: list[Any], completions: list[Any]) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [
            world.gold_score(m[-1]["content"] if (m := as_messages(p)) else p, c) if is_world_question(p) else math.nan
            for p, c in zip(prompts, texts, strict=True)
        ]

    gold.__name__ = "tiny_world_gold"
    return gold


NAMED_REWARD_FUNCS: dict[str, Callable[..., RewardFunction]] = {"tiny_world_gold": tiny_world_gold}
WORLD_ONLY_REWARD_FUNCS = ("tiny_world_gold",)  # they score the tiny world's questions only (NaN otherwise)


def import_function(spec: str, what: str = "reward function") -> Callable:
    """The function `package.module:function` names, imported; a `ValueError` saying why if it cannot be."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ValueError(f"{what} '{spec}' is not of the form 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{what} '{spec}' could not be imported: {e}") from e
    if not callable(fn):
        raise ValueError(f"{what} '{spec}' is not callable")
    return fn


def resolve_reward_func(name: str, world_seed: int = 0) -> RewardFunction:
    """A reward function by name: one of `NAMED_REWARD_FUNCS`, or `package.module:function` (imported)."""
    if name in NAMED_REWARD_FUNCS:
        return NAMED_REWARD_FUNCS[name](world_seed)
    if ":" not in name:
        raise ValueError(
            f"unknown reward function '{name}': use one of {sorted(NAMED_REWARD_FUNCS)} or 'package.module:function'"
        )
    return import_function(name)
