"""vLLM against HF `generate` on one GPU (issue 17): rollout tokens/s, PPO seconds per update and the log-probability
mismatch, on a random-weight model of Qwen2.5-0.5B's shapes, figures into the GPU report (tests/gpu/conftest.py).

vLLM runs as an `hf-rlhf vllm-serve` server on the same GPU, started with the Python that has vLLM:
`$HF_RLHF_VLLM_PYTHON`, or this one when `import vllm` works here (`pip install hf_rlhf[vllm]`); skipped otherwise.
The CPU smoke mode (`HF_RLHF_GPU_SUITE_CPU=1`) runs the same code at tiny sizes with vLLM's CPU build
(`HF_RLHF_VLLM_PYTHON=outputs/.venv-vllm/bin/python`, made by tests/vllm/setup_venv.sh). Goals (issue 17): rollouts
>= 5x faster with vLLM, a PPO update >= 2x faster; the figures are reported, not asserted.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from hf_rlhf.data.world import TinyWorld
from hf_rlhf.ppo.config import PPOConfig
from hf_rlhf.ppo.core import truncate_after_eos
from hf_rlhf.ppo.rollout import encode_prompts, generate_responses
from hf_rlhf.sampling import sampling_config
from hf_rlhf.tokenizer import train_bpe_tokenizer
from hf_rlhf.vllm_backend import ServerProcess, VLLMBackend

pytestmark = pytest.mark.gpu

# Qwen2.5-0.5B's shapes (as a Llama: no attention biases), random weights; the smoke mode's stand-in (head_dim 32, the
# least vLLM's CPU attention takes).
HALF_B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    tie_word_embeddings=True,
    max_position_embeddings=2048,
)
SMOKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
             vocab_size=1024, tie_word_embeddings=True, max_position_embeddings=256)  # fmt: skip
# (prompts per update, new tokens, PPO updates timed after a first one)
SIZES = {"gpu": (64, 128, 3), "smoke": (8, 8, 1)}


def vllm_python() -> str:
    python = os.environ.get("HF_RLHF_VLLM_PYTHON")
    if python:
        return python
    if importlib.util.find_spec("vllm") is not None:
        import sys

        return sys.executable
    pytest.skip("no vLLM: set HF_RLHF_VLLM_PYTHON to a Python that has it, or `pip install hf_rlhf[vllm]`")


@pytest.fixture(scope="module")
def setup(mode, tmp_path_factory):
    python = vllm_python()
    torch.manual_seed(0)
    world = TinyWorld(0)
    tokenizer = train_bpe_tokenizer(world.documents(300), vocab_size=300)
    shapes = SMOKE if mode.smoke else HALF_B
    config = LlamaConfig(**shapes, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, num_labels=1)  # fmt: skip
    root = tmp_path_factory.mktemp("vllm_speed")
    dirs = {"policy": str(root / "policy"), "value": str(root / "value")}
    LlamaForCausalLM(config).save_pretrained(dirs["policy"])
    LlamaForSequenceClassification(config).save_pretrained(dirs["value"])
    prompts = Dataset.from_list([{"prompt": [{"role": "user", "content": p.text}]} for p in world.all_prompts()[:256]])
    dtype = "float32" if mode.smoke else "bfloat16"
    extra = ["--enforce_eager", "--gpu_memory_utilization=0.2"] if mode.smoke else ["--gpu_memory_utilization=0.3"]
    log = str(root / "server.log")
    with ServerProcess(dirs["policy"], dtype, python=python, extra_args=extra, log_path=log) as server:
        yield {"tokenizer": tokenizer, "prompts": prompts, "dirs": dirs, "server": server, "dtype": dtype}


def timed_rollouts(policy, tokenizer, prompts, max_new_tokens, backend=None, repeats=3):
    """Tokens per second of `generate_responses` (the median of `repeats` calls after a warm-up) and the tokens."""
    query_ids, query_mask = encode_prompts(tokenizer, prompts, policy.device)
    config = sampling_config(tokenizer, max_new_tokens, temperature=1.0)
    rates = []
    for i in range(repeats + 1):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = generate_responses(policy, query_ids, query_mask, config, len(prompts), backend)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        mask = truncate_after_eos(out, tokenizer.eos_token_id, tokenizer.pad_token_id)[1]
        if i:  # the first call warms up (and syncs vLLM's weights)
            rates.append(int(mask.sum()) / (time.perf_counter() - start))
    return statistics.median(rates)


def test_rollout_tokens_per_second_hf_and_vllm(setup, mode, figures):
    n, new_tokens, _ = SIZES["smoke" if mode.smoke else "gpu"]
    dtype = getattr(torch, setup["dtype"])
    policy = LlamaForCausalLM.from_pretrained(setup["dirs"]["policy"], dtype=dtype).to(mode.device).eval()
    prompts = [r["prompt"] for r in setup["prompts"].select(range(n))]
    backend = VLLMBackend(server_url=setup["server"].url)
    hf = timed_rollouts(policy, setup["tokenizer"], prompts, new_tokens)
    vllm = timed_rollouts(policy, setup["tokenizer"], prompts, new_tokens, backend)
    figures.update(
        rollout_tokens_per_second_hf=round(hf, 1),
        rollout_tokens_per_second_vllm=round(vllm, 1),
        rollout_speedup=round(vllm / hf, 2),
        weight_sync_seconds=round(backend.sync_seconds[0], 3),
        prompts=n,
        max_new_tokens=new_tokens,
        dtype=setup["dtype"],
    )
    backend.close()
    assert hf > 0 and vllm > 0


@pytest.mark.parametrize("backend", ["hf", "vllm"])
def test_ppo_seconds_per_update_and_logprob_mismatch(setup, mode, figures, backend, tmp_path):
    from hf_rlhf.ppo.trainer import PPOTrainer

    n, new_tokens, timed = SIZES["smoke" if mode.smoke else "gpu"]
    dirs, tokenizer = setup["dirs"], setup["tokenizer"]
    policy, ref = (LlamaForCausalLM.from_pretrained(dirs["policy"]) for _ in range(2))
    value = LlamaForSequenceClassification.from_pretrained(dirs["value"])
    args = PPOConfig(
        output_dir=str(tmp_path),
        per_device_train_batch_size=n // 2,
        gradient_accumulation_steps=2,
        num_ppo_epochs=1,
        max_new_tokens=new_tokens,
        max_steps=1 + timed,
        bf16=not mode.smoke,
        use_cpu=mode.smoke,
        report_to="none",
        disable_tqdm=True,
        generation_backend=backend,
        vllm_server_url=setup["server"].url,
        vllm_dtype=setup["dtype"],
    )
    trainer = PPOTrainer(args, policy, ref, value, tokenizer, setup["prompts"], [lambda p, c: [0.0] * len(c)])
    history = trainer.train()
    figures[f"ppo_seconds_per_update_{backend}"] = round(
        statistics.mean(h["seconds_per_update"] for h in history[1:]), 3
    )  # the first update warms up
    figures.update(prompts_per_update=n, max_new_tokens=new_tokens, precision="fp32" if mode.smoke else "bf16")
    if backend == "vllm":
        mismatch = [h["rollout/logprob_mismatch"] for h in history]
        figures["rollout_logprob_mismatch"] = [round(m, 6) for m in mismatch]
        assert all(0 <= m < 0.1 for m in mismatch), mismatch
