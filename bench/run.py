"""Benchmark hf_rlhf against plain transformers/TRL: the same pretraining and SFT work, timed side by side.

Both sides get the same recipe values, model, data, tokenizer, steps and seed. Each run is a fresh process started
by this script (`bench/worker.py`), on its own fresh copy of the dataset, and runs alternate (hf_rlhf, plain,
hf_rlhf, plain, ...) so that drift in machine load hits both sides alike. The reported wall time of a run is the whole
stage call (arguments, data loading and preparation, model build or load, training, final evaluation, saving); see
`bench/worker.py` for exactly what is inside the clock. The median over repeats is compared as hf_rlhf / plain
against the target (overhead within 3%), and throughput is reported in tokens per second and as a fraction of the
machine's dense float32 matmul throughput, measured first.

Usage:
    python3 bench/run.py            # full: ~6 minutes on 2 CPU cores (also `make bench`)
    python3 bench/run.py --quick    # ~1.5 minute smoke version
Results are printed as a table and written to bench/results/latest.json. The exit status is 0 whatever the ratio
(a benchmark on a shared machine is too noisy to gate on); it is nonzero only if a run crashes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from machine import cpu_busy_seconds  # bench/ is this script's folder, so on sys.path

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
WORKER = os.path.join(BENCH_DIR, "worker.py")
RECIPES = {"pretrain": "recipes/tiny/pretrain.yaml", "sft": "recipes/tiny/sft.yaml"}
DATASETS = {"pretrain": "documents", "sft": "demonstrations"}
SIDES = ("hf_rlhf", "plain")
# Steps of the untimed pretraining run that makes the SFT base model when pretraining is not timed (`--stages sft`):
# SFT's cost per step does not depend on how well the base model is trained, so a short run is enough.
BASE_STEPS = 10
STAGES = ("pretrain", "sft")

# Sizes that keep the full benchmark around 5-6 minutes on 2 quiet CPU cores (12 timed runs, each a fresh process
# that spends ~10 s importing torch, transformers and TRL), and the quick one around a minute and a half. The world
# holds about an epoch of data for the steps taken: data preparation is part of the timed work, so it stays realistic.
PRESETS: dict[str, dict[str, int]] = {
    "full": {"repeats": 3, "pretrain_steps": 30, "sft_steps": 30, "num_documents": 2000, "num_demonstrations": 1000},
    "quick": {"repeats": 1, "pretrain_steps": 8, "sft_steps": 8, "num_documents": 500, "num_demonstrations": 300},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Smaller settings: a ~1.5 minute smoke run.")
    parser.add_argument("--repeats", type=int, help="Timed runs per side and stage (full: 3, quick: 1).")
    parser.add_argument("--pretrain_steps", type=int, help="Pretraining max_steps (full: 30, quick: 8).")
    parser.add_argument("--sft_steps", type=int, help="SFT max_steps (full: 30, quick: 8).")
    parser.add_argument("--num_documents", type=int, help="Tiny-world documents (full: 2000, quick: 500).")
    parser.add_argument("--num_demonstrations", type=int, help="Tiny-world demonstrations (full: 1000, quick: 300).")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="Stages to time.")
    parser.add_argument("--threads", type=int, help="Torch threads for every run (default: torch's default).")
    parser.add_argument("--target", type=float, default=1.03, help="PASS if the wall-time ratio is at most this.")
    parser.add_argument("--matmul_seconds", type=float, default=2.0, help="Duration of the matmul measurement.")
    parser.add_argument("--matmul_size", type=int, default=1024, help="Side of the square float32 matmuls.")
    parser.add_argument("--work_dir", help="Where runs write (default: a temporary directory, removed at the end).")
    parser.add_argument("--keep", action="store_true", help="Keep the work directory and every run's output.")
    parser.add_argument("--output", default=os.path.join(BENCH_DIR, "results", "latest.json"), help="JSON results.")
    args = parser.parse_args(argv)
    for key, value in PRESETS["quick" if args.quick else "full"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.stages = [stage for stage in STAGES if stage in args.stages]  # pretraining first: it makes the SFT base
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------------ machine
def measure_matmul_flops(seconds: float, size: int) -> float:
    """Dense float32 matmul throughput of this machine in FLOP/s, on torch's current thread count.

    A square matmul of side n costs 2 n^3 FLOPs. This is the ceiling a CPU training step can approach, so model
    FLOP/s divided by it says how much of the machine the training loop uses (an MFU measured, not looked up).
    """
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    for _ in range(3):  # warm-up: first calls pay for allocation and thread-pool start
        torch.mm(a, b, out=out)
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        torch.mm(a, b, out=out)
        count += 1
    return 2 * size**3 * count / elapsed


def machine_info(threads: int) -> dict[str, Any]:
    import torch
    import transformers
    import trl

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl.__version__,
    }


# ------------------------------------------------------------------------------------------------- setup
def prepare(args: argparse.Namespace, work_dir: str, env: dict[str, str]) -> dict[str, str]:
    """Warm the file cache, generate the world, snapshot the recipes and say where the SFT base model will be.

    The SFT runs of both sides start from the same base model: the output of the first timed hf_rlhf pretraining
    run, or, when pretraining is not timed, of one short untimed hf_rlhf pretraining run made here.
    """
    log("setup: importing what the runs import (warms the file cache, so the first timed run is not penalised)")
    import datasets
    import trl  # noqa: F401
    from transformers import Trainer  # noqa: F401
    from trl import SFTTrainer  # noqa: F401

    import hf_rlhf.stages.pretrain  # noqa: F401
    import hf_rlhf.stages.sft  # noqa: F401
    from hf_rlhf.configs import WorldArguments
    from hf_rlhf.data.world import build_world_datasets

    sys.path.insert(0, BENCH_DIR)
    import plain  # noqa: F401

    log(f"setup: world ({args.num_documents} documents, {args.num_demonstrations} demonstrations) in {work_dir}")
    datasets.disable_progress_bars()
    paths = build_world_datasets(
        WorldArguments(
            output_dir=os.path.join(work_dir, "world"),
            num_documents=args.num_documents,
            num_demonstrations=args.num_demonstrations,
        )
    )
    inputs = {**paths, "base": os.path.join(work_dir, "base")}
    # Both sides read the recipes from one snapshot taken now, so an edit to recipes/ during the benchmark cannot
    # give the two sides different settings.
    os.makedirs(os.path.join(work_dir, "recipes"))
    for stage, recipe in RECIPES.items():
        inputs[f"{stage}_recipe"] = shutil.copy(os.path.join(REPO_DIR, recipe), os.path.join(work_dir, "recipes"))
    if "pretrain" not in args.stages:
        log("setup: pretraining the SFT base model (untimed)")
        run_once(
            args,
            work_dir,
            env,
            "hf_rlhf",
            "pretrain",
            inputs,
            name="setup-base",
            keep_output_at=inputs["base"],
            max_steps=min(args.pretrain_steps, BASE_STEPS),
        )
    return inputs


# -------------------------------------------------------------------------------------------------- runs
def run_once(
    args: argparse.Namespace,
    work_dir: str,
    env: dict[str, str],
    side: str,
    stage: str,
    inputs: dict[str, str],
    name: str,
    keep_output_at: str | None = None,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Run one stage through one side in a fresh process and return the worker's result plus the process time."""
    run_dir = os.path.join(work_dir, "runs", name)
    os.makedirs(run_dir)
    # A fresh copy of the dataset per run: `datasets` caches `map` results next to a dataset loaded from disk,
    # so a shared copy would let later runs skip the tokenization that earlier runs paid for.
    dataset = shutil.copytree(inputs[DATASETS[stage]], os.path.join(run_dir, "data"))
    output_dir = keep_output_at or os.path.join(run_dir, "out")
    result_path = os.path.join(run_dir, "result.json")
    command = [
        sys.executable,
        WORKER,
        "--side",
        side,
        "--stage",
        stage,
        "--recipe",
        inputs[f"{stage}_recipe"],
        "--dataset",
        dataset,
        "--output_dir",
        output_dir,
        "--max_steps",
        str(max_steps or (args.pretrain_steps if stage == "pretrain" else args.sft_steps)),
        "--result",
        result_path,
    ]
    if stage == "sft":
        command += ["--model", inputs["base"]]
    log_path = os.path.join(run_dir, "log.txt")
    load_before = os.getloadavg()[0]
    busy_before = cpu_busy_seconds()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log_path, "w") as log_file:
        returncode = subprocess.call(command, cwd=REPO_DIR, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    process_s = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_after = cpu_busy_seconds()
    if returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-4000:]
        raise RuntimeError(f"run '{name}' ({side} {stage}) failed with exit code {returncode}:\n{tail}")
    with open(result_path) as f:
        result = json.load(f)
    # CPU time of the process (user + system, all threads): less sensitive than wall time to other processes
    # taking cores away, so it helps to read a noisy wall-time ratio on a shared machine.
    process_cpu_s = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    # Cores that other processes kept busy, on average, while this run ran: the measure of how fair the run was.
    other_cores = None
    if busy_before is not None and busy_after is not None:
        other_cores = max(0.0, (busy_after - busy_before - process_cpu_s) / process_s)
    result.update(
        process_s=process_s, process_cpu_s=process_cpu_s, load_average_before=load_before, other_cores=other_cores
    )
    if not args.keep:
        shutil.rmtree(run_dir)
    return result


