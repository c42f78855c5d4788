"""Interruptions: complete checkpoints, a crash while saving, NaN/inf losses, SIGTERM, kill-and-resume, and the
pipeline's resume of an interrupted stage. Fast tests train tiny models in-process; the kill tests are subprocesses."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import yaml
from datasets import Dataset
from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainerCallback, TrainingArguments

import hf_rlhf.ppo.checkpoint as ppo_checkpoint
from hf_rlhf import cli, resilience
from hf_rlhf.manifest import MANIFEST, is_complete
from hf_rlhf.resilience import NonFiniteLossError, TrainingInterrupted, complete_checkpoints, resilient

from .conftest import REPO
from .ppo_fixtures import short_answers
from .resilience_helpers import ppo_run


# ------------------------------------------------------------------------------------- transformers Trainer
def tiny_trainer(output_dir, callbacks=(), **overrides) -> Trainer:
    """A 1-layer Llama on random tokens: 8 steps of 4 sequences, a checkpoint every 2 steps."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    ids = torch.randint(0, 64, (96, 16), generator=torch.Generator().manual_seed(0)).tolist()
    values = dict(
        output_dir=str(output_dir),
        max_steps=8,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        save_strategy="steps",
        save_steps=2,
        logging_steps=1,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    values.update(overrides)
    return resilient(Trainer)(
        model=LlamaForCausalLM(config),
        args=TrainingArguments(**values),
        train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}),
        callbacks=list(callbacks),
    )


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> float:
    """Every tensor of `a` within `atol` of `b`'s; returns the largest difference."""
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=0, msg=key)
    return max((a[key].float() - b[key].float()).abs().max().item() for key in a)


def names(paths) -> list[str]:
    return [os.path.basename(p) for p in paths]


