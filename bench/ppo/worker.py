"""One timed PPO run in its own process: hf_rlhf's `PPOTrainer` or TRL 1.12's `trl.experimental.ppo.PPOTrainer`.

`run.py` starts this script once per run (hf_rlhf with the system `python3`, TRL with `bench/ppo/.venv/bin/python`,
where TRL 1.12 shadows the system's newer TRL), so no side profits from imports, allocator state or caches left by
the other. Both sides load the same tokenizer and models from the setup directory and read the same `Settings`.

What is timed (all with `time.perf_counter`, and process CPU time with `time.process_time`):

* `train_s`: the call to `trainer.train()` and nothing else: every rollout (generation, reference/value/reward
  forward passes, rewards, advantages) and every PPO epoch, plus each trainer's own per-update logging. Model
  loading, trainer construction (optimizer, accelerate `prepare`), dataset building and the final evaluation are
  outside it. `seconds_per_update = train_s / updates`.
* `gc_s`: time spent inside explicit `gc.collect()` calls during `train()` (TRL 1.12 calls it twice per update;
  hf_rlhf never does), measured by wrapping `gc.collect` on both sides. It is part of `train_s`; `run.py` also
  shows the time per update without it, because a full collection costs in proportion to the objects alive in the
  process (here: every imported library), not to the model, so on real models its share is far smaller.
* `update_marks`: the time at which each update's metrics were logged (hf_rlhf: its `log` method; TRL: the `on_log`
  callback), relative to the start of `train()`, so `run.py` can also report the median update.
* `import_s`, `load_s`, `init_s`, `eval_s`: library imports, model and tokenizer loading, trainer construction, and
  the final evaluation; reported, never compared.

It writes a JSON result with these times, the trainer's per-update logged scores and the final evaluation.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import traceback
from typing import Any

START = time.perf_counter()
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # the warning is expected: PPO only exists there in 1.12

import torch  # noqa: E402  (after the clock, so import_s covers it on both sides)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=["hf_rlhf", "trl"], required=True)
    parser.add_argument("--setup_dir", required=True, help="Directory written by common.setup.")
    parser.add_argument("--output_dir", required=True, help="Scratch directory for the trainer.")
    parser.add_argument("--seed", type=int, required=True, help="Training seed (the evaluation seed is fixed).")
    parser.add_argument("--eval_seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--result", required=True, help="Where to write the JSON result.")
    return parser.parse_args(argv)


# -------------------------------------------------------------------------------------------------- hf_rlhf
def build_hf_rlhf(s: common.Settings, models: dict, tokenizer, output_dir: str, seed: int, marks: list[float]):
    """hf_rlhf's trainer, as a user would call it: plain-text prompts, the reward model through RewardModelScorer."""
    from datasets import Dataset
    from transformers import set_seed

    from hf_rlhf.ppo.config import PPOConfig
    from hf_rlhf.ppo.trainer import PPOTrainer
    from hf_rlhf.reward.scorer import RewardModelScorer

    args = PPOConfig(
        output_dir=output_dir,
        max_steps=s.updates,
        per_device_train_batch_size=s.per_device_train_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps,
        num_mini_batches=s.num_mini_batches,
        num_ppo_epochs=s.num_ppo_epochs,
        max_new_tokens=s.response_length,
        learning_rate=s.learning_rate,
        lr_scheduler_type=s.lr_scheduler_type,
        kl_coef=s.kl_coef,
        kl_estimator=s.kl_estimator,
        temperature=s.temperature,
        missing_eos_penalty=s.missing_eos_penalty,
        cliprange=s.cliprange,
        cliprange_value=s.cliprange_value,
        vf_coef=s.vf_coef,
        gamma=s.gamma,
        lam=s.lam,
        rollout_forward_batch_size=s.rollout_forward_batch_size,
        # TRL 1.12's PPO loop never clips gradients; hf_rlhf clips at max_grad_norm (1.0 by default), so 0 (off)
        # keeps the optimisation the same on both sides.
        max_grad_norm=0.0,
        seed=seed,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        use_cpu=True,
        bf16=False,
    )
    # TRL tokenizes the chat-formatted strings with their special tokens; hf_rlhf reads a text prompt as content
    # (special-token strings split into ordinary tokens, `hf_rlhf.encoding.encode_text`), so it gets the same
    # questions as conversations: the chat template gives exactly TRL's query ids (checked below), and
    # `RewardModelScorer` encodes prompt + completion + EOS and reads the reward at the EOS, like TRL.
    dataset = Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in s.train_questions]})
    check_same_queries(s, tokenizer)
    set_seed(seed)
    trainer = PPOTrainer(
        args,
        models["policy"],
        models["ref_policy"],
        models["value_model"],
        tokenizer,
        dataset,
        reward_funcs=[RewardModelScorer(models["reward_model"], tokenizer)],
    )
    log = trainer.log

    def timed_log(metrics: dict[str, float]) -> None:
        log(metrics)
        marks.append(time.perf_counter())

    trainer.log = timed_log
    return trainer


