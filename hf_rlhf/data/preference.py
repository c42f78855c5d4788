"""Comparison data for the reward stage: TRL's preference formats, ranked K-way comparisons and rated completions,
as groups.

Every accepted row becomes one **group**: a prompt, its K >= 2 completions and the pairs (i, j) in which completion i
is preferred to completion j, each with an optional margin. A TRL preference row (`chosen`/`rejected`, with or
without `prompt`, standard or conversational, optional `margin`) is a group of K=2 with one pair. A ranked row
(`prompt`, `completions`, `ranking`) expands to every pair with a strict preference: K(K-1)/2 for a full order, fewer
with ties. As in InstructGPT, a group is one batch element: each completion is scored once and the loss is averaged
over the group's pairs, so a prompt with many completions is not overweighted and its pairs are never split across
batches or epochs.

`ranking[i]` is the rank of `completions[i]`: 1 is the best, larger is worse, equal numbers are ties (so "best first"
reads `[1, 2, 3]` for completions already in order).

The public shapes are converted on the way, and each group lists its conversions (`converted`) for the manifest:

- `prompt_extracted`: chosen/rejected that repeat the prompt (HuggingFaceH4/ultrafeedback_binarized: a string
  `prompt` and conversations that start with it; or text that starts with the prompt) or share their leading
  messages (TRL's implicit prompt) have it taken out (TRL's `maybe_extract_prompt`), so it is encoded once.
- `hh_dialogue`: Anthropic/hh-rlhf's "\\n\\nHuman: ... \\n\\nAssistant: ..." strings become conversations, detected
  per row (a row that does not parse stays text) or for every row with `dataset_format: hh-rlhf`.
- `rated_to_ranking` (openbmb/UltraFeedback: `instruction` and `completions[]` with scores) and `scored_to_ranking`
  (`score_columns`, e.g. Stanford SHP's `human_ref_A`/`score_A`): completions ranked by score, higher is better, equal
  scores tie (competition ranks); the instruction is the user turn and each response an assistant turn. A completion
  with no usable score is left out of its group and counted (`unscored_completions`).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from datasets import Dataset
from trl.data_utils import extract_prompt, is_conversational, maybe_extract_prompt

from .formats import HH_RLHF, SCORED_PROMPT_COLUMNS, DataValidationError, parse_hh_dialogue, preference_format

__all__ = [
    "PreferenceOptions",
    "conversion_counts",
    "describe_conversion",
    "pairs_from_ranking",
    "parse_hh_dialogue",
    "preference_format",
    "ranks_from_scores",
    "to_groups",
]

INVALID_REASONS = {
    "chosen_equals_rejected": "a chosen completion equal to its rejected one",
    "bad_ranking": "a ranking that is not a ranking of the row's completions",
    "too_few_completions": "fewer than 2 completions (with a usable score, for rated or scored rows)",
    "empty_completion": "an empty completion",
    "all_tied": "a ranking with no strict preference (every completion tied)",
    "not_hh_dialogue": "chosen/rejected that are not '\\n\\nHuman: ... \\n\\nAssistant: ...' dialogues",
    "empty_prompt": "an empty prompt",
    "bad_completions": "completions that are not {'response', scores} mappings",
    "not_text": "a completion that is neither a string nor a list of messages",
    "bad_prompt": "a prompt that is neither a string nor a list of messages",
    "bad_margin": "a margin that is not a number",
}
logger = logging.getLogger(__name__)
RATING_SCORES = ("overall_score", "fine-grained_score", "aspects")
RATING_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")  # openbmb/UltraFeedback's


@dataclass(frozen=True)
class PreferenceOptions:
    """What the recipe says about the comparison data's shape (`DataArguments` and `RewardStageConfig` fields)."""

    dataset_format: str | None = None
    score_columns: dict[str, str] | None = None
    rating_score: str = "overall_score"
    rating_aspects: tuple[str, ...] | None = None

    @classmethod
    def from_args(cls, data_args: Any, training_args: Any) -> PreferenceOptions:
        aspects = getattr(training_args, "rating_aspects", None)
        return cls(
            dataset_format=getattr(data_args, "dataset_format", None),
            score_columns=getattr(training_args, "score_columns", None) or None,
            rating_score=getattr(training_args, "rating_score", "overall_score"),
            rating_aspects=tuple(aspects) if aspects else None,
        )

    def rating(self) -> str:
        """How rated completions are scored, as the plan and the errors say it."""
        if self.rating_score != "aspects":
            return f"'{self.rating_score}'"
        return f"the mean of the ratings of {', '.join(self.rating_aspects or RATING_ASPECTS)} ('N/A' skipped)"


