"""Every stage under `accelerate launch` with 2 processes on this CPU machine (gloo), compared with one process and the
same global batch; and a SIGTERM to the launcher, then the same command again. Slow: each launch starts 2 Pythons.

The 2-process layout is the named config `cpu_2proc` (hf_rlhf/accelerate_configs/cpu_2proc.yaml: accelerate's multi-GPU
launcher; on a machine without GPUs `hf-rlhf` joins the processes on the CPU with gloo). These tests start
`accelerate launch ... -m hf_rlhf.cli` themselves; tests/test_launching.py has `hf-rlhf ... --accelerate_config`.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import yaml
from safetensors.torch import load_file

from hf_rlhf import cli
from hf_rlhf.launching import resolve_accelerate_config
from hf_rlhf.manifest import MANIFEST, is_complete, read_manifest
from hf_rlhf.resilience import complete_checkpoints

from .conftest import REPO
from .test_resilience import TINY_PRETRAIN, TINY_SFT, write_pipeline

pytestmark = pytest.mark.slow

CPU_2PROC = resolve_accelerate_config("cpu_2proc")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# The same global batch, summed in float32 as 2 x 4 sequences instead of 8: measured 9.5e-7 apart on the loss after 12
# steps and 1.2e-7 on the weights. 1e-4 leaves room for other CPUs' kernels and thread counts; a wrong split of the
# batch (other sequences per step) or a schedule stepped once per process would move the loss by far more.
LOSS_ATOL = 1e-4
WEIGHT_ATOL = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(*argv: str) -> list[str]:
    """`accelerate launch --config_file cpu_2proc.yaml -m hf_rlhf.cli ARGV`, on a free port."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", CPU_2PROC]
    return [*launcher, "--main_process_port", str(free_port()), "-m", "hf_rlhf.cli", *argv]


def launch(*argv: str, timeout: int = 1200) -> subprocess.CompletedProcess:
    return subprocess.run(launch_command(*argv), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)


def losses(checkpoint: str) -> list[float]:
    with open(os.path.join(checkpoint, "trainer_state.json")) as f:
        return [h["loss"] for h in json.load(f)["log_history"] if "loss" in h]


def max_weight_difference(a: str, b: str) -> float:
    wa, wb = load_file(os.path.join(a, "model.safetensors")), load_file(os.path.join(b, "model.safetensors"))
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


def pretrain_argv(recipe, documents: str, out, per_device: int, **overrides) -> list[str]:
    argv = ["pretrain", "--config", str(recipe), "--dataset_name", documents, "--output_dir", str(out)]
    argv += ["--per_device_train_batch_size", str(per_device)]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    return argv


def test_pretraining_with_two_processes_gives_the_loss_curve_of_one_with_the_same_global_batch(world_dir, tmp_path):
    recipe = tmp_path / "pretrain.yaml"
    recipe.write_text(yaml.safe_dump(TINY_PRETRAIN))
    start = time.perf_counter()
    two = launch(*pretrain_argv(recipe, world_dir["documents"], tmp_path / "two", per_device=4))
    seconds = time.perf_counter() - start
    assert two.returncode == 0, two.stderr[-4000:]
    assert cli.main(pretrain_argv(recipe, world_dir["documents"], tmp_path / "one", per_device=8, use_cpu="true")) == 0

    assert is_complete(str(tmp_path / "two")) and read_manifest(str(tmp_path / "two"))["stage"] == "pretrain"
    last = tmp_path / "two" / "checkpoint-12"
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(os.listdir(last))  # saved by both processes
    curve_two, curve_one = losses(last), losses(tmp_path / "one" / "checkpoint-12")
    assert len(curve_two) == len(curve_one) == 12
    difference = max(abs(a - b) for a, b in zip(curve_one, curve_two, strict=True))
    weights = max_weight_difference(tmp_path / "one", tmp_path / "two")
    print(f"2 processes: {seconds:.1f} s; max loss difference {difference:.2e}, max weight difference {weights:.2e}")
    assert difference < LOSS_ATOL
    assert weights < WEIGHT_ATOL


