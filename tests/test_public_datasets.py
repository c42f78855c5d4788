"""Local copies of public Hub datasets (tests/public_datasets.py) load as `datasets` users see them: from a folder,
and by repo id through the local Hub server at a commit, fetching only the chosen configuration's files; offline,
what the cache can and cannot give back. Plain `datasets.load_dataset` calls: these pin the behaviour hf_rlhf's
loader builds on (datasets 5.2)."""

from __future__ import annotations

import fnmatch
import os

import datasets
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard, HfApi, snapshot_download

from .hub_server import TOKEN, go_offline, running_hub
from .public_datasets import PUBLIC, repo_files, upload, write_fineweb_edu


@pytest.fixture
def hub_server(tmp_path, monkeypatch):
    yield from running_hub(tmp_path, monkeypatch)


FINEWEB = ["text", "id", "dump", "url", "file_path", "language", "language_score", "token_count", "score", "int_score"]
UF_SPLITS = ("train_prefs", "train_sft", "test_prefs", "test_sft", "train_gen", "test_gen")
UF_COLUMNS = ["prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"]
RED_TEAM = ["transcript", "min_harmlessness_score_transcript", "num_params", "model_type", "rating"]
RED_TEAM += ["task_description", "task_descripton_harmlessness_score", "red_team_member_id", "is_upworker", "tags"]
# (repo id, load_dataset arguments, {split: rows}, columns)
LOCAL = [
    ("HuggingFaceFW/fineweb-edu", {"name": "sample-10BT"}, {"train": 6}, FINEWEB),
    ("HuggingFaceFW/fineweb-edu", {"name": "CC-MAIN-2024-10"}, {"train": 6}, FINEWEB),
    ("HuggingFaceFW/fineweb-edu", {}, {"train": 9}, FINEWEB),  # default: data/*/*, every dump and no sample
    (
        "HuggingFaceH4/ultrachat_200k",
        {},
        {"train_sft": 6, "test_sft": 3, "train_gen": 6, "test_gen": 3},
        ["prompt", "prompt_id", "messages"],
    ),
    ("HuggingFaceTB/smol-smoltalk", {}, {"train": 8, "test": 3}, ["messages", "source"]),
    ("Anthropic/hh-rlhf", {"data_dir": "helpful-base"}, {"train": 3, "test": 2}, ["chosen", "rejected"]),
    ("Anthropic/hh-rlhf", {"data_dir": "harmless-base"}, {"train": 3, "test": 2}, ["chosen", "rejected"]),
    ("Anthropic/hh-rlhf", {}, {"train": 12, "test": 8}, ["chosen", "rejected"]),  # no data_dir: the 4 subsets merged
    ("Anthropic/hh-rlhf", {"data_dir": "red-team-attempts"}, {"train": 3}, RED_TEAM),
    (
        "HuggingFaceH4/ultrafeedback_binarized",
        {},
        {s: 4 if s.startswith("train") else 3 for s in UF_SPLITS},
        UF_COLUMNS,
    ),
    (
        "openbmb/UltraFeedback",
        {},
        {"train": 8},
        ["source", "instruction", "models", "completions", "correct_answers", "incorrect_answers"],
    ),
    ("trl-lib/tldr", {}, {"train": 4, "validation": 3, "test": 3}, ["prompt", "completion"]),
    ("trl-lib/ultrafeedback-prompt", {}, {"train": 5, "test": 3}, ["prompt"]),
]


def _id(case) -> str:
    return "-".join([case[0].split("/")[1], *map(str, case[1].values())])


@pytest.mark.parametrize("repo_id, kwargs, splits, columns", LOCAL, ids=[_id(c) for c in LOCAL])
def test_local_copy_gives_the_real_configs_splits_and_columns(tmp_path, repo_id, kwargs, splits, columns):
    folder = PUBLIC[repo_id](str(tmp_path / "repo"))
    loaded = datasets.load_dataset(folder, cache_dir=str(tmp_path / "cache"), **kwargs)
    assert {name: split.num_rows for name, split in loaded.items()} == splits
    assert all(split.column_names == columns for split in loaded.values())


