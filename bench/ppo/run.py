"""Side-by-side PPO benchmark: hf_rlhf's `PPOTrainer` against TRL 1.12's `trl.experimental.ppo.PPOTrainer`.

TRL removed PPO in 1.13, so the baseline runs TRL 1.12 from this benchmark's own virtual environment
(`bench/ppo/.venv`, created here when missing by `baseline_env`: it sees exactly the packages of the interpreter
running this script, venv or not, plus its own `trl==1.12.0` in front). hf_rlhf never depends on it.

Steps:

1. `common.setup` once: tokenizer, chat-formatted tiny-world prompts, a warmed-up tiny llama policy, a reward model
   and a value model, saved to a scratch directory; the starting policy is evaluated once (the "start" row).
2. Runs alternate hf_rlhf, trl, hf_rlhf, trl, ... (`--repeats` per side), each a fresh `worker.py` process. Repeat `r`
   trains both sides with seed `seed + r`, so the score comparison averages over seeds while the two sides of a
   repeat stay paired.
3. The table: seconds per PPO update (the median over runs of `trainer.train()` wall time / updates) with and
   without the time spent in explicit `gc.collect()` calls, and their ratios hf_rlhf / trl (target <= 0.50 without
   gc), the mean reward-model score of the trained policies on held-out prompts, from the same evaluation code on
   both sides (target: hf_rlhf at least TRL's, within sampling noise), and each trainer's score per update (same
   reward model, rollout size and number of updates on both sides). Verdicts never change the exit status; a
   crashed run does (exit 1), and its side gets no numbers.

See README.md for what exactly is timed and how the two trainers differ.
"""

from __future__ import annotations

import argparse
import json
import math
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bench/, for machine.py
from machine import cpu_busy_seconds  # noqa: E402

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(os.path.dirname(BENCH_DIR))
VENV_DIR = os.path.join(BENCH_DIR, ".venv")
TRL_BASELINE = "1.12.0"
SPEED_TARGET = 0.5  # hf_rlhf / TRL seconds per update, explicit gc.collect() excluded on both sides
SIDES = ("hf_rlhf", "trl")
sys.path.insert(0, BENCH_DIR)
from baseline_env import check_same_packages, ensure_baseline_venv, venv_python  # noqa: E402

VENV_PYTHON = venv_python(VENV_DIR)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat of 4 updates (about a minute and a half).")
    parser.add_argument("--repeats", type=int, default=None, help="Runs per side (default 3, 1 with --quick).")
    parser.add_argument("--updates", type=int, default=None, help="PPO updates per run (default 10, 4 with --quick).")
    parser.add_argument("--seed", type=int, default=42, help="Seed of the setup and of the first repeat.")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run (default 1: on a small shared machine one busy core stalls every parallel "
        "region of a 2-thread run; see README).",
    )
    parser.add_argument("--timeout", type=int, default=600, help="Seconds before a run is killed.")
    parser.add_argument("--output", default=os.path.join(BENCH_DIR, "results", "latest.json"))
    parser.add_argument("--keep", action="store_true", help="Keep the scratch directory (models, logs).")
    args = parser.parse_args(argv)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.updates = args.updates or (4 if args.quick else 10)
    if args.repeats < 1 or args.updates < 1 or args.threads < 1:
        parser.error("--repeats, --updates and --threads must be >= 1")
    return args


# ------------------------------------------------------------------------------------------- environment
def ensure_venv() -> str:
    """Create or update `bench/ppo/.venv`: this interpreter's packages with TRL 1.12 in front; returns its TRL version.

    See `baseline_env`: the venv sees exactly the packages of the interpreter running this script (a venv or not),
    checked distribution by distribution, so both sides run the very same libraries except TRL itself.
    """
    version = ensure_baseline_venv(VENV_DIR, "trl", TRL_BASELINE, log=lambda m: print(m, flush=True))
    check_same_packages(VENV_DIR, "trl")
    return version


def worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        TRL_EXPERIMENTAL_SILENCE="1",
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    return env


