"""Remote model code under `trust_remote_code`: pinned to a resolved commit, recorded, and code from another repo run
only if the recipe lists it (`trust_remote_code_repos`)."""

from __future__ import annotations

import json
import os

import pytest
from huggingface_hub import HfApi
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from hf_rlhf.errors import RemoteCodeError
from hf_rlhf.hub.remote_code import auto_map_references, loaded_remote_code, remote_code_sources
from hf_rlhf.modeling import load_pretrained, load_tokenizer
from hf_rlhf.tokenizer import train_bpe_tokenizer

from .hub_server import running_hub

CODE_REPO = "alice/model-code"


@pytest.fixture
def hub_server(tmp_path, monkeypatch):
    yield from running_hub(tmp_path, monkeypatch)


def module_source(version: int, tag: str) -> str:
    """A remote-code module: a GPT-2 config and causal LM subclassed, marked with `version` (`tag`: a name unique
    to the test, so that no module transformers cached for another test is reused)."""
    return (
        "from transformers import GPT2Config, GPT2LMHeadModel\n\n"
        f"VERSION = {version}\nTAG = {tag!r}\n\n\n"
        "class PinnedConfig(GPT2Config):\n    version = VERSION\n\n\n"
        "class PinnedModel(GPT2LMHeadModel):\n    config_class = PinnedConfig\n    version = VERSION\n"
    )


def tiny_model_dir(path, auto_map: dict | None = None, files: dict[str, str] | None = None) -> str:
    """A tiny GPT-2 saved as safetensors, its `config.json` given `auto_map`, plus extra `files`."""
    config = GPT2Config(n_layer=1, n_embd=8, n_head=2, n_positions=16, vocab_size=32)
    GPT2LMHeadModel(config).save_pretrained(path)
    with open(os.path.join(path, "config.json")) as f:
        saved = json.load(f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({**saved, **({"auto_map": auto_map} if auto_map else {})}, f)
    for name, text in (files or {}).items():
        with open(os.path.join(path, name), "w") as f:
            f.write(text)
    return str(path)


def foreign_auto_map(repo: str = CODE_REPO, module: str = "pinned") -> dict:
    return {
        "AutoConfig": f"{repo}--{module}.PinnedConfig",
        "AutoModelForCausalLM": f"{repo}--{module}.PinnedModel",
    }


def test_auto_map_references_read_strings_and_tokenizer_lists(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"auto_map": {"AutoConfig": "a/b--m.C"}}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": [None, "tok.Fast"]}}))
    assert auto_map_references(str(tmp_path)) == [
        ("config.json", "AutoConfig", "a/b--m.C"),
        ("tokenizer_config.json", "AutoTokenizer", "tok.Fast"),
    ]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"auto_map": ["o/r--tok.Slow", None]}))  # legacy
    assert auto_map_references(str(tmp_path))[1] == ("tokenizer_config.json", "AutoTokenizer", "o/r--tok.Slow")


def test_code_from_an_unlisted_repo_is_refused_before_anything_is_downloaded(hub_server, tmp_path):
    api = HfApi(endpoint=hub_server.url)
    api.create_repo(CODE_REPO)
    api.upload_file(path_or_fileobj=module_source(1, "refused").encode(), path_in_repo="pinned.py", repo_id=CODE_REPO)
    model_dir = tiny_model_dir(tmp_path / "model", foreign_auto_map())
    hub_server.downloads.clear()

    with pytest.raises(RemoteCodeError) as refused:
        load_pretrained(AutoModelForCausalLM, model_dir, trust_remote_code=True, trust_remote_code_repos=["x/y"])
    message = str(refused.value)
    assert "\n" not in message and model_dir in message and "config.json auto_map.AutoConfig" in message
    assert f"'{CODE_REPO}'" in message and f"trust_remote_code_repos: [{CODE_REPO}]" in message

    (tmp_path / "model" / "tokenizer_config.json").write_text(
        json.dumps({"auto_map": {"AutoTokenizer": [None, "a/b--t.T"]}})
    )
    with pytest.raises(RemoteCodeError, match="tokenizer '.*': config.json auto_map.AutoConfig"):
        load_tokenizer(model_dir, trust_remote_code=True)
    two_repos = {**foreign_auto_map(), "AutoModelForCausalLM": "other/repo--pinned.PinnedModel"}
    tiny_model_dir(tmp_path / "two", two_repos)
    with pytest.raises(RemoteCodeError, match="code from 2 other repos"):
        load_pretrained(
            AutoModelForCausalLM,
            str(tmp_path / "two"),
            trust_remote_code=True,
            trust_remote_code_repos=[CODE_REPO, "other/repo"],
        )
    assert hub_server.downloads == []  # refused before any request for code (or anything else)

    # without trust_remote_code nothing changes: transformers' own GPT-2 classes load, no remote code read
    model = load_pretrained(AutoModelForCausalLM, model_dir)
    assert type(model) is GPT2LMHeadModel and loaded_remote_code(model) == [] and hub_server.downloads == []


