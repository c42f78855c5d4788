"""Stages on the Hub, against the local Hub server: push a finished stage, pull inputs by repo id (at a revision),
cards and lineage, and every failure a clear error that leaves the local stage complete, then `hf-rlhf push`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil

import pytest
import torch
import yaml
from huggingface_hub import DatasetCard, HfApi, ModelCard, constants, hf_hub_download, snapshot_download
from safetensors.torch import load_file, save_file
from transformers import Trainer

from hf_rlhf.cli import main as cli
from hf_rlhf.configs import DataArguments
from hf_rlhf.data.formats import DataValidationError
from hf_rlhf.data.loading import load_stage_dataset
from hf_rlhf.errors import HubPushError
from hf_rlhf.hub.push import push_dataset, push_stage
from hf_rlhf.hub.resolve import forget_downloads, resolve_input
from hf_rlhf.manifest import MANIFEST, finish_stage, is_complete, require_complete
from hf_rlhf.modeling import ModelNotFoundError, resolve_model, resolve_model_path
from hf_rlhf.pipeline import run_pipeline, stage_values
from hf_rlhf.recipes import RecipeError, load_pipeline_recipe
from hf_rlhf.stages import pretrain, sft

from .conftest import RECIPES
from .hub_server import TOKEN, running_hub, use_fresh_cache


@pytest.fixture
def hub_server(tmp_path, monkeypatch):
    yield from running_hub(tmp_path, monkeypatch)


TINY_MODEL = '{"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 128, "tie_word_embeddings": true}'
PUSHED = {
    "README.md",
    MANIFEST,
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
}
JUNK = (
    "training_args.bin",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
    "notes.pkl",
    "checkpoint-1/model.safetensors",
)


@pytest.fixture(scope="module")
def tiny_pretrain(world_dir, tmp_path_factory) -> str:
    """A finished (tiny, two-step) pretraining stage, built once; tests push copies of it."""
    out = str(tmp_path_factory.mktemp("tiny") / "pretrain")
    argv = ["--config", os.path.join(RECIPES, "tiny", "pretrain.yaml"), "--dataset_name", world_dir["documents"]]
    argv += ["--output_dir", out, "--max_steps", "2", "--model_config_kwargs", TINY_MODEL, "--vocab_size", "300"]
    pretrain.main(argv + ["--block_size", "64", "--per_device_train_batch_size", "8", "--logging_steps", "1"])
    return out


def copy_stage(source: str, tmp_path, name: str = "pretrain") -> str:
    target = str(tmp_path / name)
    shutil.copytree(source, target)
    return target


def digest(directory: str) -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, directory)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def test_push_uploads_the_allow_list_and_records_the_commit(hub_server, tiny_pretrain, tmp_path, caplog, capsys):
    stage = copy_stage(tiny_pretrain, tmp_path)
    for junk in JUNK:
        os.makedirs(os.path.dirname(os.path.join(stage, junk)), exist_ok=True)
        open(os.path.join(stage, junk), "wb").write(b"\x80pickle")
    caplog.set_level(logging.DEBUG)
    manifest = push_stage(stage, "alice/tiny-pretrain")

    api = HfApi(endpoint=hub_server.url)
    files = set(api.list_repo_files("alice/tiny-pretrain")) - {".gitattributes"}
    assert files == PUSHED  # no pickles, no checkpoints: only the allow-list
    commit = api.repo_info("alice/tiny-pretrain").sha
    assert manifest["hub"]["commit"] == commit and manifest["hub"]["repo_id"] == "alice/tiny-pretrain"
    assert require_complete(stage)["hub"]["commit"] == commit  # the local manifest, rewritten, still complete
    assert commit in open(os.path.join(stage, "README.md")).read()  # and the local card

    card = ModelCard.load(hf_hub_download("alice/tiny-pretrain", "README.md"))
    assert {"hf-rlhf", "trl", "pretrain"} <= set(card.data.tags) and card.data.pipeline_tag == "text-generation"
    assert card.data.library_name == "transformers" and card.data.license == "apache-2.0"
    assert 'from_pretrained("alice/tiny-pretrain")' in card.text and str(tmp_path) not in card.text
    pushed = json.load(open(hf_hub_download("alice/tiny-pretrain", MANIFEST)))
    assert pushed["complete"] and "hub" not in pushed  # this machine's records stay local

    # the token is nowhere: not in any uploaded file, the stage directory, the logs or the output
    token = TOKEN.encode()
    assert not [name for name, content in hub_server.all_files() if token in content]
    assert not [p for p in digest(stage) if token in open(os.path.join(stage, p), "rb").read()]
    out = capsys.readouterr()
    assert TOKEN not in caplog.text + out.out + out.err
    # pushing the unchanged stage again makes no new commit
    assert push_stage(stage)["hub"]["commit"] == commit


def test_one_stage_hands_off_through_the_hub_at_a_pinned_revision(
    hub_server, tiny_pretrain, world_dir, tmp_path, monkeypatch
):
    stage = copy_stage(tiny_pretrain, tmp_path)
    first = push_stage(stage, "alice/tiny-pretrain")["hub"]["commit"]
    weights = load_file(os.path.join(stage, "model.safetensors"))
    save_file({k: v + 1 for k, v in weights.items()}, os.path.join(stage, "model.safetensors"))
    second = push_stage(stage)["hub"]["commit"]
    assert second != first
    # an old revision gets the old weights, the branch the new ones
    old = resolve_model_path(f"alice/tiny-pretrain@{first}")
    new = resolve_model_path("alice/tiny-pretrain")
    old_weights = load_file(os.path.join(old, "model.safetensors"))
    new_weights = load_file(os.path.join(new, "model.safetensors"))
    assert all(torch.equal(old_weights[k] + 1, new_weights[k]) for k in weights)

    # SFT on another "machine" (fresh cache) pulls the pinned revision by repo id, and pushes itself when complete
    use_fresh_cache(monkeypatch, str(tmp_path / "machine-2"))
    out = str(tmp_path / "sft")
    argv = ["--config", os.path.join(RECIPES, "tiny", "sft.yaml"), "--dataset_name", world_dir["demonstrations"]]
    argv += ["--model_name_or_path", f"alice/tiny-pretrain@{first}", "--output_dir", out, "--max_steps", "2"]
    argv += ["--per_device_train_batch_size", "8", "--push_to_hub", "true", "--hub_model_id", "alice/tiny-sft"]
    pushes = []

    def push_once_complete(output_dir, request):
        pushes.append((output_dir, is_complete(output_dir), request.repo_id))
        return push_stage(output_dir, request)

    def never(*args, **kwargs):
        raise AssertionError("the upstream trainer pushed")

    monkeypatch.setattr(sft, "push_stage", push_once_complete)
    for method in ("init_hf_repo", "push_to_hub", "_push_from_checkpoint"):
        monkeypatch.setattr(Trainer, method, never)
    manifest = sft.main(argv)
    assert pushes == [(out, True, "alice/tiny-sft")]  # one push, from run(), after the manifest was complete
    assert manifest["inputs"]["sources"]["model"] == {
        "repo_id": "alice/tiny-pretrain",
        "repo_type": "model",
        "revision": first,
        "commit": first,
    }
    assert manifest["lineage"] == [{"stage": "pretrain", "repo_id": "alice/tiny-pretrain", "commit": first}]
    api = HfApi(endpoint=hub_server.url)
    assert manifest["hub"]["commit"] == api.repo_info("alice/tiny-sft").sha
    assert [c for c in hub_server.requests if c[0] == "POST" and "/api/models/alice/tiny-sft/commit/" in c[1]] == [
        ("POST", "/api/models/alice/tiny-sft/commit/main", 200)
    ]  # one push, after completion: the upstream trainer never pushed
    assert manifest["configs"]["training"]["push_to_hub"] is True  # the config dump shows what was asked
    card = ModelCard.load(hf_hub_download("alice/tiny-sft", "README.md"))
    assert card.data.base_model == "alice/tiny-pretrain" and card.data.base_model_relation == "finetune"
    assert f"`alice/tiny-pretrain` at commit `{first}`" in card.text and "## Lineage" in card.text


def test_datasets_push_as_parquet_and_load_by_repo_id(hub_server, world_dir, tmp_path):
    world_dir = {name: copy_stage(world_dir[name], tmp_path, name) for name in ("demonstrations", "prompts")}
    repo_id, commit = push_dataset(world_dir["demonstrations"], "tiny-org/demos")
    data = load_stage_dataset(DataArguments(dataset_name=f"{repo_id}@{commit}"))
    local = load_stage_dataset(DataArguments(dataset_name=world_dir["demonstrations"]))
    assert data["train"]["prompt"] == local["train"]["prompt"] and len(data["test"]) == len(local["test"])
    assert resolve_input(f"{repo_id}@{commit}", repo_type="dataset").commit == commit
    card = DatasetCard.load(hf_hub_download(repo_id, "README.md", repo_type="dataset"))
    assert "hf-rlhf" in card.data.tags and card.data.configs[0]["data_files"][0]["path"] == "data/train-*.parquet"
    assert "contractor demonstrations" in card.text and 'load_dataset("tiny-org/demos")' in card.text
    assert cli(["push", world_dir["prompts"], "--hub_model_id", "tiny-org/prompts"]) == 0  # `hf-rlhf push` a dataset
    assert len(load_stage_dataset(DataArguments(dataset_name="tiny-org/prompts"))["test"]) > 0


def test_an_adapter_is_pushed_with_its_base_named_by_repo_and_commit(hub_server, tiny_pretrain, tmp_path):
    commit = push_stage(copy_stage(tiny_pretrain, tmp_path), "alice/tiny-pretrain")["hub"]["commit"]
    base = resolve_model_path("alice/tiny-pretrain")  # a snapshot in the cache: what peft records as the base
    stage = tmp_path / "sft-lora"
    stage.mkdir()
    adapter = {"base_model_name_or_path": base, "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 2}
    (stage / "adapter_config.json").write_text(json.dumps(adapter))
    save_file({"base_model.model.lm_head.lora_A.weight": torch.zeros(2, 32)}, str(stage / "adapter_model.safetensors"))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(os.path.join(tiny_pretrain, name), stage / name)
    inputs = {"model": resolve_model("alice/tiny-pretrain"), "dataset": {"name": "demos", "fingerprint": "f"}}
    finish_stage(str(stage), "sft", configs={}, inputs=inputs, metrics={"train_loss": 1.0})
    push_stage(str(stage), "alice/tiny-sft-lora")

    pushed = json.load(open(hf_hub_download("alice/tiny-sft-lora", "adapter_config.json")))
    assert pushed["base_model_name_or_path"] == "alice/tiny-pretrain" and pushed["revision"] == commit
    assert json.loads((stage / "adapter_config.json").read_text()) == adapter  # the local copy is this machine's
    card = ModelCard.load(hf_hub_download("alice/tiny-sft-lora", "README.md"))
    assert card.data.library_name == "peft" and card.data.base_model_relation == "adapter"
    assert card.data.base_model == "alice/tiny-pretrain" and "PeftModel.from_pretrained" in card.text
    assert f'revision="{commit}"' in card.text and "lora" in card.data.tags


def pushed_files(server_url: str, repos: list[tuple[str, str]], cache: str) -> dict[str, bytes]:
    """Every file of the given (repo id, repo type) repos, as downloaded from the server."""
    out = {}
    for repo_id, repo_type in repos:
        folder = snapshot_download(repo_id, repo_type=repo_type, cache_dir=cache, endpoint=server_url)
        for root, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(root, name)
                out[f"{repo_id}/{os.path.relpath(path, folder)}"] = open(path, "rb").read()
    return out


def test_a_local_run_pushed_afterwards_names_its_upstream_and_holds_no_local_path(
    hub_server, tiny_pretrain, world_dir, tmp_path, tmp_path_factory
):
    run = tmp_path / "run"  # stages run locally, none pushed; then `hf-rlhf push` each, upstream first
    pretrain_dir = copy_stage(tiny_pretrain, run)
    demos = copy_stage(world_dir["demonstrations"], run, "demonstrations")
    out = str(run / "sft")
    argv = ["--config", os.path.join(RECIPES, "tiny", "sft.yaml"), "--dataset_name", demos, "--output_dir", out]
    argv += ["--model_name_or_path", pretrain_dir, "--max_steps", "2", "--per_device_train_batch_size", "8"]
    local = sft.main(argv)
    assert local["inputs"]["sources"]["model"] == {"local": "pretrain", "path": "pretrain"}  # not pushed yet

    assert cli(["push", demos, "--hub_model_id", "tiny-org/demos"]) == 0
    assert cli(["push", pretrain_dir, "--hub_model_id", "alice/tiny-pretrain"]) == 0
    assert cli(["push", out, "--hub_model_id", "alice/tiny-sft"]) == 0
    api = HfApi(endpoint=hub_server.url)
    pretrain_commit = api.repo_info("alice/tiny-pretrain").sha
    demos_commit = api.repo_info("tiny-org/demos", repo_type="dataset").sha
    card = ModelCard.load(hf_hub_download("alice/tiny-sft", "README.md"))
    assert card.data.base_model == "alice/tiny-pretrain" and card.data.base_model_relation == "finetune"
    assert card.data.datasets == ["tiny-org/demos"]
    assert f"`alice/tiny-pretrain` at commit `{pretrain_commit}`" in card.text
    pushed = json.load(open(hf_hub_download("alice/tiny-sft", MANIFEST)))
    assert [(e["stage"], e["repo_id"], e["commit"]) for e in pushed["lineage"]] == [
        ("pretrain", "alice/tiny-pretrain", pretrain_commit)
    ]
    assert pushed["inputs"]["sources"]["dataset"]["commit"] == demos_commit
    assert pushed["configs"]["training"]["output_dir"] == "sft" and pushed["inputs"]["model"] == "pretrain"
    assert require_complete(out)["lineage"][0]["commit"] == pretrain_commit  # the local manifest knows it too

    # no pushed file holds a path of this machine: the run, the test's temporary directories, the checkout
    repos = [("alice/tiny-pretrain", "model"), ("alice/tiny-sft", "model"), ("tiny-org/demos", "dataset")]
    files = pushed_files(hub_server.url, repos, str(tmp_path / "check-cache"))
    assert {"alice/tiny-sft/README.md", f"alice/tiny-sft/{MANIFEST}", "tiny-org/demos/README.md"} <= set(files)
    needles = [str(run), str(tmp_path_factory.getbasetemp()), os.path.dirname(RECIPES)]
    leaks = [(name, n) for name, content in files.items() for n in needles if n.encode() in content]
    leaks += [(name, n) for name, content in hub_server.all_files() for n in needles if n.encode() in content]
    assert leaks == []


def test_bad_inputs_are_clear_errors(hub_server, tiny_pretrain, tmp_path, monkeypatch):
    push_stage(copy_stage(tiny_pretrain, tmp_path), "alice/tiny-pretrain")
    with pytest.raises(ModelNotFoundError, match=r"model 'alice/nope'.*Hub model repo 'alice/nope'.*no such repo"):
        resolve_model_path("alice/nope")
    with pytest.raises(ModelNotFoundError, match=r"no revision 'v9'; give a branch, tag or commit"):
        resolve_model_path("alice/tiny-pretrain@v9")
    with pytest.raises(ModelNotFoundError, match="names revision 'v1' but the revision option says 'v2'"):
        resolve_model_path("alice/tiny-pretrain@v1", revision="v2")
    with pytest.raises(DataValidationError, match=r"dataset 'tiny-org/none'.*no such repo"):
        load_stage_dataset(DataArguments(dataset_name="tiny-org/none"))
    hub_server.create_repo("model", "tiny-org/gated", "alice", private=False, gated=True)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ModelNotFoundError, match="the repo is gated"):
        resolve_model_path("tiny-org/gated")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_valid_token_123")
    with pytest.raises(ModelNotFoundError, match=r"not authorised \(HTTP 401\)") as info:
        resolve_model_path("alice/other")
    assert "hf_not_a_valid_token_123" not in str(info.value)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    # HF_HUB_OFFLINE: a cached revision still resolves; one never downloaded is a clear error
    cached = resolve_model_path("alice/tiny-pretrain")
    forget_downloads()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_model_path("alice/tiny-pretrain") == cached
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE is set and it is not in the cache"):
        resolve_model_path("tiny-org/never-downloaded")


def test_failed_pushes_leave_the_stage_complete_and_hf_rlhf_push_retries(
    hub_server, tiny_pretrain, tmp_path, monkeypatch
):
    stage = copy_stage(tiny_pretrain, tmp_path)
    before = digest(stage)
    api = HfApi(endpoint=hub_server.url)

    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(HubPushError, match="no Hugging Face token"):
        push_stage(stage, "alice/tiny-pretrain")
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    hub_server.faults.reject_commits = 1
    with pytest.raises(
        HubPushError,
        match=r"403.*pre-receive hook.*local output is complete and unchanged.*"
        r"retry with `hf-rlhf push .* --hub_model_id alice/tiny-pretrain`",
    ):
        push_stage(stage, "alice/tiny-pretrain")
    assert digest(stage) == before and require_complete(stage)
    head = api.repo_info("alice/tiny-pretrain").sha

    hub_server.faults.drop_commits = 1
    with pytest.raises(HubPushError, match="connection|disconnect|Disconnect"):
        push_stage(stage, "alice/tiny-pretrain")
    assert digest(stage) == before and api.repo_info("alice/tiny-pretrain").sha == head  # nothing committed

    # the retry: `hf-rlhf push`; the LFS weights uploaded by the failed attempts are not sent again
    puts = sum(1 for method, _, _ in hub_server.requests if method == "PUT")
    assert cli(["push", stage, "--hub_model_id", "alice/tiny-pretrain"]) == 0
    assert sum(1 for method, _, _ in hub_server.requests if method == "PUT") == puts
    commit = api.repo_info("alice/tiny-pretrain").sha
    assert commit != head and require_complete(stage)["hub"]["commit"] == commit


def test_a_connection_dropped_mid_upload_is_retried_without_corrupting_the_blob(hub_server, tiny_pretrain, tmp_path):
    stage = copy_stage(tiny_pretrain, tmp_path)
    hub_server.faults.drop_lfs_uploads = 1  # the client retries the upload once, after a second
    commit = push_stage(stage, "alice/tiny-pretrain")["hub"]["commit"]
    downloaded = hf_hub_download("alice/tiny-pretrain", "model.safetensors", revision=commit)
    assert open(downloaded, "rb").read() == open(os.path.join(stage, "model.safetensors"), "rb").read()


@pytest.mark.slow
def test_a_push_whose_connection_keeps_dropping_fails_then_retries(hub_server, tiny_pretrain, tmp_path):
    stage = copy_stage(tiny_pretrain, tmp_path)
    before = digest(stage)
    hub_server.faults.drop_lfs_uploads = 6  # every attempt the client makes (1 + 5 retries, ~23 s of back-off)
    with pytest.raises(HubPushError, match="model.safetensors.*local output is complete and unchanged"):
        push_stage(stage, "alice/tiny-pretrain")
    assert digest(stage) == before and "hub" not in require_complete(stage)
    assert cli(["push", stage, "--hub_model_id", "alice/tiny-pretrain"]) == 0
    assert (
        require_complete(stage)["hub"]["commit"] == HfApi(endpoint=hub_server.url).repo_info("alice/tiny-pretrain").sha
    )


def test_a_stage_asked_to_push_without_a_token_fails_before_training(world_dir, tiny_pretrain, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    argv = ["--config", os.path.join(RECIPES, "tiny", "sft.yaml"), "--dataset_name", world_dir["demonstrations"]]
    argv += ["--model_name_or_path", tiny_pretrain, "--output_dir", str(tmp_path / "out"), "--push_to_hub", "true"]
    with pytest.raises(HubPushError, match="no Hugging Face token was found.*nothing was run"):
        sft.main(argv)
    assert not os.path.exists(tmp_path / "out")


def write_hub_recipe(tmp_path, hub_section: dict, stages: tuple[str, ...] = ("pretrain", "sft"), world: bool = True):
    with open(os.path.join(RECIPES, "tiny", "quick.yaml")) as f:
        raw = yaml.safe_load(f)
    raw["stages"] = {k: {**v, "recipe": os.path.join(RECIPES, "tiny", v["recipe"])} for k, v in raw["stages"].items()}
    raw["stages"] = {k: v for k, v in raw["stages"].items() if k in stages}
    raw["hub"] = hub_section
    if not world:
        del raw["world"]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_pipeline_hub_section_wires_pushes_and_repo_ids(tmp_path):
    recipe = load_pipeline_recipe(write_hub_recipe(tmp_path, {"namespace": "tiny-org"}), str(tmp_path / "quick"))
    refs = {"pretrain": "tiny-org/quick-pretrain@abc", "demonstrations": "tiny-org/quick-demonstrations@def"}
    values = stage_values(recipe, "sft", refs)
    for key, value in [
        ("model_name_or_path", refs["pretrain"]),
        ("dataset_name", refs["demonstrations"]),
        ("push_to_hub", True),
        ("hub_model_id", "tiny-org/quick-sft"),
        ("hub_revision", "main"),
    ]:
        assert values[key] == value
    assert recipe.hub.repo_id("sample", recipe.output_dir) == "tiny-org/quick-comparisons"
    with pytest.raises(RecipeError, match="'hub': set 'namespace'"):
        load_pipeline_recipe(write_hub_recipe(tmp_path, {"repo_prefix": "x-"}), str(tmp_path))
    with pytest.raises(RecipeError, match="unknown key 'namespce'.*'namespace'"):
        load_pipeline_recipe(write_hub_recipe(tmp_path, {"namespce": "x"}), str(tmp_path))


def test_pipeline_from_a_middle_stage_needs_the_upstream_repo(hub_server, tmp_path):
    path = write_hub_recipe(tmp_path, {"namespace": "tiny-org", "repo_prefix": "q-"}, ("reward",), world=False)
    with pytest.raises(RecipeError, match=r"stage 'sft' \(not in the recipe\).*'tiny-org/q-sft'.*no such repo"):
        run_pipeline(load_pipeline_recipe(path, str(tmp_path / "out")))
