"""The RL stage's rewards and prompts: reward names and weights, the reward functions, and the checks of the prompts
made before any model loads (`hf_rlhf.stages.rl`).

The tiny world's gold labeler (`tiny_world_gold`) scores only the world's questions. On other prompts it gives NaN,
which is allowed only with a reward weight of 0 (logged over the prompts it scores, as the tiny recipe does); a
non-zero weight on a dataset with prompts outside the world is refused here, naming how many.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from trl import ModelConfig

from ..configs import RLArguments
from ..data.prompts import check_prompts, model_positions, prompt_length_limit
from ..data.world import is_world_question
from ..encoding import escape_prompt, same_tokenizer, special_token_strings
from ..errors import RecipeError, TokenizerMismatchError
from ..manifest import read_manifest
from ..model_roles import check_role
from ..modeling import load_reward_model, load_tokenizer, resolve_model_path
from ..placement import frozen, load_kwargs
from ..reward.scorer import WORLD_ONLY_REWARD_FUNCS, RewardModelScorer, resolve_reward_func

logger = logging.getLogger(__name__)


def check_rewards(rl_args: RLArguments, training_args) -> tuple[list[str], list[float]]:
    """The rewards' names and weights: every reward function resolves, and there is one weight per reward."""
    names = ["reward_model"] if rl_args.reward_model_path else []
    for name in rl_args.reward_funcs or []:
        try:
            resolve_reward_func(name, rl_args.world_seed)
        except ValueError as e:
            raise RecipeError(str(e)) from e
        names.append(name.split(":")[-1])
    if not names:
        raise RecipeError("rl needs `reward_model_path` and/or `reward_funcs`")
    weights = list(training_args.reward_weights) if training_args.reward_weights else [1.0] * len(names)
    if len(weights) != len(names):
        raise RecipeError(f"reward_weights has {len(weights)} entries for {len(names)} rewards ({', '.join(names)})")
    return names, weights


def new_tokens(rl_args: RLArguments, training_args) -> int:
    """Tokens the policy generates per prompt: PPO's `max_new_tokens`, GRPO/RLOO's `max_completion_length`."""
    return training_args.max_new_tokens if rl_args.algorithm == "ppo" else training_args.max_completion_length


def prompts_per_update(rl_args: RLArguments, training_args) -> tuple[int, str]:
    """Distinct prompts one update needs over all processes, and why.

    PPO takes `rollout_batch_size` prompts per process; TRL's GRPO/RLOO sample `generation_batch_size` completions
    (all processes), `num_generations` per prompt, and skip a batch they cannot fill.
    """
    if rl_args.algorithm == "ppo":
        per, world, k = (
            training_args.rollout_batch_size,
            training_args.world_size,
            training_args.num_samples_per_prompt,
        )
        why = f"rollout_batch_size {per} / num_samples_per_prompt {k} x {world} process{'es' if world > 1 else ''}"
        return per // k * world, why
    batch, k = training_args.generation_batch_size, training_args.num_generations
    return batch // k, f"generation_batch_size {batch} / num_generations {k}"


