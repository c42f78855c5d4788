"""The generation backends without vLLM (`hf_rlhf.generation_backend`, `hf_rlhf.vllm_backend`): the sampling settings
mapped to vLLM field by field, the ones it cannot honour refused, the server protocol and weight sync against the
real HTTP handler with a stand-in engine, and the log-probability mismatch maths. vLLM itself: tests/vllm/."""

from __future__ import annotations

import math
import threading
from http.server import HTTPServer

import pytest
import torch
from safetensors.torch import load_file
from transformers import GenerationConfig

from hf_rlhf.configs import EvaluationArguments, SampleArguments
from hf_rlhf.eval import generation
from hf_rlhf.generation_backend import (
    OPTIONS,
    HFBackend,
    check_backend_options,
    logprob_mismatch,
    make_backend,
    truncated_importance_weights,
)
from hf_rlhf.ppo.config import PPOConfig
from hf_rlhf.sampling import Generations, cut_at_eos, sampling_config
from hf_rlhf.vllm_backend import ServerClient, VLLMBackend, sampling_params
from hf_rlhf.vllm_serve import make_handler
from tests.ppo_fixtures import tiny_models


def test_sampling_settings_map_to_vllm_field_by_field():
    tokenizer = tiny_models()[0]
    eos = tokenizer.eos_token_id
    assert sampling_params(sampling_config(tokenizer, max_new_tokens=7, temperature=0.7)) == {
        "temperature": 0.7, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0, "max_tokens": 7,
        "min_tokens": 0, "stop_token_ids": [eos], "ignore_eos": False, "skip_special_tokens": False,
    }  # fmt: skip
    greedy = sampling_params(sampling_config(tokenizer, max_new_tokens=3, temperature=0))
    assert greedy["temperature"] == 0.0 and greedy["top_k"] == 0 and greedy["max_tokens"] == 3
    config = sampling_config(tokenizer, max_new_tokens=5, temperature=1.0)
    config.top_k, config.top_p, config.min_p, config.min_new_tokens = 20, 0.9, 0.05, 2
    mapped = sampling_params(config)
    assert (mapped["top_k"], mapped["top_p"], mapped["min_p"], mapped["min_tokens"]) == (20, 0.9, 0.05, 2)


@pytest.mark.parametrize(
    "key, value", [("no_repeat_ngram_size", 2), ("num_beams", 2), ("typical_p", 0.5), ("suppress_tokens", [5])]
)
def test_settings_vllm_cannot_honour_are_refused(key, value):
    config = sampling_config(tiny_models()[0], max_new_tokens=5, temperature=1.0)
    setattr(config, key, value)
    with pytest.raises(ValueError, match=f"{key}=.*no vLLM equivalent"):
        sampling_params(config)


