"""Who ranks the K completions of `hf-rlhf sample` (`SampleArguments.labeler`).

* `none`: nobody; `ranking` is left empty for people to fill in the exported JSONL.
* `human`: people, in the labeling app (`hf_rlhf.label`): `ranking` is left empty here; the pipeline stops after
  sampling with the commands to label, and resumes at the reward stage with the app's export once the project has
  `label_min_rankings` rankings (`hf_rlhf.label.pipeline`).
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

from ..data.preference import ranks_from_scores  # ties for equal scores, as for rated datasets
from ..data.world import is_world_question
from ..encoding import encode_prompt, encode_text
from ..errors import DataValidationError, RecipeError
from ..eval.judge import answer_logprobs, request_text
from ..reward.scorer import import_function

LABELERS = ("none", "human", "tiny_world", "reward_model", "judge")  # or 'package.module:function'
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


class JudgeScorer:
    """A causal LM as a reward function: log p(" Yes") - log p(" No") after `JUDGE_TEMPLATE`, read by
    `hf_rlhf.eval.judge.answer_logprobs` (the pairwise judge of the report reads its answers the same way).

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
        contexts = [  # encoded as `generate` encodes text prompts
            encode_prompt(self.tokenizer, JUDGE_TEMPLATE.format(prompt=request_text(p), response=c))
            for p, c in zip(prompts, completions, strict=True)
        ]
        logps = answer_logprobs(self.model, self.tokenizer.pad_token_id, contexts, self.answers, self.batch_size)
        return [yes - no for yes, no in logps]


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
    if args.labeler in ("none", "human"):  # people rank: in the exported JSONL, or in the labeling app
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