TINY_STAGES = {
    "sample": {
        "num_completions": 3,
        "max_new_tokens": 8,
        "max_prompts": 24,
        "batch_size": 24,
        "labeler": "tiny_world",
    },
    "reward": {  # + `dataset_name`: comparisons written by the test (the tiny SFT model's samples are all ties)
        "max_length": 64,
        "invalid_rows": "drop",
        "too_long": "drop",
        "seed": 42,
        "per_device_train_batch_size": 4,
        "learning_rate": 1.0e-3,
        "max_steps": 3,
        "logging_steps": 1,
        "save_strategy": "steps",
        "save_steps": 3,
        "eval_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        "activation_checkpointing": False,
        "bf16": False,
    },
    "rl": {
        "algorithm": "ppo",
        "reward_funcs": ["tiny_world_gold"],
        "reward_weights": [1.0, 0.0],
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "num_mini_batches": 2,
        "num_ppo_epochs": 1,
        "max_new_tokens": 8,
        "kl_coef": 0.2,
        "normalize_reward": True,
        "seed": 42,
        "max_steps": 2,
        "learning_rate": 5.0e-5,
        "lr_scheduler_type": "linear",
        "save_strategy": "steps",
        "save_steps": 1,
        "report_to": "none",
        "disable_tqdm": True,
    },
}
ANIMALS = [("fox", "red"), ("owl", "brown"), ("frog", "green"), ("swan", "white"), ("crow", "black")]
BATCHED = ("pretrain", "sft", "reward", "rl")  # stages whose per-device batch is halved for 2 processes


