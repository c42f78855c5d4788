"""The one card writer: render a stage's `model_cards/<stage>.md` Jinja template with huggingface_hub's cards.

Model stages get a `ModelCard` (`ModelCardData`: base model and its relation, datasets, tags, library, license,
pipeline tag); the comparison stage (`sample`) and the tiny world's datasets get a `DatasetCard` (`dataset.md`).
The sections every model card shares (lineage, results, figures, samples, where it was pushed) are macros in
`model_cards/_shared.md`, prepended to the stage's template. Templates live in the repository's `model_cards/`
folder and ship as the package data `hf_rlhf.model_cards`.

Cards name inputs by Hub repo id and commit, or local directories by their last component only, so a card never
carries the layout of the user's machine; a token never reaches a card.
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from ..eval.tables import TINY_WORLD_PROMPTS, markdown_table

PIPELINE_TAGS = {
    "pretrain": "text-generation",
    "sft": "text-generation",
    "reward": "text-classification",
    "rl": "text-generation",
}
METHOD_TAGS = {"pretrain": "causal-lm", "sft": "sft", "reward": "reward-model"}  # rl: its algorithm (ppo, grpo...)
STAGE_NAMES = {"pretrain": "pretraining", "sft": "SFT", "sample": "comparisons", "reward": "reward model", "rl": "RL"}
DEFAULT_LICENSE = "apache-2.0"  # hf_rlhf's, and the tiny world's it generates; a Hub base model's license wins
SHOWN_TRAINING_KEYS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "block_size",
    "seed",
)
SHOWN_MODEL_KEYS = ("load_in_4bit", "load_in_8bit")
SHOWN_LORA_KEYS = ("use_peft", "lora_r", "lora_alpha", "lora_dropout")  # a LoRA stage only, not a full finetune
SHOWN_SAMPLE_KEYS = ("num_completions", "temperature", "max_new_tokens", "max_prompts", "labeler", "seed")


def template_path(name: str) -> str:
    """Path of a card template (package data, or the source tree's `model_cards/`)."""
    try:
        candidate = resources.files("hf_rlhf.model_cards") / f"{name}.md"
        if candidate.is_file():
            return str(candidate)
    except ModuleNotFoundError:
        pass
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # hf_rlhf/hub/ -> the repo
    source = os.path.join(repo, "model_cards", f"{name}.md")
    if not os.path.isfile(source):
        raise FileNotFoundError(f"no card template '{name}'")
    return source


def _template(name: str) -> str:
    """A stage template with the shared macros in front (they render nothing before the front matter)."""
    texts = []
    for part in ("_shared", name):
        with open(template_path(part), encoding="utf-8") as f:
            texts.append(f.read())
    return "".join(texts)


def display_name(value: Any) -> Any:
    """A local path shown by its last component; anything else unchanged."""
    if isinstance(value, str) and (os.path.isabs(value) or os.path.exists(value)):
        return os.path.basename(os.path.normpath(value))
    return value


def describe(source: dict[str, Any] | None, fallback: Any = None) -> str:
    """An input or lineage entry for a card: `repo` at commit `sha`, or a local directory's name."""
    if not source:
        return str(display_name(fallback)) if fallback is not None else "-"
    if source.get("local"):
        pushed = f", pushed as `{source['repo_id']}` at commit `{source['commit']}`" if source.get("repo_id") else ""
        return f"`{source['local']}` (local directory{pushed})"
    revision = source.get("revision")
    at = f" (revision `{revision}`)" if revision not in (None, "main", source.get("commit")) else ""
    return f"`{source['repo_id']}` at commit `{source['commit']}`{at}"


def _inputs(manifest: dict[str, Any]) -> dict[str, Any]:
    inputs, sources = manifest.get("inputs", {}), manifest.get("inputs", {}).get("sources", {})
    shown: dict[str, Any] = {k: describe(sources.get(k), v) for k, v in inputs.items() if k != "sources"}
    if isinstance(inputs.get("dataset"), dict):
        dataset = inputs["dataset"]
        shown["dataset"] = {**dataset, "name": describe(sources.get("dataset"), dataset.get("name"))}
    shown.setdefault("model", "-")
    return shown


def _metrics(manifest: dict[str, Any]) -> dict[str, Any]:
    metrics = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in manifest.get("metrics", {}).items()}
    return {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}


