"""vLLM generation against HF `generate` (`make test-vllm`): the same greedy tokens, the trainer's log-probabilities,
weights synced after an update, PPO with `generation_backend: vllm` in server mode, `sample` and best-of-N."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM, LlamaForSequenceClassification

from hf_rlhf.configs import SampleArguments
from hf_rlhf.eval import generation
from hf_rlhf.eval.generation import generate
from hf_rlhf.ppo import core
from hf_rlhf.ppo.rollout import encode_prompts, generate_responses
from hf_rlhf.sampling import sampling_config
from hf_rlhf.stages import sample
from hf_rlhf.vllm_backend import VLLMBackend
from tests.ppo_fixtures import ppo_config, short_answers
from tests.vllm.conftest import record_figure

pytestmark = pytest.mark.vllm

QUESTIONS = ["What color is the fox?", "Where does the owl live?", "What does the frog eat?", "Is the cat big?"]
CONVERSATIONS = [[{"role": "user", "content": q}] for q in QUESTIONS]


def greedy(model, tokenizer, backend=None, prompts=CONVERSATIONS):
    return generate(model, tokenizer, prompts, max_new_tokens=16, temperature=0, return_ids=True, backend=backend)


def trainer_logprobs(model, query_ids, query_mask, responses, temperature):
    """The log-probabilities PPO computes for `responses` with the training forward (fp32)."""
    mask = torch.cat([query_mask, torch.ones_like(responses)], 1)
    ids = torch.cat([query_ids, responses], 1)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=core.position_ids_from_mask(mask)).logits
    return core.logprobs_from_logits(logits[:, query_ids.shape[1] - 1 : -1], responses, temperature)


def test_greedy_tokens_equal_hf_and_logprobs_match_the_trainers(vllm_model, vllm_server):
    tokenizer, backend = vllm_model["tokenizer"], VLLMBackend(server_url=vllm_server.url)
    model = AutoModelForCausalLM.from_pretrained(vllm_model["sft"]).eval()
    hf_text, hf_ids = greedy(model, tokenizer)
    text, ids = greedy(model, tokenizer, backend)
    assert ids == hf_ids and text == hf_text
    assert any(len(row) < 16 for row in ids) or all(len(row) == 16 for row in ids)  # cut at EOS as HF cuts

    prompts = [r["prompt"] for r in vllm_model["prompts"].select(range(32))]
    query_ids, query_mask = encode_prompts(tokenizer, prompts, "cpu")
    config = sampling_config(tokenizer, max_new_tokens=16, temperature=0.7)
    torch.manual_seed(0)
    responses, sampler = generate_responses(model, query_ids, query_mask, config, 32, backend, return_logprobs=True)
    ids, mask, _ = core.truncate_after_eos(responses, tokenizer.eos_token_id, tokenizer.pad_token_id)
    with torch.no_grad():
        trainer = trainer_logprobs(model, query_ids, query_mask, ids, 0.7)
    mismatch = float(((sampler - trainer).abs() * mask).sum() / mask.sum())
    record_figure("logprob_mismatch_fp32_temperature_0.7", mismatch)
    assert mismatch < 1e-4, mismatch  # float32 on both sides: the same distribution, sampled at the same temperature
    assert torch.equal(responses, ids)  # already cut after EOS, PAD after it
    backend.close()


def test_synced_weights_make_vllm_generate_as_the_trained_model(vllm_model, vllm_server):
    tokenizer, backend = vllm_model["tokenizer"], VLLMBackend(server_url=vllm_server.url)
    model = AutoModelForCausalLM.from_pretrained(vllm_model["sft"])
    before = greedy(model, tokenizer, backend)[1]
    assert len(backend.sync_seconds) == 1 and not backend.sync(model)  # unchanged weights: no second sync
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    target = tokenizer("The owl lives in the barn.", return_tensors="pt").input_ids
    for _ in range(3):  # an update: the model now prefers another text
        model(input_ids=target, labels=target).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    after_hf = greedy(model, tokenizer)[1]
    after = greedy(model, tokenizer, backend)[1]
    assert len(backend.sync_seconds) == 2
    assert after == after_hf and after != before
    record_figure("weight_sync_seconds_random_llama_cpu", backend.sync_seconds[-1])
    backend.close()


def test_a_lora_policy_syncs_its_merged_weights(vllm_model, vllm_server):
    from peft import LoraConfig, get_peft_model

    tokenizer, backend = vllm_model["tokenizer"], VLLMBackend(server_url=vllm_server.url)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(vllm_model["sft"]), LoraConfig(r=4, lora_alpha=64))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # a trained adapter
    model.eval()
    assert greedy(model, tokenizer, backend) == greedy(model, tokenizer)
    assert any("lora_B" in name for name, _ in model.named_parameters())  # merged on a copy only
    backend.close()


def test_ppo_two_updates_with_the_vllm_server(vllm_model, vllm_server, tmp_path):
    from hf_rlhf.ppo.trainer import PPOTrainer

    tokenizer = vllm_model["tokenizer"]
    policy = LlamaForCausalLM.from_pretrained(vllm_model["sft"])
    ref = LlamaForCausalLM.from_pretrained(vllm_model["sft"])
    value = LlamaForSequenceClassification.from_pretrained(vllm_model["reward"])
    args = ppo_config(
        tmp_path,
        generation_backend="vllm",
        vllm_server_url=vllm_server.url,
        vllm_importance_sampling_cap=2.0,
    )
    trainer = PPOTrainer(args, policy, ref, value, tokenizer, vllm_model["prompts"], [short_answers])
    start = time.perf_counter()
    history = trainer.train()
    record_figure("ppo_seconds_2_updates_vllm_server_cpu", time.perf_counter() - start)
    assert len(history) == 2
    assert len(trainer.generation_backend.sync_seconds) == 2  # before each rollout: the policy changed in between
    mismatch = [h["rollout/logprob_mismatch"] for h in history]
    record_figure("ppo_rollout_logprob_mismatch_fp32", mismatch)
    assert all(0 <= m < 1e-3 for m in mismatch), mismatch
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the first rollout: the SFT weights, in vLLM too


def sampled(model, tokenizer, prompts, **overrides):
    args = SampleArguments(num_completions=3, max_new_tokens=8, batch_size=4, seed=3, **overrides)
    return sample.sample_completions(model, tokenizer, prompts, args)


def test_sample_through_vllm(vllm_model, vllm_server):
    tokenizer = vllm_model["tokenizer"]
    model = AutoModelForCausalLM.from_pretrained(vllm_model["sft"]).eval()
    vllm = {"generation_backend": "vllm", "vllm_server_url": vllm_server.url}
    assert sampled(model, tokenizer, CONVERSATIONS, temperature=0, **vllm) == sampled(
        model, tokenizer, CONVERSATIONS, temperature=0
    )
    drawn = sampled(model, tokenizer, CONVERSATIONS, **vllm)
    assert [len(row) for row in drawn] == [3] * len(CONVERSATIONS) and len({c for row in drawn for c in row}) > 3
    assert sampled(model, tokenizer, CONVERSATIONS, **vllm) == drawn  # seeded per sequence: reproducible


def test_best_of_n_through_vllm(vllm_model, vllm_server, capsys):
    argv = ["--model", vllm_model["sft"], "--prompt", QUESTIONS[0], "--prompt", QUESTIONS[1], "--best_of", "3",
            "--reward_model", vllm_model["reward"], "--max_new_tokens", "8"]  # fmt: skip
    vllm = ["--generation_backend", "vllm", "--vllm_server_url", vllm_server.url]
    assert generation.main([*argv, "--temperature", "0", *vllm]) == generation.main([*argv, "--temperature", "0"])
    picked = generation.main([*argv, *vllm])
    assert len(picked) == 2 and "best of 3" in capsys.readouterr().out
