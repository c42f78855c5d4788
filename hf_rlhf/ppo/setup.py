"""How PPO trains: the precision policy, the optimizer and scheduler from the `TrainingArguments` options, gradient
clipping per model, activation checkpointing, and the launch layouts and options it refuses.

Precision: `bf16` / `fp16` in the config (else the accelerate config's `mixed_precision`) turn on one autocast for
every forward of PPO (generation, the rollout's recompute, the reference and the training forward); the prepared
model returns fp32 logits and values; log-probabilities, KL, entropy and advantages are computed in fp32
(`hf_rlhf.ppo.core` upcasts one chunk of rows at a time). Under autocast the trainable adapters and scalar heads keep
fp32 master weights (all trainable weights under fp16, whose gradient scaler needs them).
"""

from __future__ import annotations

import logging

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from torch import nn
from transformers import Trainer, get_scheduler

from .config import PPOConfig, unsupported_layout

logger = logging.getLogger(__name__)

# TrainingArguments options PPO does not use, with the value that means "off": another value is refused.
IGNORED_OPTIONS = {
    "torch_compile": False,
    "neftune_noise_alpha": None,
    "label_smoothing_factor": 0.0,
    "use_liger_kernel": False,
    "eval_strategy": "no",
    "deepspeed": None,
    "optim_target_modules": None,
    "auto_find_batch_size": False,
}
# optimizers that need the Trainer's model-specific set-up (GaLore, APOLLO, LOMO)
MODEL_SPECIFIC_OPTIMIZERS = ("galore", "apollo", "lomo")


def check_inputs(args, policy, ref_policy, ptx_dataset) -> None:
    """The trainer's arguments that must come together: a reference (or a peft policy), PPO-ptx's data."""
    if ref_policy is None and not hasattr(policy, "disable_adapter"):
        raise ValueError(
            "ref_policy=None makes the policy with its adapters disabled the reference, which needs a peft "
            "(LoRA) policy; pass a frozen copy of the SFT model as ref_policy"
        )
    if (args.ptx_coef > 0) != (ptx_dataset is not None):
        raise ValueError("PPO-ptx needs both ptx_coef > 0 and a ptx_dataset (one was given without the other)")


def check_options(args: PPOConfig) -> None:
    """Refuse the `TrainingArguments` options PPO would otherwise silently ignore."""
    for name, off in IGNORED_OPTIONS.items():
        value = getattr(args, name, off)
        value = getattr(value, "value", value)  # an enum (eval_strategy)
        if value not in (off, None, "", []):
            extra = " (launch with --accelerate_config zero2 instead)" if name == "deepspeed" else ""
            raise ValueError(f"PPO does not support `{name}: {value}`: remove it from the config{extra}")
    if getattr(args, "fsdp", None):
        raise ValueError(f"PPO does not support `fsdp: {args.fsdp}`: {unsupported_layout('fsdp', 0)}")
    optim = str(getattr(args.optim, "value", args.optim))
    if any(name in optim for name in MODEL_SPECIFIC_OPTIMIZERS):
        raise ValueError(
            f"PPO does not support `optim: {optim}`; use adamw_torch (default), adamw_torch_fused, "
            "adafactor or a bitsandbytes optimizer such as adamw_bnb_8bit / paged_adamw_8bit"
        )


def mixed_precision(args: PPOConfig) -> str | None:
    """The recipe's `bf16` / `fp16`; `None` leaves it to the accelerate config (`ACCELERATE_MIXED_PRECISION`)."""
    return "bf16" if args.bf16 else "fp16" if args.fp16 else None


def make_accelerator(args: PPOConfig, logging_dir: str) -> Accelerator:
    """PPO's `Accelerator`: gradient accumulation, the config's mixed precision, trackers writing to `logging_dir`;
    refuses ZeRO-3 and FSDP (`unsupported_layout`)."""
    trackers = [r for r in (args.report_to or []) if r != "none"] or None
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=mixed_precision(args),
        cpu=args.use_cpu,
        log_with=trackers,
        project_dir=logging_dir if trackers else None,
        step_scheduler_with_optimizer=False,  # stepped once per optimizer step, not once per process
    )
    backend = {DistributedType.FSDP: "fsdp", DistributedType.DEEPSPEED: "deepspeed"}.get(accelerator.distributed_type)
    stage = accelerator.state.deepspeed_plugin.zero_stage if backend == "deepspeed" else 0
    message = unsupported_layout(backend or "ddp", stage)
    if message:
        raise ValueError(message)
    return accelerator


