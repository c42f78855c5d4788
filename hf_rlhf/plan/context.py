"""What a stage's `plan(...)` sees (`Context`) and returns (`StagePlan`; a pipeline's: `PipelinePlan`), and the
dataset row of a plan.

The dataset row reads what is known of a dataset's columns and splits without loading it (the tiny world's table in
`hf_rlhf.data.world`, an upstream `sample` stage, a local `save_to_disk` directory, or the public datasets of
`hf_rlhf.plan.known_models`) and runs the stage's own format detection (`hf_rlhf.data.formats.Formats`) on them, so
the dry run finds the format, or the error, that the run will.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

from ..data.formats import DataValidationError, Formats
from ..data.loading import DatasetSource, dataset_sources, is_saved_dataset, read_source
from ..data.world import WORLD_DATASETS
from . import DryRunError
from .architecture import Architecture, architecture, parse_hub_id
from .known_models import DATASETS
from .launch import Launch, shown
from .memory import FORMULA, MemoryEstimate, Role

HEADER = "no weights downloaded or built"  # what every dry run's first line says
FORMAT_LABELS = {"pairwise": "pairwise preference", "language-modeling": "language modeling"}  # as printed
SAMPLE_COLUMNS = ["prompt", "completions", "ranking"]  # what `hf-rlhf sample` writes


@dataclass
class StagePlan:
    """What one stage will do, as printed: rows of (label, text), its models, the memory estimate and notes."""

    stage: str
    argv: list[str] = field(default_factory=list)
    rows: list[tuple[str, str]] = field(default_factory=list)
    roles: list[Role] = field(default_factory=list)
    memory: MemoryEstimate | None = None
    notes: list[str] = field(default_factory=list)
    produces: Architecture | None = None  # the model the next stage reads
    extra: dict[str, Any] = field(default_factory=dict)

    def format(self) -> str:
        lines = [f"[{self.stage}] hf-rlhf {self.stage} {' '.join(shown(a) if os.sep in a else a for a in self.argv)}"]
        rows = list(self.rows)
        if self.roles:
            rows.append(("models", "; ".join(r.describe() for r in self.roles)))
        if self.memory is not None:
            rows.append(("memory/GPU", self.memory.summary()))
        rows += [("note", n) for n in self.notes]
        width = max(len(label) for label, _ in rows) if rows else 0
        lines += [f"  {label:<{width}}  {text}" for label, text in rows]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "argv": self.argv,
            "rows": dict(self.rows),
            "memory": self.memory.to_dict() if self.memory else None,
            "notes": self.notes,
        }


@dataclass
class Context:
    """What a stage's plan can see: the launch, the pipeline's upstream outputs and the tiny world's datasets."""

    launch: Launch
    outputs: dict[str, StagePlan] = field(default_factory=dict)  # output dir -> the stage that writes it
    world: dict[str, str] = field(default_factory=dict)  # directory -> tiny-world dataset name

    def model(self, name: str | None, what: str, revision: str | None = None) -> tuple[Architecture, str]:
        """(architecture, description) of a model input: an upstream stage's output, a directory or a Hub id."""
        if not name:
            raise DryRunError(f"no {what}: set it in the recipe or pass it on the command line")
        upstream = self.outputs.get(os.path.normpath(name))
        if upstream is not None:
            if upstream.produces is None:
                raise DryRunError(f"stage '{upstream.stage}' produces no model for the {what}")
            arch = upstream.produces
            return arch, f"{name}: output of stage '{upstream.stage}' ({arch.label()})"
        arch = architecture(name, revision)
        return arch, arch.label()


@dataclass
class PipelinePlan:
    recipe: str
    output_dir: str
    launch: Launch
    stages: list[StagePlan]
    world: str | None = None
    hub: str | None = None

    def format(self) -> str:
        lines = [
            f"hf-rlhf dry run of {shown(self.recipe)}: {HEADER}",
            f"launch      {self.launch.describe()}",
            f"output_dir  {self.output_dir}",
        ]
        if self.world:
            lines.append(f"world       {self.world}")
        if self.hub:
            lines.append(f"hub         {self.hub}")
        lines += ["", *("\n".join([s.format(), ""]) for s in self.stages), FORMULA]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "output_dir": self.output_dir,
            "launch": dataclasses.asdict(self.launch),
            "stages": [s.to_dict() for s in self.stages],
        }


def _accepts(formats: Formats | None) -> str:
    return " or ".join("(" + ", ".join(cols) + ")" for _, cols in (formats.options if formats else ()))


