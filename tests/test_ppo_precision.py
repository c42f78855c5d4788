"""PPO's precision policy, optimizer options, clipping, refused layouts and options (`hf_rlhf.ppo.setup`), and what
the trainer saves (issue 14)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from hf_rlhf.ppo import core
from hf_rlhf.ppo.config import unsupported_layout
from hf_rlhf.ppo.trainer import PPOTrainer
from tests.ppo_fixtures import ppo_config, short_answers, tiny_models


@pytest.fixture(autouse=True)
def no_mixed_precision_from_the_environment(monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)


def trainer_for(tmp_path, models=None, **overrides) -> PPOTrainer:
    tokenizer, policy, ref, value, prompts = models or tiny_models()
    return PPOTrainer(ppo_config(tmp_path, **overrides), policy, ref, value, tokenizer, prompts, [short_answers])


def test_kl_is_exactly_zero_at_initialisation_under_bf16_autocast(tmp_path):
    trainer = trainer_for(tmp_path, bf16=True)
    assert trainer.accelerator.mixed_precision == "bf16"
    rollout = trainer.compute_advantages(trainer.score(trainer.rollout(next(trainer.prompt_batches()))))
    # generation, the recompute and the reference all ran under the same autocast: identical log-probabilities
    assert rollout.logprobs.dtype == rollout.ref_logprobs.dtype == torch.float32
    assert torch.equal(rollout.logprobs, rollout.ref_logprobs)
    assert rollout.kl.abs().max().item() == 0.0
    assert rollout.values.dtype == rollout.advantages.dtype == torch.float32
    # bf16 really computed the logits: they differ from the fp32 reference's (the autocast was not a no-op)
    fp32 = trainer_for(tmp_path / "fp32")
    batch = (rollout.query_ids, rollout.query_mask, rollout.response_ids, rollout.response_mask)
    assert not torch.equal(fp32.reference_logprobs(*batch) * rollout.response_mask, rollout.ref_logprobs)


def test_log_probabilities_are_fp32_and_chunked_for_16_bit_logits(monkeypatch):
    torch.manual_seed(0)
    logits = (torch.randn(6, 5, 300) * 4).to(torch.bfloat16)
    tokens = torch.randint(0, 300, (6, 5))
    exact = torch.gather(logits.double().log_softmax(-1), 2, tokens[..., None]).squeeze(-1)
    out = core.logprobs_from_logits(logits, tokens)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), exact, atol=1e-5, rtol=0)
    assert len(out.unique()) > 25  # not the few dozen values of bf16 arithmetic
    monkeypatch.setattr(core, "FP32_CHUNK_ELEMENTS", 2 * 5 * 300)  # two rows at a time: the same numbers
    assert len(core.row_chunks(logits)) == 3
    torch.testing.assert_close(core.logprobs_from_logits(logits, tokens), out, atol=0, rtol=0)
    entropy = core.entropy_from_logits(logits, temperature=2.0)
    p = (logits.double() / 2).softmax(-1)
    torch.testing.assert_close(entropy.double(), -(p * p.log()).sum(-1), atol=1e-5, rtol=0)


def test_lora_value_head_keeps_fp32_master_weights_under_bf16(tmp_path):
    from peft import LoraConfig, get_peft_model

    tokenizer, policy, _, value, prompts = tiny_models()
    policy, value = policy.to(torch.bfloat16), value.to(torch.bfloat16)
    lora = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    policy = get_peft_model(policy, LoraConfig(task_type="CAUSAL_LM", **lora))
    value = get_peft_model(value, LoraConfig(task_type="SEQ_CLS", modules_to_save=["score"], **lora))
    trainer = trainer_for(tmp_path, (tokenizer, policy, None, value, prompts), bf16=True, max_steps=1)
    trainable = {n: p.dtype for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable) and set(trainable.values()) == {torch.float32}
    frozen_dtypes = {p.dtype for p in trainer.model.parameters() if not p.requires_grad}
    assert frozen_dtypes == {torch.bfloat16}  # the base stays 16-bit
    head = next(p for n, p in trainer.model.named_parameters() if "score" in n and p.requires_grad)
    before = head.detach().clone()
    trainer.train()
    changed = (head.detach() != before).float().mean().item()
    assert 0 < changed and head.dtype == torch.float32  # updated in fp32, not rounded away


def test_policy_and_value_are_clipped_apart_with_their_own_learning_rates(tmp_path):
    trainer = trainer_for(tmp_path, max_steps=1, max_grad_norm=0.5, value_max_grad_norm=0.01, value_learning_rate=1e-4)
    groups = trainer.param_groups
    assert groups["policy"] and groups["value"]
    assert not {id(p) for p in groups["policy"]} & {id(p) for p in groups["value"]}
    lrs = {(id(g["params"][0]) in {id(p) for p in groups["value"]}, g["lr"]) for g in trainer.optimizer.param_groups}
    assert lrs == {(False, 3e-3), (True, 1e-4)}
    decays = {g["weight_decay"] for g in trainer.optimizer.param_groups}
    assert decays == {0.0}
    norms = []
    original = torch.nn.utils.clip_grad_norm_

    def recording(params, max_norm, *a, **k):
        params = list(params)
        total = original(params, max_norm, *a, **k)
        norms.append((len(params), max_norm, torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))))
        return total

    torch.nn.utils.clip_grad_norm_ = recording
    try:
        stats = trainer.update(
            trainer.compute_advantages(trainer.score(trainer.rollout(next(trainer.prompt_batches()))))
        )
    finally:
        torch.nn.utils.clip_grad_norm_ = original
    assert {(n, limit) for n, limit, _ in norms} == {(len(groups["policy"]), 0.5), (len(groups["value"]), 0.01)}
    assert all(after <= limit + 1e-6 for _, limit, after in norms)
    assert stats["policy/grad_norm"] > 0 and stats["value/grad_norm"] > 0


def test_optimizer_and_scheduler_options_are_honoured(tmp_path):
    from transformers.optimization import Adafactor

    trainer = trainer_for(tmp_path / "a", optim="adafactor", max_steps=1)
    assert isinstance(trainer.optimizer.optimizer, Adafactor)
    trainer = trainer_for(
        tmp_path / "b",
        optim="adamw_torch",
        adam_epsilon=1e-5,
        lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": 1e-4},
        max_steps=1,
    )
    assert isinstance(trainer.optimizer.optimizer, torch.optim.AdamW)
    assert {g["eps"] for g in trainer.optimizer.param_groups} == {1e-5}
    for _ in range(trainer.scheduler.scheduler.last_epoch, 1 * 2 * 2):  # to the end of the schedule (4 steps)
        trainer.scheduler.scheduler.step()
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(1e-4)  # the kwargs reached the schedule


def test_gradient_checkpointing_is_turned_on(tmp_path):
    trainer = trainer_for(tmp_path, gradient_checkpointing=True, max_steps=1)
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    assert unwrapped.policy.is_gradient_checkpointing and unwrapped.value_model.is_gradient_checkpointing
    trainer.train()  # and trains (generation in eval mode, checkpointed forward in training)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"torch_compile": True}, "torch_compile"),
        ({"optim": "galore_adamw"}, "galore"),
        ({"eval_strategy": "steps", "eval_steps": 1}, "eval_strategy"),
    ],
)
def test_options_ppo_does_not_use_are_refused(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        trainer_for(tmp_path, **overrides)


def test_a_reference_of_none_needs_a_peft_policy(tmp_path):
    tokenizer, policy, _, value, prompts = tiny_models()
    with pytest.raises(ValueError, match="needs a peft"):
        trainer_for(tmp_path, (tokenizer, policy, None, value, prompts))


def test_a_frozen_policy_is_refused(tmp_path):
    tokenizer, policy, ref, value, prompts = tiny_models()
    policy.requires_grad_(False)
    with pytest.raises(ValueError, match="policy model has no trainable parameters"):
        trainer_for(tmp_path, (tokenizer, policy, ref, value, prompts))


def test_zero3_and_fsdp_are_refused_with_configs_that_work():
    for backend, stage in (("deepspeed", 3), ("fsdp", 0)):
        message = unsupported_layout(backend, stage)
        assert "multi_gpu" in message and "zero2" in message
    assert unsupported_layout("deepspeed", 2) is None and unsupported_layout("ddp") is None


def test_the_saved_model_keeps_its_dropout_rates(tmp_path):
    trainer = trainer_for(tmp_path, max_steps=1)
    policy = trainer.accelerator.unwrap_model(trainer.model).policy
    assert policy.config.attention_dropout == 0.0  # off while training
    trainer.save_model(str(tmp_path / "out"))
    with open(os.path.join(tmp_path, "out", "config.json")) as f:
        assert json.load(f)["attention_dropout"] == 0.1
    with open(os.path.join(tmp_path, "out", "value_model", "config.json")) as f:
        assert json.load(f)["attention_dropout"] == 0.1
    assert policy.config.attention_dropout == 0.0
