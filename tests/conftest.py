"""Shared fixtures: a small tiny-world dataset directory and a quick pretrain -> SFT pipeline run, built once."""

from __future__ import annotations

import os

import pytest

from .label_fixtures import db  # noqa: F401  (the labeling app's fresh database, for tests/test_label_*.py)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(REPO, "recipes")


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory) -> dict[str, str]:
    from hf_rlhf.configs import WorldArguments
    from hf_rlhf.data.world import build_world_datasets

    out = tmp_path_factory.mktemp("world")
    return build_world_datasets(WorldArguments(output_dir=str(out), num_documents=300, num_demonstrations=120))


@pytest.fixture(scope="session")
def quick_pipeline(tmp_path_factory) -> tuple[str, dict]:
    """The quick preset of the tiny pipeline (pretrain then SFT), run once for the whole session."""
    from hf_rlhf.pipeline import run_pipeline
    from hf_rlhf.recipes import load_pipeline_recipe

    out = str(tmp_path_factory.mktemp("pipeline"))
    report = run_pipeline(load_pipeline_recipe(os.path.join(RECIPES, "tiny", "quick.yaml"), out))
    return out, report
