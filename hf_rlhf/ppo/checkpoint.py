"""PPO's checkpoints and final model on disk.

A checkpoint is `accelerator.save_state` (policy and value model, optimizer, scheduler, every process's RNG state)
plus `ppo_trainer_state.json` (update count, KL controller, logged history), written through
`hf_rlhf.resilience.saving_checkpoint`: like the Trainer stages' checkpoints, it counts once its completion marker
is written, and resuming, rotation (`save_total_limit`) and clean-up use the same functions.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from accelerate import Accelerator
from transformers import PreTrainedTokenizerBase

from ..resilience import saving_checkpoint

logger = logging.getLogger(__name__)
STATE_FILE = "ppo_trainer_state.json"


def save_checkpoint(accelerator: Accelerator, output_dir: str, state: dict[str, Any], limit: int | None) -> str:
    """Write `checkpoint-<state["global_step"]>` in `output_dir` on every process; returns its path.

    Args:
        accelerator: The trainer's, which prepared the model, optimizer and scheduler.
        output_dir: Where the checkpoints go.
        state: `{"global_step", "kl_ctl", "history"}`, JSON-serialisable; written by the main process.
        limit: `save_total_limit`: how many complete checkpoints to keep (`None`: all).
    """
    folder = os.path.join(output_dir, f"checkpoint-{state['global_step']}")
    with saving_checkpoint(
        folder,
        state["global_step"],
        saves=accelerator.is_main_process,
        wait_for_everyone=accelerator.wait_for_everyone,
        limit=limit,
    ):
        accelerator.save_state(folder, safe_serialization=True)
        if accelerator.is_main_process:
            with open(os.path.join(folder, STATE_FILE), "w") as f:
                json.dump(state, f)
    accelerator.wait_for_everyone()  # no process moves on before the checkpoint is marked and old ones rotated
    return folder


def load_checkpoint(accelerator: Accelerator, path: str) -> dict[str, Any]:
    """Restore the accelerator's objects and RNG states from checkpoint `path`; returns its trainer state."""
    with open(os.path.join(path, STATE_FILE)) as f:
        state = json.load(f)
    accelerator.load_state(path)
    logger.warning("resumed PPO from %s at update %d", path, state["global_step"])
    return state


def save_model(accelerator: Accelerator, model, tokenizer: PreTrainedTokenizerBase, output_dir: str) -> None:
    """Save the trained policy (safetensors; with LoRA, its adapter only) and tokenizer to `output_dir`, the value
    model to `output_dir/value_model/`. `model` is the prepared `PolicyAndValue`."""
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        policy = unwrapped.policy
        only_policy = {"selected_adapters": ["default"]} if hasattr(policy, "peft_config") else {}
        policy.save_pretrained(output_dir, safe_serialization=True, **only_policy)
        tokenizer.save_pretrained(output_dir)
        unwrapped.value_model.save_pretrained(os.path.join(output_dir, "value_model"), safe_serialization=True)
