"""Outputs are never lost: a complete stage is replaced only with --overwrite, every stage is built in
`<output_dir>.partial` and swapped in when complete, a failed rerun leaves the old output byte-identical, resume finds
the partial run's checkpoints, and a full, read-only or forbidden disk is a one-line error.

One tiny pretraining run (a 2-layer Llama from scratch on 60 short documents, a few seconds) is made once and copied
into each test that needs a complete stage."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
import transformers
import yaml

from hf_rlhf import cli, outputs, storage
from hf_rlhf.errors import OutputExistsError, OutputWriteError
from hf_rlhf.manifest import MANIFEST, is_complete, read_manifest

PRETRAIN = {
    "model_type": "llama",
    "model_config_kwargs": {
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32,
    },
    "vocab_size": 280,
    "block_size": 16,
    "seed": 0,
    "per_device_train_batch_size": 4,
    "learning_rate": 1e-3,
    "max_steps": 4,
    "save_strategy": "no",
    "logging_steps": 1,
    "report_to": "none",
    "disable_tqdm": True,
    "eval_split_size": 0.0,
}
WORDS = "the fox and the owl walk to a red river while three cats sing about blue stones".split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[str, str]:
    """(documents JSONL, recipe YAML) for PRETRAIN."""
    root = tmp_path_factory.mktemp("corpus")
    docs = root / "docs.jsonl"
    rows = [{"text": " ".join(WORDS[(i + j) % len(WORDS)] for j in range(24))} for i in range(60)]
    docs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = root / "pretrain.yaml"
    recipe.write_text(yaml.safe_dump(PRETRAIN))
    return str(docs), str(recipe)


def pretrain(corpus, out, *extra: str) -> int:
    docs, recipe = corpus
    return cli.main(["pretrain", "--config", recipe, "--dataset_name", docs, "--output_dir", str(out), *extra])


@pytest.fixture(scope="module")
def finished(corpus, tmp_path_factory) -> str:
    """A complete pretrain stage, made once; tests copy it."""
    out = tmp_path_factory.mktemp("finished") / "pretrain"
    assert pretrain(corpus, out) == 0
    return str(out)


@pytest.fixture()
def complete(finished, tmp_path) -> str:
    out = tmp_path / "run" / "pretrain"
    shutil.copytree(finished, out)
    return str(out)


def snapshot(directory) -> dict[str, bytes]:
    """Every file under `directory` with its bytes (directories as None): equal snapshots, byte-identical trees."""
    tree = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs:
            tree[os.path.relpath(os.path.join(root, name), directory)] = None
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                tree[os.path.relpath(os.path.join(root, name), directory)] = f.read()
    return tree


def one_line_error(capsys, command: str = "pretrain") -> str:
    err = capsys.readouterr().err.strip()
    line = err.splitlines()[-1]
    assert line.startswith(f"hf-rlhf {command}: error: "), err
    return line


class Boom(RuntimeError):
    pass


def crash_at_step(monkeypatch, step: int) -> None:
    """Training raises as step `step` begins (like a crash or a bug mid-run)."""
    calls = {"n": 0}
    original = transformers.Trainer.training_step

    def training_step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise Boom(f"crash at step {step}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", training_step)


# ---------------------------------------------------------------------------------------------- refusals
def test_a_complete_stage_is_refused_without_overwrite_before_the_data_loads(complete, corpus, capsys):
    before = snapshot(complete)
    finished_at = read_manifest(complete)["finished_at"]
    docs, recipe = corpus
    argv = ["pretrain", "--config", recipe, "--dataset_name", "/no/such/data", "--output_dir", complete]
    assert cli.main(argv) == 1  # the data does not exist: the refusal comes first
    line = one_line_error(capsys)
    assert f"'{complete}' already holds a complete pretrain stage (finished {finished_at})" in line
    assert "pass --overwrite to replace it (the old output is kept until the new one is complete)" in line
    assert "or choose another output_dir" in line
    assert snapshot(complete) == before
    assert not os.path.exists(complete + ".partial")


def test_a_directory_of_other_files_is_never_replaced(corpus, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert pretrain(corpus, out, "--overwrite", "true") == 1
    assert "holds files but no hf_rlhf stage" in one_line_error(capsys)
    assert (out / "notes.txt").read_text() == "keep me" and not os.path.exists(f"{out}.partial")


def test_an_output_dir_under_a_regular_file_or_in_a_read_only_directory_is_refused(corpus, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert pretrain(corpus, blocker / "pretrain") == 1
    line = one_line_error(capsys)
    assert f"'{blocker}' is a regular file, not a directory" in line and f"{blocker}/pretrain" in line
    if os.geteuid() == 0:  # root writes through permission bits: the regular-file case above stands in for it
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert pretrain(corpus, locked / "pretrain") == 1
        assert f"no permission to write in '{locked}'" in one_line_error(capsys)
    finally:
        locked.chmod(0o755)


def test_merge_refuses_a_complete_output_before_loading_anything(complete):
    from hf_rlhf.merge import merge

    before = snapshot(complete)
    with pytest.raises(OutputExistsError, match="already holds a complete pretrain stage"):
        merge("/no/such/adapter", complete)
    assert snapshot(complete) == before


# -------------------------------------------------------------------------------------- the swap and crashes
def test_an_overwrite_that_crashes_mid_training_leaves_the_old_output_byte_identical(complete, corpus, monkeypatch):
    before = snapshot(complete)
    crash_at_step(monkeypatch, 2)
    with pytest.raises(Boom):
        pretrain(corpus, complete, "--overwrite", "true", "--seed", "1")
    assert snapshot(complete) == before
    assert os.path.isdir(complete + ".partial") and not is_complete(complete + ".partial")


def test_a_fresh_run_that_fails_leaves_no_output_dir(corpus, tmp_path, monkeypatch):
    out = tmp_path / "pretrain"
    crash_at_step(monkeypatch, 2)
    with pytest.raises(Boom):
        pretrain(corpus, out)
    assert not os.path.exists(out) and not is_complete(f"{out}.partial")


def test_a_successful_overwrite_swaps_the_new_output_in(complete, corpus):
    old = read_manifest(complete)
    old_weights = snapshot(complete)["model.safetensors"]
    assert pretrain(corpus, complete, "--overwrite", "true", "--seed", "1") == 0
    new = read_manifest(complete)
    assert new["complete"] and new["finished_at"] >= old["finished_at"]
    assert new["configs"]["training"]["seed"] == 1
    assert new["configs"]["training"]["output_dir"] == complete  # the final directory, never the partial one
    assert snapshot(complete)["model.safetensors"] != old_weights
    assert "pretrain.partial" not in (open(os.path.join(complete, "README.md")).read())
    parent = os.path.dirname(complete)
    assert sorted(os.listdir(parent)) == ["pretrain"]  # no partial or replaced copy left beside it


def test_resume_finds_the_checkpoints_of_the_unfinished_run_in_the_partial_dir(complete, corpus, monkeypatch):
    before = snapshot(complete)
    crash_at_step(monkeypatch, 4)  # after checkpoint-2 is complete
    with pytest.raises(Boom):
        pretrain(corpus, complete, "--overwrite", "true", "--save_strategy", "steps", "--save_steps", "2")
    assert snapshot(complete) == before
    partial = complete + ".partial"
    assert storage.last_complete_checkpoint(partial) == os.path.join(partial, "checkpoint-2")
    monkeypatch.undo()
    resumed = {}
    original = transformers.Trainer.train

    def train(self, resume_from_checkpoint=None, **kwargs):
        resumed["from"] = resume_from_checkpoint
        return original(self, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "train", train)
    argv = ["--overwrite", "true", "--save_strategy", "steps", "--save_steps", "2", "--resume_from_checkpoint", "true"]
    assert pretrain(corpus, complete, *argv) == 0
    assert resumed["from"] == os.path.join(partial, "checkpoint-2")
    assert is_complete(complete) and not os.path.exists(partial)
    assert os.path.isdir(os.path.join(complete, "checkpoint-4"))  # the checkpoints moved in with the stage


def fake_stage(directory, stage: str, finished_at: str) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump({"stage": stage, "finished_at": finished_at, "complete": True}, f)


@pytest.mark.parametrize("cut", ["before rename aside", "between the renames", "before deleting the old copy"])
def test_a_swap_cut_short_by_a_crash_leaves_one_complete_copy_that_recovery_puts_in_place(tmp_path, cut):
    out = str(tmp_path / "reward")
    fake_stage(out + ".partial", "reward", "new")
    if cut == "before rename aside":
        fake_stage(out, "reward", "old")
    elif cut == "between the renames":
        fake_stage(out + ".replaced", "reward", "old")
    else:
        os.rename(out + ".partial", out)
        fake_stage(out + ".replaced", "reward", "old")
    copies = [d for d in (out, out + ".partial", out + ".replaced") if is_complete(d)]
    assert copies, "a complete copy can always be found"
    outputs.recover_output(out)
    assert read_manifest(out)["finished_at"] == "new"
    assert sorted(os.listdir(tmp_path)) == ["reward"]


def test_an_old_copy_without_a_new_one_is_put_back(tmp_path):
    out = str(tmp_path / "sft")
    fake_stage(out + ".replaced", "sft", "old")
    outputs.recover_output(out)
    assert read_manifest(out)["finished_at"] == "old" and sorted(os.listdir(tmp_path)) == ["sft"]


# ----------------------------------------------------------------------------------------------- full disks
def fail_saving(monkeypatch, when, error) -> None:
    """`save_pretrained`'s safetensors writes raise `error` for a file `when(path)` selects."""
    import transformers.modeling_utils as modeling_utils

    original = modeling_utils.safe_save_file

    def save_file(tensors, filename, *args, **kwargs):
        if when(filename):
            raise error
        return original(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(modeling_utils, "safe_save_file", save_file)


@pytest.mark.parametrize("where", ["final model", "checkpoint"])
def test_a_full_disk_at_save_is_one_line_and_keeps_the_old_output_and_the_last_checkpoint(
    complete, corpus, monkeypatch, capsys, where
):
    before = snapshot(complete)
    partial = complete + ".partial"

    def when(path):
        return "checkpoint-" not in path if where == "final model" else "checkpoint-4" in path

    fail_saving(monkeypatch, when, OSError(errno.ENOSPC, "No space left on device"))
    argv = ["--overwrite", "true", "--save_strategy", "steps", "--save_steps", "2", "--max_steps", "4"]
    assert pretrain(corpus, complete, *argv) == 1
    line = one_line_error(capsys)
    assert "no space left on device: " in line and " free, about " in line and " needed (" in line, line
    assert "for the model + " in line and "for a checkpoint with optimizer state" in line, line
    assert f"the previous complete output '{complete}'" in line, line
    kept = os.path.join(partial, "checkpoint-2" if where == "checkpoint" else "checkpoint-4")
    assert f"the last complete checkpoint '{kept}'" in line and " are kept" in line, line
    assert snapshot(complete) == before
    assert storage.last_complete_checkpoint(partial) == kept


def test_safetensors_and_torch_disk_full_errors_are_recognised():
    from safetensors import SafetensorError

    error = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert storage.write_failure(error) == "no space left on device"
    assert storage.write_failure(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576"))
    assert storage.write_failure(OSError(errno.EROFS, "Read-only file system")) == "read-only file system"
    assert storage.write_failure(OSError(errno.ENOENT, "No such file")) is None  # a bug, not the disk
    assert storage.write_failure(ValueError("No space left on device")) is None


def test_too_little_free_space_is_refused_before_training(complete, corpus, monkeypatch, capsys):
    before = snapshot(complete)
    real = shutil.disk_usage
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    assert pretrain(corpus, complete, "--overwrite", "true") == 1
    line = one_line_error(capsys)
    assert "not enough space on the disk of " in line and ": 1000 B free, about " in line, line
    assert " needed (" in line and "for the model)" in line and "choose another output_dir" in line, line
    assert f"the previous complete output '{complete}' is kept" in line
    assert snapshot(complete) == before


def test_the_estimate_counts_weights_by_dtype_and_adam_state_for_checkpoints():
    import torch

    model = torch.nn.Linear(10, 10).to(torch.float16)  # 110 parameters, 2 bytes each
    args = transformers.TrainingArguments(output_dir="unused", save_strategy="steps", report_to="none")
    assert storage.output_bytes(model, args) == {"model": 220, "checkpoint": 220 + 110 * 8}
    model.bias.requires_grad_(False)  # frozen weights: only the trained ones are saved (an adapter)
    assert storage.output_bytes(model) == {"model": 200, "checkpoint": 0}


def test_a_write_error_names_the_path_even_without_an_estimate(tmp_path):
    with pytest.raises(OutputWriteError, match=rf"cannot write '{tmp_path}': permission denied; fix the"):
        with storage.writing(str(tmp_path)):
            raise PermissionError(errno.EACCES, "Permission denied")
