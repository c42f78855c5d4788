"""The stages, by name: what each one runs, the dataclasses it takes, and where the pipeline wires its inputs from.

Every stage module has `arguments(algorithm=None)` (its dataclasses, in the order `run` takes them), `run(*args)`
(train or sample, save, return the manifest), `plan(*args, ctx)` (the dry run: the same checks as `run` up to where
a model would be loaded) and `main(argv)` (the command line). `hf-rlhf <stage>`, the pipeline and the dry run all
go through `STAGES`.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from ..recipes import STAGE_NAMES
from . import pretrain, reward, rl, sample, sft


@dataclass(frozen=True)
class Stage:
    """A stage and how the pipeline wires it: its module, and which outputs become which of its options."""

    name: str
    module: ModuleType
    model_from: str | None = None  # stage whose output is this stage's `model_name_or_path`
    data_from: str | None = None  # a stage output, or a tiny-world dataset, used as `dataset_name`
    wired: tuple[tuple[str, str], ...] = ()  # (option, tiny-world dataset or stage) pairs wired in as well
    output: str = "model"  # what the stage writes: "model" or "dataset" (its Hub repo type)

    def arguments(self, algorithm: str | None = None) -> tuple[type, ...]:
        return self.module.arguments(algorithm)

    def sources(self) -> list[str]:
        """Every stage or tiny-world dataset this stage reads."""
        return [s for s in (self.model_from, self.data_from, *(source for _, source in self.wired)) if s]


# In pipeline order. `sample` is the comparison collection between SFT and reward modeling.
STAGES: dict[str, Stage] = {
    "pretrain": Stage("pretrain", pretrain, data_from="documents"),
    "sft": Stage("sft", sft, model_from="pretrain", data_from="demonstrations"),
    "sample": Stage(
        "sample",
        sample,
        model_from="sft",
        data_from="prompts",
        wired=(("world_seed", "world_seed"),),
        output="dataset",
    ),
    "reward": Stage(
        "reward", reward, model_from="sft", data_from="sample", wired=(("reference_dataset", "demonstrations"),)
    ),
    "rl": Stage(
        "rl",
        rl,
        model_from="sft",
        data_from="prompts",
        wired=(("reward_model_path", "reward"), ("world_seed", "world_seed")),
    ),
}
assert tuple(STAGES) == STAGE_NAMES
