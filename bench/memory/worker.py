"""One memory measurement: run one stage (sft, reward or rl) with one method, report peak memory and parameters.

Started by `bench/memory/run.py` as a fresh process per measurement, with glibc told to return freed memory at once
(`MALLOC_MMAP_THRESHOLD_`, set by run.py) so that resident memory follows what tensors hold. A thread samples the
process's resident memory (VmRSS) every 10 ms from /proc; the baseline is the resident memory after the imports.
`peak_bytes` is the peak from the first optimizer step on: what training holds (the weights of every model the stage
loaded, LoRA and optimizer states, activations, PPO's rollouts). `load_peak_bytes` is the peak over the whole stage,
with the transient of loading (on CPU, a 4-bit model is read in full precision and quantized layer by layer). On a
CUDA machine (`--device cuda`) `peak_bytes` is `torch.cuda.max_memory_allocated` instead.
The stage is the real one (`hf_rlhf.stages.<stage>.main`), so the figure is what a user's run holds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time

METHOD_FLAGS = {
    "full": [],
    "lora": ["--use_peft", "--lora_r", "16", "--lora_alpha", "32", "--lora_target_modules", "all-linear"],
}
METHOD_FLAGS["qlora"] = [*METHOD_FLAGS["lora"], "--load_in_4bit", "--bnb_4bit_quant_type", "nf4"]


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakSampler(threading.Thread):
    """Samples VmRSS: `peak` over the whole stage, `training_peak` from the first optimizer step on."""

    def __init__(self, interval: float = 0.01):
        super().__init__(daemon=True)
        self.interval, self.running = interval, True
        self.peak, self.training_peak, self.training = rss_bytes(), 0, False

    def start_training(self, *_) -> None:
        self.training = True

    def run(self) -> None:
        while self.running:
            rss = rss_bytes()
            self.peak = max(self.peak, rss)
            if self.training:
                self.training_peak = max(self.training_peak, rss)
            time.sleep(self.interval)


def stage_argv(stage: str, method: str, shared: bool, work: str, out: str, steps: int) -> list[str]:
    common = ["--output_dir", out, "--seed", "0", "--report_to", "none", "--save_strategy", "no"]
    flags = METHOD_FLAGS[method]
    if stage == "sft":
        return ["--model_name_or_path", f"{work}/sft", "--dataset_name", f"{work}/demonstrations",
                "--max_steps", str(steps), "--per_device_train_batch_size", "4", "--max_length", "128",
                "--eval_strategy", "no", "--eval_split_size", "0", "--logging_steps", "100",
                "--disable_tqdm", "true", *common, *flags]  # fmt: skip
    if stage == "reward":
        return ["--model_name_or_path", f"{work}/sft", "--dataset_name", f"{work}/comparisons.jsonl",
                "--max_steps", str(steps), "--per_device_train_batch_size", "4", "--max_length", "128",
                "--eval_split_size", "0", "--logging_steps", "100", "--disable_tqdm", "true", *common, *flags]  # fmt: skip
    reward = f"{work}/reward_lora" if shared else f"{work}/reward_full"
    return ["--model_name_or_path", f"{work}/sft", "--reward_model_path", reward,
            "--dataset_name", f"{work}/prompts", "--max_steps", str(steps), "--per_device_train_batch_size", "4",
            "--num_mini_batches", "1", "--num_ppo_epochs", "1", "--max_new_tokens", "16", "--logging_steps", "100",
            "--disable_tqdm", "true", "--shared_base", str(shared).lower(), *common, *flags]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", choices=["sft", "reward", "rl"], required=True)
    parser.add_argument("--method", choices=sorted(METHOD_FLAGS), required=True)
    parser.add_argument("--shared", action="store_true", help="PPO: every role on one base.")
    parser.add_argument("--work", required=True, help="Prepared models and data (bench/memory/run.py).")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()

    import torch
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    from hf_rlhf.stages import reward, rl, sft

    modules = {"sft": sft, "reward": reward, "rl": rl}
    argv = stage_argv(args.stage, args.method, args.shared, args.work, os.path.join(args.out, "stage"), args.steps)
    if args.device == "cpu":
        argv += ["--use_cpu", "true"]
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    baseline = rss_bytes()
    sampler = PeakSampler()
    hook = register_optimizer_step_pre_hook(sampler.start_training)
    sampler.start()
    start = time.perf_counter()
    manifest = modules[args.stage].main(argv)
    seconds = time.perf_counter() - start
    sampler.running = False
    sampler.join()
    hook.remove()
    metrics = manifest["metrics"]
    result = {
        "stage": args.stage,
        "method": args.method,
        "shared": args.shared,
        "device": args.device,
        "peak_bytes": (
            torch.cuda.max_memory_allocated() if args.device == "cuda" else sampler.training_peak - baseline
        ),
        "load_peak_bytes": None if args.device == "cuda" else sampler.peak - baseline,
        "baseline_rss_bytes": baseline,
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "trainable_parameters": metrics.get("trainable_parameters"),
        "total_parameters": metrics.get("total_parameters"),
        "seconds": seconds,
    }
    with open(os.path.join(args.out, "result.json"), "w") as f:
        json.dump(result, f)
    print(json.dumps(result), file=sys.stderr)


if __name__ == "__main__":
    main()
