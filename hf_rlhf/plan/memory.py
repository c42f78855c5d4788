"""GPU memory per device of a stage's models and activations: the arithmetic of a plan's `memory/GPU` row.

Memory per GPU, an estimate (expect +-20%), in bytes:

- weights: parameters x bytes per parameter (fp32 4, bf16/fp16 2; 8-bit 1 + a fp32 scale per output row; 4-bit
  NF4/FP4 0.5 + a fp32 absmax per block of 64 weights, 0.016 B with nested quantization; embeddings, norms and the
  LM head stay in `dtype`); LoRA adapters in fp32 (peft's default; bf16 under ZeRO-3, as TRL sets). Divided by N
  under ZeRO-3 / FSDP FULL_SHARD for the models accelerate prepares, plus two gathered layers.
- gradients: trainable parameters x bytes of their dtype (2 under DeepSpeed bf16/fp16); / N under ZeRO-2/3, FSDP.
- optimizer, by `optim`: AdamW (adamw_torch, the default adamw_torch_fused) two moments in the parameter dtype;
  8-bit AdamW (adamw_bnb_8bit, adamw_8bit, paged_adamw_8bit) 2 B per parameter, the paged variants moved to CPU
  memory by bitsandbytes under GPU memory pressure; adafactor factored, ~4.(1/rows + 1/cols) B per weight; sgd
  nothing, or one moment with `momentum` in `optim_args`; lion, adagrad, rmsprop one moment; under DeepSpeed
  bf16/fp16 a fp32 master copy (4 B) and the states in fp32 (AdamW: 12 B); / N under ZeRO-1/2/3 and FSDP; nothing
  on the GPU when offloaded.
- activations of one micro-batch of b sequences of s tokens (hidden h, MLP width i, KV width kv = KV heads x head
  dim, L layers, vocabulary V), e bytes per value (2 with 16-bit weights, 4 in fp32, 4.5 for fp32 weights under
  bf16 autocast): b.s.(8h + 4.5i + 2kv).e per layer, a fit to what autograd saves in transformers' Llama layers
  (measured with `torch.autograd.graph.saved_tensors_hooks`: 3.9 bytes per value in fp32, 2.1 with bf16 weights,
  4.4-4.8 under autocast; SDPA attention, whose memory is linear in s; eager attention adds (l + 4).a.b.s^2 for a
  heads). With activation checkpointing: b.s.h.e per layer plus one layer's recomputation. A causal LM's loss adds
  b.s.V.(l + 12) at the backward peak (logits, their fp32 copy and log-softmax, the gradient; l = 2 bytes per logit,
  4 in pure fp32); not with `use_liger_kernel`, whose fused linear cross-entropy never builds the logits tensor. RL adds the rollout: a KV cache of 2.L.kv.b.s.l and no-grad logits b.s.V.(l + 4); the peak is the
  larger of rollout and update.
- overhead: 1 GiB (CUDA context, allocator); fragmentation is not counted, so keep ~10% free.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .architecture import Architecture, human
from .launch import Launch

GiB = 1024**3
OVERHEAD_BYTES = GiB
DTYPE_BYTES = {"float32": 4, "float": 4, "float64": 8, "bfloat16": 2, "float16": 2, "half": 2}
ADAMW = ("adamw_torch", "adamw_torch_fused", "adamw_hf", "adamw_torch_xla", "adamw_torch_npu_fused")
FORMULA = (
    "memory per GPU = weights (bytes/param: fp32 4, bf16 2, int8 ~1, nf4 ~0.52-0.56; LoRA fp32; /N under ZeRO-3 or "
    "FSDP FULL_SHARD) + gradients and optimizer states of trainable params (torch AdamW: grad + 2 moments in the "
    "param dtype; 8-bit AdamW 2 B; DeepSpeed: 2 + 12 B; /N under ZeRO/FSDP) + activations (per layer "
    "b.s.(8h + 4.5i + 2kv).e, or b.s.h.e + one layer with activation checkpointing; + logits b.s.V.(l + 12), none "
    "with liger; RL: max(update, rollout KV cache + no-grad logits)) + 1 GiB overhead. An estimate (+-20%): keep "
    "~10% free. Formulas in hf_rlhf/plan/memory.py."
)


def optim_name(optim: Any) -> str:
    return str(getattr(optim, "value", optim) or "adamw_torch").lower()


def optimizer_state_bytes(optim: Any, param_bytes: float, optim_args: str | None = None, dims=(1, 1)) -> float:
    """Bytes of optimizer state per trainable parameter (module docstring); `dims` are a typical weight matrix's
    (rows, cols), for adafactor's factored second moment."""
    name = optim_name(optim)
    momentum = re.search(r"momentum=([0-9.eE+-]+)", optim_args or "")
    momentum = bool(momentum and float(momentum.group(1)))
    if "adafactor" in name:
        return 4 * (1 / dims[0] + 1 / dims[1])
    if name in ("lomo", "adalomo"):
        return 0.0
    if "sgd" in name and "schedule_free" not in name:
        moments = 1 if momentum else 0
    elif "ademamix" in name:
        moments = 3
    elif any(k in name for k in ("lion", "adagrad", "rmsprop")):
        moments = 1 + (1 if "rmsprop" in name and momentum else 0)
    else:
        moments = 2
    if "8bit" in name:
        return moments * 1.0
    if "4bit" in name:
        return moments * 0.5
    if "32bit" in name or "bnb" in name:
        return moments * 4.0
    return moments * param_bytes


def optimizer_note(optim: Any, optim_args: str | None = None) -> str | None:
    """What the estimate assumes of a non-default optimizer (None for torch AdamW)."""
    name = optim_name(optim)
    if name in ADAMW:
        return None
    per = optimizer_state_bytes(name, 4, optim_args, (4096, 4096))
    state = "factored second moment" if "adafactor" in name else f"{per:g} B per trainable parameter (fp32 params)"
    note = f"optimizer {name}: {state}"
    if name.startswith("paged_"):
        note += "; paged: bitsandbytes moves its states to CPU memory under GPU memory pressure (an upper bound)"
    return note


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
    optim: str = "adamw_torch"  # TrainingArguments.optim of the trained roles
    optim_args: str | None = None

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
    if role.peft_config is not None:
        dims = (role.peft_config.r, role.arch.hidden)
    else:
        dims = (role.arch.hidden, role.arch.intermediate)
    if deepspeed_mixed:  # fp32 master weights, and the states in fp32
        grad_bytes, optim_bytes = 2, 4 + optimizer_state_bytes(role.optim, 4, role.optim_args, dims)
    else:
        grad_bytes, optim_bytes = param_bytes, optimizer_state_bytes(role.optim, param_bytes, role.optim_args, dims)
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