def test_local_copies_have_the_real_nested_shapes(tmp_path):
    cache = str(tmp_path / "cache")
    folders = {repo_id: write(str(tmp_path / repo_id)) for repo_id, write in PUBLIC.items()}

    def load(repo_id: str, **kwargs) -> datasets.Dataset:
        return datasets.load_dataset(folders[repo_id], cache_dir=cache, **kwargs)

    messages = datasets.List({"content": datasets.Value("string"), "role": datasets.Value("string")})
    # FineWeb-Edu sample-10BT: exactly the sample files' rows, none of the dumps'
    sample = load("HuggingFaceFW/fineweb-edu", name="sample-10BT", split="train")
    sample_dir = os.path.join(folders["HuggingFaceFW/fineweb-edu"], "sample", "10BT")
    ids = [i for name in sorted(os.listdir(sample_dir)) for i in pq.read_table(os.path.join(sample_dir, name))["id"]]
    assert sample["id"] == [str(i) for i in ids]
    assert sample.features["token_count"] == datasets.Value("int64")
    assert sample.features["score"] == datasets.Value("float64")
    # UltraChat: multi-turn messages beginning with the prompt
    chat = load("HuggingFaceH4/ultrachat_200k", split="train_sft")
    assert chat.features["messages"] == messages
    assert all(len(row["messages"]) >= 4 and row["messages"][0]["content"] == row["prompt"] for row in chat)
    assert load("HuggingFaceTB/smol-smoltalk", split="train")["messages"][1][0]["role"] == "system"
    # HH-RLHF: chosen / rejected transcripts sharing the dialogue, some multi-turn
    hh = load("Anthropic/hh-rlhf", data_dir="helpful-base", split="train")
    for row in hh:
        prefix = row["chosen"].rsplit("\n\nAssistant: ", 1)[0]
        assert row["chosen"].startswith("\n\nHuman: ") and row["rejected"].startswith(prefix + "\n\nAssistant: ")
    assert any(row["chosen"].count("\n\nHuman: ") > 1 for row in hh)
    # ultrafeedback_binarized: string prompt, repeated as the user turn of chosen and rejected
    prefs = load("HuggingFaceH4/ultrafeedback_binarized", split="train_prefs")
    assert prefs.features["chosen"] == messages and prefs.features["score_chosen"] == datasets.Value("float64")
    for row in prefs:
        assert row["chosen"][0] == row["rejected"][0] == {"content": row["prompt"], "role": "user"}
        assert row["score_chosen"] > row["score_rejected"]
    # openbmb/UltraFeedback: 4 rated completions; string ratings, one "N/A"; a tie on overall_score
    rated = load("openbmb/UltraFeedback", split="train")
    completions = [row["completions"] for row in rated]
    assert {len(c) for c in completions} == {4}
    ratings = [a[aspect]["Rating"] for c in completions for x in c for a in [x["annotations"]] for aspect in a]
    assert "N/A" in ratings and set(ratings) - {"N/A"} <= set("12345")
    assert any(len({x["overall_score"] for x in c}) < 4 for c in completions)
    strings = datasets.List(datasets.Value("string"))
    assert rated.features["completions"].feature["annotations"]["helpfulness"]["Type"] == strings
    assert load("trl-lib/ultrafeedback-prompt", split="train").features["prompt"] == messages
    assert load("trl-lib/tldr", split="test")[0]["prompt"].endswith("\n\nTL;DR:")


# (repo id, load_dataset arguments, rows, pattern of the data files fetched)
HUB = [
    ("HuggingFaceFW/fineweb-edu", {"name": "sample-10BT", "split": "train"}, 6, "sample/10BT/*"),
    ("HuggingFaceFW/fineweb-edu", {"name": "CC-MAIN-2024-10", "split": "train"}, 6, "data/CC-MAIN-2024-10/*"),
    ("HuggingFaceFW/fineweb-edu", {"name": "sample-10BT", "split": "train", "streaming": True}, 6, "sample/10BT/*"),
    # split= alone prepares the whole configuration: every split's files are fetched ...
    ("HuggingFaceH4/ultrachat_200k", {"split": "train_sft"}, 6, "data/*"),
    # ... unless streamed, or the split's own files are named
    ("HuggingFaceH4/ultrachat_200k", {"split": "train_sft", "streaming": True}, 6, "data/train_sft-*"),
    ("HuggingFaceH4/ultrachat_200k", {"data_files": {"x": "data/train_sft-*"}, "split": "x"}, 6, "data/train_sft-*"),
    ("HuggingFaceTB/smol-smoltalk", {"split": "train"}, 8, "data/*"),
    ("Anthropic/hh-rlhf", {"data_dir": "helpful-base", "split": "train"}, 3, "helpful-base/*"),
    ("HuggingFaceH4/ultrafeedback_binarized", {"split": "train_prefs"}, 4, "data/*"),
    ("openbmb/UltraFeedback", {"split": "train"}, 8, "*.jsonl"),
    ("trl-lib/tldr", {"split": "train"}, 4, "data/*"),
    ("trl-lib/ultrafeedback-prompt", {"split": "train"}, 5, "data/*"),
]


