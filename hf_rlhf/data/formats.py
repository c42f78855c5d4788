"""Loading a stage's dataset and checking it before any training starts.

Formats follow TRL's dataset format table: language modeling (`text`), prompt-completion (`prompt`, `completion`),
conversational language modeling (`messages`) and conversational prompt-completion (`prompt` and `completion` as
lists of `{"role", "content"}` messages). A dataset is a `save_to_disk` directory, a data file, or a Hub dataset repo
`org/name[@revision]` (through `hf_rlhf.hub`, parquet as the Hub stores it). Every error names the dataset, the
split, the row, the column and what was expected, and is raised before a model is loaded.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from ..configs import DataArguments
from ..errors import DataValidationError, HubInputError
from ..hub.resolve import ResolvedInput, is_hub_id, resolve_input

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
MAX_REPORTED_ERRORS = 5



@dataclass
class DropReport:
    """Rows a stage dropped on purpose, counted by reason, so nothing disappears silently."""

    counts: dict[str, int]

    def total(self) -> int:
        return sum(self.counts.values())


def load_stage_dataset(data_args: DataArguments, seed: int = 42) -> DatasetDict:
    """Load `data_args.dataset_name` as a `DatasetDict` with the train split and, when possible, the test split.

    A dataset without the test split gets one carved from the train split (`eval_split_size`, seeded).
    """
    name = data_args.dataset_name
    if not name:
        raise DataValidationError("no dataset given: set `dataset_name` in the recipe or with --dataset_name")
    if os.path.isfile(name) and os.path.getsize(name) == 0:
        raise DataValidationError(f"dataset '{name}' is an empty file")
    if is_hub_id(name):
        data = _read(name, lambda: load_snapshot(hub_dataset_dir(name), data_args.dataset_train_split))
    elif os.path.isdir(name):
        data = _read(name, lambda: load_snapshot(name, data_args.dataset_train_split))
    elif os.path.isfile(name):
        ext = next((e for e in FILE_BUILDERS if name.endswith(e)), None)
        if ext is None:
            raise DataValidationError(
                f"dataset file '{name}' has an unknown extension; expected one of {', '.join(FILE_BUILDERS)}"
            )
        data = _read(name, lambda: load_dataset(FILE_BUILDERS[ext], data_files={data_args.dataset_train_split: name}))
    else:
        raise DataValidationError(
            f"dataset '{name}' does not exist: expected a `save_to_disk` directory, a data file "
            f"({', '.join(FILE_BUILDERS)}) or a Hub dataset repo id 'org/name[@revision]'"
        )
    if data_args.dataset_train_split not in data:
        raise DataValidationError(
            f"dataset '{name}' has no split '{data_args.dataset_train_split}' (splits: {', '.join(data)})"
        )
    train = data[data_args.dataset_train_split]
    if len(train) == 0:
        raise DataValidationError(f"dataset '{name}', split '{data_args.dataset_train_split}' is empty")
    test = data.get(data_args.dataset_test_split)
    if test is None and data_args.eval_split_size > 0 and len(train) >= 2:
        split = train.train_test_split(test_size=data_args.eval_split_size, seed=seed)
        train, test = split["train"], split["test"]
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    out = DatasetDict({"train": train})
    if test is not None and len(test) > 0:
        out["test"] = test
    return out


def _read(name: str, load):
    try:
        return load()
    except DataValidationError:
        raise
    except Exception as e:  # pyarrow and datasets raise many types for malformed or empty files
        raise DataValidationError(f"dataset '{name}' could not be read: {type(e).__name__}: {e}") from e


def resolve_dataset(name: str) -> ResolvedInput:
    """A dataset input as a `ResolvedInput`: a local file or directory as is, or the snapshot of a Hub dataset repo
    `org/name[@revision]` with its exact commit (for the stage's manifest)."""
    try:
        return resolve_input(name, repo_type="dataset", what="dataset")
    except HubInputError as e:
        raise DataValidationError(str(e)) from None


def hub_dataset_dir(name: str) -> str:
    """The local snapshot of a Hub dataset repo `org/name[@revision]`."""
    return resolve_dataset(name).path


def load_snapshot(directory: str, train_split: str = "train") -> DatasetDict:
    """A dataset directory: written by `save_to_disk`, or laid out as the Hub stores datasets (parquet files,
    `data/<split>-00000-of-00001.parquet`, as `hf_rlhf.hub` pushes them)."""
    if os.path.isfile(os.path.join(directory, "dataset_dict.json")) or os.path.isfile(
        os.path.join(directory, "state.json")
    ):
        data = load_from_disk(directory)
        return data if isinstance(data, DatasetDict) else DatasetDict({train_split: data})
    files = sorted(glob.glob(os.path.join(directory, "**", "*.parquet"), recursive=True))
    if not files:
        raise DataValidationError(f"dataset '{directory}' holds neither a `save_to_disk` dataset nor parquet files")
    splits: dict[str, list[str]] = {}
    for path in files:
        splits.setdefault(re.split(r"[-.]", os.path.basename(path))[0], []).append(path)
    return load_dataset("parquet", data_files=splits)


def dataset_fingerprint(dataset: Dataset) -> str:
    """The `datasets` fingerprint: changes whenever the data or its processing does."""
    return dataset._fingerprint


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
    (("prompt-completion", ("prompt", "completion")), ("conversational", ("messages",)), ("language-modeling", ("text",)))
)
REFERENCE_FORMATS = Formats(SFT_FORMATS.options[:2])  # the reward stage's centring set: demonstrations
PROMPT_FORMATS = Formats((("prompt-only", ("prompt",)),))  # sample and rl
PREFERENCE_FORMATS = Formats(
    (("ranked", ("prompt", "completions", "ranking")), ("pairwise", ("chosen", "rejected"))),
    expected="('chosen', 'rejected') with optional 'prompt' and 'margin', or ('prompt', 'completions', 'ranking')",
)


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
    errors = _Errors(where)
    if fmt == "prompt-completion":
        for i, (prompt, completion) in enumerate(zip(dataset["prompt"], dataset["completion"], strict=True)):
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
    return fmt


def is_conversational_dataset(dataset: Dataset) -> bool:
    row = dataset[0]
    return any(isinstance(row.get(c), list) for c in ("prompt", "completion", "messages"))
