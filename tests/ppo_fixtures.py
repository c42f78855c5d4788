"""Tiny PPO fixtures: a tokenizer, a random policy/value pair and a prompt dataset, built in a second."""

from __future__ import annotations

import copy

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from hf_rlhf.data.world import TinyWorld
from hf_rlhf.ppo.config import PPOConfig
from hf_rlhf.tokenizer import train_bpe_tokenizer


def tiny_models(seed: int = 0, head_dim: int = 16, max_positions: int = 128, attention_dropout: float = 0.1):
    """Tokenizer, policy, reference (a copy), value model and 64 conversational prompts: a 2-layer Llama with 2
    heads of `head_dim` (vLLM's CPU attention needs >= 32) and dropout the trainer must turn off."""
    torch.manual_seed(seed)
    world = TinyWorld(0)
    tokenizer = train_bpe_tokenizer(world.documents(300), vocab_size=300)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=2 * head_dim,
        intermediate_size=4 * head_dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        attention_dropout=attention_dropout,
        num_labels=1,
    )
    policy = LlamaForCausalLM(config)
    value_model = LlamaForSequenceClassification(config)
    prompts = Dataset.from_list([{"prompt": [{"role": "user", "content": p.text}]} for p in world.all_prompts()[:64]])
    return tokenizer, policy, copy.deepcopy(policy), value_model, prompts


def short_answers(prompts, completions):
    """A dense, easy reward: shorter completions are better."""
    return [-len(c) / 20 for c in completions]


def ppo_config(tmp_path, **overrides) -> PPOConfig:
    values = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        num_mini_batches=2,
        num_ppo_epochs=2,
        max_new_tokens=10,
        learning_rate=3e-3,
        max_steps=2,
        seed=0,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        kl_coef=0.05,
    )
    values.update(overrides)
    return PPOConfig(**values)
