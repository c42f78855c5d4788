"""The rows every stage's plan shares (precision, LoRA, batch, schedule, activations) and the trained-model plan of
the Trainer-based stages; the stages' own rows are in their `plan(...)`."""

from __future__ import annotations

import math
from typing import Any

from . import DryRunError
from .architecture import Architecture, human
from .context import StagePlan
from .launch import Launch
from .memory import Role, estimate, optimizer_note, rollout_activations, training_activations

DEFAULT_PROMPT_TOKENS = 512  # RL rollouts: prompt length assumed when the dataset does not say


def precision_row(training_args: Any, model_args: Any, launch: Launch, dtype: str | None = None) -> tuple[str, float]:
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


def quantization_of(model_args: Any) -> tuple[str | None, bool]:
    if getattr(model_args, "load_in_4bit", False):
        return "4bit", bool(model_args.use_bnb_nested_quant)
    if getattr(model_args, "load_in_8bit", False):
        return "8bit", False
    return None, False


def peft_config_of(model_args: Any, role: str = "causal_lm") -> Any:
    """The peft config the stages build for a role (`hf_rlhf.modeling.peft_config_for`), or None."""
    from ..modeling import peft_config_for

    return peft_config_for(model_args, role)


def peft_row(peft_config: Any, role: Role) -> str:
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


def batch_row(args: Any, launch: Launch, unit: str = "sequences") -> tuple[str, int]:
    per_device, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    total = per_device * accumulation * launch.num_processes
    procs = f"{launch.num_processes} process" + ("es" if launch.num_processes > 1 else "")
    return (
        f"{per_device} per device x {accumulation} accumulation x {procs} = {total} {unit} per optimizer step",
        total,
    )


def schedule_row(args: Any, global_batch: int, max_train_samples: int | None) -> str:
    lr = f"lr {args.learning_rate:g} {getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)}"
    if args.max_steps and args.max_steps > 0:
        return f"{args.max_steps} optimizer steps (max_steps); {lr}"
    epochs = f"{args.num_train_epochs:g} epoch" + ("" if args.num_train_epochs == 1 else "s")
    if max_train_samples:
        steps = math.ceil(max_train_samples / global_batch) * math.ceil(args.num_train_epochs)
        return f"{epochs} of at most {max_train_samples:,} rows: <= {steps:,} optimizer steps; {lr}"
    return f"{epochs} (steps = rows / {global_batch}, rows known at load time); {lr}"


def uses_checkpointing(args: Any, launch: Launch) -> bool:
    in_recipe = any((getattr(args, "activation_checkpointing", None), getattr(args, "gradient_checkpointing", None)))
    if in_recipe and launch.activation_checkpointing:
        raise DryRunError(
            "activation checkpointing is on in both the recipe and the FSDP config (fsdp_activation_checkpointing), "
            "which transformers refuses: pass --activation_checkpointing false, or turn FSDP's off"
        )
    return in_recipe or launch.activation_checkpointing


def uses_eager(model_args: Any) -> bool:
    return getattr(model_args, "attn_implementation", None) == "eager"


def activation_row(checkpointing: bool, batch: int, seq: int, extra: str = "") -> str:
    state = "on" if checkpointing else "off"
    return f"micro-batch {batch} x {seq} tokens; activation checkpointing {state}{extra}"


def trained_role(
    name: str, arch: Architecture, head: str, model_args: Any, peft_config: Any, optim: Any = None, optim_args=None
) -> Role:
    quant, nested = quantization_of(model_args)
    optim = "adamw_torch" if optim is None else optim
    return Role(
        name, arch, head, model_args.dtype, quant, nested, peft_config, True, optim=optim, optim_args=optim_args
    )


def model_rows(plan: StagePlan, arch: Architecture, label: str, head: str = "lm") -> None:
    plan.rows.append(("model", label))
    plan.rows.append(("architecture", arch.shape()))
    total = arch.count(head)["total"]
    what = " (reward model: the LM head replaced by a scalar score head)" if head == "reward" else ""
    plan.rows.append(("parameters", f"{total:,} ({human(total)}){what}"))


def trained_model(plan, arch, head, data_args, args, model_args, ctx, seq, logits, sequences_per_row=1) -> None:
    """Rows and memory of the stages that train one model with a transformers/TRL Trainer (sft, reward)."""
    peft_config = peft_config_of(model_args, "reward" if head == "reward" else "causal_lm")
    role = trained_role("model", arch, head, model_args, peft_config, args.optim, args.optim_args)
    text, e = precision_row(args, model_args, ctx.launch)
    plan.rows.append(("precision", text))
    if peft_config is not None:
        plan.rows.append(("peft", peft_row(peft_config, role)))
    unit = "comparisons" if sequences_per_row > 1 else f"sequences of <= {seq} tokens"
    batch, total = batch_row(args, ctx.launch, unit)
    plan.rows.append(("batch", batch))
    plan.rows.append(("schedule", schedule_row(args, total, data_args.max_train_samples)))
    checkpointing = uses_checkpointing(args, ctx.launch)
    micro = args.per_device_train_batch_size * sequences_per_row
    logits = logits and not liger(args, plan)
    acts = training_activations(arch, micro, seq, e, checkpointing, logits, uses_eager(model_args))
    plan.rows.append(("activations", activation_row(checkpointing, micro, seq)))
    plan.roles = [role]
    plan.memory = estimate(plan.roles, acts, ctx.launch)
    optimizer_notes(plan, args)
    if ctx.launch.num_processes > 1 and role.quantization and ctx.launch.backend in ("deepspeed", "fsdp"):
        plan.notes.append("4-bit weights are not sharded by ZeRO-3/FSDP here: launch QLoRA on several GPUs with DDP")
    plan.produces = arch


def liger(args: Any, plan: StagePlan) -> bool:
    """`use_liger_kernel`: fused linear cross-entropy, so the loss never builds the logits tensor (noted)."""
    if not getattr(args, "use_liger_kernel", False):
        return False
    plan.notes.append("use_liger_kernel: fused linear cross-entropy, no full logits tensor in the loss (not counted)")
    return True


def optimizer_notes(plan: StagePlan, args: Any) -> None:
    note = optimizer_note(getattr(args, "optim", None), getattr(args, "optim_args", None))
    if note:
        plan.notes.append(note)


def prompt_tokens(info: dict, arch: Architecture, new_tokens: int) -> int:
    prompt = info.get("prompt_tokens") or DEFAULT_PROMPT_TOKENS
    if arch.max_positions:
        prompt = max(1, min(prompt, arch.max_positions - new_tokens))
    return prompt


def reference_role(arch: Architecture, peft_config: Any, frozen: dict) -> Role:
    if peft_config is not None:
        return Role("reference", arch, shared_with="policy")
    return Role("reference", arch, "lm", **frozen)


def rl_activations(arch, value_arch, batch: int, seq: int, rollout_batch: int, e: float, checkpointing, eager, logits):
    """(update, rollout) activation bytes of an RL step: the policy's (and value model's) backward on `batch`
    sequences, and generation plus no-grad scoring of `rollout_batch` at a time (`hf_rlhf.plan.memory`)."""
    update = training_activations(arch, batch, seq, e, checkpointing, logits, eager)
    if value_arch is not None:
        update += training_activations(value_arch, batch, seq, e, checkpointing, False, eager)
    return update, rollout_activations(arch, rollout_batch, seq, e, eager)
