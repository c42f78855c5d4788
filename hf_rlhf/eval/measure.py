"""Every model sampled on the same held-out prompts with the same settings, then measured side by side.

The one code path of the pipeline's report (`hf_rlhf.eval.report`) and of `hf-rlhf evaluate`
(`hf_rlhf.eval.evaluate`): `load_prompts` reads the prompts, `sample_models` samples each deployable model (and
best-of-N from one of them) keeping the reference model loaded for the KL, and `measure` turns each model's
completions into a report row: the reward model's mean score with its 95% bootstrap interval, the win rate against
the reference model judged by the reward model on the same prompt (ties half, tie rate given), optionally a judge
model's win rate in both orders, the KL to the reference, the mean length, the missing-EOS rate and distinct-1/2.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from ..configs import DataArguments, EvaluationArguments
from ..data.loading import load_stage_dataset
from ..encoding import same_tokenizer
from ..errors import DataValidationError
from ..generation_backend import make_backend
from ..modeling import load_model_for_inference
from ..reward.scorer import best_of_n
from .generation import bootstrap_ci, generate, sequence_kl
from .judge import PairwiseJudge, judge_both_orders, request_text
from .stats import best_of_n_kl_bound, distinct_n, missing_eos_rate, pairwise_outcomes, win_rate


@dataclass
class Candidate:
    """One model's completions on the evaluation prompts: a row of the report once measured.

    Args:
        name: The row's name ("SFT", "RL (PPO)", a name given to `hf-rlhf evaluate`).
        stage: The pipeline stage it belongs to (its card shows the row), or None.
        completions: One completion per prompt.
        tokenizer: The model's tokenizer (lengths are counted in its tokens).
        ids: The sampled token ids of each completion, cut after EOS (for the missing-EOS rate); None when the
            completion was cut elsewhere (at a newline, for few-shot prompts).
        kl: Per prompt, the sampled sequence's log-ratio to the reference model (a Monte Carlo KL estimate).
        kl_bound: An upper bound on the KL instead (best-of-N).
    """

    name: str
    stage: str | None
    completions: list[str]
    tokenizer: PreTrainedTokenizerBase
    ids: list[list[int]] | None = None
    kl: list[float] | None = None
    kl_bound: float | None = None


# -------------------------------------------------------------------------------------------------- prompts
def check_prompts(rows: Sequence[Any], where: str) -> list[Any]:
    """Each row's `prompt`: non-empty text or a non-empty list of `{role, content}` messages."""
    for i, prompt in enumerate(rows):
        ok = (isinstance(prompt, str) and prompt.strip()) or (
            isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "content" in m for m in prompt)
        )
        if not ok:
            raise DataValidationError(
                f"{where}, row {i}: `prompt` must be non-empty text or a list of {{role, content}} messages, "
                f"got {prompt!r}"
            )
    return list(rows)


def load_prompts(data_args: DataArguments, split: str = "train", max_prompts: int | None = None) -> list[Any] | None:
    """The `prompt` column (TRL's prompt-only format: text or conversations) of a dataset as a stage reads it
    (`hf_rlhf.data.loading`), first `max_prompts` rows.

    Args:
        data_args: The dataset, as a stage's `DataArguments` (one dataset or a mixture).
        split: "train" (`dataset_train_split`) or "test" (`dataset_test_split`; nothing is carved from train).

    Returns:
        The prompts, or None when the dataset has no such split.
    """
    data = load_stage_dataset(dataclasses.replace(data_args, eval_split_size=0.0, max_train_samples=None)).get(split)
    if data is None:
        return None
    chosen = data_args.dataset_train_split if split == "train" else data_args.dataset_test_split
    where = f"evaluation prompts: dataset '{data_args.dataset_name}', split '{chosen}'"
    if "prompt" not in data.column_names:
        raise DataValidationError(
            f"{where}: expected a `prompt` column (TRL's prompt-only format), got columns {data.column_names}"
        )
    if max_prompts is not None:
        data = data.select(range(min(max_prompts, len(data))))
    return check_prompts(data["prompt"], where)


