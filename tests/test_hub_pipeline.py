"""The quick pipeline chained through the local Hub only: each stage pushes, the next pulls it by repo id (pinned to
the pushed commit); then another "machine" (fresh cache, fresh output directory) starts from a middle stage."""

from __future__ import annotations

import os

import pytest
import yaml
from huggingface_hub import ModelCard, hf_hub_download

from hf_rlhf.hub.resolve import forget_downloads
from hf_rlhf.manifest import require_complete
from hf_rlhf.pipeline import run_pipeline
from hf_rlhf.recipes import load_pipeline_recipe

from .conftest import RECIPES
from .hub_server import HubServer, running_hub, use_fresh_cache


@pytest.fixture
def hub_server(tmp_path, monkeypatch):
    yield from running_hub(tmp_path, monkeypatch)


REPOS = {
    "pretrain": "tiny-org/quick-pretrain",
    "sft": "tiny-org/quick-sft",
    "sample": "tiny-org/quick-comparisons",
    "reward": "tiny-org/quick-reward",
    "rl": "tiny-org/quick-rl",
}


def hub_recipe(tmp_path, name: str, stages: tuple[str, ...] | None = None) -> str:
    """recipes/tiny/quick.yaml with a `hub:` section (and, for a second machine, only some of its stages)."""
    with open(os.path.join(RECIPES, "tiny", "quick.yaml")) as f:
        raw = yaml.safe_load(f)
    for spec in raw["stages"].values():
        spec["recipe"] = os.path.join(RECIPES, "tiny", spec["recipe"])
    raw["stages"] = {k: v for k, v in raw["stages"].items() if stages is None or k in stages}
    raw["hub"] = {"namespace": "tiny-org", "repo_prefix": "quick-"}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def history(server: HubServer, repo_id: str, repo_type: str = "model") -> list[str]:
    """The server's commits of a repo's main branch, newest first."""
    sha, out = server.repo(repo_type, repo_id)["branches"]["main"], []
    while sha:
        out.append(sha)
        sha = server.commit_info(repo_type, repo_id, sha)["parent"]
    return out


@pytest.mark.slow
def test_quick_pipeline_through_the_hub_then_from_a_middle_stage_elsewhere(hub_server, tmp_path, monkeypatch):
    out = tmp_path / "machine-1"
    report = run_pipeline(load_pipeline_recipe(hub_recipe(tmp_path, "all"), str(out)))
    assert [r["model"] for r in report["rows"]][-1] == "RL (PPO)"
    manifests = {stage: require_complete(out / stage) for stage in REPOS}

    # every input of every stage came from a repo, at a commit the server made
    def check_source(source: dict, repo_id: str, repo_type: str = "model") -> None:
        assert source["repo_id"] == repo_id and source["commit"] in history(hub_server, repo_id, repo_type)

    check_source(manifests["pretrain"]["inputs"]["sources"]["dataset"], "tiny-org/quick-documents", "dataset")
    check_source(manifests["sft"]["inputs"]["sources"]["model"], REPOS["pretrain"])
    check_source(manifests["sample"]["inputs"]["sources"]["model"], REPOS["sft"])
    check_source(manifests["reward"]["inputs"]["sources"]["dataset"], REPOS["sample"], "dataset")
    check_source(
        manifests["reward"]["inputs"]["sources"]["reference_dataset"], "tiny-org/quick-demonstrations", "dataset"
    )
    check_source(manifests["rl"]["inputs"]["sources"]["reward_model"], REPOS["reward"])
    for stage, manifest in manifests.items():  # pushed, evaluation included: the head of its repo
        repo_type = "dataset" if stage == "sample" else "model"
        assert manifest["hub"]["commit"] == history(hub_server, REPOS[stage], repo_type)[0]

    # the RL model's lineage: pretraining -> SFT -> comparisons -> reward model, each a repo and a server commit
    lineage = manifests["rl"]["lineage"]
    assert [entry["stage"] for entry in lineage] == ["pretrain", "sft", "sample", "reward"]
    for entry in lineage:
        check_source(entry, REPOS[entry["stage"]], "dataset" if entry["stage"] == "sample" else "model")
    card = ModelCard.load(hf_hub_download(REPOS["rl"], "README.md"))
    assert card.data.base_model == REPOS["sft"] and "ppo" in card.data.tags
    assert all(f"`{e['repo_id']}` at commit `{e['commit']}`" in card.text for e in lineage)
    assert "training_curves.png" in card.text and "## Sample generations" in card.text
    sft_card = ModelCard.load(hf_hub_download(REPOS["sft"], "README.md"))
    assert "gold score" in sft_card.text and "| SFT |" in sft_card.text
    reward_card = ModelCard.load(hf_hub_download(REPOS["reward"], "README.md"))
    assert "not a chat model" in reward_card.text and "Calibration" in reward_card.text
    assert str(tmp_path) not in card.text + sft_card.text + reward_card.text

    # another machine: fresh cache, fresh output directory, starting from the reward stage
    use_fresh_cache(monkeypatch, str(tmp_path / "hf_home-2"))
    forget_downloads()
    sft_head = history(hub_server, REPOS["sft"])[0]
    out2 = tmp_path / "machine-2"
    report2 = run_pipeline(load_pipeline_recipe(hub_recipe(tmp_path, "middle", ("reward", "rl")), str(out2)))
    assert not (out2 / "sft").exists() and not (out2 / "sample").exists()
    reward = require_complete(out2 / "reward")
    assert reward["inputs"]["sources"]["model"]["commit"] == sft_head
    check_source(reward["inputs"]["sources"]["dataset"], REPOS["sample"], "dataset")
    # the reward model started from the SFT repo's head (the commit that added its evaluation to its card), the
    # comparisons from its first commit: both are in the lineage, each with its commit
    lineage2 = require_complete(out2 / "rl")["lineage"]
    assert [entry["stage"] for entry in lineage2] == ["pretrain", "sft", "sft", "sample", "reward"]
    assert [e["commit"] for e in lineage2[1:3]] == [
        sft_head,
        manifests["sample"]["inputs"]["sources"]["model"]["commit"],
    ]
    assert {r["model"] for r in report2["rows"]} >= {"SFT", "RL (PPO)"}  # the report reads the pulled SFT model
    # nothing either machine pushed holds one of its paths (output directories, caches: all under tmp_path)
    assert [name for name, content in hub_server.all_files() if str(tmp_path).encode() in content] == []