class SigtermAt(TrainerCallback):
    """Sends this process SIGTERM as step `step` begins, like a scheduler preempting the job."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_saves_at_the_step_boundary_and_resume_gives_the_uninterrupted_result(tmp_path):
    straight = tiny_trainer(tmp_path / "straight", save_strategy="no")
    straight.train()
    run = tmp_path / "run"
    handler = signal.getsignal(signal.SIGTERM)
    stopped = tiny_trainer(run, callbacks=[SigtermAt(3)], save_strategy="no")  # a checkpoint even so
    with pytest.raises(
        TrainingInterrupted, match=r"after step 3 of 8; saved .*checkpoint-3\. .*resume_from_checkpoint"
    ):
        stopped.train()
    assert signal.getsignal(signal.SIGTERM) == handler  # restored
    assert names(complete_checkpoints(run)) == ["checkpoint-3"]
    resumed = tiny_trainer(run, save_strategy="no")
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 8
    assert_same_weights(straight.model.state_dict(), resumed.model.state_dict())


class SigtermAtTheEnd(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)


def test_a_sigterm_after_the_last_step_keeps_the_finished_state(tmp_path):
    trainer = tiny_trainer(tmp_path, callbacks=[SigtermAtTheEnd()], save_strategy="no")
    with pytest.raises(TrainingInterrupted, match=r"after step 8 of 8; saved .*checkpoint-8\."):
        trainer.train()
    assert names(complete_checkpoints(tmp_path)) == ["checkpoint-8"]


def test_a_crash_while_saving_leaves_no_complete_checkpoint_and_resume_uses_the_previous_one(tmp_path, monkeypatch):
    straight = tiny_trainer(tmp_path / "straight", save_total_limit=2)
    straight.train()
    run = tmp_path / "run"
    save = Trainer._save_optimizer_and_scheduler

    def crash_at_step_6(self, output_dir):  # the model is written, then the disk fills up
        if output_dir.endswith("checkpoint-6"):
            raise OSError("No space left on device (simulated)")
        save(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", crash_at_step_6)
    with pytest.raises(OSError, match="simulated"):
        tiny_trainer(run, save_total_limit=2).train()
    monkeypatch.undo()
    assert os.path.isfile(run / "checkpoint-6" / "model.safetensors")  # looks half-saved...
    assert names(complete_checkpoints(run)) == ["checkpoint-2", "checkpoint-4"]  # ...but does not count
    assert resilience.resolve_resume(str(run), True) == str(run / "checkpoint-4")

    resumed = tiny_trainer(run, save_total_limit=2)
    resumed.train(resume_from_checkpoint=True)
    # the incomplete checkpoint was removed and never counted against save_total_limit
    assert sorted(os.listdir(run)) == ["checkpoint-6", "checkpoint-8"]
    assert names(complete_checkpoints(run)) == ["checkpoint-6", "checkpoint-8"]
    assert_same_weights(straight.model.state_dict(), resumed.model.state_dict())


def test_a_nan_loss_stops_before_the_optimizer_step_with_a_clear_message(tmp_path):
    trainer = tiny_trainer(tmp_path)

    def nan_from_step_5(module, inputs, output):
        if module.training and trainer.state.global_step >= 4:
            output["loss"] = output["loss"] * float("nan")
        return output

    trainer.model.register_forward_hook(nan_from_step_5)
    with pytest.raises(NonFiniteLossError) as error:
        trainer.train()
    message = str(error.value)
    assert "the training loss is nan at step 5" in message
    assert f"the last good checkpoint, {tmp_path / 'checkpoint-4'}, is kept" in message
    assert "no checkpoint or model was saved from this state" in message and "learning_rate" in message
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2", "checkpoint-4"]  # nothing from the bad state
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # stopped before the optimizer step


@pytest.fixture()
def tiny_pretrain_recipe(tmp_path) -> str:
    path = tmp_path / "pretrain.yaml"
    path.write_text(yaml.safe_dump(TINY_PRETRAIN))
    return str(path)


TINY_PRETRAIN = {
    "model_type": "llama",
    "model_config_kwargs": {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "tie_word_embeddings": True,
    },
    "vocab_size": 300,
    "block_size": 32,
    "seed": 42,
    "per_device_train_batch_size": 8,
    "learning_rate": 3.0e-3,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 2,
    "max_steps": 12,
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 4,
    "report_to": "none",
    "disable_tqdm": True,
}


def test_the_pretrain_stage_stops_on_a_diverging_loss_and_is_not_complete(
    world_dir, tiny_pretrain_recipe, tmp_path, capsys
):
    out = tmp_path / "pretrain"
    argv = ["pretrain", "--config", tiny_pretrain_recipe, "--dataset_name", world_dir["documents"]]
    argv += ["--output_dir", str(out), "--save_steps", "1", "--learning_rate", "1e12", "--warmup_steps", "0"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "hf-rlhf pretrain: error: " in err and "the training loss is " in err, err
    print(err)
    assert not is_complete(str(out)) and not os.path.exists(out / MANIFEST)
    assert not os.path.exists(out / "model.safetensors")
    kept = complete_checkpoints(f"{out}.partial")  # the unfinished run is built beside output_dir
    assert kept, "the steps before the loss diverged were checkpointed"
    weights = load_file(os.path.join(kept[-1], "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


# ------------------------------------------------------------------------------------------------------ PPO
def ppo_weights(trainer) -> dict:
    return trainer.accelerator.unwrap_model(trainer.model).state_dict()


def test_ppo_sigterm_saves_after_the_update_and_resume_gives_the_uninterrupted_result(tmp_path):
    straight = ppo_run(tmp_path / "straight")
    straight.train()
    calls = []

    def short_answers_then_sigterm(prompts, completions):  # the signal arrives while update 2 scores
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return short_answers(prompts, completions)

    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match=r"after step 2 of 3; saved .*checkpoint-2\."):
        ppo_run(run, reward=short_answers_then_sigterm).train()
    assert names(complete_checkpoints(run)) == ["checkpoint-2"]
    resumed = ppo_run(run)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.global_step == 3
    assert_same_weights(ppo_weights(straight), ppo_weights(resumed))
    assert resumed.history[-1]["score"] == pytest.approx(straight.history[-1]["score"], abs=1e-6)


def test_ppo_stops_on_non_finite_statistics_and_keeps_the_last_good_checkpoint(tmp_path):
    calls = []

    def nan_at_update_2(prompts, completions):
        calls.append(1)
        return [float("nan") if len(calls) == 2 else s for s in short_answers(prompts, completions)]

    trainer = ppo_run(tmp_path, reward=nan_at_update_2, save_strategy="steps", save_steps=1)
    with pytest.raises(NonFiniteLossError, match=r"non-finite PPO statistics at update 2 \(score=nan") as error:
        trainer.train()
    assert f"the last good checkpoint, {tmp_path / 'checkpoint-1'}, is kept" in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-1"]


def test_ppo_crash_while_saving_leaves_no_checkpoint_and_resume_uses_the_previous_one(tmp_path, monkeypatch):
    straight = ppo_run(tmp_path / "straight", max_steps=2)
    straight.train()
    run = tmp_path / "run"
    mark = resilience.mark_checkpoint_complete

    def crash_at_step_2(path, step):  # the state is written, then the disk fills up
        if step == 2:
            raise OSError("No space left on device (simulated)")
        mark(path, step)

    monkeypatch.setattr(resilience, "mark_checkpoint_complete", crash_at_step_2)
    with pytest.raises(OSError, match="simulated"):
        ppo_run(run, max_steps=2, save_strategy="steps", save_steps=1).train()
    monkeypatch.undo()
    assert os.path.isfile(run / "checkpoint-2" / ppo_checkpoint.STATE_FILE)  # looks saved...
    assert names(complete_checkpoints(run)) == ["checkpoint-1"]  # ...but does not count
    resumed = ppo_run(run, max_steps=2, save_strategy="steps", save_steps=1)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.global_step == 2 and len(resumed.history) == 2  # resumed from checkpoint-1
    assert names(complete_checkpoints(run)) == ["checkpoint-1", "checkpoint-2"]
    assert_same_weights(ppo_weights(straight), ppo_weights(resumed))


# ------------------------------------------------------------------------------------------------- pipeline
def test_the_pipeline_resumes_only_a_run_started_with_the_same_arguments(tmp_path):
    from hf_rlhf.pipeline import RUN_RECORD, resumable_checkpoint, start_run

    stage = tmp_path / "sft"
    start_run(str(stage), "digest-a")
    partial = stage.parent / f"{stage.name}.partial"  # where the stage's run is built (hf_rlhf.outputs)
    for step in (2, 4):
        os.makedirs(partial / f"checkpoint-{step}")
    resilience.mark_checkpoint_complete(str(partial / "checkpoint-2"), 2)  # checkpoint-4 never finished saving
    assert resumable_checkpoint(str(stage), "digest-a") == str(partial / "checkpoint-2")
    assert resumable_checkpoint(str(stage), "digest-b") is None  # other arguments: start from scratch
    start_run(str(stage), "digest-b")
    assert os.listdir(partial) == [RUN_RECORD]  # the old run's checkpoints are gone
    assert json.loads((partial / RUN_RECORD).read_text()) == {"pipeline_args_hash": "digest-b"}
    assert not stage.exists()  # nothing is written to the stage directory until its run is complete


def write_pipeline(tmp_path, stages: dict, **sections) -> str:
    recipe = {
        "output_dir": str(tmp_path / "unused"),
        "world": {"seed": 0, "num_documents": 300, "num_demonstrations": 120, "num_eval_prompts": 4},
        "stages": stages,
        "evaluation": {"max_new_tokens": 4, "best_of_n": 2, "num_samples_shown": 1, "bootstrap_resamples": 20},
        **sections,
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return str(path)


TINY_SFT = {
    "max_length": 64,
    "seed": 42,
    "per_device_train_batch_size": 8,
    "learning_rate": 1.0e-3,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 2,
    "max_steps": 8,
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 4,
    "report_to": "none",
    "disable_tqdm": True,
    "activation_checkpointing": False,
    "bf16": False,
}


def tiny_pipeline(tmp_path) -> str:
    """Pretraining (12 steps, a checkpoint every 4) then SFT (8 steps, a checkpoint every 4) on tiny models."""
    (tmp_path / "pretrain.yaml").write_text(yaml.safe_dump(TINY_PRETRAIN))
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(TINY_SFT))
    return write_pipeline(tmp_path, {"pretrain": {"recipe": "pretrain.yaml"}, "sft": {"recipe": "sft.yaml"}})


def hf_rlhf(*argv: str, helper: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`hf-rlhf ARGV` in a new process (through tests/resilience_helpers.py when `helper` says how to die)."""
    command = [sys.executable, "-m", *(("tests.resilience_helpers", *helper, "cli") if helper else ("hf_rlhf.cli",))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([*command, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def stage_weights(stage_dir) -> dict:
    return load_file(os.path.join(stage_dir, "model.safetensors"))


@pytest.mark.slow
def test_pipeline_killed_while_saving_and_between_checkpoints_resumes_to_the_uninterrupted_result(tmp_path):
    from hf_rlhf.pipeline import run_pipeline
    from hf_rlhf.recipes import load_pipeline_recipe

    recipe = tiny_pipeline(tmp_path)
    straight = tmp_path / "straight"
    run_pipeline(load_pipeline_recipe(recipe, str(straight)))
    run = tmp_path / "run"
    command = ("pipeline", recipe, "--output_dir", str(run))

    # 1. SIGKILL while pretraining writes checkpoint-8: its files are there, its marker is not
    first = hf_rlhf(*command, helper=("kill-during", "8"))
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    assert os.path.isfile(run / "pretrain.partial" / "checkpoint-8" / "model.safetensors")
    assert names(complete_checkpoints(run / "pretrain.partial")) == ["checkpoint-4"]
    assert not is_complete(str(run / "pretrain")) and not os.path.exists(run / "pretrain")

    # 2. the same command resumes pretraining from checkpoint-4; SIGKILL once SFT's checkpoint-4 is complete
    second = hf_rlhf(*command, helper=("kill-after", "4"))
    assert second.returncode == -signal.SIGKILL, second.stderr[-3000:]
    assert "[hf-rlhf] pretrain: resuming pretrain from checkpoint-4" in second.stdout
    assert is_complete(str(run / "pretrain")) and not is_complete(str(run / "sft"))

    # 3. the same command again: pretraining is skipped, SFT resumes, and the results are the uninterrupted ones
    third = hf_rlhf(*command)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "[hf-rlhf] pretrain: already complete" in third.stdout
    assert "[hf-rlhf] sft: resuming sft from checkpoint-4" in third.stdout
    for stage in ("pretrain", "sft"):
        difference = assert_same_weights(stage_weights(straight / stage), stage_weights(run / stage), atol=1e-5)
        print(f"{stage} killed and resumed: max weight difference {difference:.2e}")
    assert os.path.isfile(run / "report.json")


@pytest.mark.slow
def test_ppo_killed_after_a_checkpoint_resumes_to_the_uninterrupted_result(tmp_path):
    straight = ppo_run(tmp_path / "straight")
    straight.train()
    run = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    killed = subprocess.run(
        [sys.executable, "-m", "tests.resilience_helpers", "kill-after", "2", "ppo", str(run), "3"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert names(complete_checkpoints(run)) == ["checkpoint-1", "checkpoint-2"]
    resumed = ppo_run(run, save_strategy="steps", save_steps=1)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.global_step == 3
    difference = assert_same_weights(ppo_weights(straight), ppo_weights(resumed), atol=1e-5)
    print(f"PPO killed and resumed: max weight difference {difference:.2e}")
