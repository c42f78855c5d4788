"""The prompts of `sample` and `rl`, checked and fitted before any model loads.

`check_prompts` reads only the tokenizer (and `model_positions` only the model's config): every `prompt` must be a
non-empty string or a non-empty conversation (a list of `{"role", "content"}` messages) ending with a user turn,
there must be enough prompts for one update, and each prompt, measured in tokens as generation formats it (the chat
template with the assistant's turn opened, `hf_rlhf.encoding.encode_prompt`), must fit `max_prompt_length`:
by default the policy's `max_position_embeddings` minus the tokens it generates.

Prompts over the limit follow `long_prompts`:

* `drop` (default): the row is left out and counted (`dropped: over_max_prompt_length`);
* `truncate`: the prompt keeps its end, counted (`truncated: over_max_prompt_length`). Text loses its first tokens.
  A conversation loses its oldest turns first (a leading system message is kept, and the kept turns start with a user
  turn); if its last user turn alone is still too long, that turn's text loses its first tokens. A prompt that cannot
  fit even so (a system message longer than the limit) is dropped and counted as under `drop`;
* `error`: the stage stops, naming the first rows over the limit.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from datasets import Dataset, Features
from transformers import AutoConfig, PreTrainedTokenizerBase

from ..encoding import encode_prompt, encode_text, special_text_in
from ..errors import DataValidationError, RecipeError
from .formats import PROMPT_FORMATS, _check_messages, _Errors
from .loading import row_counts

logger = logging.getLogger(__name__)

LONG_PROMPTS = ("drop", "truncate", "error")
REASON = "over_max_prompt_length"


def check_long_prompts(long_prompts: str) -> None:
    """`long_prompts` is one of `LONG_PROMPTS` (checked with the recipe, before data is read)."""
    if long_prompts not in LONG_PROMPTS:
        raise RecipeError(f"long_prompts must be one of {', '.join(LONG_PROMPTS)}, got {long_prompts!r}")


def model_positions(name_or_path: str, *, revision: str | None = None, trust_remote_code: bool = False) -> int | None:
    """The `max_position_embeddings` of a model's config (an adapter's: its base's), read without weights."""
    from ..hub.remote_code import from_pretrained_pinned
    from ..modeling import adapter_base, is_adapter_dir, resolve_model

    source = resolve_model(name_or_path, "model", None if revision in (None, "main") else revision)
    while is_adapter_dir(source.path):
        source = resolve_model(adapter_base(source.path), "base model")
    config = from_pretrained_pinned(AutoConfig, source, trust_remote_code, what="model config")
    return getattr(config, "max_position_embeddings", None)


def prompt_length_limit(max_prompt_length: int | None, positions: int | None, new_tokens: int) -> int | None:
    """`max_prompt_length` if set, else the model's positions minus the tokens generated (None: no limit known)."""
    if max_prompt_length is not None:
        if max_prompt_length < 1:
            raise RecipeError(f"max_prompt_length must be at least 1, got {max_prompt_length}")
        if positions is not None and max_prompt_length + new_tokens > positions:
            raise RecipeError(
                f"max_prompt_length {max_prompt_length} + {new_tokens} new tokens is more than the model's "
                f"{positions} positions: lower max_prompt_length (at most {positions - new_tokens})"
            )
        return max_prompt_length
    if positions is None:
        return None
    if positions - new_tokens < 1:
        raise RecipeError(f"{new_tokens} new tokens leave no room for a prompt in the model's {positions} positions")
    return positions - new_tokens


def describe_policy(max_prompt_length: int | None, positions: int | None, new_tokens: int, long_prompts: str) -> str:
    """The dry run's line for the prompt-length policy (the run applies `prompt_length_limit` the same way)."""
    limit = prompt_length_limit(max_prompt_length, positions, new_tokens)
    if limit is None:
        return "no length limit (the model's config has no max_position_embeddings; set max_prompt_length)"
    source = "max_prompt_length" if max_prompt_length is not None else f"{positions} positions - {new_tokens} new"
    action = {"drop": "dropped and counted", "truncate": "truncated from the left and counted", "error": "an error"}
    return f"prompts longer than {limit} tokens ({source}): {action[long_prompts]}; checked before models load"


def warn_template_markup(prompts: list[Any], where: str, tokenizer: PreTrainedTokenizerBase) -> int:
    """Warn (and return how many) when text prompts hold special-token strings, most often prompts already
    formatted with a chat template: a text prompt is content (`hf_rlhf.encoding`), so that markup becomes ordinary
    characters, not the template's special tokens."""
    marked = [i for i, p in enumerate(prompts) if special_text_in(tokenizer, p)]
    if marked:
        logger.warning(
            "%s: %d of %d text prompts contain special-token strings (row %d: %s); text prompts are read as content, "
            "so these become ordinary characters. If they are chat-formatted, pass conversations "
            "([{'role': 'user', 'content': ...}]) and let the chat template add the markup",
            where,
            len(marked),
            len(prompts),
            marked[0],
            ", ".join(repr(t) for t in special_text_in(tokenizer, prompts[marked[0]])[:3]),
        )
    return len(marked)


