"""Every recipe in recipes/ is parsed with the parser of the command that reads it: a recipe no test loads rots."""

import glob
import os

import pytest

from hf_rlhf.pipeline import stage_arguments
from hf_rlhf.recipes import load_pipeline_recipe, parse_command_line
from hf_rlhf.stages import STAGES

from .conftest import RECIPES

ALL = sorted(glob.glob(os.path.join(RECIPES, "**", "*.yaml"), recursive=True))
PIPELINES = [p for p in ALL if "stages:" in open(p).read()]
STAGE_RECIPES = [p for p in ALL if p not in PIPELINES]


def stage_of(path: str) -> str:
    name = os.path.basename(path)
    return next(stage for stage in STAGES if name.startswith(stage))


def test_there_are_recipes():
    assert PIPELINES and STAGE_RECIPES


@pytest.mark.parametrize("path", STAGE_RECIPES, ids=lambda p: os.path.relpath(p, RECIPES))
def test_stage_recipe_parses(path, tmp_path):
    argv = ["--config", path, "--output_dir", str(tmp_path)]
    parsed = parse_command_line(STAGES[stage_of(path)].arguments, argv, prog="hf-rlhf")
    assert any(getattr(p, "output_dir", None) == str(tmp_path) for p in parsed)


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: os.path.relpath(p, RECIPES))
def test_pipeline_recipe_parses_with_every_stage(path, tmp_path):
    recipe = load_pipeline_recipe(path, str(tmp_path))
    outputs = {"documents": "d", "demonstrations": "m", "prompts": "p"}
    for name in STAGES:
        if name in recipe.stages:
            parsed = stage_arguments(recipe, name, outputs)
            assert any(
                getattr(p, "output_dir", None) == outputs.get(name, os.path.join(str(tmp_path), name)) for p in parsed
            )
            outputs[name] = os.path.join(str(tmp_path), name)
