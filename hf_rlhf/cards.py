"""The one card writer: render a stage's `model_cards/<stage>.md` Jinja template with huggingface_hub's `ModelCard`.

Templates live in the repository's `model_cards/` folder and ship as the package data `hf_rlhf.model_cards`.
Cards name inputs by what the user gave (never a token), and local directories by their last component only, so a
card never carries the layout of the user's machine.
"""

from __future__ import annotations

import os
from importlib import resources
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

PIPELINE_TAGS = {
    "pretrain": "text-generation",
    "sft": "text-generation",
    "reward": "text-classification",
    "rl": "text-generation",
}
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


def template_path(stage: str) -> str:
    """Path of the stage's card template (package data, or the source tree's `model_cards/`)."""
    try:
        candidate = resources.files("hf_rlhf.model_cards") / f"{stage}.md"
        if candidate.is_file():
            return str(candidate)
    except ModuleNotFoundError:
        pass
    source = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model_cards", f"{stage}.md")
    if not os.path.isfile(source):
        raise FileNotFoundError(f"no model card template for stage '{stage}'")
    return source


def display_name(value: Any) -> Any:
    """A local path shown by its last component; anything else unchanged."""
    if isinstance(value, str) and (os.path.isabs(value) or os.path.exists(value)):
        return os.path.basename(os.path.normpath(value))
    return value


def render_card(output_dir: str, stage: str, manifest: dict[str, Any]) -> ModelCard:
    """Render the card of a finished stage from its manifest (without writing it)."""
    inputs = {k: display_name(v) for k, v in manifest.get("inputs", {}).items()}
    inputs.setdefault("model", "-")
    if isinstance(manifest.get("inputs", {}).get("dataset"), dict):
        dataset = dict(manifest["inputs"]["dataset"])
        dataset["name"] = display_name(dataset.get("name"))
        inputs["dataset"] = dataset
    metrics = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in manifest.get("metrics", {}).items()}
    metrics = {k: v for k, v in metrics.items() if not isinstance(v, dict | list)}
    training = manifest.get("configs", {}).get("training", {})
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=PIPELINE_TAGS.get(stage),
        tags=["hf-rlhf", "trl", stage] + (["reward-model"] if stage == "reward" else []),
        model_name=os.path.basename(os.path.normpath(output_dir)),
    )
    centring = manifest.get("metrics", {}).get("reward_centring")
    if centring:
        centring = {**centring, "reference_dataset": display_name(centring.get("reference_dataset"))}
    return ModelCard.from_template(
        card_data,
        template_path=template_path(stage),
        model_name=card_data.model_name,
        repo_or_dir=manifest.get("hub_repo_id") or card_data.model_name,
        inputs=inputs,
        metrics=metrics,
        training={k: training[k] for k in SHOWN_TRAINING_KEYS if training.get(k) not in (None, -1)},
        centring=centring,
    )


def write_card(output_dir: str, stage: str, manifest: dict[str, Any]) -> None:
    """Write `README.md` (the model card) of a finished stage; replaces any card an upstream trainer wrote."""
    render_card(output_dir, stage, manifest).save(os.path.join(output_dir, "README.md"))
