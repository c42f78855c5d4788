"""The table of issue 12's acceptance: each public dataset's shape (a local copy of its layout, tests/public_datasets.py)
uploaded to the local Hub server, read by repo id at its commit by the stage that takes it (tiny random models, two
steps), with the rows used, dropped, truncated and converted (the manifest's `metrics.rows`) and the data files
fetched against those in the repo.

Run: python3 -m tests.public_shapes_table   (about a minute on 2 cores; no network)
"""

from __future__ import annotations

import os
import tempfile

import pytest
from huggingface_hub import HfApi

from hf_rlhf.stages import pretrain, reward, rl, sample, sft

from .conftest import RECIPES
from .hub_server import TOKEN, running_hub
from .ppo_fixtures import tiny_models
from .public_datasets import PUBLIC, repo_files, upload

TINY = os.path.join(RECIPES, "tiny")
STEPS = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--report_to", "none"]
# repo id, stage, options
SHAPES = [
    ("HuggingFaceFW/fineweb-edu", "pretrain", ["--dataset_config", "sample-10BT", "--dataset_streaming", "true"]),
    (
        "HuggingFaceH4/ultrachat_200k",
        "sft",
        ["--dataset_train_split", "train_sft", "--dataset_test_split", "test_sft"],
    ),
    ("HuggingFaceTB/smol-smoltalk", "sft", []),
    ("Anthropic/hh-rlhf", "reward", ["--dataset_data_dir", "helpful-base"]),
    ("trl-lib/hh-rlhf-helpful-base", "reward", []),
    (
        "HuggingFaceH4/ultrafeedback_binarized",
        "reward",
        ["--dataset_train_split", "train_prefs", "--dataset_test_split", "test_prefs"],
    ),
    ("openbmb/UltraFeedback", "reward", ["--eval_split_size", "0.25"]),
    ("trl-lib/tldr", "rl", []),
    ("trl-lib/ultrafeedback-prompt", "sample", []),
]


def _argv(stage: str, models: dict[str, str], dataset: str, out: str, options: list[str]) -> list[str]:
    argv = ["--config", os.path.join(TINY, f"{stage}.yaml"), "--dataset_name", dataset, "--output_dir", out]
    if stage == "pretrain":
        return argv + options + STEPS + ["--vocab_size", "300", "--block_size", "32"]
    argv += ["--model_name_or_path", models["sft"], *options]
    if stage == "sft":
        return argv + STEPS + ["--max_length", "128"]
    if stage == "reward":
        return argv + STEPS + ["--max_length", "512", "--invalid_rows", "drop"]
    if stage == "rl":
        return (
            argv
            + ["--reward_model_path", models["reward"], "--max_steps", "1", "--max_new_tokens", "4"]
            + ["--per_device_train_batch_size", "4", "--num_mini_batches", "1", "--report_to", "none"]
        )
    return argv + ["--max_new_tokens", "4", "--num_completions", "4"]


def _counts(rows: dict) -> tuple[str, str]:
    used = "; ".join(
        f"{split} {r.get('used', 'streamed') if r.get('used') is not None else 'streamed'}"
        for split, r in rows.items()
    )
    other = []
    for split, r in rows.items():
        for kind in ("dropped", "truncated", "converted"):
            other += [f"{split} {kind} {reason} {n}" for reason, n in (r.get(kind) or {}).items()]
        if r.get("ignored_columns"):
            other.append(f"{split} ignored {', '.join(r['ignored_columns'])}")
    return used, "; ".join(other) or "none"


def main() -> None:
    stages = {"pretrain": pretrain, "sft": sft, "reward": reward, "rl": rl, "sample": sample}
    lines = [
        "| public shape | stage | rows used | dropped / truncated / converted (reason: rows) | data files fetched / in repo |",
        "|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as monkeypatch:
        tokenizer, policy, _, value_model, _ = tiny_models()
        models = {"sft": os.path.join(tmp, "sft"), "reward": os.path.join(tmp, "reward")}
        for name, model in (("sft", policy), ("reward", value_model)):
            model.config.max_position_embeddings = 1024
            model.save_pretrained(models[name])
            tokenizer.save_pretrained(models[name])
        server = next(gen := running_hub(_Path(tmp), monkeypatch))
        api = HfApi(endpoint=server.url, token=TOKEN)
        for index, (repo_id, stage, options) in enumerate(SHAPES):
            folder = PUBLIC[repo_id](os.path.join(tmp, f"copy{index}"))
            commit = upload(api, repo_id, folder)
            server.downloads.clear()
            out = os.path.join(tmp, f"out{index}")
            manifest = stages[stage].main(_argv(stage, models, f"{repo_id}@{commit}", out, options))
            assert manifest["inputs"]["sources"]["dataset"]["commit"] == commit
            got = {p for _, repo, p in server.downloads if repo == repo_id and p != "README.md"}
            used, other = _counts(manifest["metrics"].get("rows", {}))
            lines.append(f"| {repo_id} | {stage} | {used} | {other} | {len(got)} / {len(repo_files(folder))} |")
        next(gen, None)
    print("\n".join(lines))


class _Path(str):
    """`running_hub` takes pytest's tmp_path; a str with `/` joining is all it needs."""

    def __truediv__(self, other: str) -> _Path:
        return _Path(os.path.join(self, other))


if __name__ == "__main__":
    main()