def check_same_queries(s: common.Settings, tokenizer) -> None:
    """hf_rlhf's encoding of each conversational prompt equals TRL's tokenization of the chat-formatted string."""
    from hf_rlhf.encoding import encode_prompt

    for question, text in zip(s.train_questions, s.train_prompts, strict=True):
        ours = encode_prompt(tokenizer, [{"role": "user", "content": question}])
        if ours != tokenizer(text, add_special_tokens=False)["input_ids"]:
            raise RuntimeError(f"hf_rlhf and TRL would see different query ids for {question!r}")


def history_hf_rlhf(trainer) -> list[dict[str, float]]:
    return [
        {
            "score": h["score"],
            "kl": h["kl"],
            "response_length": h["response_length"],
            "missing_eos_rate": h["missing_eos_rate"],
        }
        for h in trainer.history
    ]


# ------------------------------------------------------------------------------------------------------ TRL
def build_trl(s: common.Settings, models: dict, tokenizer, output_dir: str, seed: int, marks: list[float]):
    """TRL 1.12's experimental PPO trainer, configured with the same values (see README for the mapping)."""
    from datasets import Dataset
    from transformers import TrainerCallback, set_seed
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    args = PPOConfig(
        output_dir=output_dir,
        # TRL 1.12: one update samples per_device_train_batch_size * gradient_accumulation_steps prompts (its
        # num_mini_batches splits that batch, it does not multiply it); with num_mini_batches=1 that is hf_rlhf's
        # rollout_batch_size. The number of updates is ceil(total_episodes / batch).
        total_episodes=s.updates * s.rollout_batch_size,
        per_device_train_batch_size=s.per_device_train_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps,
        num_mini_batches=s.num_mini_batches,
        num_ppo_epochs=s.num_ppo_epochs,
        response_length=s.response_length,
        stop_token="eos",
        learning_rate=s.learning_rate,
        lr_scheduler_type=s.lr_scheduler_type,
        kl_coef=s.kl_coef,
        kl_estimator=s.kl_estimator,
        temperature=s.temperature,
        missing_eos_penalty=s.missing_eos_penalty,
        cliprange=s.cliprange,
        cliprange_value=s.cliprange_value,
        vf_coef=s.vf_coef,
        gamma=s.gamma,
        lam=s.lam,
        local_rollout_forward_batch_size=s.rollout_forward_batch_size,
        whiten_rewards=False,
        # sample generations are a debugging print on an eval set, not part of PPO; hf_rlhf has none
        num_sample_generations=0,
        # TRL's config turns bf16 on whenever fp16 is off, which on CPU means bf16 autocast through accelerate;
        # hf_rlhf trains in float32, so both run float32. Gradient checkpointing (default on in TRL's config) is
        # never enabled by the PPO loop itself; off says so.
        bf16=False,
        gradient_checkpointing=False,
        seed=seed,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        use_cpu=True,
    )
    dataset = Dataset.from_dict(
        {"input_ids": [tokenizer(p, add_special_tokens=False)["input_ids"] for p in s.train_prompts]}
    )

    class Marks(TrainerCallback):
        def on_log(self, args, state, control, **kwargs):
            marks.append(time.perf_counter())

    set_seed(seed)
    return PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=models["policy"],
        ref_model=models["ref_policy"],
        reward_model=models["reward_model"],
        train_dataset=dataset,
        value_model=models["value_model"],
        callbacks=[Marks()],
    )