def test_options_are_checked_with_the_key_named():
    assert isinstance(make_backend(None), HFBackend) and isinstance(make_backend(SampleArguments()), HFBackend)
    for key, value, message in [
        ("generation_backend", "vlm", "generation_backend must be one of 'hf', 'vllm'"),
        ("vllm_mode", "remote", "vllm_mode must be one of"),
        ("vllm_dtype", "fp32", "vllm_dtype must be one of"),
        ("vllm_server_url", "127.0.0.1:8000", "vllm_server_url must start with http://"),
        ("vllm_gpu_memory_utilization", 1.5, "vllm_gpu_memory_utilization must be in"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_backend_options(SampleArguments(**{key: value}))
    with pytest.raises(ValueError, match="vllm_importance_sampling_cap must be >= 1"):
        check_backend_options(PPOConfig(output_dir="x", vllm_importance_sampling_cap=0.5, report_to="none"))
    for config in (SampleArguments(), EvaluationArguments(), PPOConfig(output_dir="x", report_to="none")):
        assert {k: getattr(config, k) for k in OPTIONS} == {k: default for k, (default, _) in OPTIONS.items()}
    with pytest.raises(SystemExit):  # `hf-rlhf generate` refuses it before loading a model
        generation.main(["--model", "none", "--prompt", "hi", "--generation_backend", "vlm"])


def test_completions_are_cut_after_eos_and_padded():
    assert cut_at_eos([5, 6, 2, 0, 0], eos_token_id=2) == [5, 6, 2]
    assert cut_at_eos([5, 0, 7], eos_token_id=2) == [5, 0, 7]  # PAD sampled mid-row: kept
    ids, logprobs = Generations([[5, 2], [7, 8, 9]], [[-0.5, -1.0], [-1.0, -2.0, -3.0]]).padded(pad_token_id=0)
    assert ids.tolist() == [[5, 2, 0], [7, 8, 9]]
    assert logprobs.tolist() == [[-0.5, -1.0, 0.0], [-1.0, -2.0, -3.0]]
    assert Generations([[1]]).padded(0)[1] is None


def test_logprob_mismatch_and_truncated_importance_weights():
    sampler = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -0.5]])
    trainer = torch.tensor([[-1.5, -1.0, 7.0], [-0.5, -0.25, -0.5]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # |diffs| on valid tokens: 0.5, 1.0, 0, 0.25, 0 -> 1.75 / 5
    assert logprob_mismatch(sampler, trainer, mask).item() == pytest.approx(0.35)
    weights = truncated_importance_weights(trainer, sampler, mask, cap=2.0)
    expected = [[math.exp(-0.5), 2.0, 1.0], [1.0, math.exp(0.25), 1.0]]  # e^1 = 2.72 capped at 2; padding 1
    assert torch.allclose(weights, torch.tensor(expected))
    assert not weights.requires_grad


class StandInEngine:
    """`hf_rlhf.vllm_serve.Engine`'s interface without vLLM: echoes each prompt's last token then EOS, and records."""

    def __init__(self, eos: int, dtype: str = "float32"):
        self.eos, self.dtype, self.requests, self.reloads = eos, dtype, [], []

    def health(self):
        return {"status": "ok", "dtype": self.dtype}

    def generate(self, prompt_token_ids, sampling_params):
        self.requests.append(sampling_params)
        return {
            "token_ids": [[p[-1], self.eos] for p in prompt_token_ids],
            "logprobs": [[-1.0, -2.0] for _ in prompt_token_ids],
            "finish_reasons": ["stop"] * len(prompt_token_ids),
        }

    def reload_weights(self, weights_path):
        self.reloads.append(load_file(f"{weights_path}/model.safetensors"))
        return {"seconds": 0.0, "weights_version": len(self.reloads)}


@pytest.fixture()
def stand_in_server():
    tokenizer = tiny_models()[0]
    engine = StandInEngine(tokenizer.eos_token_id)
    server = HTTPServer(("127.0.0.1", 0), make_handler(engine))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield engine, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_the_server_protocol_and_weight_sync(stand_in_server):
    engine, url = stand_in_server
    tokenizer, policy, *_ = tiny_models()
    backend = VLLMBackend(server_url=url)
    config = sampling_config(tokenizer, max_new_tokens=4, temperature=1.0)
    torch.manual_seed(0)
    out = backend.generate(policy, [[5, 6], [9]], config)
    assert out.token_ids == [[6, tokenizer.eos_token_id], [9, tokenizer.eos_token_id]]
    assert out.logprobs == [[-1.0, -2.0], [-1.0, -2.0]]
    sent = engine.requests[0]
    assert [r["temperature"] for r in sent] == [1.0, 1.0] and sent[0]["seed"] != sent[1]["seed"]
    assert len(engine.reloads) == 1  # synced before the first generation
    assert torch.equal(engine.reloads[0]["model.embed_tokens.weight"], policy.model.embed_tokens.weight)
    backend.generate(policy, [[5]], config, seeds=[11])
    assert len(engine.reloads) == 1 and engine.requests[1][0]["seed"] == 11  # unchanged weights: no sync
    with torch.no_grad():
        policy.lm_head.weight.mul_(2)
    backend.generate(policy, [[5]], config)
    assert len(engine.reloads) == 2 and torch.equal(engine.reloads[1]["lm_head.weight"], policy.lm_head.weight)
    backend.close()

    engine.dtype = "bfloat16"  # the policy is float32: a server in another dtype is refused
    with pytest.raises(ValueError, match="serves bfloat16 but generation needs float32"):
        VLLMBackend(server_url=url).generate(policy, [[5]], config)
    with pytest.raises(RuntimeError, match="missing field 'sampling_params'"):
        ServerClient(url).request("/generate", {"prompt_token_ids": [[1]]})


def test_no_server_is_a_one_line_error():
    with pytest.raises(ConnectionError, match="no vLLM server answering at http://127.0.0.1:9.*hf-rlhf vllm-serve"):
        ServerClient("http://127.0.0.1:9", timeout=2).health()


def test_hf_backend_equals_generate_with_on_the_same_draws():
    tokenizer, policy, *_ = tiny_models()
    config = sampling_config(tokenizer, max_new_tokens=6, temperature=1.0)
    prompts = [[5, 6, 7], [8]]
    torch.manual_seed(0)
    out = HFBackend().generate(policy, prompts, config, batch_size=1)
    torch.manual_seed(0)
    expected = []
    for row in prompts:  # one prompt per call: no padding
        ids = policy.generate(torch.tensor([row]), generation_config=config)[0, len(row) :].tolist()
        expected.append(cut_at_eos(ids, config.eos_token_id))
    assert out.token_ids == expected and out.logprobs is None
    assert isinstance(config, GenerationConfig)


def test_vllm_serve_says_where_vllm_is_missing():
    from hf_rlhf import vllm_serve

    with pytest.raises(SystemExit, match="--python '/nonexistent/python' is not an executable interpreter"):
        vllm_serve.main(["--model", "m", "--dtype", "float32", "--python", "/nonexistent/python"])
    with pytest.raises(SystemExit):  # the dtype is always explicit
        vllm_serve.main(["--model", "m"])
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(SystemExit, match="vLLM is not importable by this Python"):
            vllm_serve.main(["--model", "m", "--dtype", "float32"])


def test_grpo_and_rloo_recipes_pass_trls_vllm_options_through():
    from hf_rlhf.stages import rl

    for algorithm in ("grpo", "rloo"):
        values = {"output_dir": "out", "use_cpu": True, "bf16": False, "report_to": "none", "use_vllm": True}
        values.update(vllm_mode="server", vllm_server_base_url="http://127.0.0.1:8000")
        trainer_args = rl.make_parser(algorithm=algorithm).parse_dict(values)[2]
        assert (trainer_args.use_vllm, trainer_args.vllm_mode) == (True, "server")
        assert trainer_args.vllm_server_base_url == "http://127.0.0.1:8000"
