"""Fixtures of the vLLM tests (`make test-vllm`): the Python environment that has vLLM (its own venv, built by
tests/vllm/setup_venv.sh), a random Llama vLLM's CPU attention takes (head_dim >= 32), and one `hf-rlhf vllm-serve`
server for the session, started with that environment's Python."""

from __future__ import annotations

import json
import os

import pytest

from tests.conftest import REPO
from tests.ppo_fixtures import tiny_models

VLLM_PYTHON = os.environ.get("HF_RLHF_VLLM_PYTHON") or os.path.join(REPO, "outputs", ".venv-vllm", "bin", "python")
FIGURES = os.environ.get("HF_RLHF_VLLM_FIGURES", os.path.join(REPO, "outputs", "vllm_test_figures.json"))
SERVER_ARGS = ["--enforce_eager", "--gpu_memory_utilization=0.2", "--max_model_len=256"]  # a quick CPU start


def vllm_models(seed: int = 0):
    """Tokenizer, policy, value model and prompts as tests/ppo_fixtures.py's, with 2 heads of 32 dimensions."""
    tokenizer, policy, _, value_model, prompts = tiny_models(
        seed, head_dim=32, max_positions=256, attention_dropout=0.0
    )
    return tokenizer, policy, value_model, prompts


def record_figure(name: str, value) -> None:
    """Keep a measured figure (the logprob mismatch, ...) in outputs/vllm_test_figures.json for the report."""
    figures = json.load(open(FIGURES)) if os.path.exists(FIGURES) else {}
    figures[name] = value
    os.makedirs(os.path.dirname(FIGURES), exist_ok=True)
    with open(FIGURES, "w") as f:
        json.dump(figures, f, indent=2)


@pytest.fixture(scope="session")
def vllm_model(tmp_path_factory) -> dict:
    """The random policy (`sft`) and reward model (`reward`) saved as model directories with their tokenizer."""
    tokenizer, policy, reward_model, prompts = vllm_models()
    root = tmp_path_factory.mktemp("vllm_models")
    dirs = {"sft": str(root / "sft"), "reward": str(root / "reward")}
    for name, model in (("sft", policy), ("reward", reward_model)):
        model.save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
    return {"tokenizer": tokenizer, "prompts": prompts, **dirs}


@pytest.fixture(scope="session")
def vllm_server(vllm_model, tmp_path_factory):
    """`hf-rlhf vllm-serve` on the random policy, float32, run by the vLLM environment's Python."""
    if not os.access(VLLM_PYTHON, os.X_OK):
        pytest.skip(f"no vLLM environment at {VLLM_PYTHON}: `make test-vllm` builds it (tests/vllm/setup_venv.sh)")
    from hf_rlhf.vllm_backend import ServerProcess

    log = str(tmp_path_factory.mktemp("vllm_server") / "server.log")
    with ServerProcess(vllm_model["sft"], "float32", python=VLLM_PYTHON, extra_args=SERVER_ARGS, log_path=log) as s:
        yield s
