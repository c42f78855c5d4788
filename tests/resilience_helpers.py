"""Helpers of the kill-and-resume tests: a small PPO run, and `hf-rlhf` (or that PPO run) killed at a checkpoint.

    python -m tests.resilience_helpers WHEN STEP cli <hf-rlhf arguments...>
    python -m tests.resilience_helpers WHEN STEP ppo OUTPUT_DIR MAX_STEPS

WHEN is `kill-after` (SIGKILL once checkpoint-STEP is complete: a crash between checkpoints) or `kill-during`
(SIGKILL while checkpoint-STEP is being saved: its files are written, its completion marker is not). The process
that saves checkpoints (the main one) kills itself; under `accelerate launch` the launcher then stops the others.
"""

from __future__ import annotations

import os
import signal
import sys


def install(when: str, step: int) -> None:
    import hf_rlhf.resilience as resilience

    mark = resilience.mark_checkpoint_complete

    def interrupted_mark(path: str, saved_step: int) -> None:  # the Trainer stages and PPO both mark through it
        if saved_step == step and when == "kill-during":
            os.kill(os.getpid(), signal.SIGKILL)
        mark(path, saved_step)
        if saved_step == step and when == "kill-after":
            os.kill(os.getpid(), signal.SIGKILL)

    resilience.mark_checkpoint_complete = interrupted_mark


def ppo_run(output_dir, reward=None, **overrides):
    """A PPO trainer on tests/ppo_fixtures.py's tiny models: 8 prompts per update, 6 new tokens, one epoch of 2
    minibatches, 3 updates; `reward` defaults to `short_answers` (and is logged under that name)."""
    from hf_rlhf.ppo.trainer import PPOTrainer
    from tests.ppo_fixtures import ppo_config, short_answers, tiny_models

    tokenizer, policy, ref, value, prompts = tiny_models()
    small = dict(per_device_train_batch_size=4, gradient_accumulation_steps=1, num_ppo_epochs=1, max_new_tokens=6)
    args = ppo_config(output_dir, **{"max_steps": 3, **small, **overrides})
    rewards = [reward or short_answers]
    return PPOTrainer(args, policy, ref, value, tokenizer, prompts, rewards, reward_names=["short_answers"])


def main(argv: list[str]) -> int:
    when, step, target, *rest = argv
    install(when, int(step))
    if target == "ppo":
        ppo_run(rest[0], max_steps=int(rest[1]), save_strategy="steps", save_steps=1).train()
        return 0
    from hf_rlhf.cli import main as cli_main

    return cli_main(rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
