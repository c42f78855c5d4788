"""The public datasets the real-model recipes name, fed into the stage that takes them (local copies of their exact
layouts, tests/public_datasets.py): read by repo id at a commit through the local Hub server or from a folder,
two steps on a tiny model, rows counted; and every recipe's dry run finds the format its run finds."""

from __future__ import annotations

import glob
import os

import pytest
import yaml
from huggingface_hub import HfApi

from hf_rlhf.configs import DataArguments
from hf_rlhf.data.formats import PROMPT_FORMATS, SFT_FORMATS, preference_formats, text_formats
from hf_rlhf.data.loading import dataset_sources, load_stage_dataset
from hf_rlhf.errors import DataValidationError
from hf_rlhf.hub.resolve import forget_downloads
from hf_rlhf.plan.context import Context, describe_data
from hf_rlhf.plan.launch import Launch
from hf_rlhf.recipes import parse_command_line
from hf_rlhf.stages import STAGES, pretrain, reward, rl, sample, sft

from .conftest import RECIPES
from .hub_server import TOKEN, go_offline, running_hub
from .ppo_fixtures import tiny_models
from .public_datasets import PUBLIC, repo_files, upload

TINY = os.path.join(RECIPES, "tiny")
FAST = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1", "--report_to", "none"]


@pytest.fixture
def hub_server(tmp_path, monkeypatch):
    yield from running_hub(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """A random tiny causal LM with hf_rlhf's chat template (the 'SFT model') and a reward model of its shape."""
    tokenizer, policy, _, value_model, _ = tiny_models()
    for model in (policy, value_model):  # public rows are long for a 300-token vocabulary (rotary: no new weights)
        model.config.max_position_embeddings = 1024
    root = tmp_path_factory.mktemp("models")
    dirs = {"sft": str(root / "sft"), "reward": str(root / "reward")}
    for name, model in (("sft", policy), ("reward", value_model)):
        model.save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
    return dirs


def copy_of(repo_id: str, tmp_path) -> str:
    return PUBLIC[repo_id](str(tmp_path / repo_id.replace("/", "--")))


def fetched(hub_server, repo_id: str) -> list[str]:
    return sorted({p for _, repo, p in hub_server.downloads if repo == repo_id and p != "README.md"})


def test_fineweb_edu_sample_streams_into_pretraining_by_commit(hub_server, tmp_path):
    repo_id = "HuggingFaceFW/fineweb-edu"
    folder = copy_of(repo_id, tmp_path)
    commit = upload(HfApi(endpoint=hub_server.url, token=TOKEN), repo_id, folder)
    argv = ["--config", os.path.join(TINY, "pretrain.yaml"), "--dataset_name", f"{repo_id}@{commit}"]
    argv += ["--dataset_config", "sample-10BT", "--dataset_streaming", "true", "--output_dir", str(tmp_path / "pt")]
    manifest = pretrain.main(argv + FAST + ["--vocab_size", "300", "--block_size", "32"])
    assert manifest["inputs"]["sources"]["dataset"]["commit"] == commit
    assert fetched(hub_server, repo_id) == [p for p in repo_files(folder) if p.startswith("sample/10BT/")]
    assert len(fetched(hub_server, repo_id)) < len(repo_files(folder))


def test_ultrachat_trains_on_messages_and_reports_the_ignored_prompt(models, tmp_path):
    argv = ["--config", os.path.join(TINY, "sft.yaml"), "--model_name_or_path", models["sft"]]
    argv += ["--dataset_name", copy_of("HuggingFaceH4/ultrachat_200k", tmp_path), "--output_dir", str(tmp_path / "o")]
    argv += ["--dataset_train_split", "train_sft", "--dataset_test_split", "test_sft", "--max_length", "64"]
    manifest = sft.main(argv + FAST)
    rows = manifest["metrics"]["rows"]
    assert manifest["metrics"]["format"] == "conversational"
    assert rows["train"]["ignored_columns"] == ["prompt"] and rows["test"]["ignored_columns"] == ["prompt"]
    # multi-turn rows are longer than 64 tokens: every one is counted, kept (cut) or dropped by TRL
    over = rows["train"].get("truncated", {}).get("over_max_length", 0)
    assert over + rows["train"].get("dropped", {}).get("no_loss_tokens_after_truncation", 0) == 6


def test_a_mixture_of_smoltalk_and_ultrachat(models, tmp_path):
    entries = [
        {"path": copy_of("HuggingFaceTB/smol-smoltalk", tmp_path), "columns": ["messages"], "fraction": 0.5},
        {
            "path": copy_of("HuggingFaceH4/ultrachat_200k", tmp_path),
            "split": "train_sft",
            "test_split": "test_sft",
            "columns": ["messages"],
            "fraction": 0.5,
        },
    ]
    data = load_stage_dataset(DataArguments(datasets=entries))
    assert data["train"].column_names == ["messages"] and len(data["train"]) == 12  # 6 + 6: none oversampled
    assert len(data["test"]) == 3 + 3
    argv = ["--config", os.path.join(TINY, "sft.yaml"), "--model_name_or_path", models["sft"]]
    argv += ["--output_dir", str(tmp_path / "o"), "--max_length", "256"]
    recipe = tmp_path / "mixture.yaml"
    with open(os.path.join(TINY, "sft.yaml")) as f:
        recipe.write_text(yaml.safe_dump({**yaml.safe_load(f), "datasets": entries}))
    manifest = sft.main(["--config", str(recipe), *argv[2:], *FAST])
    sources = manifest["inputs"]["sources"]
    assert [os.path.basename(sources[f"dataset[{i}]"]["path"]) for i in (0, 1)] == [
        os.path.basename(e["path"]) for e in entries
    ]
    assert manifest["inputs"]["dataset"]["name"]["datasets"] == [e["path"] for e in entries]


@pytest.mark.parametrize(
    ("repo_id", "options", "fmt", "converted"),
    [
        ("Anthropic/hh-rlhf", ["--dataset_data_dir", "helpful-base"], "pairwise", "hh_dialogue"),
        (
            "HuggingFaceH4/ultrafeedback_binarized",
            ["--dataset_train_split", "train_prefs", "--dataset_test_split", "test_prefs"],
            "pairwise",
            "prompt_extracted",
        ),
        ("openbmb/UltraFeedback", ["--eval_split_size", "0.25"], "rated", "rated_to_ranking"),
    ],
    ids=["hh-rlhf", "ultrafeedback_binarized", "UltraFeedback"],
)
def test_comparisons_train_a_reward_model(models, tmp_path, repo_id, options, fmt, converted):
    argv = ["--config", os.path.join(TINY, "reward.yaml"), "--model_name_or_path", models["sft"]]
    argv += ["--dataset_name", copy_of(repo_id, tmp_path), "--output_dir", str(tmp_path / "rm"), *options]
    argv += ["--max_length", "1024", "--invalid_rows", "drop"]
    manifest = reward.main(argv + FAST)
    rows = manifest["metrics"]["rows"]["train"]
    assert manifest["metrics"]["format"] == fmt and rows["used"] > 0
    assert rows["converted"][converted] > 0


def test_hh_rlhf_subset_by_repo_id_fetches_only_its_folder(hub_server, tmp_path):
    repo_id = "Anthropic/hh-rlhf"
    folder = copy_of(repo_id, tmp_path)
    commit = upload(HfApi(endpoint=hub_server.url, token=TOKEN), repo_id, folder)
    data = load_stage_dataset(DataArguments(dataset_name=f"{repo_id}@{commit}", dataset_data_dir="helpful-base"))
    assert set(data) == {"train", "test"}
    assert fetched(hub_server, repo_id) == ["helpful-base/test.jsonl.gz", "helpful-base/train.jsonl.gz"]


def test_only_the_splits_a_stage_reads_are_fetched(hub_server, tmp_path, monkeypatch):
    repo_id = "HuggingFaceH4/ultrachat_200k"
    folder = copy_of(repo_id, tmp_path)
    commit = upload(HfApi(endpoint=hub_server.url, token=TOKEN), repo_id, folder)
    args = DataArguments(dataset_name=repo_id, dataset_train_split="train_sft", dataset_test_split="test_sft")
    data = load_stage_dataset(args)
    assert {split: len(ds) for split, ds in data.items()} == {"train": 6, "test": 3}
    got = fetched(hub_server, repo_id)
    assert got == [p for p in repo_files(folder) if "_sft-" in p] and len(got) == 4 < len(repo_files(folder)) == 8
    reads = [path for method, path, _ in hub_server.requests if method in ("GET", "HEAD") and repo_id in path]
    # main resolved to its commit once (the card's download names it), then every read names the commit
    assert all(commit in path or path.endswith("/resolve/main/README.md") for path in reads), reads
    # offline, the same commit from the cache, even after the branch moved on (datasets alone would give the newest)
    api = HfApi(endpoint=hub_server.url, token=TOKEN)
    api.delete_file("data/test_sft-00000-of-00001-f7dfac4afe5b93f4.parquet", repo_id, repo_type="dataset")
    assert len(load_stage_dataset(DataArguments(**{**vars(args), "dataset_name": repo_id}))["test"]) == 3
    forget_downloads()
    go_offline(monkeypatch)
    offline = load_stage_dataset(DataArguments(**{**vars(args), "dataset_name": f"{repo_id}@{commit}"}))
    assert offline["train"]["messages"] == data["train"]["messages"] and len(offline["test"]) == 3
    with pytest.raises(DataValidationError, match="HF_HUB_OFFLINE is set .* not in the cache"):
        load_stage_dataset(DataArguments(dataset_name="HuggingFaceTB/smol-smoltalk"))
    # a configuration is still honoured: FineWeb-Edu's sample, not the dumps
    fineweb = copy_of("HuggingFaceFW/fineweb-edu", tmp_path)
    sample = load_stage_dataset(DataArguments(dataset_name=fineweb, dataset_config="sample-10BT", eval_split_size=0))
    assert len(sample["train"]) == 6


def test_tldr_prompts_drive_ppo_and_ultrafeedback_prompts_are_sampled(models, tmp_path):
    argv = ["--config", os.path.join(TINY, "rl.yaml"), "--model_name_or_path", models["sft"]]
    argv += ["--reward_model_path", models["reward"], "--dataset_name", copy_of("trl-lib/tldr", tmp_path)]
    argv += ["--output_dir", str(tmp_path / "rl"), "--max_steps", "1", "--per_device_train_batch_size", "4"]
    argv += ["--num_mini_batches", "1", "--max_new_tokens", "4", "--report_to", "none"]
    manifest = rl.main(argv)
    assert manifest["metrics"]["updates"] == 1 and manifest["metrics"]["rows"]["train"]["used"] > 0
    argv = ["--config", os.path.join(TINY, "sample.yaml"), "--model_name_or_path", models["sft"]]
    argv += ["--dataset_name", copy_of("trl-lib/ultrafeedback-prompt", tmp_path), "--output_dir", str(tmp_path / "s")]
    manifest = sample.main(argv + ["--max_new_tokens", "4", "--num_completions", "2"])
    assert manifest["metrics"]["unranked_outside_world"] == manifest["metrics"]["num_prompts"] == 5


# ----------------------------------------------------------------------------------- dry run == run, per recipe
def _stage_of(path: str) -> str | None:
    name = os.path.basename(path)
    return next((s for s in ("pretrain", "sft", "reward", "rl", "sample") if name.startswith(s)), None)


def _formats(stage: str, args: tuple):
    data_args, config = args[0], args[-2] if stage == "rl" else args[1]
    if stage == "pretrain":
        return text_formats(config.text_column)
    if stage == "sft":
        return SFT_FORMATS
    if stage == "reward":
        return preference_formats(data_args.dataset_format, config.score_columns)
    return PROMPT_FORMATS


RECIPE_FILES = sorted(
    p for p in glob.glob(os.path.join(RECIPES, "*", "*.yaml")) if "tiny" not in p and _stage_of(p) is not None
)


@pytest.mark.parametrize("recipe", RECIPE_FILES, ids=[os.path.relpath(p, RECIPES) for p in RECIPE_FILES])
def test_dry_run_and_run_detect_the_same_format(recipe, tmp_path):
    stage = _stage_of(recipe)
    args = parse_command_line(STAGES[stage].module.arguments, ["--config", recipe], prog="t")
    data_args, formats = args[0], _formats(stage, args)
    planned = describe_data(data_args, Context(launch=Launch()), formats)[1]
    assert planned.get("format"), f"{recipe}: the dry run does not know the format of its dataset"
    local = []
    for source in dataset_sources(data_args):
        if source.path not in PUBLIC:
            pytest.fail(f"{recipe}: no local copy of {source.path} in tests/public_datasets.py")
        local.append({**vars(source), "path": copy_of(source.path, tmp_path)})
    run_args = DataArguments(datasets=local, eval_split_size=0.0)
    train = load_stage_dataset(run_args)["train"]
    assert formats.detect(train.column_names, recipe)[0] == planned["format"]
