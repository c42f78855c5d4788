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

from ..data.formats import Formats
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
    """`describe_dataset` of a stage's `DataArguments` (name, config and splits); `kwargs` override those."""
    splits = {"train_split": data_args.dataset_train_split, "test_split": data_args.dataset_test_split}
    return describe_dataset(
        data_args.dataset_name, ctx, formats, **{"config": data_args.dataset_config, **splits, **kwargs}
    )


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
) -> tuple[str, dict[str, Any]]:
    """The dataset line of a plan and what is known of it (`columns`, `format`, `prompt_tokens`, `completions`).

    Known columns go through `formats.detect`, the stage's own detection: a mismatch raises the run's
    `DataValidationError` (named by `where`, default the run's "dataset '<name>', split '<train_split>'").
    """
    accepts = _accepts(formats)
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
        known = _local_columns(name, train_split)
        text = f"{name}: local " + ("dataset directory" if os.path.isdir(name) else "data file")
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
        if configs and (config or "default") not in configs:
            given = f"no configuration '{config}'" if config else "no default configuration"
            raise DryRunError(f"dataset '{repo}' has {given}: set dataset_config to one of {', '.join(configs)}")
        if config:
            text += f", config {config}"
    splits = known.get("splits")
    if splits and train_split not in splits:
        raise DryRunError(
            f"dataset '{name}' has no split '{train_split}' (splits: {', '.join(splits)}): set dataset_train_split"
        )
    if splits:
        held_out = test_split if test_split in splits else "carved from train (eval_split_size)"
        text += f"; splits {train_split} / {held_out}"
    columns = known.get("columns")
    if columns is None:
        return text + f"; columns checked at load time (the stage accepts {accepts})", info
    info["columns"] = columns
    info["prompt_tokens"] = known.get("prompt_tokens")
    if formats is None:
        return text + f"; columns {', '.join(columns)}", info
    fmt, used = formats.detect(columns, where or f"dataset '{name}', split '{train_split}'")
    info["format"] = fmt
    used_text = ", ".join(f"'{c}'" for c in used)
    return text + f"; {FORMAT_LABELS.get(fmt, fmt)} format: {used_text} (columns: {', '.join(columns)})", info


def _local_columns(path: str, split: str) -> dict[str, Any]:
    """Columns of a local `save_to_disk` directory (memory-mapped, cheap); files are checked at load time."""
    if not os.path.isdir(path):
        return {}
    try:
        from datasets import DatasetDict, load_from_disk

        data = load_from_disk(path)
    except Exception:  # not a save_to_disk directory: the stage reports it at load time
        return {}
    if isinstance(data, DatasetDict):
        return {"columns": data[split].column_names if split in data else None, "splits": list(data)}
    return {"columns": data.column_names}
