"""Where models run: one placement rule for every role and command, and work shared out over processes.

Every process works on its own accelerator device, `process_device()` (accelerate's `PartialState().device`, as
`hf_rlhf.resilience.process_state` sets it up): `cuda:<local rank>` under `accelerate launch` on GPUs, the GPU of a
single process, the CPU on a machine without one (or with `ACCELERATE_USE_CPU`, or a stage config's `use_cpu`). A
model a trainer prepares (`Trainer`, `accelerator.prepare`) is moved there by accelerate; every other model (PPO's
reference and reward model, GRPO/RLOO's reward model, the models of `sample`, `generate`, `score`, best-of-N and the
report) is loaded straight onto it (`load_kwargs`) and goes through `frozen`/`place` right after loading. A quantized
model is loaded onto the device with `device_map={"": local_process_index}` (`load_device_map`) and left where
bitsandbytes put it. Inputs go to `model_device(model)`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

T = TypeVar("T")


def process_device() -> torch.device:
    """This process's accelerator device (accelerate's `PartialState().device`)."""
    from .resilience import process_state

    return process_state().device


def load_device_map() -> dict[str, int | str]:
    """`from_pretrained`'s `device_map` that loads a whole model onto this process's device: `{"": <GPU index>}`
    on CUDA (the local process index under `accelerate launch`), else `{"": "<device>"}`. Quantized loads need it:
    a 4/8-bit model cannot be moved after loading."""
    device = process_device()
    if device.type == "cuda":
        return {"": device.index if device.index is not None else torch.cuda.current_device()}
    return {"": str(device)}


def load_kwargs() -> dict[str, Any]:
    """`from_pretrained` keyword arguments for a model nobody prepares: straight onto this process's accelerator
    (no full copy in host memory first); `{}` on the CPU, where models load anyway."""
    return {} if process_device().type == "cpu" else {"device_map": load_device_map()}


def is_placed_by_loader(model: nn.Module) -> bool:
    """A model that `from_pretrained` put on its devices itself (dispatched over several with a `device_map`, or
    quantized by bitsandbytes): never moved."""
    return bool(getattr(model, "hf_device_map", None)) or bool(
        getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)
    )


def place(model: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """Put a model that no trainer prepares on this process's device (or `device`); returns it.

    A model placed by its loader (`is_placed_by_loader`) stays where it was loaded.
    """
    if is_placed_by_loader(model):
        return model
    return model.to(device if device is not None else process_device())


def frozen(model: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """An inference-only model: eval mode, no gradients, on this process's device (`place`)."""
    return place(model.eval().requires_grad_(False), device)


def model_device(model: nn.Module) -> torch.device:
    """Where a model's inputs go: the device of its input embeddings (the first layer under a device map), else of
    its first parameter; this process's device for a model without parameters."""
    get_embeddings = getattr(model, "get_input_embeddings", None)
    embeddings = get_embeddings() if callable(get_embeddings) else None
    if isinstance(getattr(embeddings, "weight", None), torch.Tensor):
        return embeddings.weight.device
    first = next(model.parameters(), None)
    return first.device if first is not None else process_device()


def process_share(n: int, num_processes: int, process_index: int) -> range:
    """The contiguous indices of `n` items that process `process_index` of `num_processes` works on: the shares
    cover `0..n` in process order, their sizes differ by at most one."""
    if num_processes < 1 or not 0 <= process_index < num_processes:
        raise ValueError(f"process {process_index} of {num_processes}: expected 0 <= process_index < num_processes")
    return range(process_index * n // num_processes, (process_index + 1) * n // num_processes)


def split_over_processes(items: Sequence[T], fn: Callable[[list[T]], Sequence[Any]]) -> list[Any]:
    """`fn` applied to this process's contiguous share of `items` (`process_share`), the results of every process
    gathered in order: every process gets the list one process would have computed with `fn(list(items))`.

    Every process must call it with the same `items`; `fn` must return one result per item of its share (a process
    whose share is empty calls `fn([])`).
    """
    from accelerate.utils import gather_object

    from .resilience import process_state

    state = process_state()
    share = process_share(len(items), state.num_processes, state.process_index)
    mine = list(fn([items[i] for i in share]))
    if len(mine) != len(share):
        raise ValueError(
            f"split_over_processes: process {state.process_index} got {len(mine)} results for {len(share)} items"
        )
    if state.num_processes == 1:
        return mine
    gathered = gather_object([mine])  # one list per process, in process order
    return [x for part in gathered for x in part]