def check_rl_prompts(train, where: str, rl_args: RLArguments, training_args, model_args: ModelConfig, tokenizer):
    """`check_prompts` with the stage's limits, then the world-only reward functions' weights.

    Returns:
        `(train, rows, outside)`: the kept prompts, their `row_counts`, and how many are outside the tiny world
        (None when no world-only reward function is used).
    """
    positions = model_positions(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    limit = prompt_length_limit(rl_args.max_prompt_length, positions, new_tokens(rl_args, training_args))
    needed, why = prompts_per_update(rl_args, training_args)
    train, rows = check_prompts(
        train,
        where,
        tokenizer,
        limit,
        rl_args.long_prompts,
        needed,
        min_rows_reason=f"one {rl_args.algorithm} update: {why}",
    )
    names, weights = check_rewards(rl_args, training_args)
    world_only = [(n, w) for n, w in zip(names, weights, strict=True) if n in WORLD_ONLY_REWARD_FUNCS]
    if not world_only:
        return train, rows, None
    outside = sum(not is_world_question(p) for p in train["prompt"])
    for name, weight in world_only:
        if outside and weight:
            raise RecipeError(
                f"{where}: {outside} of {len(train)} prompts are not questions of the tiny world, which reward "
                f"function '{name}' (weight {weight:g}) cannot score: give it weight 0 in `reward_weights` (logged "
                f"only) or remove it from `reward_funcs`"
            )
        if outside:
            logger.warning(
                "%s: %d of %d prompts are outside the tiny world: '%s' (weight 0) is not scored on them",
                where, outside, len(train), name,
            )  # fmt: skip
    return train, rows, outside


def reward_functions(
    rl_args: RLArguments, training_args, model_args: ModelConfig, tokenizer
) -> tuple[list, list[str], list[float], dict | None]:
    """The reward model (as a function) and named reward functions, with names, weights and the RM's stats.

    The reward model is loaded with the stage's precision and quantization (a 4-bit policy gets a 4-bit reward
    model), frozen on this process's device (`hf_rlhf.placement`); PPO's `shared_base` layout replaces it by an
    adapter of the policy's base (see `run_ppo`).
    """
    names, weights = check_rewards(rl_args, training_args)
    funcs, stats = [], None
    if rl_args.reward_model_path:
        reward_dir = resolve_model_path(rl_args.reward_model_path, "reward model")  # a Hub id: its snapshot
        if not getattr(training_args, "shared_base", False):
            model = load_reward_model(
                rl_args.reward_model_path,
                trust_remote_code=training_args.trust_remote_code,
                model_args=model_args,
                what="reward_model_path",
                **load_kwargs(),
            )
            funcs.append(RewardModelScorer(frozen(model), load_tokenizer(rl_args.reward_model_path)))
        else:
            funcs.append(None)  # the shared base's reward adapter, made with the policy
        manifest = read_manifest(reward_dir) or {}
        stats = manifest.get("metrics", {}).get("reward_centring")
    funcs += [resolve_reward_func(name, rl_args.world_seed) for name in rl_args.reward_funcs or []]
    return funcs, names, weights, stats


def trl_reward(fn, name: str):
    """Our `f(prompts, completions)` as a TRL reward function `f(prompts, completions, **kwargs)`; NaN (a prompt
    the function cannot score) becomes None, which TRL leaves out of the weighted sum and the logged means."""

    def reward(prompts, completions, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [None if isinstance(s, float) and math.isnan(s) else s for s in fn(prompts, texts)]

    reward.__name__ = name
    return reward


def final_metrics(history: list[dict[str, float]]) -> dict[str, Any]:
    """Each logged statistic averaged over the last tenth of the updates, NaN entries (a reward that scored none of
    an update's prompts) left out; None where every entry is NaN."""
    last = history[-max(1, len(history) // 10) :]
    out = {}
    for key in last[0]:
        if key != "step":
            values = [h[key] for h in last if not math.isnan(h[key])]
            out[f"final_{key}"] = sum(values) / len(values) if values else None
    return out


def without_nan(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The logged history with NaN as None (null in the manifest's JSON): a reward that scored no prompt of a step."""
    return [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in h.items()} for h in history]


def check_roles(rl_args: RLArguments, model_args: ModelConfig) -> None:
    """The policy is a causal LM and the reward model a trained reward model (`hf_rlhf.model_roles`), before any
    data or model loads."""
    check_role(resolve_model_path(model_args.model_name_or_path), "policy", "model_name_or_path",
               model_args.model_name_or_path)  # fmt: skip
    if rl_args.reward_model_path:
        path = resolve_model_path(rl_args.reward_model_path, "reward model")
        check_role(path, "reward_model", "reward_model_path", rl_args.reward_model_path)
    if rl_args.value_model_path:
        check_role(resolve_model_path(rl_args.value_model_path, "value model"), "init", "value_model_path")


def tokenizer_plan(rl_args: RLArguments, training_args, model_args: ModelConfig, tokenizer) -> dict[str, Any]:
    """How the reward and value models read the policy's samples, for the log and the manifest.

    A reward model whose tokenizer differs from the policy's (vocabulary, merges or special tokens:
    `hf_rlhf.encoding.same_tokenizer`) scores the decoded completions re-encoded with its own tokenizer and chat
    template (`RewardModelScorer` always encodes with the reward model's tokenizer). PPO's value model reads the
    policy's token ids: it starts from the reward model only when their tokenizers are the same, else from the
    policy with a new value head; a `value_model_path` with another tokenizer is refused.
    """
    if not rl_args.reward_model_path:
        return {}
    trust = training_args.trust_remote_code
    same = same_tokenizer(tokenizer, load_tokenizer(rl_args.reward_model_path, trust_remote_code=trust))
    plan: dict[str, Any] = {
        "reward_tokenizer": "the policy's" if same else "its own: completions decoded and re-encoded for scoring"
    }
    if rl_args.algorithm != "ppo" or getattr(training_args, "shared_base", False):
        return plan
    if rl_args.value_model_path:
        if not same_tokenizer(tokenizer, load_tokenizer(rl_args.value_model_path, trust_remote_code=trust)):
            raise TokenizerMismatchError(
                f"value_model_path '{rl_args.value_model_path}' has another tokenizer than the policy "
                f"'{model_args.model_name_or_path}' (vocabulary, merges or special tokens differ): the value model "
                "reads the policy's token ids. Leave value_model_path unset (the value model then starts from the "
                "policy with a new head) or give a model with the policy's tokenizer"
            )
        plan["value_model_init"] = {"from": "value_model_path", "path": rl_args.value_model_path}
    elif same:
        plan["value_model_init"] = {"from": "reward_model", "path": rl_args.reward_model_path}
    else:
        plan["value_model_init"] = {
            "from": "policy",
            "path": model_args.model_name_or_path,
            "why": "the reward model's tokenizer differs from the policy's; the value head is new",
        }
    if not same:
        logger.info(
            "reward model '%s' has another tokenizer than the policy: completions are decoded and re-encoded with "
            "its own tokenizer for scoring; the value model starts from %s",
            rl_args.reward_model_path, plan["value_model_init"]["from"],
        )  # fmt: skip
    return plan


def escape_prompts(train, tokenizer):
    """For TRL's GRPO/RLOO, which tokenize the prompts themselves: special-token text in a prompt's content is
    escaped (`hf_rlhf.encoding.escape_prompt`), so that it cannot open a fake turn; returns the rows and how many
    were escaped (logged, and counted in the manifest)."""
    flags = [escape_prompt(tokenizer, p)[1] for p in train["prompt"]]
    if not any(flags):
        return train, 0
    logger.warning(
        "%d of %d prompts hold special-token text (e.g. '%s'): escaped with a word joiner so that the trainer does "
        "not read it as special tokens", sum(flags), len(flags), special_token_strings(tokenizer)[0],
    )  # fmt: skip
    return train.map(lambda row: {"prompt": escape_prompt(tokenizer, row["prompt"])[0]}), sum(flags)