@pytest.mark.parametrize("repo_id, kwargs, rows, fetched", HUB, ids=[_id(c) for c in HUB])
def test_by_repo_id_at_a_commit_fetches_only_the_chosen_files(hub_server, tmp_path, repo_id, kwargs, rows, fetched):
    folder = PUBLIC[repo_id](str(tmp_path / "repo"))
    commit = upload(HfApi(endpoint=hub_server.url, token=TOKEN), repo_id, folder)
    hub_server.requests.clear()
    loaded = datasets.load_dataset(repo_id, revision=commit, **kwargs)
    assert sum(1 for _ in loaded) == rows
    got = {path for _, repo, path in hub_server.downloads if repo == repo_id and path != "README.md"}
    files = repo_files(folder)
    assert sorted(got) == [path for path in files if fnmatch.fnmatch(path, fetched)]
    assert len(got) < len(files) or fetched in ("data/*", "*.jsonl")  # the whole repo only where it is one config
    # every request for the repo named the commit, never a branch
    reads = [path for method, path, _ in hub_server.requests if method in ("GET", "HEAD") and repo_id in path]
    assert reads and all(commit in path for path in reads), reads


def test_offline_from_the_cache_gives_the_latest_cached_copy_and_a_snapshot_pins_the_commit(
    hub_server, tmp_path, monkeypatch
):
    repo_id, api = "HuggingFaceFW/fineweb-edu", HfApi(endpoint=hub_server.url, token=TOKEN)
    first = upload(api, repo_id, write_fineweb_edu(str(tmp_path / "repo")))
    second = api.delete_file("sample/10BT/001_00000.parquet", repo_id, repo_type="dataset").oid
    for commit, rows in ((first, 6), (second, 3)):  # both commits loaded online, the second last
        assert datasets.load_dataset(repo_id, name="sample-10BT", revision=commit, split="train").num_rows == rows

    go_offline(monkeypatch)
    hub_server.requests.clear()
    again = datasets.load_dataset(repo_id, name="sample-10BT", revision=second, split="train")
    assert again.num_rows == 3
    # datasets 5.2 offline: the most recently prepared copy of the config, whatever revision was asked for
    older = datasets.load_dataset(repo_id, name="sample-10BT", revision=first, split="train")
    assert older.num_rows == 3
    with pytest.raises(ValueError, match="Couldn't find cache for .* for config 'sample-100BT'"):
        datasets.load_dataset(repo_id, name="sample-100BT", revision=first, split="train")
    # a fresh datasets cache: nothing, although the Hub cache holds the commit's files
    with pytest.raises(ConnectionError, match="OfflineModeIsEnabled"):
        datasets.load_dataset(repo_id, name="sample-10BT", revision=first, cache_dir=str(tmp_path / "other"))
    # what pins the commit offline: its snapshot in the Hub cache, loaded with the config's data_files from its card
    # (load_dataset(snapshot, name=...) fails there: the default config's files were never downloaded)
    snapshot = snapshot_download(repo_id, repo_type="dataset", revision=first, local_files_only=True)
    config = next(
        c
        for c in DatasetCard.load(os.path.join(snapshot, "README.md")).data.configs
        if c["config_name"] == "sample-10BT"
    )
    data_files = {entry["split"]: entry["path"] for entry in config["data_files"]}
    pinned = datasets.load_dataset(snapshot, data_files=data_files, split="train", cache_dir=str(tmp_path / "other"))
    assert pinned.num_rows == 6
    assert hub_server.requests == []