def describe_data(data_args: Any, ctx: Context, formats: Formats | None, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    """`describe_dataset` of a stage's `DataArguments` (its one dataset, or each dataset of its `datasets:`
    mixture, whose columns must then agree); `kwargs` override the split names."""
    sources = dataset_sources(data_args) if data_args.dataset_name or data_args.datasets else [None]
    texts, infos = [], []
    for source in sources:
        if source is None:
            return describe_dataset(None, ctx, formats)
        options = {
            "config": source.name,
            "train_split": source.split,
            "test_split": source.test_split,
            "data_dir": source.data_dir,
            "data_files": source.data_files,
            "columns": source.columns,
            "streaming": bool(data_args.dataset_streaming),
            **kwargs,
        }
        text, info = describe_dataset(source.path, ctx, formats, **options)
        if source.fraction is not None:
            text += f" (fraction {source.fraction:g})"
        texts.append(text)
        infos.append(info)
    if len(sources) == 1:
        return texts[0], infos[0]
    known = [i for i in infos if i.get("columns") is not None]
    if len({tuple(sorted(i["columns"])) for i in known}) > 1:
        shapes = "; ".join(f"{s.describe()}: {i.get('columns')}" for s, i in zip(sources, infos, strict=True))
        raise DryRunError(
            f"`datasets`: the mixture's datasets have different columns ({shapes}): select the same columns with "
            "each entry's `columns`"
        )
    text = f"mixture of {len(sources)} datasets, concatenated: " + " | ".join(
        f"[{i + 1}] {t}" for i, t in enumerate(texts)
    )
    return text, (known[0] if known else {})


def describe_dataset(
    name: str | None,
    ctx: Context,
    formats: Formats | None,
    *,
    config: str | None = None,
    train_split: str = "train",
    test_split: str | None = "test",
    what: str = "dataset_name",
    where: str | None = None,
    data_dir: str | None = None,
    data_files: Any = None,
    columns: list[str] | None = None,
    streaming: bool = False,
) -> tuple[str, dict[str, Any]]:
    """The dataset line of a plan and what is known of it (`columns`, `format`, `prompt_tokens`, `completions`).

    Known columns go through `formats.detect`, the stage's own detection: a mismatch raises the run's
    `DataValidationError` (named by `where`, default the run's "dataset '<name>', split '<train_split>'").
    """
    accepts, columns_selected = _accepts(formats), columns
    if not name:
        return f"not set: pass --{what} (the stage accepts {accepts})", {}
    info: dict[str, Any] = {}
    key = os.path.normpath(name)
    if key in ctx.world:
        known = WORLD_DATASETS[ctx.world[key]]
        text = f"{name}: {known['about']}, generated by the pipeline"
    elif key in ctx.outputs and ctx.outputs[key].stage == "sample":
        known = {"columns": SAMPLE_COLUMNS, "splits": ["train", "test"]}
        info["completions"] = ctx.outputs[key].extra.get("num_completions")
        text = f"{name}: output of stage 'sample' ({info['completions']} completions per prompt, ranked)"
    elif os.path.exists(name):
        source = DatasetSource(name, config, data_dir, data_files, train_split, test_split)
        known = _local_columns(source)
        kind = (
            "save_to_disk directory"
            if is_saved_dataset(name)
            else "dataset folder"
            if os.path.isdir(name)
            else "data file"
        )
        text = f"{name}: local {kind}" + "".join(
            f", {k} {v}" for k, v in (("config", config), ("data_dir", data_dir), ("data_files", data_files)) if v
        )
    else:
        repo, revision = parse_hub_id(name) or (name, None)
        at = f" @ {revision}" if revision else ""
        known = DATASETS.get(repo)
        if known is None:
            return (
                f"{name}{at} (not in hf_rlhf.plan.known_models: columns checked at load time; the stage accepts {accepts})",
                {},
            )
        text = f"{repo}{at}: {known['about']}"
        configs = known.get("configs")
        if configs and (config or "default") not in configs and known.get("more_configs"):
            text += f" (config {config}: not in hf_rlhf's table, which lists {', '.join(configs)}; read at load time)"
        elif configs and (config or "default") not in configs:
            given = f"no configuration '{config}'" if config else "no default configuration"
            raise DryRunError(f"dataset '{repo}' has {given}: set dataset_config to one of {', '.join(configs)}")
        if config:
            text += f", config {config}"
        data_dirs = known.get("data_dirs")
        if data_dirs and data_dir not in data_dirs and not data_files:
            raise DryRunError(
                f"dataset '{repo}' keeps its subsets in folders: set dataset_data_dir to one of {', '.join(data_dirs)}"
            )
        if data_dir:
            text += f", data_dir {data_dir}"
        known = {**known, **(known.get("by_config", {}).get(config or "default", {}))}
    if streaming:
        text += "; streamed (dataset_streaming)"
    splits = known.get("splits")
    if splits and train_split not in splits:
        raise DryRunError(
            f"dataset '{name}' has no split '{train_split}' (splits: {', '.join(splits)}): set dataset_train_split"
        )
    if splits:
        carved = "none (streamed)" if streaming else "carved from train (eval_split_size)"
        held_out = test_split if test_split in splits else carved
        text += f"; splits {train_split} / {held_out}"
    columns = known.get("columns")
    if columns is not None and columns_selected:
        missing = [c for c in columns_selected if c not in columns]
        if missing:
            raise DryRunError(f"dataset '{name}': `columns` names {missing}, not in its columns {columns}")
        columns = list(columns_selected)
    if columns is None:
        return text + f"; columns checked at load time (the stage accepts {accepts})", info
    info["columns"] = columns
    info["prompt_tokens"] = known.get("prompt_tokens")
    if known.get("completions"):
        info["completions"] = known["completions"]
    if formats is None:
        return text + f"; columns {', '.join(columns)}", info
    fmt, used = formats.detect(columns, where or f"dataset '{name}', split '{train_split}'")
    info["format"] = fmt
    used_text = ", ".join(f"'{c}'" for c in used)
    return text + f"; {FORMAT_LABELS.get(fmt, fmt)} format: {used_text} (columns: {', '.join(columns)})", info


def _local_columns(source: DatasetSource) -> dict[str, Any]:
    """Splits and columns of a local dataset, read by the stage's own loader (`hf_rlhf.data.loading`) streaming, so
    only the first rows are read; what the loader cannot read is the run's error, raised now."""
    data = read_source(source, streaming=True)
    train = data[source.split] if source.split in data else None
    columns = None
    if train is not None:
        try:
            columns = train.column_names or list(next(iter(train)).keys())
        except StopIteration:
            raise DataValidationError(f"{source.describe()}, split '{source.split}' is empty") from None
        except Exception as e:  # a file that cannot be parsed: the run's loader says the same
            raise DataValidationError(f"{source.describe()} could not be read: {type(e).__name__}: {e}") from None
    return {"columns": columns, "splits": list(data)}
