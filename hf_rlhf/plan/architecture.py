"""A model's architecture without its weights: its real `config.json`, read through transformers' `AutoConfig`.

`AutoConfig.from_pretrained(name, revision=...)` reads a local directory, or a Hub repo's `config.json` through the
Hugging Face cache (one small file, offline once fetched; `HF_HUB_OFFLINE=1` never contacts the Hub). When a Hub id
cannot be read that way, the bundled table `hf_rlhf.plan.known_models` is the fallback, and the plan says so.
Parameters are counted exactly on the meta device (`hf_rlhf.plan.counting`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import HubInputError, RecipeError
from ..hub.resolve import parse_hub_id  # the one `org/name@rev` parser
from . import DryRunError
from .counting import count_on_meta
from .known_models import MODELS

BUNDLED = "hf_rlhf's bundled table: not fetched"


@dataclass
class Architecture:
    """A model's config, read without weights, and exact counts made on the meta device (cached)."""

    name: str
    source: str
    config: Any  # transformers.PretrainedConfig
    revision: str | None = None
    _counts: dict = field(default_factory=dict, repr=False)

    @property
    def hidden(self) -> int:
        return self.config.hidden_size

    @property
    def layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def vocab(self) -> int:
        return self.config.vocab_size

    @property
    def intermediate(self) -> int:
        return getattr(self.config, "intermediate_size", None) or 4 * self.hidden

    @property
    def kv_dim(self) -> int:
        head_dim = getattr(self.config, "head_dim", None) or self.hidden // self.heads
        return (getattr(self.config, "num_key_value_heads", None) or self.heads) * head_dim

    @property
    def max_positions(self) -> int | None:
        return getattr(self.config, "max_position_embeddings", None)

    def label(self) -> str:
        at = f" @ {self.revision}" if self.revision else ""
        return f"{self.name}{at}"

    def shape(self) -> str:
        kv = getattr(self.config, "num_key_value_heads", None) or self.heads
        return (
            f"{self.config.model_type} ({self.count('lm')['class']}): {self.layers} layers, hidden {self.hidden}, "
            f"{self.heads} heads ({kv} KV), vocab {self.vocab}; config from {self.source}"
        )

    def count(self, head: str = "lm", peft_config: Any = None) -> dict[str, Any]:
        """Parameters of the causal LM (`head='lm'`) or reward model (`'reward'`), with a peft config's trainable
        parameters; `linear` is the weights bitsandbytes would quantize (the decoder's linear layers)."""
        key = (head, json.dumps(peft_config.to_dict(), sort_keys=True, default=str) if peft_config else None)
        if key not in self._counts:
            self._counts[key] = count_on_meta(self.config, head, peft_config, self.name)
        return self._counts[key]


_ARCHITECTURES: dict[tuple[str, str | None], Architecture] = {}


def architecture(name_or_path: str, revision: str | None = None) -> Architecture:
    """A model's architecture from a local directory (its config.json, or an adapter's base) or a Hub id
    `org/name[@revision]` (its config.json through the HF cache; the bundled table when it cannot be read)."""
    if os.path.isdir(name_or_path):  # read each time: a stage output directory may change between plans
        return _local(name_or_path)
    try:
        repo, revision = parse_hub_id(name_or_path, revision) or (name_or_path, revision)
    except HubInputError as e:  # `@rev` and the revision option disagree
        raise DryRunError(str(e)) from None
    key = (repo, revision)
    if key not in _ARCHITECTURES:
        _ARCHITECTURES[key] = _from_hub(repo, revision)
    return _ARCHITECTURES[key]


def _local(name: str) -> Architecture:
    from transformers import AutoConfig

    if os.path.isfile(os.path.join(name, "config.json")):
        try:
            config = AutoConfig.from_pretrained(name)
        except (OSError, ValueError) as e:
            raise DryRunError(f"config.json in '{name}' cannot be read: {e}") from e
        return Architecture(name, f"config.json in '{name}'", config, None)
    if os.path.isfile(os.path.join(name, "adapter_config.json")):
        with open(os.path.join(name, "adapter_config.json")) as f:
            base = json.load(f).get("base_model_name_or_path")
        if not base:
            raise DryRunError(f"adapter '{name}' does not name its base model (base_model_name_or_path)")
        arch = dataclasses.replace(architecture(base), name=name, _counts={})
        arch.source = f"the base of adapter '{name}' ({base}: {arch.source})"
        return arch
    raise DryRunError(f"model directory '{name}' holds no config.json (nor adapter_config.json)")


def _from_hub(repo: str, revision: str | None) -> Architecture:
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        config = AutoConfig.from_pretrained(repo, revision=revision)
    except (OSError, ValueError) as e:  # not cached offline, no such repo, gated, or a model type transformers lacks
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if repo in MODELS:
            fields = dict(MODELS[repo])
            config = AutoConfig.for_model(fields.pop("model_type"), **fields)
            return Architecture(repo, BUNDLED, config, revision or "main")
        raise DryRunError(
            f"model '{repo}' is not a local directory and its config.json could not be read ({reason}). Fetch it "
            f"once online (`hf download {repo} config.json`, then the dry run reads it from the cache, offline too), "
            "or pass a local directory holding its config.json as the model"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return Architecture(repo, f"config.json of {repo}", config, revision or "main")


def architecture_from_type(model_type: str, kwargs: dict | None, vocab_size: int, source: str) -> Architecture:
    """A from-scratch model, built by the pretrain stage's own `hf_rlhf.modeling.model_from_config` on the meta
    device (its checks on `model_config_kwargs` included), sized to a tokenizer of `vocab_size` tokens."""
    import torch

    from ..modeling import model_from_config

    class Tokenizer:  # what model_from_config reads of a tokenizer
        pad_token_id, bos_token_id, eos_token_id = None, None, 0

        def __len__(self) -> int:
            return vocab_size

    try:
        with torch.device("meta"):
            config = model_from_config(model_type, Tokenizer(), kwargs).config
    except RecipeError:  # the stage's own check, as the run raises it
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise DryRunError(f"model_type '{model_type}' with model_config_kwargs {kwargs}: {e}") from e
    return Architecture(f"from scratch ({model_type})", source, config)


def human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}" if n < 100 * size else f"{n / size:.0f}{unit}"
    return str(int(n))