def shown_prompt(prompt: Any) -> str:
    """A prompt as the samples table shows it: a lone user turn by its content, else `request_text`."""
    if isinstance(prompt, list) and len(prompt) == 1:
        return str(prompt[0]["content"])
    return request_text(prompt)


# ------------------------------------------------------------------------------------------------- sampling
def sample(
    model, tokenizer, prompts, ev: EvaluationArguments, name: str, seed: int | None = None, cut=False, backend=None
):
    """`generate` with the evaluation's settings (and `backend`, HF's by default): (completions, sampled ids)."""
    return generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=ev.max_new_tokens,
        temperature=ev.temperature,
        batch_size=ev.batch_size,
        seed=ev.seed if seed is None else seed,
        stop_at_newline=cut,
        desc=f"sampling {name}",
        return_ids=True,
        backend=backend,
    )


def sample_best_of_n(
    model, tokenizer, prompts: list[Any], ev: EvaluationArguments, scorer: Callable, name: str, backend=None
) -> tuple[Candidate, list[list[str]], list[list[float]]]:
    """Best-of-`ev.best_of_n` from one model by the reward model (`hf_rlhf.reward.scorer.best_of_n`), sampled with
    the next seed; also returns every candidate and its reward, per prompt."""
    n = ev.best_of_n
    repeated = [p for p in prompts for _ in range(n)]
    texts, ids = sample(model, tokenizer, repeated, ev, f"{name} x{n}", ev.seed + 1, backend=backend)
    candidates = [texts[i * n : (i + 1) * n] for i in range(len(prompts))]
    best, rewards = best_of_n(prompts, candidates, scorer)
    picked = [i * n + row.index(b) for i, (row, b) in enumerate(zip(candidates, best, strict=True))]
    candidate = Candidate(
        f"{name} best-of-{n} (reward model)",
        "reward",
        best,
        tokenizer,
        ids=[ids[i] for i in picked],
        kl_bound=best_of_n_kl_bound(n),
    )
    return candidate, candidates, rewards


def sample_models(
    models: dict[str, tuple[str, str | None]],
    reference: str | None,
    prompts: list[Any],
    ev: EvaluationArguments,
    scorer: Callable | None = None,
    best_of_n_from: str | None = None,
) -> tuple[list[Candidate], dict[str, Any]]:
    """Sample every model on `prompts` with the same settings, in order, the reference model loaded first and kept
    for the KL of the others to it (each other model is freed once sampled).

    Args:
        models: Row name -> (model directory or Hub id, pipeline stage or None), in the report's order.
        reference: The row the others are compared with (a key of `models`); None: no KL.
        scorer: The reward model, for best-of-N.
        best_of_n_from: The row best-of-N samples from (its row follows that model's), or None.

    Returns:
        The candidates, and what best-of-N saw (`{"candidates", "rewards"}`, empty without it).
    """
    if reference is not None and reference not in models:
        raise ValueError(f"reference model '{reference}' is not among the models {list(models)}")
    order = [reference, *(name for name in models if name != reference)] if reference else list(models)
    loaded: dict[str, Candidate] = {}
    extra: dict[str, Candidate] = {}
    seen: dict[str, Any] = {}
    ref_model = ref_tokenizer = None
    backend = make_backend(ev)  # HF `generate`, or vLLM with each model's weights synced (docs/vllm.md)
    kl_possible = reference is not None and ev.temperature > 0  # the estimate divides by the temperature
    try:
        for name in order:
            path, stage = models[name]
            model, tokenizer = load_model_for_inference(path, trust_remote_code=ev.trust_remote_code)
            texts, ids = sample(model, tokenizer, prompts, ev, name, backend=backend)
            kl = None
            if name == reference:
                ref_model, ref_tokenizer = model, tokenizer
            elif kl_possible and same_tokenizer(tokenizer, ref_tokenizer):  # else the ids mean other tokens
                kl = sequence_kl(model, ref_model, tokenizer, prompts, ids, ev.temperature, ev.batch_size)
            loaded[name] = Candidate(name, stage, texts, tokenizer, ids=ids, kl=kl)
            if name == best_of_n_from and scorer is not None and ev.best_of_n > 1:
                extra[name], seen["candidates"], seen["rewards"] = sample_best_of_n(
                    model, tokenizer, prompts, ev, scorer, name, backend
                )
            if name != reference:
                del model
                gc.collect()
    finally:
        backend.close()
    if len(models) > 1 and kl_possible:
        loaded[reference].kl = [0.0] * len(prompts)
    del ref_model
    gc.collect()
    return [c for name in models for c in (loaded[name], *([extra[name]] if name in extra else []))], seen