# ----------------------------------------------------------------------------------------------------- runs
def run_worker(args: argparse.Namespace, side: str, repeat: int, setup_dir: str, scratch: str) -> dict[str, Any]:
    """One run of one side in a fresh process; returns the worker's result plus process-level measurements."""
    name = f"{repeat}-{side}"
    run_dir = os.path.join(scratch, name)
    os.makedirs(run_dir, exist_ok=True)
    result_path = os.path.join(run_dir, "result.json")
    python = sys.executable if side == "hf_rlhf" else VENV_PYTHON
    command = [
        python,
        os.path.join(BENCH_DIR, "worker.py"),
        "--side",
        side,
        "--setup_dir",
        setup_dir,
        "--output_dir",
        os.path.join(run_dir, "trainer"),
        "--seed",
        str(args.seed + repeat),
        "--threads",
        str(args.threads),
        "--result",
        result_path,
    ]
    log_path = os.path.join(run_dir, "log.txt")
    busy_before = cpu_busy_seconds()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            returncode = subprocess.call(
                command, cwd=REPO_DIR, env=worker_env(args.threads), stdout=log, stderr=subprocess.STDOUT,
                timeout=args.timeout,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            returncode = None
    process_s = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy_after = cpu_busy_seconds()
    result: dict[str, Any] = {"side": side, "repeat": repeat, "seed": args.seed + repeat}
    if os.path.exists(result_path):
        with open(result_path) as f:
            result.update(json.load(f))
    if returncode != 0 and "error" not in result:
        result["error"] = "timed out" if returncode is None else f"exit code {returncode}"
    if "error" in result:
        with open(log_path) as f:
            result["log_tail"] = f.read()[-3000:]
    process_cpu_s = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    other_cores = None
    if busy_before is not None and busy_after is not None:
        other_cores = max(0.0, (busy_after - busy_before - process_cpu_s) / process_s)
    result.update(process_s=process_s, process_cpu_s=process_cpu_s, other_cores=other_cores)
    return result


# ---------------------------------------------------------------------------------------------- summary
def gold_scores(questions: list[str], completions: list[str]) -> list[float]:
    """The tiny world's gold labeler (text only, so it judges both sides' samples identically)."""
    from hf_rlhf.data.world import TinyWorld

    return TinyWorld(0).gold_scores(questions, completions)


def median_interval(marks: list[float]) -> float:
    """Median time between consecutive update ends (the first update measured from the start of `train()`)."""
    return statistics.median([b - a for a, b in zip([0.0, *marks], marks, strict=False)])


def summarize_side(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the timings and means of the scores over one side's successful runs."""
    spu = [r["seconds_per_update"] for r in runs]
    scores = [x for r in runs for x in r["eval"]["score"]]
    return {
        "runs": len(runs),
        "seconds_per_update": statistics.median(spu),
        "seconds_per_update_min": min(spu),
        "seconds_per_update_max": max(spu),
        "median_update_s": statistics.median(median_interval(r["update_marks"]) for r in runs),
        "cpu_seconds_per_update": statistics.median(r["train_cpu_s"] / r["updates"] for r in runs),
        "gc_seconds_per_update": statistics.median(r["gc_s"] / r["updates"] for r in runs),
        "seconds_per_update_without_gc": statistics.median((r["train_s"] - r["gc_s"]) / r["updates"] for r in runs),
        "cpu_seconds_per_update_without_gc": statistics.median(
            (r["train_cpu_s"] - r["gc_cpu_s"]) / r["updates"] for r in runs
        ),
        "init_s": statistics.median(r["init_s"] for r in runs),
        "import_s": statistics.median(r["import_s"] for r in runs),
        "process_s": statistics.median(r["process_s"] for r in runs),
        "other_cores_max": max((r["other_cores"] or 0.0) for r in runs),
        "eval_score": statistics.fmean(scores),
        "eval_rm": statistics.fmean(x for r in runs for x in r["eval"]["rm"]),
        "eval_gold": statistics.fmean(x for r in runs for x in r["gold"]),
        "eval_eos_rate": statistics.fmean(r["eval"]["eos_rate"] for r in runs),
        "eval_length": statistics.fmean(r["eval"]["mean_length"] for r in runs),
        "train_score_last": statistics.fmean(r["history"][-1]["score"] for r in runs),
        "train_score_first": statistics.fmean(r["history"][0]["score"] for r in runs),
        # the trainer's own logged score per update, averaged over the runs: the reward each update reached
        "train_score_curve": [statistics.fmean(scores) for scores in zip(*(h_scores(r) for r in runs), strict=False)],
    }


def h_scores(run: dict[str, Any]) -> list[float]:
    return [h["score"] for h in run["history"]]


def score_difference(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    """hf_rlhf - trl eval score, paired by repeat and prompt, with the standard error of the mean difference.

    Both sides of a repeat are evaluated on the same prompts with the same sampling seed, so the per-prompt
    differences are paired; their spread is the sampling noise the verdict allows for.
    """
    by_repeat: dict[int, dict[str, dict]] = {}
    for r in runs:
        by_repeat.setdefault(r["repeat"], {})[r["side"]] = r
    diffs = [
        a - b
        for pair in by_repeat.values()
        if len(pair) == 2 and all("error" not in r for r in pair.values())
        for a, b in zip(pair["hf_rlhf"]["eval"]["score"], pair["trl"]["eval"]["score"], strict=True)
    ]
    if len(diffs) < 2:
        return None
    return {"mean": statistics.fmean(diffs), "se": statistics.stdev(diffs) / math.sqrt(len(diffs)), "n": len(diffs)}


def print_table(report: dict[str, Any]) -> None:
    """The comparison table with PASS/FAIL against the targets, and warnings about the measurement."""
    s, summary, verdicts = report["settings"], report["summary"], report["verdicts"]
    h, t = summary.get("hf_rlhf"), summary.get("trl")
    print()
    print(
        f"PPO benchmark: hf_rlhf vs TRL {report['trl_baseline']} | {s['updates']} updates x {s['rollout_batch_size']} "
        f"rollouts, response length {s['response_length']}, {s['num_ppo_epochs']} PPO epochs, "
        f"{s['num_mini_batches']} minibatch, micro-batch {s['per_device_train_batch_size']} x "
        f"{s['gradient_accumulation_steps']} accumulation | {report['repeats']} repeat(s), {report['threads']} thread(s)"
    )
    rows: list[tuple[str, str, str, str, str, str]] = []

    def fmt(x: float | None, spec: str = ".3f") -> str:
        return "-" if x is None else format(x, spec)

    def row(metric: str, key: str, spec: str = ".3f", ratio: bool = False, target: str = "", verdict: str = ""):
        a, b = (h or {}).get(key), (t or {}).get(key)
        r = fmt(a / b, ".2f") if ratio and a is not None and b else ""
        rows.append((metric, fmt(a, spec), fmt(b, spec), r, target, verdict))

    row("s / update (median run)", "seconds_per_update", ratio=True)
    rows.append(
        (
            "  fastest .. slowest run",
            f"{fmt((h or {}).get('seconds_per_update_min'))}..{fmt((h or {}).get('seconds_per_update_max'))}",
            f"{fmt((t or {}).get('seconds_per_update_min'))}..{fmt((t or {}).get('seconds_per_update_max'))}",
            "",
            "",
            "",
        )
    )
    row("  median single update (s)", "median_update_s", ratio=True)
    row("  CPU s / update", "cpu_seconds_per_update", ratio=True)
    row("  explicit gc.collect() s / update", "gc_seconds_per_update")
    row("s / update without gc.collect()", "seconds_per_update_without_gc", ratio=True, target=f"<= {SPEED_TARGET:.2f}",
        verdict=verdicts["speed"])  # fmt: skip
    row("  CPU s / update without gc.collect()", "cpu_seconds_per_update_without_gc", ratio=True)
    diff = report.get("score_difference")
    diff_text = f"{diff['mean']:+.3f}+-{diff['se']:.3f}" if diff else ""
    row("eval score (RM - EOS penalty)", "eval_score", target=">= trl", verdict=verdicts["score"])
    rows[-1] = rows[-1][:3] + (diff_text,) + rows[-1][4:]
    row("  eval RM score", "eval_rm")
    row("  eval gold score (0..1)", "eval_gold")
    row("  eval EOS rate", "eval_eos_rate", ".2f")
    row("  eval response length", "eval_length", ".1f")
    row("train score, first update", "train_score_first")
    row("train score, last update", "train_score_last")
    row("trainer construction (s)", "init_s", ".2f")
    row("process incl. imports (s)", "process_s", ".1f")
    row("other processes, cores (max)", "other_cores_max", ".2f")
    start = report["start_eval"]
    rows.append(
        (
            "start policy: eval score / gold",
            f"{start['mean_score']:.3f} / {start['gold']:.3f}",
            "(same start)",
            "",
            "",
            "",
        )
    )
    header = ("metric", "hf_rlhf", "trl 1.12", "hf/trl", "target", "verdict")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for line in [header, tuple("-" * w for w in widths), *rows]:
        print(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))
        )
    print("hf/trl for the eval score: the paired difference hf_rlhf - trl +- its standard error (PASS unless hf_rlhf")
    print("is lower by more than 2 standard errors). The speed target is on the time without explicit gc.collect().")
    if h and t:
        print("train score per update (each trainer's own logged score, mean over runs):")
        print("  update  hf_rlhf      trl")
        for i, (a, b) in enumerate(zip(h["train_score_curve"], t["train_score_curve"], strict=False), start=1):
            print(f"  {i:>6}  {a:+7.3f}  {b:+7.3f}")
    for warning in report["warnings"]:
        print(f"WARNING: {warning}")
    for error in report["errors"]:
        print(f"ERROR: {error}")


def verdict_speed(summary: dict[str, Any]) -> str:
    """hf_rlhf / TRL seconds per update, explicit `gc.collect()` time excluded on both sides, against the target."""
    if "hf_rlhf" not in summary or "trl" not in summary:
        return "n/a"
    h, t = (summary[side]["seconds_per_update_without_gc"] for side in SIDES)
    return "PASS" if h <= SPEED_TARGET * t else "FAIL"


def verdict_score(diff: dict[str, float] | None) -> str:
    if diff is None:
        return "n/a"
    if diff["mean"] >= 0:
        return "PASS"
    return "PASS (noise)" if diff["mean"] >= -2 * diff["se"] else "FAIL"


def warnings_for(runs: list[dict[str, Any]], summary: dict[str, Any], threads: int) -> list[str]:
    out = []
    # Other processes only slow a run down once they want more than the cores the run leaves free.
    free = max(0, (os.cpu_count() or 1) - threads)
    busy = [r for r in runs if (r.get("other_cores") or 0.0) > free + 0.25]
    if busy:
        worst = max(r["other_cores"] for r in busy)
        out.append(
            f"other processes kept up to {worst:.2f} of {os.cpu_count()} cores busy during {len(busy)} of "
            f"{len(runs)} runs ({threads} thread(s) each): wall times are unreliable; compare the CPU s / update "
            "row and rerun on a quieter machine"
        )
    # with one thread a run that had its core all the time shows CPU / wall close to 1
    starved = [r for r in runs if r["train_cpu_s"] / r["train_s"] < 0.9]
    if threads == 1 and starved:
        out.append(f"{len(starved)} run(s) got less than 90% of a core during train() (CPU / wall below 0.9)")
    if "hf_rlhf" in summary and "trl" in summary:
        h, t = summary["hf_rlhf"], summary["trl"]
        gap = abs(h["seconds_per_update"] - t["seconds_per_update"])
        spread = max(
            h["seconds_per_update_max"] - h["seconds_per_update_min"],
            t["seconds_per_update_max"] - t["seconds_per_update_min"],
        )
        if spread > gap:
            out.append("a side's fastest-to-slowest spread is wider than the gap between the sides")
    return out


# -------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.perf_counter()
    trl_version = ensure_venv()

    import common
    import torch

    torch.set_num_threads(args.threads)
    settings = common.Settings(updates=args.updates, seed=args.seed)
    scratch = tempfile.mkdtemp(prefix="hf_rlhf_ppo_bench_")
    setup_dir = os.path.join(scratch, "setup")
    os.makedirs(setup_dir)
    print(f"setup (tokenizer, SFT warm-up, reward model) in {scratch} ...", flush=True)
    t = time.perf_counter()
    settings = common.setup(setup_dir, settings)
    models = common.load_models(setup_dir)
    start_eval = common.evaluate(
        models["policy"], models["reward_model"], common.load_tokenizer(setup_dir), settings, seed=1234
    )
    start_eval["gold"] = statistics.fmean(gold_scores(settings.eval_questions, start_eval["completions"]))
    setup_s = time.perf_counter() - t
    del models

    runs = []
    total = args.repeats * len(SIDES)
    for repeat in range(args.repeats):
        for side in SIDES:
            print(f"run {len(runs) + 1}/{total}: {side} (seed {args.seed + repeat}) ...", end=" ", flush=True)
            result = run_worker(args, side, repeat, setup_dir, scratch)
            if "error" in result:
                print(f"FAILED: {result['error']}", flush=True)
            else:
                result["gold"] = gold_scores(settings.eval_questions, result["eval"]["completions"])
                print(
                    f"{result['seconds_per_update']:.3f} s/update, eval score {result['eval']['mean_score']:.3f} "
                    f"({result['process_s']:.0f} s in all)",
                    flush=True,
                )
            runs.append(result)

    summary = {
        side: summarize_side(ok)
        for side in SIDES
        if (ok := [r for r in runs if r["side"] == side and "error" not in r])
    }
    diff = score_difference(runs)
    errors = [f"{r['side']} run {r['repeat']} (seed {r['seed']}): {r['error']}" for r in runs if "error" in r]
    if any(r["side"] == "trl" for r in runs if "error" in r):
        errors.append("the TRL baseline did not run; no ratio is reported for the failed runs (see log_tail)")
    report = {
        "benchmark": "ppo: hf_rlhf PPOTrainer vs trl.experimental.ppo.PPOTrainer",
        "command": " ".join(["python3", os.path.relpath(__file__, REPO_DIR), *(argv or sys.argv[1:])]),
        "trl_baseline": trl_version,
        "repeats": args.repeats,
        "threads": args.threads,
        "settings": {**settings.hyperparameters(), "rollout_batch_size": settings.rollout_batch_size},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "setup_s": setup_s,
        "start_eval": {k: v for k, v in start_eval.items() if not isinstance(v, list)},
        "summary": summary,
        "score_difference": diff,
        "verdicts": {"speed": verdict_speed(summary), "score": verdict_score(diff)},
        "warnings": warnings_for([r for r in runs if "error" not in r], summary, args.threads),
        "errors": errors,
        "runs": [slim(r) for r in runs],
        "total_s": time.perf_counter() - began,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=1)
    print_table(report)
    print(f"total {report['total_s']:.0f} s; results in {os.path.relpath(args.output, REPO_DIR)}")
    if args.keep:
        print(f"kept {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 1 if errors else 0


def slim(run: dict[str, Any]) -> dict[str, Any]:
    """A run for the results file: per-sample lists replaced by a few example completions."""
    out = {k: v for k, v in run.items() if k not in ("eval", "gold")}
    if "eval" in run:
        out["eval"] = {k: v for k, v in run["eval"].items() if not isinstance(v, list)}
        out["eval"]["gold"] = statistics.fmean(run["gold"])
        out["eval"]["examples"] = run["eval"]["completions"][:5]
    return out


if __name__ == "__main__":
    sys.exit(main())
