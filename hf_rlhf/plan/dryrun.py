"""`--dry-run`: resolve a stage or pipeline recipe into a per-stage plan and a GPU memory estimate, offline.

`hf-rlhf pipeline <recipe> --dry-run` and `hf-rlhf <stage> --config <recipe> --dry-run` parse the recipe with the
stage's own parser, then print for each stage the model (config and exact parameter count), the data and the columns
the stage expects of it, the batch and schedule, precision, quantization and LoRA (trainable parameters counted
exactly with peft), and a GPU memory estimate per device for the launch layout. Nothing is downloaded and no weights
are built: models are instantiated on the `meta` device from a local `config.json` or from the configs in
`hf_rlhf.plan.known_models`; the Hub is never called.

A stage recipe that leaves its model or data to the pipeline (as every stage but the first does) is planned as that
stage of a pipeline recipe in the same folder: the one that lists it, else one with a stage of the same name (with
this recipe in its place). Command-line options after the recipe override it, as in a real run.

Memory per GPU, an estimate (expect +-20%), in bytes:

- weights: parameters x bytes per parameter (fp32 4, bf16/fp16 2; 8-bit 1 + a fp32 scale per output row; 4-bit
  NF4/FP4 0.5 + a fp32 absmax per block of 64 weights, 0.016 B with nested quantization; embeddings, norms and the
  LM head stay in `dtype`); LoRA adapters in fp32 (peft's default; bf16 under ZeRO-3, as TRL sets). Divided by N
  under ZeRO-3 / FSDP FULL_SHARD for the models accelerate prepares, plus two gathered layers.
- gradients: trainable parameters x bytes of their dtype (2 under DeepSpeed bf16/fp16); / N under ZeRO-2/3, FSDP.
- optimizer: AdamW, two moments in the parameter dtype (torch), or a fp32 master copy and two fp32 moments, 12 B
  (DeepSpeed); / N under ZeRO-1/2/3 and FSDP; nothing on the GPU when offloaded.
- activations of one micro-batch of b sequences of s tokens (hidden h, MLP width i, KV width kv = KV heads x head
  dim, L layers, vocabulary V), e bytes per value (2 with 16-bit weights, 4 in fp32, 4.5 for fp32 weights under
  bf16 autocast): b.s.(8h + 4.5i + 2kv).e per layer, a fit to what autograd saves in transformers' Llama layers
  (measured with `torch.autograd.graph.saved_tensors_hooks`: 3.9 bytes per value in fp32, 2.1 with bf16 weights,
  4.4-4.8 under autocast; SDPA attention, whose memory is linear in s; eager attention adds (l + 4).a.b.s^2 for a
  heads). With activation checkpointing: b.s.h.e per layer plus one layer's recomputation. A causal LM's loss adds
  b.s.V.(l + 12) at the backward peak (logits, their fp32 copy and log-softmax, the gradient; l = 2 bytes per logit,
  4 in pure fp32). RL adds the rollout: a KV cache of 2.L.kv.b.s.l and no-grad logits b.s.V.(l + 4); the peak is the
  larger of rollout and update.
- overhead: 1 GiB (CUDA context, allocator); fragmentation is not counted, so keep ~10% free.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import glob
import json
import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

from ..recipes import RecipeError, load_yaml_mapping, parse_stage_args
from .known_models import DATASETS, MODELS, WORLD_DATASETS

GiB = 1024**3
OVERHEAD_BYTES = GiB
DEFAULT_GPU_MEMORY_GB = 80.0
DEFAULT_PROMPT_TOKENS = 512  # RL rollouts: prompt length assumed when the dataset does not say
DTYPE_BYTES = {"float32": 4, "float": 4, "float64": 8, "bfloat16": 2, "float16": 2, "half": 2}
FSDP1_STRATEGIES = {"1": "FULL_SHARD", "2": "SHARD_GRAD_OP", "3": "NO_SHARD", "4": "HYBRID_SHARD"}
STAGE_FORMATS: dict[str, list[tuple[tuple[str, ...], str]]] = {
    # in the order the stage's own format detection tries them
    "sft": [
        (("prompt", "completion"), "prompt-completion"),
        (("messages",), "conversational"),
        (("text",), "language modeling"),
    ],
    "reward": [
        (("prompt", "completions", "ranking"), "ranked"),
        (("chosen", "rejected"), "pairwise preference"),
    ],
    "rl": [(("prompt",), "prompt-only")],
    "sample": [(("prompt",), "prompt-only")],
}
FORMULA = (
    "memory per GPU = weights (bytes/param: fp32 4, bf16 2, int8 ~1, nf4 ~0.52-0.56; LoRA fp32; /N under ZeRO-3 or "
    "FSDP FULL_SHARD) + gradients and AdamW states of trainable params (torch: grad + 2 moments in the param dtype; "
    "DeepSpeed: 2 + 12 B; /N under ZeRO/FSDP) + activations (per layer b.s.(8h + 4.5i + 2kv).e, or b.s.h.e + one "
    "layer with activation checkpointing; + logits b.s.V.(l + 12); RL: max(update, rollout KV cache + no-grad "
    "logits)) + 1 GiB overhead. An estimate (+-20%): keep ~10% free. Formulas in hf_rlhf/dryrun.py."
)


class DryRunError(RecipeError):
    """A recipe the dry run cannot plan: names the recipe key, model or dataset at fault and what to do."""


# ------------------------------------------------------------------------------------------------- launch
@dataclass
class Launch:
    """The launch layout a plan is sized for: read from an accelerate config file, or one process."""

    config_path: str | None = None
    num_processes: int = 1
    num_machines: int = 1
    backend: str = "single"  # single | ddp | deepspeed | fsdp
    mixed_precision: str | None = None  # bf16 | fp16 | None
    zero_stage: int = 0
    fsdp_sharding: str | None = None  # FULL_SHARD | SHARD_GRAD_OP | HYBRID_SHARD | NO_SHARD
    offload_optimizer: bool = False
    offload_params: bool = False
    activation_checkpointing: bool = False  # FSDP's own activation checkpointing
    gpu_memory_gb: float = DEFAULT_GPU_MEMORY_GB

    def describe(self) -> str:
        where = f" ({shown(self.config_path)})" if self.config_path else " (no accelerate config)"
        machines = f" on {self.num_machines} machines" if self.num_machines > 1 else ""
        if self.backend == "deepspeed":
            offload = " + optimizer offload" if self.offload_optimizer else ""
            offload += " + parameter offload" if self.offload_params else ""
            layout = f"DeepSpeed ZeRO-{self.zero_stage}{offload}, {self.num_processes} processes"
        elif self.backend == "fsdp":
            offload = " + CPU offload" if self.offload_params else ""
            layout = f"FSDP {self.fsdp_sharding}{offload}, {self.num_processes} processes"
        elif self.backend == "ddp":
            layout = f"DDP, {self.num_processes} processes"
        else:
            layout = f"{self.num_processes} process" + ("es" if self.num_processes > 1 else "")
        precision = f", mixed precision {self.mixed_precision}" if self.mixed_precision else ""
        return f"{layout}{machines}{precision}{where}; {self.gpu_memory_gb:g} GiB per GPU"

    def shards(self) -> tuple[int, int, int]:
        """How many ways the prepared models' (parameters, gradients, optimizer states) are split."""
        n = self.num_processes
        if self.backend == "deepspeed":
            stage = self.zero_stage
            return (n if stage >= 3 else 1, n if stage >= 2 else 1, n if stage >= 1 else 1)
        if self.backend == "fsdp":
            if self.fsdp_sharding == "NO_SHARD":
                return 1, 1, 1
            if self.fsdp_sharding and self.fsdp_sharding.startswith("HYBRID"):
                n = max(1, n // self.num_machines)
            if self.fsdp_sharding in ("SHARD_GRAD_OP", "HYBRID_SHARD_ZERO2"):
                return 1, n, n  # parameters stay gathered between forward and backward
            return n, n, n
        return 1, 1, 1


def read_launch(path: str | None, gpu_memory_gb: float | None = None) -> Launch:
    """The layout of an accelerate config file (`accelerate launch --config_file`); one process when `None`."""
    launch = Launch(gpu_memory_gb=gpu_memory_gb or DEFAULT_GPU_MEMORY_GB)
    if not path:
        return launch
    from accelerate.commands.config.config_args import load_config_from_file

    if not os.path.isfile(path):
        raise DryRunError(f"accelerate config '{path}' does not exist")
    try:
        config = load_config_from_file(path)
    except Exception as e:  # accelerate raises ValueError/TypeError/YAMLError for a bad file
        raise DryRunError(f"accelerate config '{path}' cannot be loaded: {e}") from e
    kind = getattr(config.distributed_type, "value", str(config.distributed_type))
    launch.config_path = path
    launch.num_processes = max(1, int(getattr(config, "num_processes", 1) or 1))
    launch.num_machines = max(1, int(getattr(config, "num_machines", 1) or 1))
    precision = str(config.mixed_precision or "no").lower()
    launch.mixed_precision = precision if precision in ("bf16", "fp16") else None
    if kind == "DEEPSPEED":
        launch.backend = "deepspeed"
        ds = dict(config.deepspeed_config or {})
        ds_file = ds.get("deepspeed_config_file")
        if ds_file and os.path.isfile(ds_file):
            with open(ds_file) as f:
                zero = json.load(f).get("zero_optimization", {})
            ds.setdefault("zero_stage", zero.get("stage", 0))
            ds.setdefault("offload_optimizer_device", zero.get("offload_optimizer", {}).get("device", "none"))
            ds.setdefault("offload_param_device", zero.get("offload_param", {}).get("device", "none"))
        launch.zero_stage = int(ds.get("zero_stage", 0))
        launch.offload_optimizer = str(ds.get("offload_optimizer_device", "none")).lower() not in ("none", "")
        launch.offload_params = str(ds.get("offload_param_device", "none")).lower() not in ("none", "")
    elif kind == "FSDP":
        launch.backend = "fsdp"
        fsdp = {k.removeprefix("fsdp_"): v for k, v in (config.fsdp_config or {}).items()}
        if str(fsdp.get("version", 1)) == "2":
            reshard = str(fsdp.get("reshard_after_forward", True)).lower() == "true"
            launch.fsdp_sharding = "FULL_SHARD" if reshard else "SHARD_GRAD_OP"
        else:
            strategy = str(fsdp.get("sharding_strategy") or fsdp.get("reshard_after_forward") or "FULL_SHARD")
            launch.fsdp_sharding = FSDP1_STRATEGIES.get(strategy, strategy.upper())
        launch.offload_params = str(fsdp.get("offload_params", False)).lower() == "true"
        launch.activation_checkpointing = str(fsdp.get("activation_checkpointing", False)).lower() == "true"
    elif launch.num_processes > 1 or kind.startswith("MULTI"):
        launch.backend = "ddp"
    return launch


# ------------------------------------------------------------------------------------------------ models
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
            self._counts[key] = _count_on_meta(self.config, head, peft_config, self.name)
        return self._counts[key]


def _meta_model(config: Any, head: str):
    """The model of `config` on the meta device: no memory, no weights, exact parameter shapes."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = copy.deepcopy(config)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        if head == "reward":
            config.num_labels = 1
            return AutoModelForSequenceClassification.from_config(config)
        return AutoModelForCausalLM.from_config(config)


def _peft_counts(model: Any, peft_config: Any, name: str) -> tuple[int, int]:
    """(trainable, total) parameters of `model` wrapped by peft, adapters created on the meta device too."""
    from accelerate import init_empty_weights
    from peft import get_peft_model

    try:
        with warnings.catch_warnings(), init_empty_weights():
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(model, copy.deepcopy(peft_config))
    except ValueError as e:
        raise DryRunError(f"LoRA settings do not fit {name}: {e}") from e
    return (
        sum(p.numel() for p in peft_model.parameters() if p.requires_grad),
        sum(p.numel() for p in peft_model.parameters()),
    )


def _decoder_layers(model: Any, num_layers: int) -> Any:
    import torch

    return next(
        (m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == num_layers and num_layers > 1),
        None,
    )


def _with_layers(config: Any, n: int) -> Any:
    config = copy.deepcopy(config)
    config.num_hidden_layers = n
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:n]
    return config


def _small_peft_counts(config: Any, head: str, peft_config: Any, name: str, n: int) -> tuple[int, int]:
    """(trainable, added) parameters of peft on an `n`-layer copy of the model."""
    small = _meta_model(_with_layers(config, n), head)
    base = sum(p.numel() for p in small.parameters())
    trainable, total = _peft_counts(small, peft_config, name)
    return trainable, total - base


def _count_on_meta(config: Any, head: str, peft_config: Any, name: str) -> dict[str, Any]:
    """Parameter counts of a model built on the meta device; with a peft config, its trainable parameters as peft
    creates them. When every decoder layer has the same parameter shapes (and the peft config no per-layer
    patterns), peft wraps 1- and 2-layer copies and the counts are extended to L layers: exact, and faster."""
    import torch
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = _meta_model(config, head)
        out = {"class": type(model).__name__, "total": sum(p.numel() for p in model.parameters())}
        out["linear"] = sum(
            m.weight.numel()
            for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.split(".")[-1] not in ("lm_head", "score")
        )
        out["trainable"] = out["total"]
        if peft_config is None:
            return out
        layers = _decoder_layers(model, config.num_hidden_layers)
        shapes = [[(n, p.shape) for n, p in layer.named_parameters()] for layer in layers] if layers else []
        patterns = any(getattr(peft_config, a, None) for a in ("layers_to_transform", "rank_pattern", "alpha_pattern"))
        if shapes and all(s == shapes[0] for s in shapes) and not patterns:
            (t1, a1), (t2, a2) = (_small_peft_counts(config, head, peft_config, name, n) for n in (1, 2))
            extra = config.num_hidden_layers - 1
            out["trainable"] = t1 + extra * (t2 - t1)
            out["total"] += a1 + extra * (a2 - a1)
        else:
            out["trainable"], out["total"] = _peft_counts(model, peft_config, name)
    finally:
        hf_logging.set_verbosity(verbosity)
    return out


_ARCHITECTURES: dict[tuple[str, str | None], Architecture] = {}


def split_revision(name: str, revision: str | None = None) -> tuple[str, str | None]:
    """`org/name@revision` -> (`org/name`, `revision`); a local path is returned whole."""
    if "@" in name and not os.path.exists(name):
        name, revision = name.split("@", 1)
    return name, revision


def architecture(name_or_path: str, revision: str | None = None) -> Architecture:
    """A model's architecture from a local directory (its config.json, or an adapter's base) or the known table."""
    name, revision = split_revision(name_or_path, revision)
    key = (name, revision)
    if key in _ARCHITECTURES:
        return _ARCHITECTURES[key]
    from transformers import AutoConfig

    if os.path.isdir(name):  # read each time: a stage output directory may change between plans
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
    if name in MODELS:
        fields = dict(MODELS[name])
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        arch = Architecture(name, "hf_rlhf.plan.known_models", config, revision or "main")
    else:
        raise DryRunError(
            f"model '{name}' is not a local directory and not in hf_rlhf's table of known configs "
            f"(hf_rlhf/known_models.py). Add its config.json fields (model_type, hidden_size, intermediate_size, "
            "num_hidden_layers, num_attention_heads, num_key_value_heads, vocab_size, tie_word_embeddings, "
            f"max_position_embeddings) to MODELS there, or download its config.json (`hf download {name} config.json "
            "--local-dir <dir>`) and pass that directory as the model"
        )
    _ARCHITECTURES[key] = arch
    return arch


def architecture_from_type(model_type: str, kwargs: dict | None, vocab_size: int, source: str) -> Architecture:
    """A from-scratch model: `AutoConfig.for_model(model_type, vocab_size=..., **model_config_kwargs)`."""
    from transformers import AutoConfig

    kwargs = dict(kwargs or {})
    if "vocab_size" in kwargs:
        raise DryRunError(
            "model_config_kwargs must not set vocab_size: a from-scratch model takes the tokenizer's size "
            "(set `vocab_size` for a trained tokenizer, or `tokenizer_name_or_path`)"
        )
    try:
        config = AutoConfig.for_model(model_type, vocab_size=vocab_size, **kwargs)
    except (ValueError, TypeError) as e:
        raise DryRunError(f"model_type '{model_type}' with model_config_kwargs {kwargs}: {e}") from e
    return Architecture(f"from scratch ({model_type})", source, config)


def human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}" if n < 100 * size else f"{n / size:.0f}{unit}"
    return str(int(n))


# ------------------------------------------------------------------------------------------------ memory
@dataclass
class Role:
    """One model a stage holds on each GPU, and how: dtype, quantization, LoRA, trained or frozen, prepared.

    `shared_with` names the role whose base weights this one uses (PPO's reference is the policy with its adapter
    disabled; with `shared_base` the value and reward models are adapters of the policy's base too): it then holds
    only its adapter, if any.
    """

    name: str
    arch: Architecture
    head: str = "lm"  # lm | reward
    dtype: str | None = "float32"
    quantization: str | None = None  # 4bit | 8bit
    nested_quant: bool = False
    peft_config: Any = None
    trainable: bool = False
    prepared: bool = True  # passed to accelerator.prepare: sharded by ZeRO-3 / FSDP
    shared_with: str | None = None

    def dtype_bytes(self) -> int:
        if self.dtype in (None, "auto"):  # the checkpoint's dtype: bf16 for the published models
            return DTYPE_BYTES.get(str(getattr(self.arch.config, "dtype", None) or "bfloat16").split(".")[-1], 2)
        return DTYPE_BYTES.get(str(self.dtype).split(".")[-1], 4)

    def count(self) -> dict[str, Any]:
        return self.arch.count(self.head, self.peft_config)

    def describe(self) -> str:
        adapter = f"LoRA {human(self.count()['trainable'])}" if self.peft_config is not None else None
        state = "trained" if self.trainable else "frozen"
        if self.shared_with:
            own = f"an adapter ({adapter}, {state})" if adapter else "its adapter disabled"
            return f"{self.name} = {self.shared_with}'s base with {own}"
        weights = {"4bit": "4-bit", "8bit": "8-bit"}.get(self.quantization or "", self.dtype or "auto")
        parts = [weights + (" nested" if self.nested_quant else ""), f"{adapter} {state}" if adapter else state]
        return f"{self.name} {human(self.arch.count(self.head)['total'])} (" + ", ".join(parts) + ")"


def role_memory(role: Role, launch: Launch) -> dict[str, float]:
    """Bytes per GPU of one role's weights, gradients and optimizer states (formulas in the module docstring)."""
    base = role.arch.count(role.head)
    dtype_bytes = role.dtype_bytes()
    deepspeed_mixed = launch.backend == "deepspeed" and launch.mixed_precision is not None
    if role.prepared and deepspeed_mixed and not role.quantization:
        dtype_bytes = 2  # DeepSpeed keeps the module in bf16/fp16 (fp32 master weights live in the optimizer)
    p_shards, g_shards, o_shards = launch.shards() if role.prepared else (1, 1, 1)
    if role.quantization:
        p_shards = 1  # bitsandbytes weights are not sharded here: QLoRA on several GPUs is DDP
    linear, layer = base["linear"], base["linear"] / role.arch.layers * dtype_bytes
    if role.shared_with:
        weights = 0.0
    elif role.quantization == "4bit":
        per_weight = 0.5 + (1 / 64 + 4 / (64 * 256) if role.nested_quant else 4 / 64)
        weights = linear * per_weight + (base["total"] - linear) * dtype_bytes
    elif role.quantization == "8bit":
        weights = linear * (1 + 4 / role.arch.hidden) + (base["total"] - linear) * dtype_bytes
    else:
        weights = base["total"] * dtype_bytes
    if p_shards > 1 and weights:  # sharded, plus the layers gathered for compute (one ahead, prefetched)
        weights = 2 * layer if launch.offload_params else weights / p_shards + 2 * layer
    if role.peft_config is not None:
        zero3_bf16 = launch.backend == "deepspeed" and launch.zero_stage == 3 and not role.quantization
        param_bytes = role.dtype_bytes() if zero3_bf16 else 4  # peft upcasts adapters to fp32 (TRL: not under ZeRO-3)
        trainable = role.count()["trainable"]
        weights += trainable * param_bytes / p_shards
    else:
        trainable, param_bytes = base["total"], dtype_bytes
    if not role.trainable:
        return {"weights": weights, "gradients": 0.0, "optimizer": 0.0}
    grad_bytes, optim_bytes = (2, 12) if deepspeed_mixed else (param_bytes, 2 * param_bytes)
    offloaded = launch.offload_optimizer or (launch.backend == "fsdp" and launch.offload_params)
    return {
        "weights": weights,
        "gradients": trainable * grad_bytes / g_shards,
        "optimizer": 0.0 if offloaded else trainable * optim_bytes / o_shards,
    }


def layer_activations(arch: Architecture, batch: int, seq: int, e: float, eager: bool) -> float:
    """Bytes autograd keeps for one decoder layer: b.s.(8h + 4.5i + 2kv).e (module docstring)."""
    per_token = 8 * arch.hidden + 4.5 * arch.intermediate + 2 * arch.kv_dim
    attention = (_logit_bytes(e) + 4) * arch.heads * batch * seq * seq if eager else 0  # fp32 softmax + its cast
    return per_token * batch * seq * e + attention


def training_activations(
    arch: Architecture, batch: int, seq: int, e: float, checkpointing: bool, logits: bool, eager: bool = False
) -> float:
    """Activations of one micro-batch at the backward pass's peak (module docstring)."""
    layer = layer_activations(arch, batch, seq, e, eager)
    body = arch.layers * batch * seq * arch.hidden * e + layer if checkpointing else arch.layers * layer
    return body + (batch * seq * arch.vocab * (_logit_bytes(e) + 12) if logits else 0)


def rollout_activations(arch: Architecture, batch: int, seq: int, e: float, eager: bool = False) -> float:
    """Generation and no-grad scoring of `batch` sequences: KV cache, then the larger of logits and one layer."""
    kv_cache = 2 * arch.layers * arch.kv_dim * batch * seq * _logit_bytes(e)
    logits = batch * seq * arch.vocab * (_logit_bytes(e) + 4)
    return kv_cache + max(logits, layer_activations(arch, batch, seq, e, eager))


def _logit_bytes(e: float) -> int:
    """Bytes of a logit (and a KV-cache entry): fp32 only when everything runs in fp32."""
    return 4 if e == 4 else 2


@dataclass
class MemoryEstimate:
    weights: float
    gradients: float
    optimizer: float
    activations: float
    gpu_memory_gb: float
    overhead: float = OVERHEAD_BYTES

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.gpu_memory_gb * GiB

    def summary(self) -> str:
        parts = ("weights", "gradients", "optimizer", "activations", "overhead")
        terms = " + ".join(f"{p} {_gib(getattr(self, p))}" for p in parts)
        share = self.total / (self.gpu_memory_gb * GiB)
        verdict = "fits" if share <= 0.9 else "fits, tight (over 90%)" if self.fits else "DOES NOT FIT"
        return f"{terms} = {self.total / GiB:.1f} GiB of {self.gpu_memory_gb:g} GiB per GPU: {verdict}"

    def to_dict(self) -> dict[str, float]:
        parts = ("weights", "gradients", "optimizer", "activations", "overhead", "total")
        return {f"{p}_gib": round(getattr(self, p) / GiB, 3) for p in parts} | {"fits": self.fits}


def _gib(n: float) -> str:
    return f"{n / GiB:.1f}" if n >= 0.1 * GiB else f"{n / GiB:.2g}"


def estimate(roles: list[Role], activations: float, launch: Launch) -> MemoryEstimate:
    totals = {"weights": 0.0, "gradients": 0.0, "optimizer": 0.0}
    for role in roles:
        for key, value in role_memory(role, launch).items():
            totals[key] += value
    return MemoryEstimate(**totals, activations=activations, gpu_memory_gb=launch.gpu_memory_gb)


# -------------------------------------------------------------------------------------------------- plans
@dataclass
class StagePlan:
    """What one stage will do, as printed: rows of (label, text), its models, the memory estimate and notes."""

    stage: str
    argv: list[str]
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
        """(architecture, description) of a model input: an upstream stage's output, a directory or a known id."""
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


def shown(path: str) -> str:
    """A path as printed: relative to the working directory when it lies below it."""
    if not os.path.isabs(path):
        return os.path.normpath(path) if os.sep in path else path
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _norm(path: str | None) -> str | None:
    return os.path.normpath(path) if path else None


def describe_dataset(
    name: str | None,
    stage: str,
    ctx: Context,
    *,
    config: str | None = None,
    train_split: str = "train",
    test_split: str | None = "test",
    formats: list[tuple[tuple[str, ...], str]] | None = None,
    what: str = "dataset_name",
) -> tuple[str, dict[str, Any]]:
    """The dataset line of a plan and what is known of it (`columns`, `format`, `prompt_tokens`, `completions`).

    Known columns are checked against what the stage accepts; a mismatch is a `DryRunError` naming the key.
    """
    formats = formats if formats is not None else STAGE_FORMATS.get(stage, [])
    accepts = " or ".join("(" + ", ".join(cols) + ")" for cols, _ in formats)
    if not name:
        return f"not set: pass --{what} (the stage accepts {accepts})", {}
    info: dict[str, Any] = {}
    key = _norm(name)
    if key in ctx.world:
        known = WORLD_DATASETS[ctx.world[key]]
        where = f"{name}: {known['about']}, generated by the pipeline"
    elif key in ctx.outputs and ctx.outputs[key].stage == "sample":
        sample = ctx.outputs[key]
        known = {"columns": ["prompt", "completions", "ranking"], "splits": ["train", "test"]}
        info["completions"] = sample.extra.get("num_completions")
        where = f"{name}: output of stage 'sample' ({info['completions']} completions per prompt, ranked)"
    elif os.path.exists(name):
        known = _local_columns(name, train_split)
        where = f"{name}: local " + ("dataset directory" if os.path.isdir(name) else "data file")
    else:
        repo, revision = split_revision(name)
        at = f" @ {revision}" if revision else ""
        known = DATASETS.get(repo)
        if known is None:
            text = f"{name}{at} (not in hf_rlhf.plan.known_models: columns checked at load time; the stage accepts {accepts})"
            return text, {}
        where = f"{repo}{at}: {known['about']}"
        configs = known.get("configs")
        if configs and (config or "default") not in configs:
            given = f"no configuration '{config}'" if config else "no default configuration"
            raise DryRunError(f"dataset '{repo}' has {given}: set dataset_config to one of {', '.join(configs)}")
        if config:
            where += f", config {config}"
    splits = known.get("splits")
    if splits and train_split not in splits:
        raise DryRunError(
            f"dataset '{name}' has no split '{train_split}' (splits: {', '.join(splits)}): set dataset_train_split"
        )
    if splits:
        held_out = test_split if test_split in splits else "carved from train (eval_split_size)"
        where += f"; splits {train_split} / {held_out}"
    columns = known.get("columns")
    if columns is None:
        return where + f"; columns checked at load time (the stage accepts {accepts})", info
    info["columns"] = columns
    info["prompt_tokens"] = known.get("prompt_tokens")
    if not formats:
        return where + f"; columns {', '.join(columns)}", info
    matched = next(((cols, label) for cols, label in formats if set(cols) <= set(columns)), None)
    if matched is None:
        raise DryRunError(
            f"{what} '{name}' has columns {columns}, but the {stage} stage accepts {accepts}; "
            "choose a dataset in one of these formats"
        )
    info["format"] = matched[1]
    used = ", ".join(f"'{c}'" for c in matched[0])
    return where + f"; {matched[1]} format: {used} (columns: {', '.join(columns)})", info


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


# --------------------------------------------------------------------------------------------- per stage
def _precision(training_args: Any, model_args: Any, launch: Launch, dtype: str | None = None) -> tuple[str, float]:
    """(description, bytes per activation e): mixed precision from the recipe's bf16/fp16 flags, else the accelerate
    config's. e = 2 with 16-bit (or quantized, 16-bit compute) weights, 4 in fp32, 4.5 for fp32 weights under
    autocast (norms and the residual stream stay fp32 beside the 16-bit copies the matmuls keep)."""
    if getattr(training_args, "bf16", False):
        mixed = "bf16 (recipe)"
    elif getattr(training_args, "fp16", False):
        mixed = "fp16 (recipe)"
    elif launch.mixed_precision:
        mixed = f"{launch.mixed_precision} (accelerate config)"
    else:
        mixed = None
    dtype = dtype or getattr(model_args, "dtype", None) or "auto"
    quant = ""
    if getattr(model_args, "load_in_4bit", False):
        nested = " with nested quantization" if model_args.use_bnb_nested_quant else ""
        quant = f"; 4-bit {model_args.bnb_4bit_quant_type.upper()}{nested} (bitsandbytes), compute in {dtype}"
    elif getattr(model_args, "load_in_8bit", False):
        quant = "; 8-bit LLM.int8 (bitsandbytes)"
    compute = f"autocast {mixed}" if mixed else "no mixed precision"
    e = 2 if dtype in ("bfloat16", "float16", "auto") else 4.5 if mixed else 4
    return f"weights {dtype}{quant}; {compute}; activations {e:g} bytes/value", e


def _quantization(model_args: Any) -> tuple[str | None, bool]:
    if getattr(model_args, "load_in_4bit", False):
        return "4bit", bool(model_args.use_bnb_nested_quant)
    if getattr(model_args, "load_in_8bit", False):
        return "8bit", False
    return None, False


def _peft(model_args: Any, role: str = "causal_lm") -> Any:
    """The peft config the stages build for a role (`hf_rlhf.modeling.peft_config_for`), or None."""
    from ..modeling import peft_config_for

    return peft_config_for(model_args, role)


def _peft_row(peft_config: Any, role: Role) -> str:
    targets = peft_config.target_modules
    targets = ", ".join(sorted(targets)) if isinstance(targets, (set, list, tuple)) else targets or "peft default"
    counts = role.count()
    base = role.arch.count(role.head)["total"]
    saved = f", modules_to_save {sorted(set(peft_config.modules_to_save))}" if peft_config.modules_to_save else ""
    return (
        f"LoRA r={peft_config.r}, alpha={peft_config.lora_alpha}, dropout={peft_config.lora_dropout}, "
        f"targets {targets}{saved} ({peft_config.task_type}): {counts['trainable']:,} trainable parameters "
        f"({100 * counts['trainable'] / base:.2f}% of {human(base)})"
    )


def _batch_row(args: Any, launch: Launch, unit: str = "sequences") -> tuple[str, int]:
    per_device, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    total = per_device * accumulation * launch.num_processes
    procs = f"{launch.num_processes} process" + ("es" if launch.num_processes > 1 else "")
    return (
        f"{per_device} per device x {accumulation} accumulation x {procs} = {total} {unit} per optimizer step",
        total,
    )


def _schedule_row(args: Any, global_batch: int, max_train_samples: int | None) -> str:
    lr = f"lr {args.learning_rate:g} {getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)}"
    if args.max_steps and args.max_steps > 0:
        return f"{args.max_steps} optimizer steps (max_steps); {lr}"
    epochs = f"{args.num_train_epochs:g} epoch" + ("" if args.num_train_epochs == 1 else "s")
    if max_train_samples:
        steps = math.ceil(max_train_samples / global_batch) * math.ceil(args.num_train_epochs)
        return f"{epochs} of at most {max_train_samples:,} rows: <= {steps:,} optimizer steps; {lr}"
    return f"{epochs} (steps = rows / {global_batch}, rows known at load time); {lr}"


def _checkpointing(args: Any, launch: Launch) -> bool:
    in_recipe = any((getattr(args, "activation_checkpointing", None), getattr(args, "gradient_checkpointing", None)))
    if in_recipe and launch.activation_checkpointing:
        raise DryRunError(
            "activation checkpointing is on in both the recipe and the FSDP config (fsdp_activation_checkpointing), "
            "which transformers refuses: pass --activation_checkpointing false, or turn FSDP's off"
        )
    return in_recipe or launch.activation_checkpointing


def _eager(model_args: Any) -> bool:
    return getattr(model_args, "attn_implementation", None) == "eager"


def plan_pretrain(data_args, args, model_args, ctx: Context, plan: StagePlan) -> None:
    if bool(args.model_type) == bool(model_args.model_name_or_path):
        raise DryRunError("pretrain needs exactly one of `model_type` (from scratch) or `model_name_or_path`")
    if args.model_type:
        if args.tokenizer_name_or_path:
            vocab = architecture(args.tokenizer_name_or_path).vocab
            tokenizer = f"tokenizer {args.tokenizer_name_or_path} ({vocab} tokens; +1 if a PAD token is added)"
        else:
            vocab, tokenizer = args.vocab_size, f"byte-level BPE trained on the corpus (vocab_size {args.vocab_size})"
        arch = architecture_from_type(
            args.model_type, args.model_config_kwargs, vocab, "the recipe's model_config_kwargs"
        )
        plan.rows.append(("model", f"{arch.name}; {tokenizer}"))
        dtype = "float32"  # from_config builds fp32 weights
    else:
        arch, label = ctx.model(model_args.model_name_or_path, "model_name_or_path", model_args.model_revision)
        plan.rows.append(("model", f"{label}, continued"))
        dtype = model_args.dtype
    plan.rows.append(("architecture", arch.shape()))
    plan.rows.append(("parameters", f"{arch.count()['total']:,} ({human(arch.count()['total'])})"))
    text, _ = describe_dataset(
        data_args.dataset_name,
        "pretrain",
        ctx,
        config=data_args.dataset_config,
        train_split=data_args.dataset_train_split,
        test_split=data_args.dataset_test_split,
        formats=[((args.text_column,), "language modeling")],
    )
    plan.rows.append(("data", text))
    precision, e = _precision(args, model_args, ctx.launch, dtype)
    plan.rows.append(("precision", precision))
    batch, total = _batch_row(args, ctx.launch, f"blocks of {args.block_size} tokens")
    plan.rows.append(("batch", f"{batch} ({total * args.block_size:,} tokens)"))
    plan.rows.append(("schedule", _schedule_row(args, total, data_args.max_train_samples)))
    if model_args.use_peft or model_args.load_in_4bit or model_args.load_in_8bit:
        plan.notes.append("the pretrain stage trains every weight: use_peft and quantization are ignored")
    plan.roles = [Role("model", arch, dtype=dtype, trainable=True)]
    checkpointing = _checkpointing(args, ctx.launch)
    acts = training_activations(
        arch, args.per_device_train_batch_size, args.block_size, e, checkpointing, True, _eager(model_args)
    )
    plan.rows.append(
        ("activations", _activation_row(checkpointing, args.per_device_train_batch_size, args.block_size))
    )
    plan.memory = estimate(plan.roles, acts, ctx.launch)
    plan.produces = arch


def _activation_row(checkpointing: bool, batch: int, seq: int, extra: str = "") -> str:
    state = "on" if checkpointing else "off"
    return f"micro-batch {batch} x {seq} tokens; activation checkpointing {state}{extra}"


def _trained_role(name: str, arch: Architecture, head: str, model_args: Any, peft_config: Any) -> Role:
    quant, nested = _quantization(model_args)
    return Role(name, arch, head, model_args.dtype, quant, nested, peft_config, trainable=True)


def plan_sft(data_args, args, model_args, ctx: Context, plan: StagePlan) -> None:
    arch, label = ctx.model(model_args.model_name_or_path, "model_name_or_path", model_args.model_revision)
    _model_rows(plan, arch, label)
    text, info = describe_dataset(
        data_args.dataset_name,
        "sft",
        ctx,
        config=data_args.dataset_config,
        train_split=data_args.dataset_train_split,
        test_split=data_args.dataset_test_split,
    )
    plan.rows.append(("data", text))
    plan.rows.append(("loss", _sft_loss(args, info.get("format"))))
    if args.chat_template_path:
        found = os.path.isfile(args.chat_template_path) or not args.chat_template_path.endswith((".jinja", ".j2"))
        if not found:
            raise DryRunError(
                f"chat_template_path '{args.chat_template_path}' does not exist (it is read relative to the working "
                "directory: run from the repository root)"
            )
        plan.notes.append(f"chat template from {args.chat_template_path}")
    _trained_model(plan, arch, "lm", data_args, args, model_args, ctx, args.max_length or 1024, logits=True)


def _sft_loss(args: Any, fmt: str | None) -> str:
    if args.assistant_only_loss:
        return "assistant turns only (assistant_only_loss)"
    if fmt == "prompt-completion" and args.completion_only_loss is not False:
        return "completion tokens only (TRL's default for prompt-completion data)"
    if fmt and fmt.startswith("conversational"):
        return "assistant turns when the chat template marks them with {% generation %}, else every token"
    return "every token" if fmt else "by format: completion only (prompt-completion), else per the chat template"


def _model_rows(plan: StagePlan, arch: Architecture, label: str, head: str = "lm") -> None:
    plan.rows.append(("model", label))
    plan.rows.append(("architecture", arch.shape()))
    total = arch.count(head)["total"]
    what = " (reward model: the LM head replaced by a scalar score head)" if head == "reward" else ""
    plan.rows.append(("parameters", f"{total:,} ({human(total)}){what}"))


def _trained_model(plan, arch, head, data_args, args, model_args, ctx, seq, logits, sequences_per_row=1) -> None:
    """Rows and memory of the stages that train one model with a transformers/TRL Trainer (sft, reward)."""
    peft_config = _peft(model_args, "reward" if head == "reward" else "causal_lm")
    role = _trained_role("model", arch, head, model_args, peft_config)
    precision, e = _precision(args, model_args, ctx.launch)
    plan.rows.append(("precision", precision))
    if peft_config is not None:
        plan.rows.append(("peft", _peft_row(peft_config, role)))
    unit = "comparisons" if sequences_per_row > 1 else f"sequences of <= {seq} tokens"
    batch, total = _batch_row(args, ctx.launch, unit)
    plan.rows.append(("batch", batch))
    plan.rows.append(("schedule", _schedule_row(args, total, data_args.max_train_samples)))
    checkpointing = _checkpointing(args, ctx.launch)
    micro = args.per_device_train_batch_size * sequences_per_row
    acts = training_activations(arch, micro, seq, e, checkpointing, logits, _eager(model_args))
    plan.rows.append(("activations", _activation_row(checkpointing, micro, seq)))
    plan.roles = [role]
    plan.memory = estimate(plan.roles, acts, ctx.launch)
    if ctx.launch.num_processes > 1 and role.quantization and ctx.launch.backend in ("deepspeed", "fsdp"):
        plan.notes.append("4-bit weights are not sharded by ZeRO-3/FSDP here: launch QLoRA on several GPUs with DDP")
    plan.produces = arch


def plan_reward(data_args, args, model_args, ctx: Context, plan: StagePlan) -> None:
    arch, label = ctx.model(model_args.model_name_or_path, "model_name_or_path", model_args.model_revision)
    _model_rows(plan, arch, label, head="reward")
    text, info = describe_dataset(
        data_args.dataset_name,
        "reward",
        ctx,
        config=data_args.dataset_config,
        train_split=data_args.dataset_train_split,
        test_split=data_args.dataset_test_split,
    )
    plan.rows.append(("data", text))
    k = 2
    if info.get("format") == "ranked":
        k = info.get("completions") or 4
        assumed = "" if info.get("completions") else " (assumed; the rows say at load time)"
        plan.rows.append(
            ("comparisons", f"K={k}{assumed} ranked completions per prompt: up to {k * (k - 1) // 2} pairs")
        )
    elif info.get("format") == "pairwise preference":
        plan.rows.append(("comparisons", "pairs (K=2): one chosen, one rejected completion per prompt"))
        if data_args.dataset_name and not os.path.exists(data_args.dataset_name):
            plan.notes.append(
                "comparisons come from a public pairwise dataset: it replaces the tiny world's sample-and-rank step "
                "(`hf-rlhf sample` + a labeler)"
            )
    if args.reference_dataset:
        _, ref = describe_dataset(
            args.reference_dataset,
            "sft",
            ctx,
            test_split=None,
            formats=STAGE_FORMATS["sft"][:2],
            what="reference_dataset",
        )
        fmt = ref.get("format", "columns checked at load time")
        where = f"{args.reference_max_samples} rows of {args.reference_dataset} ({fmt}, split train)"
        plan.rows.append(("centring", f"the mean reward over {where} is set to 0"))
    else:
        plan.rows.append(("centring", "none (no reference_dataset): the RL stage cannot normalize_reward"))
    seq = args.max_length or 1024
    _trained_model(plan, arch, "reward", data_args, args, model_args, ctx, seq, logits=False, sequences_per_row=k)


def plan_sample(data_args, args, ctx: Context, plan: StagePlan) -> None:
    arch, label = ctx.model(args.model_name_or_path, "model_name_or_path")
    _model_rows(plan, arch, label)
    text, info = describe_dataset(
        data_args.dataset_name,
        "sample",
        ctx,
        config=data_args.dataset_config,
        train_split=data_args.dataset_train_split,
    )
    plan.rows.append(("data", text))
    k = args.num_completions
    plan.rows.append(
        (
            "sampling",
            f"K={k} completions per prompt, temperature {args.temperature:g}, <= {args.max_new_tokens} new "
            f"tokens, {args.batch_size} sequences at a time; ranked by: {args.labeler}",
        )
    )
    prompt = _prompt_tokens(info, arch, args.max_new_tokens)
    plan.roles = [Role("model", arch, dtype="float32", prepared=False)]
    acts = rollout_activations(arch, args.batch_size, prompt + args.max_new_tokens, 4)
    plan.rows.append(("activations", f"generation of {args.batch_size} x {prompt + args.max_new_tokens} tokens"))
    plan.memory = estimate(plan.roles, acts, ctx.launch)
    plan.extra["num_completions"] = k


def _prompt_tokens(info: dict, arch: Architecture, new_tokens: int) -> int:
    prompt = info.get("prompt_tokens") or DEFAULT_PROMPT_TOKENS
    if arch.max_positions:
        prompt = max(1, min(prompt, arch.max_positions - new_tokens))
    return prompt


def plan_rl(data_args, rl_args, args, model_args, ctx: Context, plan: StagePlan) -> None:
    algorithm = rl_args.algorithm
    arch, label = ctx.model(model_args.model_name_or_path, "model_name_or_path", model_args.model_revision)
    _model_rows(plan, arch, label)
    text, info = describe_dataset(
        data_args.dataset_name,
        "rl",
        ctx,
        config=data_args.dataset_config,
        train_split=data_args.dataset_train_split,
        test_split=data_args.dataset_test_split,
    )
    plan.rows.append(("data", text))
    reward_arch, rewards = None, []
    if rl_args.reward_model_path:
        reward_arch, reward_label = ctx.model(rl_args.reward_model_path, "reward_model_path")
        rewards.append(f"reward model {reward_label}")
    rewards += [f"reward function {name}" for name in rl_args.reward_funcs or []]
    if not rewards:
        raise DryRunError("rl needs `reward_model_path` and/or `reward_funcs`")
    weights = list(args.reward_weights) if args.reward_weights else [1.0] * len(rewards)
    if len(weights) != len(rewards):
        raise DryRunError(f"reward_weights has {len(weights)} entries for {len(rewards)} rewards: {rewards}")
    plan.rows.append(("rewards", "; ".join(f"{r} (weight {w:g})" for r, w in zip(rewards, weights, strict=True))))

    peft_config = _peft(model_args)
    quant, nested = _quantization(model_args)
    precision, e = _precision(args, model_args, ctx.launch)
    plan.rows.append(("precision", precision))
    policy = Role("policy", arch, "lm", model_args.dtype, quant, nested, peft_config, trainable=True)
    if peft_config is not None:
        plan.rows.append(("peft", _peft_row(peft_config, policy)))
    frozen = {"dtype": model_args.dtype, "quantization": quant, "nested_quant": nested, "prepared": False}
    roles, world, batch = [policy], ctx.launch.num_processes, args.per_device_train_batch_size
    value_arch = None
    if algorithm == "ppo":
        new_tokens = args.max_new_tokens
        roles.append(_reference(arch, peft_config, frozen))
        value_arch = reward_arch
        if rl_args.value_model_path:
            value_arch, _ = ctx.model(rl_args.value_model_path, "value_model_path")
        if value_arch is None:
            raise DryRunError("ppo needs `value_model_path` or `reward_model_path` to initialise the value model")
        value_peft = _peft(model_args, "value")  # its own adapter and score head (hf_rlhf.stages.rl.ppo_models)
        shared = "policy" if getattr(args, "shared_base", False) else None
        value = Role("value", value_arch, "reward", model_args.dtype, quant, nested, value_peft, trainable=True)
        roles.append(dataclasses.replace(value, shared_with=shared))
        per_update = args.rollout_batch_size
        plan.rows.append(
            (
                "rollouts",
                f"{per_update} prompts per process x {world} = {per_update * world} per update, {args.max_steps} "
                f"updates; each {args.num_ppo_epochs} epochs x {args.num_mini_batches} minibatches "
                f"(micro-batch {batch}); temperature {args.temperature:g}, kl_coef {args.kl_coef:g} "
                f"({args.kl_estimator}), lr {args.learning_rate:g}",
            )
        )
        rollout_batch = min(args.rollout_forward_batch_size, per_update)
    else:
        new_tokens = args.max_completion_length
        if args.beta:  # TRL prepares the reference model (sharded under ZeRO-3 / FSDP)
            roles.append(_reference(arch, peft_config, {**frozen, "prepared": True}))
        per_step = batch * args.gradient_accumulation_steps * world
        steps = f"{args.max_steps} steps" if args.max_steps > 0 else f"{args.num_train_epochs:g} epochs"
        plan.rows.append(
            (
                "groups",
                f"{args.num_generations} completions per prompt; {per_step} completions "
                f"({per_step // args.num_generations} prompts) per optimizer step, {steps}; beta {args.beta:g}, "
                f"lr {args.learning_rate:g}",
            )
        )
        rollout_batch = args.generation_batch_size or batch * args.gradient_accumulation_steps
    if reward_arch is not None and algorithm == "ppo" and getattr(args, "shared_base", False):
        roles.append(
            Role("reward", reward_arch, "reward", peft_config=_peft(model_args, "reward"), shared_with="policy")
        )
    elif reward_arch is not None:
        roles.append(Role("reward", reward_arch, "reward", **frozen))

    checkpointing, eager = _checkpointing(args, ctx.launch), _eager(model_args)
    if algorithm == "ppo" and checkpointing:
        plan.notes.append("hf_rlhf's PPO trainer does not turn on activation checkpointing: planned without it")
        checkpointing = False
    prompt = _prompt_tokens(info, arch, new_tokens)
    seq = prompt + new_tokens
    update = training_activations(arch, batch, seq, e, checkpointing, True, eager)
    if value_arch is not None:
        update += training_activations(value_arch, batch, seq, e, checkpointing, False, eager)
    rollout = rollout_activations(arch, rollout_batch, seq, e, eager)
    peak = "update" if update >= rollout else "rollout"
    extra = f" (prompt <= {prompt} assumed + {new_tokens} new); rollout {rollout_batch} at a time; peak: {peak}"
    plan.rows.append(("activations", _activation_row(checkpointing, batch, seq, extra)))
    plan.roles = roles
    plan.memory = estimate(roles, max(update, rollout), ctx.launch)
    unsharded = [r.name for r in roles if not r.prepared and not r.shared_with]
    if algorithm == "ppo" and unsharded and ctx.launch.shards()[0] > 1:
        plan.notes.append(
            f"the frozen {' and '.join(unsharded)} model{'s are' if len(unsharded) > 1 else ' is'} not passed to "
            "accelerator.prepare, so ZeRO-3/FSDP does not shard it (counted whole on every GPU); with zero3_init_flag "
            "it is partitioned at load and needs a DeepSpeed engine of its own: for PPO prefer ddp.yaml or "
            "deepspeed_zero2.yaml"
        )
    if algorithm == "ppo" and getattr(args, "shared_base", False):
        plan.notes.append(
            "shared_base: policy, reference (adapters off), value and reward are adapters of one copy of the SFT "
            "model; the reward stage must have trained a LoRA adapter on that same SFT model"
        )
    plan.produces = arch


def _reference(arch: Architecture, peft_config: Any, frozen: dict) -> Role:
    if peft_config is not None:
        return Role("reference", arch, shared_with="policy")
    return Role("reference", arch, "lm", **frozen)


# --------------------------------------------------------------------------------------------- entry points
def parse_stage(stage: str, argv: list[str]) -> tuple:
    """The stage's dataclasses, parsed by its own parser from `argv` (as the real run does)."""
    from ..stages import STAGES

    module = STAGES[stage].module
    parser = module.make_parser(algorithm=module.algorithm_of(argv)) if stage == "rl" else module.make_parser()
    try:
        return parse_stage_args(parser, argv)
    except ValueError as e:
        if isinstance(e, RecipeError) or not any(flag in str(e) for flag in ("bf16", "fp16")):
            raise
        # bf16/fp16 recipes cannot be validated on a machine without a GPU: plan them as they are, on the CPU
        return parse_stage_args(parser, [*argv, "--use_cpu", "true"])


def plan_stage(stage: str, argv: list[str], ctx: Context) -> StagePlan:
    parsed = parse_stage(stage, argv)
    plan = StagePlan(stage, list(argv))
    if stage == "pretrain":
        plan_pretrain(*parsed, ctx, plan)
    elif stage == "sft":
        plan_sft(*parsed, ctx, plan)
    elif stage == "reward":
        plan_reward(*parsed, ctx, plan)
    elif stage == "rl":
        plan_rl(*parsed, ctx, plan)
    elif stage == "sample":
        plan_sample(*parsed, ctx, plan)
    else:
        raise DryRunError(f"--dry-run plans the training stages and pipelines, not '{stage}'")
    return plan


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
            f"hf-rlhf dry run of {shown(self.recipe)}: nothing downloaded, no weights built",
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


def plan_pipeline(
    path: str,
    output_dir: str | None = None,
    accelerate_config: str | None = None,
    gpu_memory_gb: float | None = None,
    *,
    until: str | None = None,
    replace: str | None = None,
    extra_argv: list[str] | None = None,
) -> PipelinePlan:
    """Plan every stage of a pipeline recipe (up to `until`), each stage's output feeding the next.

    Args:
        path (`str`): The pipeline recipe.
        output_dir (`str`, *optional*): Overrides the recipe's output directory.
        accelerate_config (`str`, *optional*): Overrides the recipe's `launch.accelerate_config`.
        gpu_memory_gb (`float`, *optional*): GPU memory per device; default the recipe's `launch.gpu_memory_gb`, 80.
        until (`str`, *optional*): Plan the stages up to this one only.
        replace (`str`, *optional*): A stage recipe that takes the place of `until`'s recipe.
        extra_argv (`list[str]`, *optional*): Command-line options appended to `until`'s arguments.
    """
    from ..data.world import WORLD_DATASETS as WORLD_NAMES
    from ..pipeline import stage_argv
    from ..recipes import load_pipeline_recipe
    from ..stages import STAGES

    recipe = load_pipeline_recipe(path, output_dir)
    launch_section = recipe.launch
    launch = read_launch(
        accelerate_config or launch_section.get("accelerate_config"),
        gpu_memory_gb or launch_section.get("gpu_memory_gb"),
    )
    ctx = Context(launch)
    data: dict[str, str] = {}
    world = None
    if recipe.world is not None:
        data = {name: os.path.join(recipe.world.output_dir, name) for name in WORLD_NAMES}
        ctx.world = {os.path.normpath(p): name for name, p in data.items()}
        data["world_seed"] = str(recipe.world.seed)
        w = recipe.world
        world = (
            f"the tiny world (seed {w.seed}): {w.num_documents} documents, {w.num_demonstrations} demonstrations, "
            f"{w.num_eval_prompts} held-out prompts, generated into {w.output_dir}"
        )
    if replace is not None:
        recipe.stages.setdefault(until, {})["recipe"] = os.path.abspath(replace)
        recipe.stages = {name: recipe.stages[name] for name in STAGES if name in recipe.stages}
    stage_dirs: dict[str, str] = {}
    plans = []
    for name in recipe.stages:
        argv = stage_argv(recipe, name, {**data, **stage_dirs})
        if name == until and extra_argv:
            argv += extra_argv
        plan = plan_stage(name, argv, ctx)
        plans.append(plan)
        out_dir = os.path.join(recipe.output_dir, name)
        # `merge: true` hands the next stages `<stage>-merged` (adapter merged into its base), as run_pipeline does
        stage_dirs[name] = out_dir + "-merged" if recipe.stages[name].get("merge") else out_dir
        ctx.outputs.update({os.path.normpath(out_dir): plan, os.path.normpath(stage_dirs[name]): plan})
        if name == until:
            break
    hub = None
    if recipe.hub is not None:
        reads = "the next stage reads it from there" if recipe.hub.pull else "the next stage reads the local directory"
        hub = (
            f"each stage is pushed to {recipe.hub.repo_id('<stage>', recipe.output_dir)} and {reads}; the dry run "
            "contacts no Hub and plans with the local directories"
        )
    return PipelinePlan(recipe.path, recipe.output_dir, launch, plans, world, hub)


def find_pipeline(recipe_path: str, stage: str) -> tuple[str, bool] | None:
    """A pipeline recipe beside `recipe_path` that lists it (`(path, False)`), else one with the same stage, in
    which it would take that stage's place (`(path, True)`); `pipeline.yaml` first."""
    folder = os.path.dirname(os.path.abspath(recipe_path))
    candidates = sorted(
        glob.glob(os.path.join(folder, "*.yaml")), key=lambda p: (os.path.basename(p) != "pipeline.yaml", p)
    )
    pipelines = []
    for candidate in candidates:
        try:
            raw = load_yaml_mapping(candidate)
        except RecipeError:
            continue
        if isinstance(raw.get("stages"), dict):
            pipelines.append((candidate, raw["stages"]))
    target = os.path.abspath(recipe_path)
    for candidate, stages in pipelines:
        spec = stages.get(stage) or {}
        if spec.get("recipe") and os.path.abspath(os.path.join(folder, spec["recipe"])) == target:
            return candidate, False
    for candidate, stages in pipelines:
        if stage in stages:
            return candidate, True
    return None


def stage_main(argv: list[str]) -> StagePlan:
    """`hf-rlhf <stage> --config <recipe> [options] --dry-run`: print the stage's plan and memory estimate."""
    stage, rest = argv[0], list(argv[1:])
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--dry-run", action="store_true")
    pre.add_argument("--accelerate_config")
    pre.add_argument("--gpu_memory_gb", type=float)
    opts, rest = pre.parse_known_args(rest)
    config = (
        rest[rest.index("--config") + 1] if "--config" in rest and rest.index("--config") + 1 < len(rest) else None
    )
    found = find_pipeline(config, stage) if config and os.path.isfile(config) else None
    if found is not None:
        pipeline_path, replaced = found
        extra = [a for i, a in enumerate(rest) if a != "--config" and (i == 0 or rest[i - 1] != "--config")]
        pipeline = plan_pipeline(
            pipeline_path,
            accelerate_config=opts.accelerate_config,
            gpu_memory_gb=opts.gpu_memory_gb,
            until=stage,
            replace=config if replaced else None,
            extra_argv=extra,
        )
        plan, launch = pipeline.stages[-1], pipeline.launch
        how = f"in place of its '{stage}' recipe" if replaced else f"as its '{stage}' stage"
        header = f"hf-rlhf dry run of {config}, planned {how} in {shown(pipeline_path)} (inputs wired by the pipeline)"
    else:
        launch = read_launch(opts.accelerate_config, opts.gpu_memory_gb)
        plan = plan_stage(stage, rest, Context(launch))
        header = f"hf-rlhf dry run of {config or 'the command line'}"
    print("\n".join([f"{header}: nothing downloaded, no weights built", f"launch  {launch.describe()}", ""]))
    print(plan.format() + "\n\n" + FORMULA)
    return plan