# ----------------------------------------------------------------------------------------------- summary
def summarize(runs: list[dict[str, Any]], matmul_flops: float) -> dict[str, Any]:
    """Medians per side and stage (wall times, tokens, tokens/s, fraction of matmul throughput)."""
    summary: dict[str, Any] = {}
    for stage in STAGES:
        for side in SIDES:
            mine = [r for r in runs if r["stage"] == stage and r["side"] == side]
            if not mine:
                continue
            stage_s = [r["stage_s"] for r in mine]
            train_tok_s = [r["train_tokens"] / r["train_s"] for r in mine]
            params = mine[0]["num_parameters"]
            summary.setdefault(stage, {})[side] = {
                "runs": len(mine),
                "stage_s": statistics.median(stage_s),
                "stage_s_min": min(stage_s),
                "stage_s_max": max(stage_s),
                "train_s": statistics.median(r["train_s"] for r in mine),
                "process_s": statistics.median(r["process_s"] for r in mine),
                "process_cpu_s": statistics.median(r["process_cpu_s"] for r in mine),
                "train_tokens": statistics.median(r["train_tokens"] for r in mine),
                "num_parameters": params,
                # Throughput of the training loop, where the tokens are processed...
                "train_tokens_per_s": statistics.median(train_tok_s),
                # ...and of the whole stage, which is what the user waits for.
                "stage_tokens_per_s": statistics.median(r["train_tokens"] / r["stage_s"] for r in mine),
                # Model FLOP/s (6 x parameters x tokens/s: forward and backward of a dense model, attention
                # ignored) over the measured matmul FLOP/s.
                "matmul_fraction": statistics.median(6 * params * t / matmul_flops for t in train_tok_s),
                "train_loss": [r["train_loss"] for r in mine],
                "eval_loss": [r["eval_loss"] for r in mine],
            }
    return summary