def full_pipeline(tmp_path, halve: bool) -> str:
    """Every stage on tiny models; `halve`: per-device batches halved (2 processes, the same global batch)."""
    base = tmp_path / ("half" if halve else "full")
    base.mkdir()
    comparisons = base / "comparisons.jsonl"
    with open(comparisons, "w") as f:
        for i in range(48):
            animal, color = ANIMALS[i % len(ANIMALS)]
            row = {"prompt": f"What color is the {animal}?", "chosen": f"The {animal} is {color}."}
            f.write(
                json.dumps({**row, "rejected": ["Why do you ask?", "I am not sure.", "Blue, maybe."][i % 3]}) + "\n"
            )
    settings = {"pretrain": TINY_PRETRAIN, "sft": TINY_SFT, **TINY_STAGES}
    settings["reward"] = {**settings["reward"], "dataset_name": str(comparisons)}
    stages = {}
    for name, values in settings.items():
        (base / f"{name}.yaml").write_text(yaml.safe_dump(values))
        stages[name] = {"recipe": f"{name}.yaml"}
        if halve and name in BATCHED:
            stages[name]["overrides"] = {"per_device_train_batch_size": values["per_device_train_batch_size"] // 2}
    return write_pipeline(base, stages)


def test_the_whole_pipeline_runs_with_two_processes(tmp_path):
    from hf_rlhf.pipeline import run_pipeline
    from hf_rlhf.recipes import load_pipeline_recipe

    start = time.perf_counter()
    two = launch("pipeline", full_pipeline(tmp_path, halve=True), "--output_dir", str(tmp_path / "two"))
    seconds = time.perf_counter() - start
    assert two.returncode == 0, two.stderr[-4000:]
    run_pipeline(load_pipeline_recipe(full_pipeline(tmp_path, halve=False), str(tmp_path / "one")))

    for stage in ("pretrain", "sft", "sample", "reward", "rl"):
        assert is_complete(str(tmp_path / "two" / stage)), stage
        assert two.stdout.count(f"[hf-rlhf] {stage}: hf-rlhf {stage} ") == 1  # the main process reports
        assert not any(name.startswith(".tmp") for name in os.listdir(tmp_path / "two" / stage))
    assert os.path.isfile(tmp_path / "two" / "report.json") and os.path.isfile(tmp_path / "two" / "report.md")
    for split in ("train", "test"):  # sampled in seeded chunks shared out: the comparisons of one process
        name = f"comparisons_{split}.jsonl"
        assert (tmp_path / "two" / "sample" / name).read_text() == (tmp_path / "one" / "sample" / name).read_text()
    for checkpoint in complete_checkpoints(tmp_path / "two" / "rl"):  # PPO: one RNG state per process
        assert {"random_states_0.pkl", "random_states_1.pkl"} <= set(os.listdir(checkpoint))
    rl = read_manifest(str(tmp_path / "two" / "rl"))
    assert rl["metrics"]["updates"] == 2 and len(rl["history"]) == 2
    assert rl["history"][-1]["lr"] == pytest.approx(read_manifest(str(tmp_path / "one" / "rl"))["history"][-1]["lr"])

    report = {"seconds": round(seconds, 1)}
    for stage in ("pretrain", "sft", "reward"):
        one, two_ = (read_manifest(str(tmp_path / run / stage))["metrics"] for run in ("one", "two"))
        report[stage] = abs(one["train_loss"] - two_["train_loss"])
        report[f"{stage}_weights"] = max_weight_difference(tmp_path / "one" / stage, tmp_path / "two" / stage)
    print(f"2-process pipeline vs 1 process: {report}")
    for stage in ("pretrain", "sft", "reward"):
        assert report[stage] < LOSS_ATOL, stage
        # the reward head's bias is also shifted by the mean reward over the reference set (centring): 10x looser
        assert report[f"{stage}_weights"] < WEIGHT_ATOL * (10 if stage == "reward" else 1), stage


def test_sigterm_to_the_launcher_stops_both_processes_at_one_step_and_the_same_command_resumes(tmp_path):
    (tmp_path / "pretrain.yaml").write_text(
        yaml.safe_dump({**TINY_PRETRAIN, "max_steps": 40, "save_steps": 1000, "logging_steps": 1})
    )
    recipe = write_pipeline(
        tmp_path, {"pretrain": {"recipe": "pretrain.yaml", "overrides": {"per_device_train_batch_size": 4}}}
    )
    command = launch_command("pipeline", recipe, "--output_dir", str(tmp_path / "two"))
    process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    first_step = threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            if "'loss'" in line:
                first_step.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert first_step.wait(600), "".join(lines[-50:])
    process.send_signal(signal.SIGTERM)  # as a scheduler preempting the job would
    assert process.wait(120) != 0
    reader.join(10)
    output = "".join(lines)
    assert "stopped by SIGTERM after step" in output, output[-4000:]
    (checkpoint,) = complete_checkpoints(tmp_path / "two" / "pretrain.partial")  # the unfinished run, beside it
    step = int(checkpoint.rsplit("-", 1)[1])
    assert 1 <= step < 40
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(os.listdir(checkpoint))  # both stopped at this step
    assert not is_complete(str(tmp_path / "two" / "pretrain"))
    assert not os.path.exists(tmp_path / "two" / "pretrain" / MANIFEST)

    again = launch("pipeline", recipe, "--output_dir", str(tmp_path / "two"))
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"resuming pretrain from checkpoint-{step}" in again.stdout
    one = tmp_path / "one"  # one process, never interrupted, on the pipeline's documents
    documents = os.path.join(tmp_path / "two", "data", "documents")
    assert cli.main(pretrain_argv(tmp_path / "pretrain.yaml", documents, one, per_device=8, use_cpu="true")) == 0
    difference = max_weight_difference(one, tmp_path / "two" / "pretrain")
    print(f"SIGTERM at step {step} of 40, resumed with 2 processes: max weight difference {difference:.2e}")
    assert difference < WEIGHT_ATOL
