"""The one generation config (`hf_rlhf.sampling`): nothing of a model's own `generation_config` leaks into what PPO,
`sample`, `generate` and the report sample with (issue 14)."""

from __future__ import annotations

import copy

import torch
from transformers import GenerationConfig
from transformers.generation import LogitsProcessorList

from hf_rlhf.eval.generation import generate
from hf_rlhf.ppo.rollout import encode_prompts, generate_responses
from hf_rlhf.sampling import NEUTRAL_FIELDS, generate_with, sampling_config
from tests.ppo_fixtures import tiny_models

HOSTILE = dict(  # everything a Hub model's generation_config.json could set that changes sampling or stopping
    do_sample=False,
    temperature=0.3,
    top_k=3,
    top_p=0.5,
    min_p=0.3,
    typical_p=0.5,
    epsilon_cutoff=0.01,
    eta_cutoff=0.01,
    repetition_penalty=3.0,
    no_repeat_ngram_size=1,
    min_new_tokens=6,
    min_length=12,
    max_new_tokens=2,
    suppress_tokens=[5, 6, 7],
    begin_suppress_tokens=[8],
    renormalize_logits=True,
    num_beams=2,
    num_return_sequences=2,
)


def hostile_copy(model, tokenizer):
    hostile = copy.deepcopy(model)
    hostile.generation_config = GenerationConfig(
        **HOSTILE, bad_words_ids=[[9]], forced_eos_token_id=tokenizer.eos_token_id, sequence_bias={(10,): 5.0}
    )
    return hostile


def seeded_responses(model, ids, mask, config):
    """PPO's sampler on `model` with the global RNG seeded: the same draws for the same distribution."""
    torch.manual_seed(0)
    return generate_responses(model, ids, mask, config, batch_size=8)


def processors_used(model, fn):
    """The logits processors `generate` built while `fn` ran."""
    seen = []
    original = model._get_logits_processor

    def recording(*args, **kwargs):
        out = original(*args, **kwargs)
        seen.append(LogitsProcessorList(out))
        return out

    model._get_logits_processor = recording
    try:
        fn()
    finally:
        del model._get_logits_processor
    return [type(p).__name__ for processors in seen for p in processors]


def test_every_sampling_field_is_set():
    tokenizer = tiny_models()[0]
    config = sampling_config(tokenizer, max_new_tokens=7, temperature=0.7)
    unset = [
        k
        for k in NEUTRAL_FIELDS
        if k not in ("max_length",) and getattr(config, k) is None and NEUTRAL_FIELDS[k] is not None
    ]
    assert not unset
    assert config.do_sample and config.top_k == 0 and config.top_p == 1.0 and config.min_p is None
    assert config.repetition_penalty == 1.0 and config.no_repeat_ngram_size == 0 and not config.min_new_tokens
    assert config.bad_words_ids is None and config.eos_token_id == tokenizer.eos_token_id
    greedy = sampling_config(tokenizer, max_new_tokens=7, temperature=0)
    assert not greedy.do_sample and greedy.top_k is None


def test_a_models_own_generation_config_does_not_leak_into_ppo_sampling():
    tokenizer, policy, _, _, prompts = tiny_models()
    hostile = hostile_copy(policy, tokenizer)
    config = sampling_config(tokenizer, max_new_tokens=10, temperature=1.0)
    ids, mask = encode_prompts(tokenizer, [r["prompt"] for r in prompts.select(range(16))], "cpu")
    outs = [seeded_responses(model, ids, mask, config) for model in (policy, hostile)]
    assert torch.equal(outs[0], outs[1])  # the same draws: the hostile config changed nothing
    assert outs[0].shape == (16, 10) or (outs[0] == tokenizer.eos_token_id).any()
    # only the temperature-free sampler: no penalty, filter, forced or suppressed token processors
    used = processors_used(hostile, lambda: generate_with(hostile, config, input_ids=ids[:2], attention_mask=mask[:2]))
    assert used == []
    assert hostile.generation_config.top_k == 3  # put back after the call


def test_a_models_own_generation_config_does_not_leak_into_generate():
    tokenizer, policy, _, _, prompts = tiny_models()
    hostile = hostile_copy(policy, tokenizer)
    questions = [r["prompt"] for r in prompts.select(range(12))]
    for temperature in (1.0, 0.0):
        clean = generate(policy, tokenizer, questions, max_new_tokens=8, temperature=temperature, seed=3)
        leaked = generate(hostile, tokenizer, questions, max_new_tokens=8, temperature=temperature, seed=3)
        assert clean == leaked
    used = processors_used(hostile, lambda: generate(hostile, tokenizer, questions[:2], temperature=0.5, seed=0))
    assert used == ["TemperatureLogitsWarper"]


def test_peft_models_read_the_config_of_their_base():
    from peft import LoraConfig, get_peft_model

    tokenizer, policy, _, _, prompts = tiny_models()
    hostile = get_peft_model(hostile_copy(policy, tokenizer), LoraConfig(r=2, target_modules=["q_proj"]))
    config = sampling_config(tokenizer, max_new_tokens=10, temperature=1.0)
    ids, mask = encode_prompts(tokenizer, [r["prompt"] for r in prompts.select(range(8))], "cpu")
    outs = [seeded_responses(model, ids, mask, config) for model in (policy, hostile)]
    assert torch.equal(outs[0], outs[1])