def _model_config(output_dir: str) -> dict[str, Any]:
    path = os.path.join(output_dir, "config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def inherited_license(base_dir: str | None) -> str:
    """The license a stage inherits: its base model's, when the base (a local stage or a Hub snapshot) has a card
    that says one; else hf_rlhf's. Recorded in the manifest, so a card rendered later (on push) says the same."""
    card = os.path.join(base_dir, "README.md") if base_dir else None
    if card and os.path.isfile(card):
        return ModelCard.load(card, ignore_metadata_errors=True).data.license or DEFAULT_LICENSE
    return DEFAULT_LICENSE


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def row_metrics(row: dict[str, Any], reference: str | None) -> dict[str, float]:
    """A report row's numbers as `model-index` metrics: `gold_score` (tiny world), `reward_model_score`,
    `rm_win_rate_vs_<reference>`, `judge_win_rate_vs_<reference>`, `kl_to_<reference>`, `mean_length`,
    `missing_eos_rate`, `distinct_1`, `distinct_2` (those measured)."""
    ref = _slug(reference or "reference")
    metrics = {
        "gold_score": (row.get("gold") or {}).get("mean"),
        "reward_model_score": row.get("reward_model_score"),
        f"rm_win_rate_vs_{ref}": (row.get("rm_win_rate") or {}).get("mean"),
        f"judge_win_rate_vs_{ref}": (row.get("judge_win_rate") or {}).get("mean"),
        f"kl_to_{ref}": row.get("kl_to_sft"),
        "mean_length": row.get("mean_length"),
        "missing_eos_rate": row.get("missing_eos_rate"),
        "distinct_1": row.get("distinct_1"),
        "distinct_2": row.get("distinct_2"),
    }
    return {k: float(v) for k, v in metrics.items() if v is not None and v == v}  # NaN: nothing measured


def eval_results(manifest: dict[str, Any]) -> list[EvalResult] | None:
    """The pipeline's evaluation rows of this stage (`evaluation` in its manifest, `hf_rlhf.eval.report`) as the
    card's `model-index`: each measured number of each row on the held-out prompts (`row_metrics`)."""
    evaluation = manifest.get("evaluation") or {}
    prompts = evaluation.get("prompts") or {"dataset": TINY_WORLD_PROMPTS, "split": "test"}
    tiny = prompts["dataset"] == TINY_WORLD_PROMPTS
    args = {k: evaluation[k] for k in ("temperature", "max_new_tokens") if evaluation.get(k) is not None}
    results = []
    for row in evaluation.get("rows", []):
        for metric, value in row_metrics(row, evaluation.get("reference", "SFT")).items():
            results.append(
                EvalResult(
                    task_type="text-generation",
                    dataset_type="tiny-world-prompts" if tiny else str(prompts["dataset"]),
                    dataset_name=str(prompts["dataset"]),
                    dataset_split=prompts.get("split"),
                    metric_type=metric,
                    metric_name=f"{metric.replace('_', ' ')} ({row['model']})",
                    metric_value=round(value, 4),
                    metric_args=args or None,
                )
            )
    return results or None


def evaluation_table(evaluation: dict[str, Any] | None) -> str | None:
    """The card's model table: this stage's rows and the reference row, as in `report.md`."""
    if not evaluation or not evaluation.get("rows"):
        return None
    rows = [*([evaluation["reference_row"]] if evaluation.get("reference_row") else []), *evaluation["rows"]]
    return "\n".join(markdown_table(rows, evaluation.get("reference")))


def model_card_data(output_dir: str, manifest: dict[str, Any], model_name: str) -> ModelCardData:
    """The card's metadata: base model (a Hub id) and relation, datasets (Hub ids), tags, library, license."""
    stage = manifest["stage"]
    sources = manifest.get("inputs", {}).get("sources", {})
    base = (sources.get("model") or {}).get("repo_id")
    adapter = os.path.isfile(os.path.join(output_dir, "adapter_config.json"))
    quantized = bool(_model_config(output_dir).get("quantization_config"))
    relation = "adapter" if adapter else "quantized" if quantized else "finetune"
    datasets = sorted({s["repo_id"] for s in sources.values() if s.get("repo_type") == "dataset" and s.get("repo_id")})
    method = manifest.get("metrics", {}).get("algorithm") if stage == "rl" else METHOD_TAGS.get(stage)
    results = eval_results(manifest)
    return ModelCardData(
        base_model=base,
        base_model_relation=relation if base else None,
        datasets=datasets or None,
        library_name="peft" if adapter else "transformers",
        license=manifest.get("license") or DEFAULT_LICENSE,
        pipeline_tag=PIPELINE_TAGS.get(stage),
        tags=["hf-rlhf", "trl", stage, method] + (["peft", "lora"] if adapter else []),
        eval_results=results,
        model_name=model_name if results else None,  # only a `model-index` key: not a card key of its own
    )


def render_card(output_dir: str, manifest: dict[str, Any], repo_id: str | None = None) -> ModelCard | DatasetCard:
    """Render the card of a finished stage from its manifest (without writing it).

    Args:
        output_dir: the stage directory (its figures, adapter and model config are looked at).
        manifest: the stage's manifest.
        repo_id: the Hub repo the card is for, shown in "Use"; default: the stage directory's name.
    """
    if manifest["stage"] == "sample":
        return render_dataset_card(output_dir, repo_id, manifest=manifest)
    stage = manifest["stage"]
    model_name = (repo_id or os.path.basename(os.path.normpath(output_dir))).split("/")[-1]
    training = manifest.get("configs", {}).get("training", {})
    model = manifest.get("configs", {}).get("model", {})
    base = (manifest.get("inputs", {}).get("sources", {}).get("model")) or {}
    adapter = os.path.isfile(os.path.join(output_dir, "adapter_config.json"))
    lora_keys = SHOWN_LORA_KEYS if adapter or model.get("use_peft") else ()
    centring = manifest.get("metrics", {}).get("reward_centring")
    if centring:
        centring = {**centring, "reference_dataset": display_name(centring.get("reference_dataset"))}
    card = ModelCard.from_template(
        model_card_data(output_dir, manifest, model_name),
        template_str=_template(stage),
        model_name=model_name,
        repo_or_dir=repo_id or model_name,
        stage_name=STAGE_NAMES[stage],
        inputs=_inputs(manifest),
        lineage=[f"{STAGE_NAMES.get(e['stage'], e['stage'])}: {describe(e)}" for e in manifest.get("lineage", [])],
        metrics=_metrics(manifest),
        quality=manifest.get("metrics", {}).get("eval"),
        evaluation=manifest.get("evaluation"),
        evaluation_table=evaluation_table(manifest.get("evaluation")),
        figures=sorted(f for f in os.listdir(output_dir) if f.endswith(".png")),
        training={k: training[k] for k in SHOWN_TRAINING_KEYS if training.get(k) not in (None, -1)},
        model_options={k: model[k] for k in SHOWN_MODEL_KEYS + lora_keys if model.get(k)},
        adapter=adapter,
        base_repo=base.get("repo_id"),
        base_commit=base.get("commit"),
        centring=centring,
        hub=manifest.get("hub"),
    )
    return _tidy(card)


def _tidy(card: ModelCard | DatasetCard) -> ModelCard | DatasetCard:
    """The card with the blank lines its optional sections leave behind collapsed (at most one in a row)."""
    return type(card)(re.sub(r"\n{3,}", "\n\n", card.content))


def write_card(output_dir: str, manifest: dict[str, Any]) -> None:
    """Write `README.md` (the card) of a finished stage; replaces any card an upstream trainer wrote."""
    repo_id = (manifest.get("hub") or manifest.get("push") or {}).get("repo_id")
    render_card(output_dir, manifest, repo_id).save(os.path.join(output_dir, "README.md"))


# ---------------------------------------------------------------------------------------------- datasets
def _size_category(rows: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return name
    return "n>1M"


def render_dataset_card(
    dataset_dir: str,
    repo_id: str | None,
    description: str | None = None,
    *,
    manifest: dict[str, Any] | None = None,
) -> DatasetCard:
    """The card of a dataset pushed as parquet (`data/<split>-*.parquet`): a tiny-world dataset (`description`: its
    entry in `hf_rlhf.data.world.WORLD_DATASETS`), or the ranked comparisons of the `sample` stage (with its lineage
    and sampling settings from `manifest`)."""
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(dataset_dir)
    data = data if isinstance(data, DatasetDict) else DatasetDict(train=data)
    name = os.path.basename(os.path.normpath(dataset_dir))
    rows = sum(len(d) for d in data.values())
    card_data = DatasetCardData(
        pretty_name=(repo_id or name).split("/")[-1],
        license=DEFAULT_LICENSE,
        size_categories=[_size_category(rows)],
        task_categories=["text-generation"],
        tags=["hf-rlhf", "tiny-world", "synthetic"] + (["preference", "rlhf"] if manifest else []),
        configs=[
            {"config_name": "default", "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in data]}
        ],
    )
    sample = (manifest or {}).get("configs", {}).get("sample", {})
    card = DatasetCard.from_template(
        card_data,
        template_path=template_path("dataset"),
        title=(repo_id or name).split("/")[-1],
        repo_or_dir=repo_id or name,
        description=description or "",
        splits={split: len(d) for split, d in data.items()},
        columns=list(next(iter(data.values())).column_names),
        manifest=manifest,
        inputs=_inputs(manifest) if manifest else {},
        lineage=[
            f"{STAGE_NAMES.get(e['stage'], e['stage'])}: {describe(e)}" for e in (manifest or {}).get("lineage", [])
        ],
        sampling={k: sample[k] for k in SHOWN_SAMPLE_KEYS if sample.get(k) is not None},
        hub=(manifest or {}).get("hub"),
    )
    return _tidy(card)
