"""What a model directory is, and whether it can play the role a stage gives it, checked before anything loads.

A role is what a stage does with a model: the `policy` generates (and trains), the `reward model` scores (its head
must be trained: a sequence-classification model with one label whose score head is in the checkpoint, or an
hf_rlhf reward stage), an `init` model is a starting point whose new head the stage trains (the reward stage's SFT
model, PPO's value model). A causal LM given as reward model would score with a freshly initialised head: noise that
changes from run to run; a reward model given as policy has no language-model head. Both are refused with one line
naming the path, what it is and what was expected.

What a directory is comes from, in order: its hf_rlhf manifest (`stage`), its peft adapter config (`task_type`), its
`config.json` (`architectures`, the number of labels), and the tensor names in its safetensors files (read from the
file headers, no weights loaded).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from .checks import ADAPTER_CONFIG, check_weights, weight_files
from .errors import HubInputError, ModelNotFoundError, ModelRoleError
from .hub.resolve import ResolvedInput, is_hub_id, resolve_input

CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
CLASSIFIER_SUFFIXES = ("ForSequenceClassification",)
HEAD_NAMES = ("score", "classifier")  # the sequence-classification heads of transformers' architectures
REWARD_STAGE = "reward"
POLICY_STAGES = ("pretrain", "sft", "rl")


def resolve_model(name_or_path: str, what: str = "model", revision: str | None = None) -> ResolvedInput:
    """A model input (tokenizer, adapter...) as a `ResolvedInput`: a local directory, or a Hub repo
    `org/name[@revision]` (`revision`: a `*_revision` option) with the exact commit it was downloaded at."""
    if os.path.isfile(name_or_path):
        raise ModelNotFoundError(
            f"{what} path '{name_or_path}' is a file; expected a model directory (config.json and *.safetensors) "
            "or a Hub repo id 'org/name[@revision]'"
        )
    if not os.path.isdir(name_or_path) and not is_hub_id(name_or_path):
        raise ModelNotFoundError(
            f"{what} path '{name_or_path}' does not exist (expected a local directory or a Hub repo id "
            "'org/name[@revision]')"
        )
    try:
        source = resolve_input(name_or_path, revision, repo_type="model", what=what)
    except HubInputError as e:
        raise ModelNotFoundError(str(e)) from None
    if what != "tokenizer":
        check_weights(source, what)  # weight files that are there are readable (headers only)
    return source


def resolve_model_path(name_or_path: str, what: str = "model", revision: str | None = None) -> str:
    return resolve_model(name_or_path, what, revision).path


def check_model(name_or_path: str, role: str, what: str) -> ModelKind:
    """`check_role` of a model as the recipe names it (a local directory or a Hub id, resolved first)."""
    return check_role(resolve_model_path(name_or_path, what), role, what, name_or_path)


@dataclass
class ModelKind:
    """What a model directory holds.

    Attributes:
        kind: `"causal_lm"`, `"reward_model"` (sequence classification) or `"unknown"`.
        why: How it was told (e.g. "an hf_rlhf sft stage", "LlamaForCausalLM in config.json").
        num_labels: Labels of a sequence-classification config (None if not one).
        has_head: Whether a sequence-classification head's weights are in the checkpoint (None if unknown).
        adapter_base: The base model of a peft adapter (None for full weights).
    """

    kind: str
    why: str
    num_labels: int | None = None
    has_head: bool | None = None
    adapter_base: str | None = None


def _json(path: str) -> dict:
    try:
        with open(path) as f:
            content = json.load(f)
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def tensor_names(directory: str) -> list[str] | None:
    """The tensor names of a directory's safetensors weights (`hf_rlhf.checks.weight_files`; headers only), or None
    if they cannot be read (a missing or corrupt file is the loader's to report, with its own message)."""
    from safetensors import SafetensorError, safe_open

    files = weight_files(directory)
    if not files:
        return None
    names: list[str] = []
    try:
        for file in files:
            with safe_open(file, framework="pt") as f:
                names += list(f.keys())
    except (SafetensorError, OSError, ValueError):
        return None
    return names


def _has_head(names: list[str] | None) -> bool | None:
    if names is None:
        return None
    return any(part in HEAD_NAMES for name in names for part in name.split(".")[:-1])


def describe_model(directory: str) -> ModelKind:
    """What the local model directory `directory` holds (see the module's docstring)."""
    from .manifest import read_manifest

    names = tensor_names(directory)
    adapter = _json(os.path.join(directory, ADAPTER_CONFIG))
    base = adapter.get("base_model_name_or_path") if adapter else None
    stage = (read_manifest(directory) or {}).get("stage")
    if stage == REWARD_STAGE:
        return ModelKind("reward_model", "an hf_rlhf reward stage", 1, _has_head(names), base)
    if stage in POLICY_STAGES:
        return ModelKind("causal_lm", f"an hf_rlhf {stage} stage", None, _has_head(names), base)
    if adapter:
        task = adapter.get("task_type")
        kind = {"SEQ_CLS": "reward_model", "CAUSAL_LM": "causal_lm"}.get(task, "unknown")
        return ModelKind(kind, f"a peft {task} adapter", None, _has_head(names), base)
    config = _json(os.path.join(directory, "config.json"))
    architectures = config.get("architectures") or []
    labels = len(config["id2label"]) if isinstance(config.get("id2label"), dict) else config.get("num_labels")
    for arch in architectures:
        if arch.endswith(CLASSIFIER_SUFFIXES):
            return ModelKind("reward_model", f"{arch} in config.json", labels, _has_head(names), None)
        if arch.endswith(CAUSAL_SUFFIXES):
            return ModelKind("causal_lm", f"{arch} in config.json", None, _has_head(names), None)
    return ModelKind("unknown", "no architecture in config.json", labels, _has_head(names), None)


def check_role(directory: str, role: str, what: str, shown: str | None = None) -> ModelKind:
    """Refuse a model that cannot play `role` (`"policy"`, `"reward_model"` or `"init"`) with a `ModelRoleError`.

    Args:
        directory: The model's local directory (a Hub id resolved to its snapshot).
        role: `policy` (a causal LM), `reward_model` (scores: one label, trained head) or `init` (a starting point
            of a new head: anything but a reward model's adapter used where a causal LM is merged is fine).
        what: The option or argument that named it (`reward_model_path`, `--model`...).
        shown: The path as the user gave it (a Hub id), for the message.
    """
    kind = describe_model(directory)
    name = shown or directory
    if role == "policy" and kind.kind == "reward_model":
        raise ModelRoleError(
            f"{what} '{name}' is a reward model ({kind.why}), not a causal language model: it has no "
            "language-model head and cannot generate. Give the SFT (or pretrained) model here; the reward model "
            "goes in `reward_model_path`"
        )
    if role == "reward_model":
        if kind.kind == "causal_lm":
            raise ModelRoleError(
                f"{what} '{name}' is a causal language model ({kind.why}), not a reward model: it would score with a "
                "newly initialised head (noise that changes from run to run). Give a reward stage's output, or a "
                "sequence-classification model with one label and a trained score head"
            )
        if kind.num_labels not in (None, 1):
            raise ModelRoleError(
                f"{what} '{name}' is a classifier with {kind.num_labels} labels ({kind.why}); a reward model has "
                "one label (a scalar score)"
            )
        if kind.has_head is False and kind.adapter_base is None:
            raise ModelRoleError(
                f"{what} '{name}' ({kind.why}) has no score head in its weights: it would be newly initialised. "
                "Give a trained reward model (its checkpoint holds `score.weight`)"
            )
    return kind