class _Invalid(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def pairs_from_ranking(ranking: list[int]) -> list[tuple[int, int]]:
    """Every (better, worse) index pair with a strict preference; ties give no pair."""
    return [(i, j) for i in range(len(ranking)) for j in range(len(ranking)) if ranking[i] < ranking[j]]


def ranks_from_scores(scores: list[float]) -> list[int]:
    """Competition ranks, higher score = better (1 = best, ties share a rank): [0.5, 1.0, 0.5] -> [2, 1, 2]."""
    return [1 + sum(other > s for other in scores) for s in scores]


def _text(value: Any) -> str | None:
    """The text of a completion: a string, or the content of the last message of a conversational completion."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[-1], dict) and isinstance(value[-1].get("content"), str):
        return value[-1]["content"]
    return None


def _not_text(where: str, value: Any) -> _Invalid:
    """The error of a completion (or prompt) that is neither text nor messages: what it is, what was expected."""
    reason = "bad_prompt" if where == "column 'prompt'" else "not_text"
    return _Invalid(
        reason, f"{where} is {_shown(value)}: expected a string or a list of {{'role', 'content'}} messages"
    )


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({type(value).__name__})"


def _check_prompt(prompt: Any, optional: bool = False) -> None:
    if not (prompt is None and optional) and not isinstance(prompt, str) and _text(prompt) is None:
        raise _not_text("column 'prompt'", prompt)


def _score(value: Any) -> float | None:
    """A usable score: a finite number or numeric string ("4"); None for "N/A", None, NaN and anything else."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _rated_score(completion: dict[str, Any], options: PreferenceOptions) -> float | None:
    if options.rating_score != "aspects":
        return _score(completion.get(options.rating_score))
    annotations = completion.get("annotations")
    annotations = annotations if isinstance(annotations, dict) else {}
    usable = []
    for aspect in options.rating_aspects or RATING_ASPECTS:  # {aspect: {"Rating": "1".."5" or "N/A", ...}}
        annotation = annotations.get(aspect)
        rating = _score(annotation.get("Rating")) if isinstance(annotation, dict) else None
        usable += [rating] if rating is not None else []
    return sum(usable) / len(usable) if usable else None


# ------------------------------------------------------------------------------------------------ rows -> groups
def _group(prompt, completions, ranks, converted=(), margins=None, unscored=0) -> dict[str, Any]:
    pairs = pairs_from_ranking(ranks)
    return {
        "prompt": prompt,
        "completions": completions,
        "pairs": pairs,
        "margins": margins if margins is not None else [0.0] * len(pairs),
        "ranks": ranks,
        "converted": list(converted),
        "unscored_completions": unscored,
    }


def _extract_prompt(prompt: Any, chosen: Any, rejected: Any) -> tuple[Any, Any, Any, bool]:
    """(prompt, chosen, rejected, extracted): the prompt taken out of chosen/rejected that repeat it."""
    if is_conversational({"chosen": chosen}) and is_conversational({"rejected": rejected}):
        if isinstance(prompt, list) and prompt:  # a conversational prompt the conversations may start with
            n = len(prompt)
            if chosen[:n] == prompt == rejected[:n] and len(chosen) > n and len(rejected) > n:
                return prompt, chosen[n:], rejected[n:], True
            return prompt, chosen, rejected, False
        row = {"chosen": chosen, "rejected": rejected, **({"prompt": prompt} if prompt is not None else {})}
        out = maybe_extract_prompt(row)  # a text prompt, or none: the shared leading messages
        if not out["prompt"]:  # nothing shared: keep a text prompt as it is
            return ("" if prompt is None else prompt), chosen, rejected, False
        return out["prompt"], out["chosen"], out["rejected"], True
    if isinstance(prompt, str) and prompt.strip() and isinstance(chosen, str) and isinstance(rejected, str):
        if chosen.startswith(prompt) and rejected.startswith(prompt):
            return prompt, chosen[len(prompt) :], rejected[len(prompt) :], True
    return ("" if prompt is None else prompt), chosen, rejected, False


def _pairwise(row: dict[str, Any], options: PreferenceOptions) -> dict[str, Any]:
    prompt, chosen, rejected, converted = row.get("prompt"), row["chosen"], row["rejected"], []
    _check_prompt(prompt, optional=True)
    for column, value in (("chosen", chosen), ("rejected", rejected)):
        if _text(value) is None:
            raise _not_text(f"column '{column}'", value)
    if isinstance(chosen, str) and isinstance(rejected, str) and not isinstance(prompt, list):
        text_prompt = prompt or ""
        dialogues = [
            parse_hh_dialogue(c if c.startswith(text_prompt) else text_prompt + c) for c in (chosen, rejected)
        ]
        if dialogues[0] and dialogues[1]:
            dialogue = extract_prompt({"chosen": dialogues[0], "rejected": dialogues[1]})
            prompt, chosen, rejected = dialogue["prompt"], dialogue["chosen"], dialogue["rejected"]
            converted.append("hh_dialogue")
        elif options.dataset_format == HH_RLHF:
            column = "chosen" if dialogues[0] is None else "rejected"
            raise _Invalid(
                "not_hh_dialogue",
                f"column '{column}' is not a '\\n\\nHuman: ... \\n\\nAssistant: ...' dialogue ending with an "
                f"Assistant turn (dataset_format hh-rlhf), got {(text_prompt + row[column])[:60]!r}",
            )
    elif options.dataset_format == HH_RLHF:
        raise _Invalid("not_hh_dialogue", "expected 'chosen' and 'rejected' as strings (dataset_format hh-rlhf)")
    if not converted:  # a dialogue's prompt is already its shared leading turns
        prompt, chosen, rejected, extracted = _extract_prompt(prompt, chosen, rejected)
        converted += ["prompt_extracted"] if extracted else []
    texts = _text(chosen), _text(rejected)
    if texts[0] is None or texts[1] is None or not texts[0].strip() or not texts[1].strip():
        raise _Invalid("empty_completion", "column 'chosen' or 'rejected' is empty")
    if chosen == rejected:
        raise _Invalid("chosen_equals_rejected", f"column 'chosen' equals column 'rejected' ({texts[0][:40]!r})")
    margin = _score(row["margin"]) if row.get("margin") is not None else 0.0
    if margin is None:
        raise _Invalid("bad_margin", f"column 'margin' is {_shown(row['margin'])}: expected a finite number")
    return _group(prompt, [chosen, rejected], [1, 2], converted, margins=[margin])


def _check_completions(completions: Any, column: str = "completions") -> None:
    if not isinstance(completions, list) or len(completions) < 2:
        n = len(completions) if isinstance(completions, list) else 0
        raise _Invalid("too_few_completions", f"column '{column}' has {n} completions, expected >= 2")
    for index, value in enumerate(completions):
        text = _text(value)
        if text is None:
            raise _not_text(f"column '{column}', item {index}", value)
        if not text.strip():
            raise _Invalid("empty_completion", f"column '{column}', item {index} is empty")


def _ranked(row: dict[str, Any]) -> dict[str, Any]:
    completions, ranking = row["completions"], row["ranking"]
    _check_prompt(row["prompt"])
    _check_completions(completions)
    problem = _ranking_problem(ranking, len(completions))
    if problem:
        raise _Invalid(
            "bad_ranking",
            f"column 'ranking' is {ranking!r}: {problem}; expected {len(completions)} ranks, one per completion "
            "(integers >= 1: 1 = best, larger is worse, equal for ties)",
        )
    ranking = [int(r) for r in ranking]
    if not pairs_from_ranking(ranking):
        raise _Invalid("all_tied", f"column 'ranking' {ranking!r} ties every completion")
    return _group(row["prompt"], list(completions), ranking)


def _ranking_problem(ranking: Any, k: int) -> str | None:
    """What is wrong with a row's `ranking` for its `k` completions, or None."""
    if not isinstance(ranking, list):
        return f"not a list but a {type(ranking).__name__}"
    if len(ranking) != k:
        return f"{len(ranking)} ranks for {k} completions"
    for index, rank in enumerate(ranking):
        if isinstance(rank, bool) or not (isinstance(rank, int) or (isinstance(rank, float) and rank.is_integer())):
            return f"item {index} is {_shown(rank)}, not an integer"  # 2.0 is one: a JSON column of numbers
        if rank < 1:
            zero_based = " (0-based? add 1 to every rank)" if min(ranking) == 0 else ""
            return f"item {index} is {rank}, below 1{zero_based}"
    return None


def _as_turn(value: Any, role: str) -> list[dict[str, str]]:
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def _scored_group(prompt: Any, column: str, responses: list[Any], scores: list[Any], how: str, score: str):
    """A group of the responses that have a usable score, ranked by it; `column` names the prompt's column."""
    if _text(prompt) is None or not _text(prompt).strip():
        raise _Invalid("empty_prompt", f"column '{column}' is {prompt!r}: expected a non-empty string or messages")
    usable = [(r, s) for r, s in zip(responses, map(_score, scores), strict=True) if s is not None]
    if len(usable) < 2:
        raise _Invalid(
            "too_few_completions",
            f"{len(usable)} of {len(responses)} completions have a usable score ({score}), expected >= 2",
        )
    ranks = ranks_from_scores([s for _, s in usable])
    if not pairs_from_ranking(ranks):
        raise _Invalid("all_tied", f"every completion has the same score ({score} = {usable[0][1]:g})")
    completions = [_as_turn(r, "assistant") for r, _ in usable]
    return _group(_as_turn(prompt, "user"), completions, ranks, [how], unscored=len(responses) - len(usable))


def _rated(row: dict[str, Any], options: PreferenceOptions) -> dict[str, Any]:
    completions = row["completions"]
    if not isinstance(completions, list) or not all(isinstance(c, dict) for c in completions):
        raise _Invalid("bad_completions", "column 'completions' must be a list of {'response', scores} mappings")
    responses = [c.get("response") for c in completions]
    _check_completions(responses)
    scores = [_rated_score(c, options) for c in completions]
    return _scored_group(row["instruction"], "instruction", responses, scores, "rated_to_ranking", options.rating())


def _scored(row: dict[str, Any], options: PreferenceOptions, prompt_column: str) -> dict[str, Any]:
    columns = options.score_columns or {}
    responses = [row[c] for c in columns]
    for column, text in zip(columns, map(_text, responses), strict=True):
        if text is None or not text.strip():
            raise _Invalid("empty_completion", f"column '{column}' is empty")
    scores = [row[c] for c in columns.values()]
    what = ", ".join(f"'{s}'" for s in columns.values())
    return _scored_group(row[prompt_column], prompt_column, responses, scores, "scored_to_ranking", what)


def to_groups(
    dataset: Dataset, where: str, on_invalid: str = "error", options: PreferenceOptions | None = None
) -> tuple[list[dict[str, Any]], dict[str, int], str]:
    """Check every row and turn it into a group; invalid rows stop the stage or are dropped and counted.

    Args:
        dataset (`Dataset`): Pairwise, ranked, rated or scored comparisons (`preference_format`).
        where (`str`): How errors name the dataset and split.
        on_invalid (`str`): 'error' to stop at the first invalid row (naming it), 'drop' to drop and count them.
        options (`PreferenceOptions`, *optional*): `dataset_format`, `score_columns` and how rated rows are scored.

    Returns:
        `(groups, dropped, format)`: groups have `prompt`, `completions`, `pairs`, `margins`, `ranks`, `converted`
        (how the row was converted, see the module docstring) and `unscored_completions`; `dropped` counts the
        dropped rows by reason.
    """
    if on_invalid not in ("error", "drop"):
        raise ValueError(f"on_invalid must be 'error' or 'drop', got {on_invalid!r}")
    options = options or PreferenceOptions()
    fmt = preference_format(dataset.column_names, where, options.dataset_format, options.score_columns)
    prompt_column = next((c for c in SCORED_PROMPT_COLUMNS if c in dataset.column_names), None)
    convert = {
        "pairwise": lambda row: _pairwise(row, options),
        "ranked": _ranked,
        "rated": lambda row: _rated(row, options),
        "scored": lambda row: _scored(row, options, prompt_column),
    }[fmt]
    groups, dropped, first = [], Counter(), {}
    for index, row in enumerate(dataset):
        try:
            groups.append(convert(row))
        except _Invalid as e:
            if on_invalid == "error":
                raise DataValidationError(
                    f"{where}: row {index}: {e.detail}. Fix the row, or set `invalid_rows: drop` to drop and count "
                    f"rows with {INVALID_REASONS[e.reason]}"
                ) from None
            dropped[e.reason] += 1
            first.setdefault(e.reason, f"row {index}: {e.detail}")
    if dropped:  # what was wrong, with the first row of each kind: counts alone do not say what to fix
        reasons = "; ".join(f"{n} with {INVALID_REASONS[r]} (first, {first[r]})" for r, n in dropped.items())
        if not groups:
            raise DataValidationError(f"{where}: every row is invalid, no comparison is left: {reasons}")
        logger.warning("%s: dropped %d of %d rows: %s", where, sum(dropped.values()), len(dataset), reasons)
    return groups, dict(dropped), fmt


def conversion_counts(groups: list[dict[str, Any]]) -> tuple[dict[str, int], int]:
    """(rows converted, by how; completions left out for want of a usable score) of a split's groups."""
    converted = Counter(how for group in groups for how in group.get("converted", ()))
    return dict(converted), sum(group.get("unscored_completions", 0) for group in groups)


def describe_conversion(fmt: str | None, options: PreferenceOptions, columns: list[str] | None = None) -> str | None:
    """What `to_groups` will do to rows of format `fmt`, as the dry run prints it (None when the format is unknown)."""
    if fmt == "pairwise" and options.dataset_format == HH_RLHF:
        return (
            "every row's chosen/rejected parsed as a '\\n\\nHuman: ... \\n\\nAssistant: ...' dialogue (dataset_format "
            "hh-rlhf), the shared leading turns as the prompt (TRL extract_prompt); rows that do not parse are invalid"
        )
    if fmt == "pairwise":
        return (
            "chosen/rejected that repeat the prompt get it extracted (TRL maybe_extract_prompt); "
            "'\\n\\nHuman: ... \\n\\nAssistant: ...' dialogues (HH-RLHF) are detected per row and become "
            "conversations; both counted in the manifest (rows.converted)"
        )
    if fmt == "rated":
        return (
            f"completions ranked by {options.rating()}, higher is better, equal scores tie; the instruction is the "
            "user turn; completions without a usable score are left out and counted"
        )
    if fmt == "scored":
        prompt = next((c for c in SCORED_PROMPT_COLUMNS if c in (columns or ())), "prompt")
        pairs = ", ".join(f"{r} by {s}" for r, s in (options.score_columns or {}).items())
        return f"responses ranked by their score columns ({pairs}), equal scores tie; '{prompt}' is the user turn"
    if fmt == "ranked":
        return "none: each row's ranking gives its pairs"
    return None