def compare(summary: dict[str, Any], runs: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """Ratios hf_rlhf / plain of the median times, the verdicts, and checks that both sides did the same work."""
    ratios: dict[str, Any] = {}
    totals = {
        side: dict.fromkeys(("stage_s", "stage_s_min", "train_s", "process_s", "process_cpu_s"), 0.0) for side in SIDES
    }
    for stage, sides in summary.items():
        if set(sides) != set(SIDES):
            continue
        hf, plain = sides["hf_rlhf"], sides["plain"]
        ratios[stage] = {
            key: hf[key] / plain[key] for key in ("stage_s", "stage_s_min", "train_s", "process_s", "process_cpu_s")
        }
        for side in SIDES:
            for key in totals[side]:
                totals[side][key] += sides[side][key]
        # Same seed, data and arguments: the two sides must compute the same losses and see the same tokens.
        hf_run = next(r for r in runs if r["stage"] == stage and r["side"] == "hf_rlhf")
        plain_run = next(r for r in runs if r["stage"] == stage and r["side"] == "plain")
        keys = sorted(set(hf_run["args"]) & set(plain_run["args"]))
        ratios[stage]["args_differing"] = {
            k: [hf_run["args"][k], plain_run["args"][k]] for k in keys if hf_run["args"][k] != plain_run["args"][k]
        }
        ratios[stage]["same_tokens"] = hf_run["train_tokens"] == plain_run["train_tokens"]
        ratios[stage]["same_train_loss"] = abs(hf_run["train_loss"] - plain_run["train_loss"]) <= 1e-4 * max(
            1.0, abs(plain_run["train_loss"])
        )
    if len(ratios) > 1:
        ratios["total"] = {key: totals["hf_rlhf"][key] / totals["plain"][key] for key in totals["hf_rlhf"]}
    for row in ratios.values():
        row["pass"] = row["stage_s"] <= target
    return ratios


def format_cores(cores: float | None) -> str:
    return "unknown" if cores is None else f"{cores:.2f} cores"


def noise_warning(flops_start: float, flops_end: float, runs: list[dict[str, Any]]) -> str:
    """A sentence saying why the timings cannot be trusted (other processes were busy), or "" if they look clean."""
    reasons = []
    busiest = max((r["other_cores"] or 0.0) for r in runs)
    if busiest > 0.25:  # a quarter of a core taken from a 2-core run already moves wall times by several percent
        reasons.append(f"they kept up to {busiest:.2f} cores busy during a run")
    if abs(flops_start - flops_end) > 0.15 * max(flops_start, flops_end):
        reasons.append(f"matmul throughput moved from {flops_start / 1e9:.1f} to {flops_end / 1e9:.1f} GFLOP/s")
    if not reasons:
        return ""
    return (
        "other processes were using the CPU (" + "; ".join(reasons) + "), so the wall times are noisy; "
        "rerun on a quiet machine, or with --threads 1 (far less hurt by a busy core) and more --repeats, before "
        "reading anything into the ratios."
    )


def format_table(result: dict[str, Any]) -> str:
    cfg, summary, ratios = result["config"], result["summary"], result["ratios"]
    lines = [
        "",
        f"hf_rlhf vs plain transformers/TRL: {cfg['repeats']} alternating run(s) per side and stage, "
        f"pretrain {cfg['pretrain_steps']} steps, sft {cfg['sft_steps']} steps, "
        f"{result['machine']['torch_threads']} torch thread(s)",
        f"measured float32 matmul ({cfg['matmul_size']}x{cfg['matmul_size']}): "
        f"{result['machine']['matmul_gflops']:.1f} GFLOP/s at start, "
        f"{result['machine']['matmul_gflops_end']:.1f} at end ('of matmul' uses the higher); "
        f"load average at start {result['machine']['load_average_start']:.2f}; other processes used up to "
        f"{result['machine']['other_cores_max']:.2f} cores during a run",
        "",
        f"{'stage':<9} {'side':<8} {'stage wall s (min-max)':>24} {'train loop s':>13} {'process s':>10} "
        f"{'tokens':>8} {'tok/s loop':>11} {'tok/s stage':>12} {'of matmul':>10} {'train loss':>11}",
    ]
    for stage, sides in summary.items():
        for side, s in sides.items():
            wall = f"{s['stage_s']:.2f} ({s['stage_s_min']:.2f}-{s['stage_s_max']:.2f})"
            lines.append(
                f"{stage:<9} {side:<8} {wall:>24} {s['train_s']:>13.2f} {s['process_s']:>10.2f} "
                f"{s['train_tokens']:>8.0f} {s['train_tokens_per_s']:>11.0f} {s['stage_tokens_per_s']:>12.0f} "
                f"{s['matmul_fraction']:>9.1%} {s['train_loss'][0]:>11.4f}"
            )
    lines += [
        "",
        f"ratios hf_rlhf / plain of the median wall times (target: stage wall <= {cfg['target']:.2f})",
        f"{'stage':<9} {'stage wall':>10} {'min wall':>8} {'train loop':>10} {'process':>8} {'proc CPU':>8}  verdict  "
        "same work?",
    ]
    for stage, r in ratios.items():
        if stage == "total":
            same = ""
        else:
            problems = []
            if r["args_differing"]:
                problems.append("trainer args differ: " + ", ".join(r["args_differing"]))
            if not r["same_tokens"]:
                problems.append("token counts differ")
            if not r["same_train_loss"]:
                problems.append("train losses differ")
            same = "; ".join(problems) or "yes (same args, tokens and train loss)"
        verdict = "PASS" if r["pass"] else "FAIL"
        lines.append(
            f"{stage:<9} {r['stage_s']:>10.3f} {r['stage_s_min']:>8.3f} {r['train_s']:>10.3f} {r['process_s']:>8.3f} "
            f"{r['process_cpu_s']:>8.3f}  {verdict:<7}  {same}"
        )
    lines += [
        "",
        "stage wall: the whole stage call (data, model, train, eval, save); train loop: Trainer.train only; "
        "min wall: the fastest run of each side (others' load only ever adds time); process: the fresh process "
        "including interpreter start and imports; proc CPU: its user + system CPU time.",
    ]
    if result["noisy"]:
        lines += ["", f"WARNING: {result['noisy']}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    load_start = os.getloadavg()[0]
    env = {
        **os.environ,
        # Everything is local; offline mode keeps any network lookup out of both sides' timings.
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    threads = torch.get_num_threads()
    if load_start > 0.5:
        log(f"warning: load average is {load_start:.2f}; other processes will add noise to the timings")

    log(f"measuring float32 matmul throughput ({args.matmul_size}x{args.matmul_size}, {args.matmul_seconds:g} s)")
    matmul_flops = measure_matmul_flops(args.matmul_seconds, args.matmul_size)
    log(f"matmul: {matmul_flops / 1e9:.1f} GFLOP/s on {threads} thread(s)")

    own_work_dir = args.work_dir is None
    work_dir = tempfile.mkdtemp(prefix="hf_rlhf_bench_") if own_work_dir else os.path.abspath(args.work_dir)
    os.makedirs(work_dir, exist_ok=True)
    try:
        inputs = prepare(args, work_dir, env)
        runs = []
        for repeat in range(args.repeats):
            for stage in args.stages:
                for side in SIDES:  # alternate: hf_rlhf, plain, hf_rlhf, plain, ...
                    # The first hf_rlhf pretraining output is kept as the base model of every SFT run.
                    is_base = stage == "pretrain" and side == "hf_rlhf" and repeat == 0
                    result = run_once(
                        args,
                        work_dir,
                        env,
                        side,
                        stage,
                        inputs,
                        name=f"{stage}-{side}-{repeat}",
                        keep_output_at=inputs["base"] if is_base else None,
                    )
                    runs.append(result)
                    log(
                        f"{stage:<8} {side:<7} repeat {repeat + 1}/{args.repeats}: stage {result['stage_s']:.2f} s, "
                        f"train loop {result['train_s']:.2f} s, process {result['process_s']:.2f} s "
                        f"(other processes: {format_cores(result['other_cores'])})"
                    )
        matmul_flops_end = measure_matmul_flops(args.matmul_seconds, args.matmul_size)
    finally:
        if own_work_dir and not args.keep:
            shutil.rmtree(work_dir, ignore_errors=True)

    # The machine's throughput is the better of the two measurements: a lower one means other processes were using
    # the cores at that moment, and dividing by it would overstate how much of the machine training uses.
    peak_flops = max(matmul_flops, matmul_flops_end)
    summary = summarize(runs, peak_flops)
    result = {
        "config": {k: v for k, v in vars(args).items() if k not in ("output", "work_dir")},
        "machine": {
            **machine_info(threads),
            "matmul_gflops": matmul_flops / 1e9,
            "matmul_gflops_end": matmul_flops_end / 1e9,
            "matmul_gflops_used": peak_flops / 1e9,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg()[0],
            "other_cores_max": max((r["other_cores"] or 0.0) for r in runs),
        },
        "summary": summary,
        "ratios": compare(summary, runs, args.target),
        "noisy": noise_warning(matmul_flops, matmul_flops_end, runs),
        "runs": [{k: v for k, v in r.items() if k != "args"} for r in runs],
        "resolved_args": {f"{r['stage']}/{r['side']}": r["args"] for r in runs},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": time.time() - started,
    }
    print(format_table(result))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(result, f, indent=2, default=str)
    print(f"\nresults: {os.path.relpath(args.output)} (total {result['duration_s']:.0f} s)")
    return 0  # never fail on the ratio: timings on a shared machine are too noisy to gate on


if __name__ == "__main__":
    sys.exit(main())
