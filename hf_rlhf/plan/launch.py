"""The launch layout a plan is sized for: one process, or what an accelerate config (a name or a file) describes."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..launching import config_name, resolve_accelerate_config
from . import DryRunError

DEFAULT_GPU_MEMORY_GB = 80.0
FSDP1_STRATEGIES = {"1": "FULL_SHARD", "2": "SHARD_GRAD_OP", "3": "NO_SHARD", "4": "HYBRID_SHARD"}


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
        where = f" ({config_name(self.config_path) or shown(self.config_path)})" if self.config_path else ""
        where = where or " (no accelerate config)"
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


def read_launch(
    path: str | None,
    gpu_memory_gb: float | None = None,
    num_processes: int | None = None,
    num_machines: int | None = None,
) -> Launch:
    """The layout of an accelerate config (a named config or a file, resolved as `hf-rlhf --accelerate_config`
    resolves it: `hf_rlhf.launching`); one process when `None`. `num_processes` and `num_machines` override the
    file's, as the same options of `hf-rlhf ... --accelerate_config` override them for `accelerate launch`."""
    launch = Launch(gpu_memory_gb=gpu_memory_gb or DEFAULT_GPU_MEMORY_GB)
    if not path:
        if num_processes or num_machines:
            raise DryRunError(
                "--num_processes and --num_machines change an accelerate config: add --accelerate_config"
            )
        return launch
    from accelerate.commands.config.config_args import load_config_from_file

    path = resolve_accelerate_config(path)
    try:
        config = load_config_from_file(path)
    except Exception as e:  # accelerate raises ValueError/TypeError/YAMLError for a bad file
        raise DryRunError(f"accelerate config '{path}' cannot be loaded: {e}") from e
    kind = getattr(config.distributed_type, "value", str(config.distributed_type))
    launch.config_path = path
    launch.num_processes = max(1, int(num_processes or getattr(config, "num_processes", 1) or 1))
    launch.num_machines = max(1, int(num_machines or getattr(config, "num_machines", 1) or 1))
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


def shown(path: str) -> str:
    """A path as printed: relative to the working directory when it lies below it."""
    if not os.path.isabs(path):
        return os.path.normpath(path) if os.sep in path else path
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