# -------------------------------------------------------------------------------------------------- measuring
def completion_lengths(candidate: Candidate) -> list[int]:
    """Tokens per completion: those sampled, EOS excluded; the text's tokens when it was cut elsewhere."""
    if candidate.ids is not None:
        eos = candidate.tokenizer.eos_token_id
        return [len(ids) - (1 if ids and ids[-1] == eos else 0) for ids in candidate.ids]
    return [len(candidate.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in candidate.completions]


def measure(
    candidates: list[Candidate],
    prompts: list[Any],
    reference: str | None,
    ev: EvaluationArguments,
    scorer: Callable | None = None,
    gold: Callable[[list[str]], list[float]] | None = None,
) -> list[dict[str, Any]]:
    """One report row per candidate (see the module docstring); the judge (`ev.judge_model`) is loaded here, after
    the sampled models are gone.

    Args:
        reference: The candidate others are compared with; None: no win rates.
        gold: The tiny world's gold labeler, completions -> scores in [0, 1] (a `gold` column), or None.
    """
    names = [c.name for c in candidates]
    if reference is not None and reference not in names:
        raise ValueError(f"reference model '{reference}' is not among the rows {names}")
    resamples, seed = ev.bootstrap_resamples, ev.seed
    rm = {c.name: [float(s) for s in scorer(prompts, c.completions)] for c in candidates} if scorer else {}
    ref = next((c for c in candidates if c.name == reference), None)
    judged: dict[str, tuple[list[float], float]] = {}
    if ev.judge_model and ref is not None:
        judge = PairwiseJudge(*load_model_for_inference(ev.judge_model, trust_remote_code=ev.trust_remote_code))
        judged = {
            c.name: judge_both_orders(judge, prompts, c.completions, ref.completions)
            for c in candidates
            if c is not ref
        }
    rows = []
    for c in candidates:
        lengths = completion_lengths(c)
        row: dict[str, Any] = {"model": c.name, "stage": c.stage, "n": len(c.completions)}
        if gold is not None:
            row["gold"] = bootstrap_ci(gold(c.completions), resamples, seed=seed).as_dict()
        if c.name in rm:
            interval = bootstrap_ci(rm[c.name], resamples, seed=seed)
            row.update(reward_model_score=interval.mean, reward_model_ci=[interval.low, interval.high])
            if ref is not None and c is not ref:
                same = [a == b for a, b in zip(c.completions, ref.completions, strict=True)]
                row["rm_win_rate"] = win_rate(pairwise_outcomes(rm[c.name], rm[ref.name], same), resamples, seed)
        if c.name in judged:
            outcomes, agreement = judged[c.name]
            row["judge_win_rate"] = {**win_rate(outcomes, resamples, seed), "order_agreement": agreement}
        if c.kl is not None:
            row["kl_to_sft"] = sum(c.kl) / len(c.kl)
        elif c.kl_bound is not None:
            row["kl_to_sft_bound"] = c.kl_bound
        row["mean_length"] = sum(lengths) / len(lengths)
        if c.ids is not None:
            row["missing_eos_rate"] = missing_eos_rate(c.ids, c.tokenizer.eos_token_id)
        row.update(distinct_1=distinct_n(c.completions, 1), distinct_2=distinct_n(c.completions, 2))
        rows.append(row)
    return rows


def samples_table(prompts: list[Any], candidates: list[Candidate], count: int) -> list[dict[str, str]]:
    """The first `count` prompts with every model's completion: `{"prompt": ..., <row name>: completion}`."""
    return [
        {"prompt": shown_prompt(prompts[i]), **{c.name: c.completions[i] for c in candidates}}
        for i in range(min(count, len(prompts)))
    ]
