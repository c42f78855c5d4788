"""Who ranks the K completions of `hf-rlhf sample` (`SampleArguments.labeler`).

* `none`: nobody; `ranking` is left empty for people to fill in the exported JSONL.
* `tiny_world`: the tiny world's gold labeler (the simulated contractors). Prompts that are not the world's questions
  keep an empty `ranking` (for people) and are counted in the manifest (`unranked_outside_world`).
* `package.module:function`: `f(prompts, completions) -> scores`, `completions` a list of K strings per prompt and
  `scores` one list of K numbers per prompt, higher is better.
* `reward_model`: the reward model `labeler_model` (a reward stage directory or Hub id) scores each completion.
* `judge`: the causal LM `labeler_model` reads `JUDGE_TEMPLATE` filled with the prompt and one completion; the
  score is log p(" Yes") - log p(" No") for the next tokens.

Scores become ranks with `ranks_from_scores` (1 = best, equal scores tie). Everything that can be checked without
a model (the name, the function's import, `labeler_model`'s presence) is checked with the recipe.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..data.preference import ranks_from_scores  # ties for equal scores, as for rated datasets
from ..data.world import is_world_question
from ..encoding import encode_prompt, encode_text
from ..errors import DataValidationError, RecipeError
from ..placement import model_device
from ..reward.scorer import import_function

LABELERS = ("none", "tiny_world", "reward_model", "judge")  # or 'package.module:function'
MODEL_LABELERS = ("reward_model", "judge")

# The judge's question. `{prompt}` is the prompt's text (a conversation: one "role: content" line per message).
JUDGE_TEMPLATE = (
    "Below is a request and a response to it.\n\n"
    "### Request:\n{prompt}\n\n"
    "### Response:\n{response}\n\n"
    "Does the response answer the request helpfully and correctly? Answer Yes or No.\n"
    "Answer:"
)
JUDGE_ANSWERS = (" Yes", " No")


def check_labeler(labeler: str, labeler_model: str | None) -> Callable | None:
    """The labeler is known and its pieces exist: returns the imported function of a `module:function` labeler."""
    if labeler not in LABELERS and ":" not in labeler:
        raise RecipeError(f"labeler must be one of {LABELERS} or 'package.module:function', got {labeler!r}")
    if labeler in MODEL_LABELERS and not labeler_model:
        raise RecipeError(f"labeler '{labeler}' needs `labeler_model` (a model directory or Hub id)")
    if labeler not in MODEL_LABELERS and labeler_model:
        raise RecipeError(f"labeler_model is only used by labelers {MODEL_LABELERS}, not by {labeler!r}: unset it")
    if ":" not in labeler:
        return None
    try:
        return import_function(labeler, "labeler")
    except ValueError as e:
        raise RecipeError(str(e)) from e


def prompt_text(prompt: Any) -> str:
    """A prompt as the judge reads it: text as is, a conversation as one `role: content` line per message."""
    return prompt if isinstance(prompt, str) else "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


class JudgeScorer:
    """A causal LM as a reward function: log p(" Yes") - log p(" No") after `JUDGE_TEMPLATE`.

    Args:
        model: The judge, a causal LM (`load_model_for_inference` puts it on this process's device; its inputs go
            to `model_device`).
        tokenizer: Its tokenizer.
        batch_size: Sequences scored at a time.
    """

    def __init__(self, model, tokenizer, batch_size: int = 16):
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.answers = [encode_text(tokenizer, a) for a in JUDGE_ANSWERS]
        self.__name__ = "judge"

    @torch.no_grad()
    def __call__(self, prompts: list[Any], completions: list[str]) -> list[float]:
        contexts = [
            JUDGE_TEMPLATE.format(prompt=prompt_text(p), response=c) for p, c in zip(prompts, completions, strict=True)
        ]
        positions = getattr(self.model.config, "max_position_embeddings", None)
        room = positions - max(map(len, self.answers)) if positions else None
        rows, starts = [], []
        for ids in (encode_prompt(self.tokenizer, c) for c in contexts):  # as `generate` encodes text prompts
            ids = ids[-room:] if room else ids  # a context longer than the judge's positions keeps its end
            for answer in self.answers:
                rows.append(ids + answer)
                starts.append(len(ids))
        logps = []
        device = model_device(self.model)
        for begin in range(0, len(rows), self.batch_size):
            batch = [torch.tensor(r) for r in rows[begin : begin + self.batch_size]]
            ids = nn.utils.rnn.pad_sequence(batch, batch_first=True, padding_value=self.tokenizer.pad_token_id)
            mask = (torch.arange(ids.shape[1])[None] < torch.tensor([len(b) for b in batch])[:, None]).long()
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
            logp = logits[:, :-1].log_softmax(-1).gather(2, ids[:, 1:, None]).squeeze(-1)
            for i, row in enumerate(batch):
                start = starts[begin + i]
                logps.append(float(logp[i, start - 1 : len(row) - 1].sum()))
        return [logps[2 * i] - logps[2 * i + 1] for i in range(len(prompts))]


def scores_of(scorer: Callable, prompts: list[Any], completions: list[list[str]]) -> list[list[float]]:
    """A per-completion scorer `f(prompts, completions) -> list[float]` applied to K completions per prompt."""
    flat = scorer(
        [p for p, c in zip(prompts, completions, strict=True) for _ in c], [x for c in completions for x in c]
    )
    out, i = [], 0
    for c in completions:
        out.append([float(s) for s in flat[i : i + len(c)]])
        i += len(c)
    return out


def check_scores(scores: Any, completions: list[list[str]], labeler: str) -> list[list[float]]:
    """One list of K finite numbers per prompt, else an error naming the labeler and the prompt."""
    if not isinstance(scores, list | tuple) or len(scores) != len(completions):
        got = len(scores) if isinstance(scores, list | tuple) else type(scores).__name__
        raise DataValidationError(f"labeler '{labeler}' returned {got} score lists for {len(completions)} prompts")
    for i, (row, c) in enumerate(zip(scores, completions, strict=True)):
        if not isinstance(row, list | tuple) or len(row) != len(c):
            raise DataValidationError(f"labeler '{labeler}', prompt {i}: expected {len(c)} scores, got {row!r}")
        bad = [s for s in row if isinstance(s, bool) or not isinstance(s, int | float) or not math.isfinite(s)]
        if bad:
            raise DataValidationError(f"labeler '{labeler}', prompt {i}: expected finite numbers, got {bad[0]!r}")
    return [[float(s) for s in row] for row in scores]


def rank(args, prompts: list[Any], completions: list[list[str]], function: Callable | None) -> list[list[int]]:
    """The `ranking` of each prompt's completions by `args.labeler` (`SampleArguments`); empty lists for nobody."""
    if args.labeler == "none":
        return [[] for _ in prompts]
    if args.labeler == "tiny_world":
        from ..data.world import TinyWorld

        world = TinyWorld(args.world_seed)
        question = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
        return [
            ranks_from_scores(world.gold_scores([q] * len(c), c)) if is_world_question(p) else []
            for p, q, c in zip(prompts, question, completions, strict=True)
        ]
    if function is not None:
        scores = function(list(prompts), [list(c) for c in completions])
    elif args.labeler == "reward_model":
        from ..reward.scorer import RewardModelScorer

        scorer = RewardModelScorer(args.labeler_model, trust_remote_code=args.trust_remote_code)
        scores = scores_of(scorer, prompts, completions)
    else:
        from ..modeling import load_model_for_inference

        judge = JudgeScorer(*load_model_for_inference(args.labeler_model, trust_remote_code=args.trust_remote_code))
        scores = scores_of(judge, prompts, completions)
    return [ranks_from_scores(row) for row in check_scores(scores, completions, args.labeler)]