def default_logging_dir(args: PPOConfig) -> str:
    """Where trackers write, as the Trainer's `TensorBoardCallback` does (`hf_rlhf.completions_log`)."""
    from ..completions_log import default_logging_dir as tensorboard_dir

    return tensorboard_dir(args.output_dir)


def is_head(name: str) -> bool:
    """A scalar head of a value or reward model (`score`, the sequence-classification head)."""
    return name == "score" or name.startswith("score.") or ".score." in name or name.endswith(".score")


def keep_fp32_master_weights(model: nn.Module, mixed: str, is_adapter_model: bool) -> int:
    """Under autocast, cast trainable half-precision weights to fp32 (autocast computes in 16 bits from them):
    adapters and scalar heads under bf16, every trainable weight under fp16. Returns how many tensors were cast."""
    cast = 0
    for name, p in model.named_parameters():
        if not p.requires_grad or p.dtype not in (torch.bfloat16, torch.float16):
            continue
        if mixed == "fp16" or is_adapter_model or is_head(name):
            p.data = p.data.float()
            cast += 1
    return cast


def gradient_checkpointing(args: PPOConfig, *models: nn.Module) -> None:
    """`gradient_checkpointing: true` for the trained models (non-reentrant unless the config says otherwise)."""
    if not args.gradient_checkpointing:
        return
    kwargs = args.gradient_checkpointing_kwargs or {"use_reentrant": False}
    for model in models:
        if not hasattr(model, "gradient_checkpointing_enable"):  # a role of the shared base: the policy's backbone
            continue
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        if kwargs.get("use_reentrant", True) and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()  # frozen embeddings (LoRA): the reentrant checkpoint needs a grad input


def parameter_groups(args: PPOConfig, groups: dict[str, list[nn.Parameter]]) -> list[dict]:
    """Optimizer groups: policy and value (`value_learning_rate`), each with weight decay on matrices only (biases
    and norms excluded, as the Trainer does)."""
    lrs = {"policy": args.learning_rate, "value": args.value_learning_rate or args.learning_rate}
    out = []
    for name, params in groups.items():
        matrices, vectors = [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]
        for chosen, decay in ((matrices, args.weight_decay), (vectors, 0.0)):
            if chosen:
                out.append({"params": chosen, "lr": lrs[name], "weight_decay": decay})
    return out


def make_optimizer(args: PPOConfig, model: nn.Module, groups: dict[str, list[nn.Parameter]]):
    """The config's `optim` (`optim_args`, betas, `adam_epsilon`) through the Trainer's own resolver."""
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
    return optimizer_cls(parameter_groups(args, groups), lr=args.learning_rate, **kwargs)


def make_scheduler(args: PPOConfig, optimizer, num_steps: int):
    """The config's `lr_scheduler_type` with `lr_scheduler_kwargs`, warm-up from `warmup_steps` / `warmup_ratio`."""
    return get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        args.get_warmup_steps(num_steps),
        num_training_steps=num_steps,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs or None,
    )


def clip_gradients(accelerator: Accelerator, args: PPOConfig, groups: dict[str, list[nn.Parameter]]) -> dict:
    """Clip the policy's and the value model's gradients separately (`max_grad_norm`, `value_max_grad_norm`);
    returns each norm before clipping. Under DeepSpeed, its own global clipping (`gradient_clipping`) applies."""
    limits = {"policy": args.max_grad_norm, "value": args.value_max_grad_norm or args.max_grad_norm}
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        norm = accelerator.clip_grad_norm_([p for ps in groups.values() for p in ps], args.max_grad_norm)
        return {} if norm is None else {"grad_norm": float(norm)}
    accelerator.unscale_gradients()  # once for both groups (fp16's scaler refuses a second unscale)
    norms = {}
    for name, params in groups.items():
        if params and limits[name]:
            norms[f"{name}/grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, limits[name]))
    return norms


def set_precision(accelerator: Accelerator, policy: nn.Module, value_model: nn.Module) -> None:
    """fp32 master weights for the trainable adapters and heads under autocast; a warning for pure 16-bit training."""
    mixed = accelerator.mixed_precision
    models = (policy, value_model)
    if mixed in ("bf16", "fp16"):
        cast = sum(
            keep_fp32_master_weights(m, mixed, hasattr(m, "peft_config") or hasattr(m, "adapter_name")) for m in models
        )
        if cast:
            logger.info("PPO: %d trainable tensors kept in fp32 (master weights) under %s autocast", cast, mixed)
    elif any(p.dtype in (torch.bfloat16, torch.float16) for m in models for p in m.parameters() if p.requires_grad):
        logger.warning(
            "PPO trains 16-bit weights without mixed precision (no fp32 master copy): set `bf16: true` for autocast "
            "with fp32 adapters and heads"
        )