def test_code_from_a_listed_repo_runs_at_the_pinned_commit_not_main(hub_server, tmp_path):
    api = HfApi(endpoint=hub_server.url)
    api.create_repo(CODE_REPO)
    upload = dict(path_in_repo="pinned.py", repo_id=CODE_REPO)
    first = api.upload_file(path_or_fileobj=module_source(1, "pinned").encode(), **upload).oid
    second = api.upload_file(path_or_fileobj=module_source(2, "pinned").encode(), **upload).oid
    assert first != second and api.repo_info(CODE_REPO).sha == second
    model_dir = tiny_model_dir(tmp_path / "model", foreign_auto_map())

    model = load_pretrained(
        AutoModelForCausalLM, model_dir, trust_remote_code=True, trust_remote_code_repos=[f"{CODE_REPO}@{first}"]
    )
    assert type(model).__name__ == "PinnedModel" and type(model).version == 1 and model.config.version == 1
    [record] = loaded_remote_code(model)
    assert record["repo_id"] == CODE_REPO and record["commit"] == first and not record["own"]
    assert list(record["files"]) == ["pinned.py"] and len(record["files"]["pinned.py"]) == 64
    assert remote_code_sources("model", model) == {"model.code": record}

    latest = load_pretrained(
        AutoModelForCausalLM, model_dir, trust_remote_code=True, trust_remote_code_repos=[CODE_REPO]
    )
    assert type(latest).version == 2 and loaded_remote_code(latest)[0]["commit"] == second  # main, resolved

    # the tokenizer of that directory reads the config's AutoConfig too: pinned the same way
    train_bpe_tokenizer(["a tiny corpus", "of two documents"], vocab_size=270).save_pretrained(model_dir)
    tokenizer = load_tokenizer(model_dir, trust_remote_code=True, trust_remote_code_repos=[f"{CODE_REPO}@{first}"])
    assert [r["commit"] for r in loaded_remote_code(tokenizer)] == [first]


def test_a_hub_models_own_code_runs_at_the_models_commit(hub_server, tmp_path):
    api = HfApi(endpoint=hub_server.url)
    repo = "alice/own-code-model"
    api.create_repo(repo)
    own_map = {"AutoConfig": "own.PinnedConfig", "AutoModelForCausalLM": "own.PinnedModel"}
    model_dir = tiny_model_dir(tmp_path / "model", own_map, {"own.py": module_source(1, "own")})
    first = api.upload_folder(folder_path=model_dir, repo_id=repo).oid
    api.upload_file(path_or_fileobj=module_source(2, "own").encode(), path_in_repo="own.py", repo_id=repo)

    model = load_pretrained(AutoModelForCausalLM, f"{repo}@{first}", trust_remote_code=True)
    assert type(model).version == 1  # no allow-list needed: the model's own repo, at the model's commit
    [record] = loaded_remote_code(model)
    assert record["own"] and record["repo_id"] == repo and record["commit"] == first
    assert type(load_pretrained(AutoModelForCausalLM, repo, trust_remote_code=True)).version == 2

    # a local directory's own code is its own files
    local = load_pretrained(AutoModelForCausalLM, model_dir, trust_remote_code=True)
    assert type(local).version == 1 and loaded_remote_code(local)[0]["repo_id"] is None
    os.remove(os.path.join(model_dir, "own.py"))
    with pytest.raises(RemoteCodeError, match="own.py' .*does not exist"):
        load_pretrained(AutoModelForCausalLM, model_dir, trust_remote_code=True)