def check_prompts(
    dataset: Dataset,
    where: str,
    tokenizer: PreTrainedTokenizerBase,
    max_prompt_length: int | None,
    long_prompts: str = "drop",
    min_rows: int = 1,
    *,
    min_rows_reason: str = "",
) -> tuple[Dataset, dict[str, Any]]:
    """Check every prompt of `dataset` and fit it to `max_prompt_length` (see the module's docstring).

    Args:
        dataset (`Dataset`): TRL's prompt-only format (a `prompt` column; others are kept).
        where (`str`): How errors name the dataset and split.
        tokenizer (`PreTrainedTokenizerBase`): The policy's tokenizer (its chat template formats conversations).
        max_prompt_length (`int` or `None`): Longest prompt in tokens (`prompt_length_limit`); None: no limit.
        long_prompts (`str`): 'drop', 'truncate' or 'error'.
        min_rows (`int`): Prompts needed after dropping (one update's worth).
        min_rows_reason (`str`): Why that many, for the error (e.g. 'one ppo update: rollout_batch_size 64 x 1
            process').

    Returns:
        `(dataset, rows)`: the kept prompts (possibly truncated) and their `row_counts`.
    """
    check_long_prompts(long_prompts)
    PROMPT_FORMATS.detect(dataset.column_names, where)
    prompts = dataset["prompt"]
    errors = _Errors(where)
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, list):
            _check_messages(prompt, i, "prompt", errors, last_role="user")
        elif not isinstance(prompt, str) or not prompt.strip():
            errors.add(i, "prompt", "a non-empty string or a conversation ending with a user turn", prompt)
    errors.raise_if_any()
    warn_template_markup(prompts, where, tokenizer)
    if any(isinstance(p, list) for p in prompts) and not tokenizer.chat_template:
        raise RecipeError(
            f"{where}: the prompts are conversations but the model's tokenizer has no chat template: save one with "
            "the tokenizer (`chat_template.jinja`) or use text prompts"
        )
    dropped, truncated = 0, 0
    if max_prompt_length is not None and prompts:
        lengths = prompt_lengths(tokenizer, prompts)
        over = [i for i, n in enumerate(lengths) if n > max_prompt_length]
        if over and long_prompts == "error":
            shown = ", ".join(f"row {i} ({lengths[i]} tokens)" for i in over[:5])
            raise DataValidationError(
                f"{where}: {len(over)} prompt(s) longer than max_prompt_length={max_prompt_length} tokens: {shown}. "
                "Set `long_prompts: drop` or `truncate`, or a larger max_prompt_length"
            )
        fitted = {}
        for i in over if long_prompts == "truncate" else []:
            if (cut := truncate_prompt(tokenizer, prompts[i], max_prompt_length)) is not None:
                fitted[i] = cut
        dropped_rows = set(over) - set(fitted)
        keep = [i for i in range(len(prompts)) if i not in dropped_rows]
        truncated, dropped = len(fitted), len(dropped_rows)
        if truncated:
            new = [fitted.get(i, prompt) for i, prompt in enumerate(prompts)]
            feature, rest = dataset.features["prompt"], dataset.remove_columns("prompt")
            if rest.column_names:
                dataset = rest.add_column("prompt", new, feature=feature)
            else:  # no column left to carry the rows
                dataset = Dataset.from_dict({"prompt": new}, features=Features({"prompt": feature}))
        if dropped:
            dataset = dataset.select(keep)
        if over:
            logger.warning(
                "%s: %d of %d prompts are longer than max_prompt_length=%d tokens: %d truncated, %d dropped",
                where, len(over), len(prompts), max_prompt_length, truncated, dropped,
            )  # fmt: skip
    if len(dataset) < min_rows:
        why = f" ({min_rows_reason})" if min_rows_reason else ""
        left = f" after dropping {dropped} too long" if dropped else ""
        raise DataValidationError(
            f"{where}: {len(dataset)} prompt(s){left}, but {min_rows} are needed{why}: use more prompts or "
            "smaller batches"
        )
    return dataset, row_counts(len(dataset), dropped={REASON: dropped}, truncated={REASON: truncated})


def prompt_lengths(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Any]) -> list[int]:
    """Tokens of each prompt as generation feeds it to the model (chat template for conversations)."""
    return [len(encode_prompt(tokenizer, p)) for p in prompts]


def _keep_end(tokenizer: PreTrainedTokenizerBase, text: str, excess) -> str | None:
    """The end of `text`, without as many first tokens as it takes for `excess(text)` (tokens over the limit) to
    be <= 0; None if no end fits."""
    ids = encode_text(tokenizer, text)
    keep = len(ids)
    while keep > 0:
        kept = tokenizer.decode(ids[len(ids) - keep :])
        over = excess(kept)
        if over <= 0:
            return kept
        keep -= over  # decoding then encoding again can merge tokens differently: measure again
    return None


def truncate_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Any, max_prompt_length: int) -> Any | None:
    """The end of a prompt that fits `max_prompt_length` tokens (see the module's docstring), or None."""

    def excess(p: Any) -> int:
        return prompt_lengths(tokenizer, [p])[0] - max_prompt_length

    if isinstance(prompt, str):
        return _keep_end(tokenizer, prompt, excess)
    system = [m for m in prompt[:1] if m["role"] == "system"]
    turns = list(prompt[len(system) :])
    while len(turns) > 1 and excess(system + turns) > 0:
        turns = turns[1:]
        while turns[0]["role"] != "user":  # the last turn is a user turn: this stops there at the latest
            turns = turns[1:]
    if excess(system + turns) <= 0:
        return system + turns
    last = turns[-1]
    content = _keep_end(tokenizer, last["content"], lambda text: excess(system + [{**last, "content": text}]))
    return None if content is None or not content.strip() else system + [{**last, "content": content}]
