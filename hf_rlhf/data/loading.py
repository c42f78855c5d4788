"""Loading a stage's dataset the way `datasets` users and TRL's scripts do.

A dataset is read by `datasets.load_dataset` (a Hub dataset id, a local folder laid out as a Hub dataset repo, a
data file) or `datasets.load_from_disk` (a `save_to_disk` directory), so a repo's configurations (the dataset card's
`configs:` with their `data_files`), the Hub's split-name conventions, `data_dir` subsets and json / jsonl(.gz) /
csv / parquet / arrow / text files all work as they do upstream, and only the chosen configuration's files are
downloaded. A Hub dataset is first pinned to the commit its revision points to (`hf_rlhf.hub.resolve_commit`), that
commit is loaded, and the stage's manifest records it; with `HF_HUB_OFFLINE=1` both come from the cache.

A stage reads one dataset (`dataset_name`, `dataset_config`, `dataset_data_dir`, `dataset_data_files`,
`dataset_train_split` / `dataset_test_split`) or a mixture (`datasets:`, the entries of TRL's
`DatasetMixtureConfig`: `path`, `name`, `data_dir`, `data_files`, `split`, `columns`, `fraction`, plus `revision`
and `test_split`), concatenated into one train split (and one test split from the entries that have one). With
`fraction`s, as in TRL's `get_dataset`, the fractions are normalised and each dataset contributes its first
`round(fraction * N)` rows, `N` the largest mixture size that oversamples none.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from typing import Any

from datasets import (
    Dataset,
    DatasetDict,
    IterableDataset,
    IterableDatasetDict,
    concatenate_datasets,
    load_dataset,
    load_dataset_builder,
    load_from_disk,
)
from huggingface_hub import DatasetCard, constants, snapshot_download

from ..configs import DataArguments
from ..errors import DataValidationError, HubInputError
from ..hub.resolve import ResolvedInput, is_hub_id, resolve_commit

logger = logging.getLogger(__name__)

# Data file extensions -> the `datasets` builder that reads them (compressed files are read as `datasets` does).
FILE_BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".jsonl.gz": "json",
    ".json.gz": "json",
    ".csv": "csv",
    ".csv.gz": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".txt": "text",
}


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


# ------------------------------------------------------------------------------------------------ sources
@dataclass(frozen=True)
class DatasetSource:
    """One dataset a stage reads: `datasets.load_dataset`'s arguments (TRL's `DatasetConfig`), plus the revision
    and the held-out split."""

    path: str
    name: str | None = None
    data_dir: str | None = None
    data_files: Any = None
    split: str = "train"
    test_split: str | None = "test"
    columns: list[str] | None = None
    fraction: float | None = None
    revision: str | None = None

    def describe(self) -> str:
        """How errors name it: `dataset 'org/name' (config 'x', data_dir 'y')`."""
        parts = [f"{key} '{value}'" for key, value in (("config", self.name), ("data_dir", self.data_dir)) if value]
        return f"dataset '{self.path}'" + (f" ({', '.join(parts)})" if parts else "")


SOURCE_KEYS = tuple(f.name for f in fields(DatasetSource))


def dataset_sources(data_args: DataArguments) -> list[DatasetSource]:
    """The datasets a stage reads: its `datasets:` mixture, else the one `dataset_name`. Every entry is checked
    before anything is read (unknown keys, missing `path`, fractions set for all entries or none)."""
    if data_args.datasets is None:
        if not data_args.dataset_name:
            raise DataValidationError("no dataset given: set `dataset_name` (or `datasets`) in the recipe")
        return [
            DatasetSource(
                path=data_args.dataset_name,
                name=data_args.dataset_config,
                data_dir=data_args.dataset_data_dir,
                data_files=data_args.dataset_data_files,
                split=data_args.dataset_train_split,
                test_split=data_args.dataset_test_split,
            )
        ]
    sources = []
    for index, entry in enumerate(data_args.datasets):
        where = f"`datasets` entry {index}"
        if not isinstance(entry, dict) or not entry.get("path"):
            raise DataValidationError(f"{where}: expected a mapping with at least `path`, got {entry!r}")
        unknown = sorted(set(entry) - set(SOURCE_KEYS))
        if unknown:
            raise DataValidationError(
                f"{where}: unknown key(s) {', '.join(unknown)}; expected {', '.join(SOURCE_KEYS)}"
            )
        fraction = entry.get("fraction")
        if fraction is not None and (
            not isinstance(fraction, int | float) or isinstance(fraction, bool) or fraction <= 0
        ):
            raise DataValidationError(f"{where}: `fraction` must be a positive number, got {fraction!r}")
        if entry.get("columns") is not None and not (
            isinstance(entry["columns"], list) and all(isinstance(c, str) for c in entry["columns"])
        ):
            raise DataValidationError(f"{where}: `columns` must be a list of column names, got {entry['columns']!r}")
        sources.append(DatasetSource(**{"test_split": data_args.dataset_test_split, **entry}))
    with_fraction = [s.fraction is not None for s in sources]
    if any(with_fraction) and not all(with_fraction):
        raise DataValidationError("`datasets`: set `fraction` on every entry of the mixture or on none (as in TRL)")
    return sources


def resolve_dataset(source: DatasetSource | DataArguments | str) -> ResolvedInput | dict[str, Any]:
    """Where a dataset input comes from, for the manifest: a local path as is, or a Hub dataset pinned to a commit.

    A mixture (`DataArguments` with `datasets:`) gives `{"name": "mixture", "datasets": [ResolvedInput, ...]}`.
    """
    if isinstance(source, DataArguments):
        sources = dataset_sources(source)
        if source.datasets is None:
            return resolve_dataset(sources[0])
        return {"name": f"mixture of {len(sources)} datasets", "datasets": [resolve_dataset(s) for s in sources]}
    if isinstance(source, str):
        source = DatasetSource(path=source)
    if not is_hub_id(source.path):
        return ResolvedInput(path=source.path, repo_type="dataset")
    try:
        return resolve_commit(source.path, source.revision, repo_type="dataset", what="dataset")
    except HubInputError as e:
        raise DataValidationError(str(e)) from None


def is_saved_dataset(path: str) -> bool:
    """A directory written by `Dataset.save_to_disk` or `DatasetDict.save_to_disk`."""
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, f)) for f in ("dataset_dict.json", "state.json")
    )


def file_builder(path: str) -> str | None:
    """The `datasets` builder of a data file, by extension (None: not a data file `datasets` reads)."""
    return next((b for ext, b in sorted(FILE_BUILDERS.items(), key=lambda e: -len(e[0])) if path.endswith(ext)), None)


def read_source(source: DatasetSource, streaming: bool = False) -> DatasetDict | IterableDatasetDict:
    """Every split of one dataset, read as `datasets` reads it (the configuration, data_dir and data_files given)."""
    path, where = source.path, source.describe()
    if os.path.isfile(path):
        if os.path.getsize(path) == 0:
            raise DataValidationError(f"{where} is an empty file")
        builder = file_builder(path)
        if builder is None:
            raise DataValidationError(
                f"{where}: unknown data file extension; expected one of {', '.join(FILE_BUILDERS)}"
            )
        return _read(where, lambda: load_dataset(builder, data_files={source.split: path}, streaming=streaming))
    if is_saved_dataset(path):
        if source.name or source.data_dir or source.data_files:
            raise DataValidationError(
                f"{where} is a `save_to_disk` directory: it has no configurations, data_dir or data_files to choose"
            )
        data = _read(where, lambda: load_from_disk(path))
        data = data if isinstance(data, DatasetDict) else DatasetDict({source.split: data})
        return data.to_iterable_dataset() if streaming else data  # type: ignore[return-value]
    if not os.path.isdir(path) and not is_hub_id(path):
        raise DataValidationError(
            f"{where} does not exist: expected a Hub dataset id 'org/name[@revision]', a dataset folder, a data file "
            f"({', '.join(FILE_BUILDERS)}) or a `save_to_disk` directory"
        )
    kwargs: dict[str, Any] = {"name": source.name, "data_dir": source.data_dir, "data_files": source.data_files}
    repo = path
    if is_hub_id(path):
        resolved = resolve_dataset(source)
        if constants.HF_HUB_OFFLINE and source.data_files is None:
            repo, kwargs = _cached_snapshot(resolved, source, where)
        else:
            repo, kwargs["revision"] = resolved.repo_id, resolved.commit
    if not streaming and source.data_files is None:
        kwargs = _only_used_splits(repo, kwargs, source, where)
    return _read(where, lambda: load_dataset(repo, streaming=streaming, **kwargs))


def _cached_snapshot(resolved: ResolvedInput, source: DatasetSource, where: str) -> tuple[str, dict[str, Any]]:
    """Offline: the files of the pinned commit that an earlier run downloaded (the Hub cache keeps them by commit),
    read as a local folder with the chosen configuration's `data_files` from its card. `datasets`' own offline
    fallback would return whichever commit it prepared last."""
    try:
        folder = snapshot_download(
            resolved.repo_id, repo_type="dataset", revision=resolved.commit, local_files_only=True
        )
    except Exception:  # nothing of this commit is cached
        raise DataValidationError(
            f"{where}: HF_HUB_OFFLINE is set and commit {resolved.commit} of the Hub dataset '{resolved.repo_id}' is "
            "not in the cache: load it once online (not streamed), or unset HF_HUB_OFFLINE"
        ) from None
    card = os.path.join(folder, "README.md")
    configs = (DatasetCard.load(card).data.get("configs") or []) if os.path.isfile(card) else []
    if not configs:
        return folder, {"data_dir": source.data_dir}
    wanted = source.name or next((c["config_name"] for c in configs if c.get("default")), None) or "default"
    config = next((c for c in configs if c.get("config_name") == wanted), configs[0] if len(configs) == 1 else None)
    if config is None:
        raise DataValidationError(
            f"{where} has no configuration '{wanted}' (configurations: {', '.join(c['config_name'] for c in configs)})"
        )
    files = config.get("data_files") or "**"
    if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
        files = [{"split": "train", "path": files}]
    used = (source.split, source.test_split)  # only those were downloaded
    data_files = {f["split"]: f["path"] for f in files if f["split"] in used or len(files) == 1}
    return folder, {"data_dir": config.get("data_dir") or source.data_dir, "data_files": data_files}


def _only_used_splits(repo: str, kwargs: dict[str, Any], source: DatasetSource, where: str) -> dict[str, Any]:
    """`load_dataset` prepares every split of a configuration, so it would download UltraChat's `train_gen` and
    `test_gen` to train on `train_sft`: name the data files of the splits the stage reads instead (the
    configuration's own, as `datasets.load_dataset_builder` resolves them from the card; nothing is downloaded)."""
    builder = _read(where, lambda: load_dataset_builder(repo, **kwargs))
    files = builder.config.data_files or {}
    used = [split for split in dict.fromkeys((source.split, source.test_split)) if split in files]
    if source.split not in files or len(used) == len(files):
        return kwargs
    return {"revision": kwargs.get("revision"), "data_files": {split: list(files[split]) for split in used}}


def _read(where: str, load):
    try:
        return load()
    except DataValidationError:
        raise
    except Exception as e:  # datasets and pyarrow raise many types for missing, malformed or empty data
        message = str(e).split("\n")[0]
        raise DataValidationError(f"{where} could not be read: {type(e).__name__}: {message}") from e


# ---------------------------------------------------------------------------------------------- the stage's data
def _pick(data: DatasetDict | IterableDatasetDict, source: DatasetSource) -> tuple[Any, Any]:
    """(train, test or None) of one source, with its `columns` selected."""
    where = source.describe()
    if source.split not in data:
        raise DataValidationError(
            f"{where} has no split '{source.split}' (splits: {', '.join(data)}): set dataset_train_split "
            "(or the entry's `split`)"
        )
    train, test = data[source.split], data.get(source.test_split) if source.test_split else None
    if source.columns:
        columns = train.column_names or []
        missing = [c for c in source.columns if columns and c not in columns]
        if missing:
            raise DataValidationError(f"{where}: `columns` names {missing}, not in its columns {columns}")
        train = train.select_columns(source.columns)
        test = test.select_columns(source.columns) if test is not None else None
    return train, test


def _mix(parts: list[Any], sources: list[DatasetSource], split: str) -> Any:
    """The parts concatenated; their columns must agree (`datasets` would fill the missing ones with nulls)."""
    if len(parts) == 1:
        return parts[0]
    shapes = "; ".join(f"{s.describe()}: {p.column_names}" for s, p in zip(sources, parts, strict=True))
    problem = "columns" if len({tuple(sorted(p.column_names or [])) for p in parts}) > 1 else None
    if problem is None:
        try:
            return concatenate_datasets(parts)
        except ValueError:
            pass
        try:  # same columns, types that differ only in layout (e.g. a struct's field order): the first's types
            return concatenate_datasets([parts[0], *(p.cast(parts[0].features) for p in parts[1:])])
        except (ValueError, TypeError) as e:
            problem = f"column types ({str(e).splitlines()[0]})"
    raise DataValidationError(
        f"`datasets`: the {split} splits of the mixture have different {problem}: {shapes}; select the same "
        "columns with each entry's `columns`"
    )


def load_stage_dataset(
    data_args: DataArguments, seed: int = 42, *, allow_streaming: bool = False
) -> DatasetDict | IterableDatasetDict:
    """The stage's data as a `DatasetDict` with `train` and, when there is one, `test`.

    A dataset without the test split gets one carved from the train split (`eval_split_size`, seeded), except when
    streaming (`dataset_streaming`: an `IterableDatasetDict`, test split only if the dataset has one).
    `max_train_samples` caps the train split. Only the pretraining stage streams (`allow_streaming`).
    """
    sources = dataset_sources(data_args)
    streaming = bool(data_args.dataset_streaming)
    if streaming and not allow_streaming:
        raise DataValidationError(
            "dataset_streaming is for pretraining corpora: this stage checks and counts every row before training, "
            "so it reads its dataset whole (leave dataset_streaming unset)"
        )
    if streaming and any(s.fraction is not None for s in sources):
        raise DataValidationError("`datasets`: `fraction` needs the datasets' sizes, so it cannot be used streaming")
    trains, tests, test_sources = [], [], []
    for source in sources:
        train, test = _pick(read_source(source, streaming), source)
        if not streaming and len(train) == 0:
            raise DataValidationError(f"{source.describe()}, split '{source.split}' is empty")
        trains.append(train)
        if test is not None and (streaming or len(test) > 0):
            tests.append(test)
            test_sources.append(source)
    if sources[0].fraction is not None:
        weights = [s.fraction / sum(x.fraction for x in sources) for s in sources]
        total = min(len(t) / w for t, w in zip(trains, weights, strict=True))
        trains = [t.select(range(round(w * total))) for t, w in zip(trains, weights, strict=True)]
        for source, t in zip(sources, trains, strict=True):
            logger.info("mixture: %d rows of %s", len(t), source.describe())
    train = _mix(trains, sources, "train")
    test = _mix(tests, test_sources, "test") if tests else None
    if streaming:
        if data_args.max_train_samples is not None:
            train = train.take(data_args.max_train_samples)
        return IterableDatasetDict({"train": train, **({"test": test} if test is not None else {})})
    if test is None and data_args.eval_split_size > 0 and len(train) >= 2:
        split = train.train_test_split(test_size=data_args.eval_split_size, seed=seed)
        train, test = split["train"], split["test"]
    if data_args.max_train_samples is not None:
        train = train.select(range(min(data_args.max_train_samples, len(train))))
    out = DatasetDict({"train": train})
    if test is not None and len(test) > 0:
        out["test"] = test
    return out


def dataset_label(data_args: DataArguments) -> str:
    """How errors and logs name a stage's data: `dataset 'x'` or `mixture of N datasets`."""
    if data_args.datasets is not None:
        return f"mixture of {len(data_args.datasets)} datasets"
    return f"dataset '{data_args.dataset_name}'"


def dataset_fingerprint(dataset: Dataset | IterableDataset) -> str | None:
    """The `datasets` fingerprint: changes whenever the data or its processing does (None when streaming)."""
    return getattr(dataset, "_fingerprint", None)