def history_trl(trainer) -> list[dict[str, float]]:
    return [
        {"score": h["objective/scores"], "kl": h["objective/kl"]}
        for h in trainer.state.log_history
        if "objective/scores" in h
    ]


# ----------------------------------------------------------------------------------------------------- main
class GcTimer:
    """Stands in for `gc.collect` during `train()` and adds up the time spent in explicit collections."""

    def __init__(self) -> None:
        self.collect, self.seconds, self.cpu_seconds, self.calls = gc.collect, 0.0, 0.0, 0

    def __call__(self, *args: Any, **kwargs: Any) -> int:
        start, cpu = time.perf_counter(), time.process_time()
        try:
            return self.collect(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.cpu_seconds += time.process_time() - cpu
            self.calls += 1


def run(a: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(a.threads)
    import datasets  # noqa: F401  (TRL imports it anyway; hf_rlhf's worker needs it for its dataset too)

    if a.side == "hf_rlhf":
        import hf_rlhf.ppo.trainer  # noqa: F401
        import hf_rlhf.reward.scorer  # noqa: F401

        build, history = build_hf_rlhf, history_hf_rlhf
    else:
        import trl
        import trl.experimental.ppo  # noqa: F401

        if trl.__version__ != "1.12.0":
            raise RuntimeError(f"the baseline needs TRL 1.12.0, this interpreter has {trl.__version__}")
        build, history = build_trl, history_trl
    import_s = time.perf_counter() - START

    t = time.perf_counter()
    s = common.Settings.load(a.setup_dir)
    # TRL's PPO needs left-padded queries (its collator pads with the tokenizer's side); hf_rlhf pads left itself
    tokenizer = common.load_tokenizer(a.setup_dir, padding_side="left" if a.side == "trl" else "right")
    models = common.load_models(a.setup_dir)
    load_s = time.perf_counter() - t

    marks: list[float] = []
    t = time.perf_counter()
    trainer = build(s, models, tokenizer, a.output_dir, a.seed, marks)
    init_s = time.perf_counter() - t

    gc_timer = GcTimer()
    gc.collect = gc_timer
    try:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        trainer.train()
        train_s, train_cpu_s = time.perf_counter() - wall0, time.process_time() - cpu0
    finally:
        gc.collect = gc_timer.collect

    # accelerate's prepare leaves a single-process CPU model unwrapped, so `policy` is the trained module
    t = time.perf_counter()
    evaluation = common.evaluate(models["policy"], models["reward_model"], tokenizer, s, a.eval_seed)
    eval_s = time.perf_counter() - t
    return {
        "side": a.side,
        "seed": a.seed,
        "threads": a.threads,
        "torch_threads": torch.get_num_threads(),
        "versions": versions(a.side),
        "updates": s.updates,
        "train_s": train_s,
        "train_cpu_s": train_cpu_s,
        "seconds_per_update": train_s / s.updates,
        "gc_s": gc_timer.seconds,
        "gc_cpu_s": gc_timer.cpu_seconds,
        "gc_calls": gc_timer.calls,
        "update_marks": [m - wall0 for m in marks],
        "import_s": import_s,
        "load_s": load_s,
        "init_s": init_s,
        "eval_s": eval_s,
        "history": history(trainer),
        "eval": evaluation,
    }


def versions(side: str) -> dict[str, str]:
    import accelerate
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "accelerate": accelerate.__version__}
    if side == "trl":
        import trl

        out["trl"] = trl.__version__
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    try:
        result = run(a)
    except Exception as e:  # the parent reports a failed side instead of inventing numbers for it
        result = {
            "side": a.side,
            "seed": a.seed,
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(),
        }
        traceback.print_exc()
    with open(a.result, "w") as f:
        json.dump(result, f)
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
