"""Loading a stage's dataset: Hub ids, local dataset folders and files through `datasets.load_dataset`,
`save_to_disk` directories through `datasets.load_from_disk`, and TRL-style mixtures of several datasets.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from ..configs import DataArguments
from ..errors import DataValidationError, HubInputError
from ..hub.resolve import ResolvedInput, is_hub_id, resolve_input

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def row_counts(
    used: int,
    dropped: dict[str, int] | None = None,
    truncated: dict[str, int] | None = None,
    converted: dict[str, int] | None = None,
) -> dict[str, Any]:
    """What a stage did to the rows of one split, for its manifest (`metrics["rows"][split]`): rows used, and rows
    dropped, truncated or converted, each counted by reason. Zero counts are left out."""
    out: dict[str, Any] = {"used": used}
    for key, counts in (("dropped", dropped), ("truncated", truncated), ("converted", converted)):
        kept = {reason: n for reason, n in (counts or {}).items() if n}
        if kept:
            out[key] = kept
    return out


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


