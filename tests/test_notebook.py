"""examples/tiny_pipeline.ipynb runs from top to bottom (nbclient), so the notebook cannot rot (a few minutes)."""

from __future__ import annotations

import json
import os

import pytest

from .conftest import REPO

NOTEBOOK = os.path.join(REPO, "examples", "tiny_pipeline.ipynb")


def test_notebook_is_committed_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_notebook_runs(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, if any cell fails

    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) >= 2  # the reward model's calibration plot and PPO's training curves
    with open(tmp_path / "outputs" / "notebook" / "rl" / "hf_rlhf_manifest.json") as f:
        manifest = json.load(f)
    assert manifest["complete"] and manifest["stage"] == "rl" and manifest["metrics"]["updates"] == 15
    for stage in ("pretrain", "sft", "comparisons", "reward"):
        with open(tmp_path / "outputs" / "notebook" / stage / "hf_rlhf_manifest.json") as f:
            assert json.load(f)["complete"]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "--- rl" in text and "->" in text  # the side-by-side samples were printed
