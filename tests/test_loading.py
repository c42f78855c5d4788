"""The loader (`hf_rlhf.data.loading`): `datasets.load_dataset` semantics for folders, files, configurations,
data_dir and mixtures; streaming pretraining; errors before any model loads."""

import json
import os

import pytest
from datasets import Dataset, DatasetDict, IterableDatasetDict

from hf_rlhf.configs import DataArguments
from hf_rlhf.data.loading import dataset_sources, load_stage_dataset, read_source
from hf_rlhf.errors import DataValidationError, RecipeError
from hf_rlhf.plan.context import Context, describe_data
from hf_rlhf.plan.launch import Launch
from hf_rlhf.stages import pretrain

from .conftest import RECIPES


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    return path


def chats(n, tag):
    return [
        {"messages": [{"role": "user", "content": f"{tag} q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(n)
    ]


def test_mixture_fractions_follow_trl(tmp_path):
    a = write_jsonl(str(tmp_path / "a.jsonl"), chats(10, "a"))
    b = write_jsonl(str(tmp_path / "b.jsonl"), chats(30, "b"))
    args = DataArguments(datasets=[{"path": a, "fraction": 1}, {"path": b, "fraction": 3}], eval_split_size=0.0)
    train = load_stage_dataset(args)["train"]
    # TRL's get_dataset: N = min(10 / 0.25, 30 / 0.75) = 40 -> the first 10 rows of a and the first 30 of b
    tags = [m[0]["content"].split()[0] for m in train["messages"]]
    assert tags.count("a") == 10 and tags.count("b") == 30
    assert train["messages"][0][0]["content"] == "a q0"


def test_mixture_without_fractions_concatenates_and_selects_columns(tmp_path):
    a = write_jsonl(str(tmp_path / "a.jsonl"), [{**r, "source": "x"} for r in chats(4, "a")])
    b = write_jsonl(str(tmp_path / "b.jsonl"), [{**r, "prompt": "p", "prompt_id": "1"} for r in chats(6, "b")])
    entries = [{"path": a, "columns": ["messages"]}, {"path": b, "columns": ["messages"]}]
    data = load_stage_dataset(DataArguments(datasets=entries, eval_split_size=0.0))
    assert data["train"].column_names == ["messages"] and len(data["train"]) == 10
    with pytest.raises(DataValidationError, match="different columns"):
        load_stage_dataset(DataArguments(datasets=[{"path": a}, {"path": b}], eval_split_size=0.0))


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"path": "x", "weight": 2}], "entry 0: unknown key"),
        ([{"name": "x"}], "entry 0: expected a mapping with at least `path`"),
        ([{"path": "x", "fraction": 1}, {"path": "y"}], "on every entry of the mixture or on none"),
        ([{"path": "x", "fraction": -1}], "positive number"),
        ([{"path": "x", "columns": "messages"}], "list of column names"),
    ],
)
def test_bad_mixture_entries_are_named(entries, message):
    with pytest.raises(DataValidationError, match=message):
        dataset_sources(DataArguments(datasets=entries))


def test_dataset_name_and_mixture_are_exclusive():
    with pytest.raises(RecipeError, match="either `dataset_name` or `datasets`"):
        DataArguments(dataset_name="a", datasets=[{"path": "b"}])


def test_configs_data_dir_and_splits_as_datasets_reads_them(tmp_path):
    root = tmp_path / "repo"
    for config, n in (("small", 3), ("large", 7)):
        write_jsonl(str(root / config / "train.jsonl"), [{"text": f"{config} {i}"} for i in range(n)])
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: small\n  data_files:\n  - split: train\n    path: small/*.jsonl\n"
        "- config_name: large\n  data_files:\n  - split: train\n    path: large/*.jsonl\n---\n"
    )
    args = DataArguments(dataset_name=str(root), dataset_config="large", eval_split_size=0.0)
    assert len(load_stage_dataset(args)["train"]) == 7
    with pytest.raises(DataValidationError, match=r"config 'huge'.*could not be read.*'huge' not found"):
        load_stage_dataset(DataArguments(dataset_name=str(root), dataset_config="huge"))
    with pytest.raises(DataValidationError, match=r"no split 'train_sft' \(splits: train\)"):
        load_stage_dataset(
            DataArguments(dataset_name=str(root), dataset_config="small", dataset_train_split="train_sft")
        )


def test_save_to_disk_and_compressed_files(tmp_path):
    saved = str(tmp_path / "saved")
    DatasetDict(train=Dataset.from_list([{"prompt": "p"}] * 3)).save_to_disk(saved)
    assert set(read_source(dataset_sources(DataArguments(dataset_name=saved))[0])) == {"train"}
    with pytest.raises(DataValidationError, match="`save_to_disk` directory: it has no configurations"):
        read_source(dataset_sources(DataArguments(dataset_name=saved, dataset_config="x"))[0])
    import gzip

    gz = tmp_path / "rows.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write('{"prompt": "p"}\n{"prompt": "q"}\n')
    assert len(load_stage_dataset(DataArguments(dataset_name=str(gz), eval_split_size=0.0))["train"]) == 2
    bad = tmp_path / "rows.xlsx"
    bad.write_text("x")
    with pytest.raises(DataValidationError, match="unknown data file extension"):
        load_stage_dataset(DataArguments(dataset_name=str(bad)))


def test_dry_run_reads_local_datasets_with_the_run_loader(tmp_path):
    a = write_jsonl(str(tmp_path / "a.jsonl"), chats(3, "a"))
    from hf_rlhf.data.formats import SFT_FORMATS

    ctx = Context(launch=Launch())
    text, info = describe_data(DataArguments(dataset_name=a), ctx, SFT_FORMATS)
    assert info["format"] == "conversational" and "local data file" in text
    text, info = describe_data(DataArguments(datasets=[{"path": a}, {"path": a, "fraction": None}]), ctx, SFT_FORMATS)
    assert text.startswith("mixture of 2 datasets") and info["format"] == "conversational"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataValidationError, match="empty file"):
        describe_data(DataArguments(dataset_name=str(empty)), ctx, SFT_FORMATS)


def test_streaming_pretraining_counts_empty_documents(tmp_path, world_dir):
    docs = [{"text": ""} if i % 10 == 0 else {"text": f"the fox {i} is red and the owl is blue."} for i in range(200)]
    corpus = write_jsonl(str(tmp_path / "corpus" / "train.jsonl"), docs)
    out = str(tmp_path / "pretrain")
    argv = ["--config", os.path.join(RECIPES, "tiny", "pretrain.yaml"), "--dataset_name", os.path.dirname(corpus)]
    argv += ["--dataset_streaming", "true", "--output_dir", out, "--vocab_size", "300", "--block_size", "32"]
    argv += ["--per_device_train_batch_size", "4", "--logging_steps", "1"]
    with pytest.raises(RecipeError, match="dataset_streaming needs `max_steps`"):
        pretrain.main(argv)
    streamed = DataArguments(dataset_name=corpus, dataset_streaming=True)
    assert isinstance(load_stage_dataset(streamed, allow_streaming=True), IterableDatasetDict)
    with pytest.raises(DataValidationError, match="dataset_streaming is for pretraining"):
        load_stage_dataset(streamed)
    manifest = pretrain.main(argv + ["--max_steps", "2"])
    rows = manifest["metrics"]["rows"]["train"]
    assert rows["used"] is None and rows["dropped"]["empty_document"] > 0  # counted as training read them
    assert manifest["metrics"]["train_tokens"] == 2 * 4 * 32
