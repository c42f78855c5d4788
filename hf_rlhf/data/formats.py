"""Checking a stage's dataset before any training starts: the one format detector (`Formats.detect`) and the row
checks. Loading is `hf_rlhf.data.loading`.

Formats follow TRL's dataset format table: language modeling (`text`), prompt-completion (`prompt`, `completion`),
conversational language modeling (`messages`) and conversational prompt-completion (`prompt` and `completion` as
lists of `{"role", "content"}` messages). Every error names the dataset, the
split, the row, the column and what was expected, and is raised before a model is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from datasets import Dataset

from ..errors import DataValidationError

MAX_REPORTED_ERRORS = 5


# ------------------------------------------------------------------------------------------------- checks
class _Errors:
    def __init__(self, where: str):
        self.where, self.items, self.count = where, [], 0

    def add(self, row: int, column: str, expected: str, got) -> None:
        self.count += 1
        if len(self.items) < MAX_REPORTED_ERRORS:
            shown = repr(got)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            self.items.append(f"row {row}, column '{column}': expected {expected}, got {shown}")

    def raise_if_any(self) -> None:
        if self.count:
            more = f" (and {self.count - len(self.items)} more)" if self.count > len(self.items) else ""
            raise DataValidationError(f"{self.where}: " + "; ".join(self.items) + more)


@dataclass(frozen=True)
class Formats:
    """The column sets a stage accepts, in the order its format detection tries them: (format, columns) pairs.

    Detection reads column names only, so the dry run (`hf_rlhf.plan`) calls it on a dataset's known columns and
    finds the format the run will find.
    """

    options: tuple[tuple[str, tuple[str, ...]], ...]
    expected: str | None = None  # how an error describes what is accepted; default the column sets

    def detect(self, columns: list[str], where: str) -> tuple[str, tuple[str, ...]]:
        """(format, the columns it reads) of the first option whose columns are all present, else an error."""
        for name, needed in self.options:
            if all(c in columns for c in needed):
                return name, needed
        raise DataValidationError(f"{where}: expected columns {self.describe()}, found {list(columns)}")

    def describe(self) -> str:
        return self.expected or " or ".join("(" + ", ".join(f"'{c}'" for c in cols) + ")" for _, cols in self.options)


SFT_FORMATS = Formats(
    (
        ("prompt-completion", ("prompt", "completion")),
        ("conversational", ("messages",)),
        ("language-modeling", ("text",)),
    )
)
REFERENCE_FORMATS = Formats(SFT_FORMATS.options[:2])  # the reward stage's centring set: demonstrations
PROMPT_FORMATS = Formats((("prompt-only", ("prompt",)),))  # sample and rl
PREFERENCE_FORMATS = Formats(
    (
        ("ranked", ("prompt", "completions", "ranking")),
        ("rated", ("instruction", "completions")),
        ("pairwise", ("chosen", "rejected")),
    ),
    expected="('chosen', 'rejected') with optional 'prompt' and 'margin', ('prompt', 'completions', 'ranking'), "
    "or ('instruction', 'completions') with rated completions (openbmb/UltraFeedback); per-response score columns "
    "need `score_columns`",
)
SCORED_PROMPT_COLUMNS = ("prompt", "history", "instruction")  # where a `score_columns` dataset keeps its prompt
HH_RLHF = "hh-rlhf"  # `dataset_format` of Anthropic/hh-rlhf's "\n\nHuman: ... \n\nAssistant: ..." dialogues
PREFERENCE_DATASET_FORMATS = (HH_RLHF, "ranked", "pairwise", "rated", "scored")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def preference_formats(dataset_format: str | None = None, score_columns: dict[str, str] | None = None) -> Formats:
    """The comparison formats the reward stage accepts under its options, in detection order.

    `score_columns` ({response column: score column}) makes the data 'scored', with its prompt in the first of
    `SCORED_PROMPT_COLUMNS` present. `dataset_format` forces one format ('hh-rlhf' is 'pairwise' rows parsed as
    dialogues); unset, the columns decide.
    """
    if dataset_format is not None and dataset_format not in PREFERENCE_DATASET_FORMATS:
        raise DataValidationError(
            f"dataset_format '{dataset_format}' is not a comparison format: expected one of "
            f"{', '.join(PREFERENCE_DATASET_FORMATS)} (or unset, to detect it from the columns)"
        )
    if score_columns or dataset_format == "scored":
        if not score_columns or dataset_format not in (None, "scored"):
            raise DataValidationError(
                "the 'scored' format needs `score_columns` ({response column: score column}) and no other "
                f"dataset_format (got dataset_format={dataset_format!r}, score_columns={score_columns!r})"
            )
        scored = tuple(c for pair in score_columns.items() for c in pair)
        return Formats(
            tuple(("scored", (prompt, *scored)) for prompt in SCORED_PROMPT_COLUMNS),
            expected=f"{list(scored)} (score_columns) and a prompt column, one of {list(SCORED_PROMPT_COLUMNS)}",
        )
    if dataset_format is None:
        return PREFERENCE_FORMATS
    name = "pairwise" if dataset_format == HH_RLHF else dataset_format
    options = tuple(option for option in PREFERENCE_FORMATS.options if option[0] == name)
    hh = "('chosen', 'rejected') dialogues '\\n\\nHuman: ... \\n\\nAssistant: ...' (dataset_format hh-rlhf)"
    return Formats(options, expected=hh if dataset_format == HH_RLHF else None)


def preference_format(
    columns: list[str] | Dataset,
    where: str,
    dataset_format: str | None = None,
    score_columns: dict[str, str] | None = None,
) -> str:
    """The reward stage's one format detector, used by the run and the dry run alike: 'ranked', 'pairwise', 'rated'
    or 'scored', from column names (or a dataset's) and the options of `preference_formats`; else an error."""
    names = columns.column_names if isinstance(columns, Dataset) else list(columns)
    return preference_formats(dataset_format, score_columns).detect(names, where)[0]


def parse_hh_dialogue(text: Any) -> list[dict[str, str]] | None:
    """An Anthropic/hh-rlhf dialogue ("\\n\\nHuman: ...\\n\\nAssistant: ...", multi-turn) as messages, or None when
    the text is not one: turns must alternate from a Human turn to a final Assistant turn."""
    if not isinstance(text, str):
        return None
    parts = _HH_TURN.split("\n\n" + text.lstrip("\n"))
    if parts[0] or len(parts) < 5:  # text before the first turn, or fewer than two turns
        return None
    roles, contents = parts[1::2], parts[2::2]
    if any(role != ("Human", "Assistant")[i % 2] for i, role in enumerate(roles)) or roles[-1] != "Assistant":
        return None
    return [{"role": _HH_ROLES[r], "content": c.strip()} for r, c in zip(roles, contents, strict=True)]


def text_formats(column: str = "text") -> Formats:
    """Pretraining data: one text column (`text_column`)."""
    return Formats((("language-modeling", (column,)),))


def sft_ignored_columns(fmt: str, columns: list[str]) -> list[str]:
    """Columns the SFT stage drops before training: TRL's `SFTTrainer` tokenizes any row with a `prompt` as
    prompt-completion, so a `prompt` beside `messages` or `text` (UltraChat's layout) would fail for want of a
    `completion`."""
    return ["prompt"] if fmt != "prompt-completion" and "prompt" in columns else []


def check_text_dataset(dataset: Dataset, where: str, column: str = "text") -> int:
    """Pretraining data: a string column. Returns the number of empty documents (the caller drops and counts them)."""
    text_formats(column).detect(dataset.column_names, where)
    errors, empty = _Errors(where), 0
    for i, text in enumerate(dataset[column]):
        if not isinstance(text, str):
            errors.add(i, column, "a string", text)
        elif not text.strip():
            empty += 1
    errors.raise_if_any()
    return empty


def _check_messages(value, row: int, column: str, errors: _Errors, last_role: str | None = None) -> None:
    if not isinstance(value, list) or not value:
        errors.add(row, column, "a non-empty list of {'role', 'content'} messages", value)
        return
    for m in value:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            errors.add(row, column, "messages with string 'role' and 'content'", m)
            return
    if last_role and value[-1]["role"] != last_role:
        errors.add(row, column, f"the last message from '{last_role}'", value[-1])
    elif last_role and not value[-1]["content"].strip():
        errors.add(row, column, f"a non-empty '{last_role}' message", value[-1]["content"])


def sft_format(dataset: Dataset, where: str) -> str:
    """Detect the SFT format: 'prompt-completion', 'conversational' (messages) or 'language-modeling' (text)."""
    return SFT_FORMATS.detect(dataset.column_names, where)[0]


def check_sft_dataset(dataset: Dataset, where: str) -> str:
    """Check every row of an SFT dataset; return its format. Empty responses are errors, not silent drops."""
    fmt = sft_format(dataset, where)
    errors, kinds = _Errors(where), {"text": [], "messages": []}
    if fmt == "prompt-completion":
        for i, (prompt, completion) in enumerate(zip(dataset["prompt"], dataset["completion"], strict=True)):
            kinds["messages" if isinstance(prompt, list) or isinstance(completion, list) else "text"].append(i)
            if isinstance(prompt, list) or isinstance(completion, list):
                _check_messages(prompt, i, "prompt", errors)
                _check_messages(completion, i, "completion", errors, last_role="assistant")
            else:
                if not isinstance(prompt, str):
                    errors.add(i, "prompt", "a string or a list of messages", prompt)
                if not isinstance(completion, str) or not completion.strip():
                    errors.add(i, "completion", "a non-empty string", completion)
    elif fmt == "conversational":
        for i, messages in enumerate(dataset["messages"]):
            _check_messages(messages, i, "messages", errors, last_role="assistant")
    else:
        for i, text in enumerate(dataset["text"]):
            if not isinstance(text, str) or not text.strip():
                errors.add(i, "text", "a non-empty string", text)
    errors.raise_if_any()
    check_one_kind(kinds, where)
    return fmt


def check_one_kind(kinds: dict[str, list[int]], where: str) -> None:
    """Refuse prompt-completion rows that mix plain text and conversations (a `json` dataset can hold both): text
    rows train as `prompt + completion`, message rows through the chat template, so the rows would be trained two
    different ways (and TRL's `SFTTrainer` picks its formatting by the first row)."""
    text, messages = kinds["text"], kinds["messages"]
    if text and messages:
        shown = ", ".join(map(str, messages[:MAX_REPORTED_ERRORS])) + (
            ", ..." if len(messages) > MAX_REPORTED_ERRORS else ""
        )
        raise DataValidationError(
            f"{where}: columns 'prompt' and 'completion' mix plain text ({len(text)} rows, first: row {text[0]}) and "
            f"lists of messages ({len(messages)} rows: {shown}); every row must be of one kind: convert the text "
            "rows to [{'role', 'content'}] messages, or the message rows to text"
        )


def is_conversational_dataset(dataset: Dataset) -> bool:
    row = dataset[0]
    return any(isinstance(row.get(c), list) for c in ("prompt", "completion", "messages"))
