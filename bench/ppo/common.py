"""What both sides of the PPO benchmark share: the settings, the one-time model setup and the final evaluation.

`run.py` calls `setup` once per benchmark; it writes the tokenizer, the policy (also the reference), the reward model
and the value model to one directory, with `settings.json`. Both workers (`worker.py`, one per side and run) load
everything from there, so the two trainers start from byte-identical weights, prompts and hyperparameters.

This module imports only torch and transformers at the top: the TRL worker imports it too, and must not pay for (or
profit from) hf_rlhf imports. `setup` imports hf_rlhf inside the function; it only runs in `run.py`.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

SETTINGS_FILE = "settings.json"


@dataclass
class Settings:
    """Every value both trainers are configured from (mapped one to one in `worker.py`)."""

    # batch: one PPO update samples per_device_train_batch_size * gradient_accumulation_steps * num_mini_batches
    # prompts. num_mini_batches stays 1: TRL 1.12 and hf_rlhf define the rollout batch differently as soon as it is
    # larger (see README), so 1 is the only value where both sides do the same work.
    updates: int = 10
    per_device_train_batch_size: int = 16
    gradient_accumulation_steps: int = 2
    num_mini_batches: int = 1
    num_ppo_epochs: int = 4
    response_length: int = 16
    learning_rate: float = 1e-4
    lr_scheduler_type: str = "constant"
    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    temperature: float = 1.0
    missing_eos_penalty: float = 1.0
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0
    lam: float = 0.95
    rollout_forward_batch_size: int = 64
    seed: int = 42
    # models (a tiny llama; the reward and value models are sequence classifiers of the same shape)
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 128
    vocab_size: int = 400
    # setup: short warm-ups so the PPO start is a policy that answers and ends its turn, and a reward model that
    # prefers good answers (see `setup`); not timed, done once, shared by both sides
    sft_steps: int = 100
    reward_steps: int = 100
    num_eval_prompts: int = 128
    # filled by `setup`
    train_prompts: list[str] = field(default_factory=list)
    train_questions: list[str] = field(default_factory=list)
    eval_questions: list[str] = field(default_factory=list)
    eval_prompts: list[str] = field(default_factory=list)

    @property
    def rollout_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches

    def save(self, directory: str) -> None:
        with open(os.path.join(directory, SETTINGS_FILE), "w") as f:
            json.dump(asdict(self), f, indent=1)

    @classmethod
    def load(cls, directory: str) -> Settings:
        with open(os.path.join(directory, SETTINGS_FILE)) as f:
            return cls(**json.load(f))

    def hyperparameters(self) -> dict[str, Any]:
        """The settings without the prompt lists (for printing and the results file)."""
        return {k: v for k, v in asdict(self).items() if not isinstance(v, list)}


# ---------------------------------------------------------------------------------------------------- loading
def load_tokenizer(directory: str, padding_side: str = "right") -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(os.path.join(directory, "tokenizer"), padding_side=padding_side)


def load_models(directory: str) -> dict[str, PreTrainedModel]:
    """policy, ref_policy (a second copy of the policy), reward_model, value_model: fresh objects from disk."""
    return {
        "policy": AutoModelForCausalLM.from_pretrained(os.path.join(directory, "policy")),
        "ref_policy": AutoModelForCausalLM.from_pretrained(os.path.join(directory, "policy")),
        "reward_model": AutoModelForSequenceClassification.from_pretrained(
            os.path.join(directory, "reward_model"), num_labels=1
        ),
        "value_model": AutoModelForSequenceClassification.from_pretrained(
            os.path.join(directory, "value_model"), num_labels=1
        ),
    }


# ------------------------------------------------------------------------------------------------ evaluation
def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions from 0 at the first real token, so left padding does not shift them."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def reward_at_last_token(reward_model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reward model's head at each sequence's last valid token (the EOS, or the last token without one).

    Rows may be padded on both sides (left-padded prompt, right-padded response), so "last" is the last 1 in the
    mask, not `mask.sum() - 1`.
    """
    backbone = getattr(reward_model, reward_model.base_model_prefix)
    hidden = backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).last_hidden_state
    last = ids.shape[1] - 1 - mask.flip(-1).long().argmax(-1)
    return reward_model.score(hidden[torch.arange(ids.shape[0]), last]).squeeze(-1).float()


@torch.no_grad()
def evaluate(
    policy: PreTrainedModel,
    reward_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    settings: Settings,
    seed: int,
) -> dict[str, Any]:
    """Sample one response per held-out prompt and score it: the same code for both sides' trained policies.

    Sampling uses the training temperature and response length with a fixed seed; responses are cut after the first
    EOS. The reward model reads the sampled tokens themselves (prompt tokens + response tokens, at the EOS), the way
    both trainers read it for responses that end with EOS, and `score` subtracts the missing-EOS penalty like both
    trainers do. Returns per-sample lists (the completions go to `run.py` for the gold labeler) and their means.
    """
    policy.eval()
    reward_model.eval()
    enc = tokenizer(
        settings.eval_prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
    )
    query, query_mask = enc["input_ids"], enc["attention_mask"]
    torch.manual_seed(seed)
    config = GenerationConfig(
        do_sample=True,
        temperature=settings.temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=settings.response_length,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = policy.generate(input_ids=query, attention_mask=query_mask, generation_config=config)
    response = out[:, query.shape[1] :]
    eos = response == tokenizer.eos_token_id
    has_eos = eos.any(-1)
    first = torch.where(has_eos, eos.long().argmax(-1), torch.full_like(has_eos, response.shape[1], dtype=torch.long))
    response_mask = (torch.arange(response.shape[1])[None] <= first[:, None]).long()
    response = torch.where(response_mask.bool(), response, tokenizer.pad_token_id)
    rm = reward_at_last_token(reward_model, torch.cat([query, response], 1), torch.cat([query_mask, response_mask], 1))
    score = rm - settings.missing_eos_penalty * (~has_eos).float()
    lengths = response_mask.sum(-1).float()
    return {
        "completions": [c.strip() for c in tokenizer.batch_decode(response, skip_special_tokens=True)],
        "rm": rm.tolist(),
        "score": score.tolist(),
        "has_eos": has_eos.tolist(),
        "mean_score": score.mean().item(),
        "mean_rm": rm.mean().item(),
        "eos_rate": has_eos.float().mean().item(),
        "mean_length": lengths.mean().item(),
    }


# ----------------------------------------------------------------------------------------------------- setup
def setup(directory: str, settings: Settings) -> Settings:
    """Build the shared starting point once: tokenizer, prompts, policy, reward model and value model.

    * Tokenizer: `hf_rlhf.tokenizer.train_bpe_tokenizer` on 500 tiny-world documents (vocabulary 400).
    * Prompts: tiny-world questions formatted with the tokenizer's chat template (with the assistant header), as
      plain strings; both sides get the same strings. Held-out questions are the evaluation prompts.
    * Policy: a tiny llama from a config, then `sft_steps` of supervised warm-up on contractor demonstrations, so PPO
      starts from a policy that answers in the chat format and usually ends its turn with EOS within the response
      length (a random policy would almost never emit EOS, every response would take the missing-EOS penalty, and
      the two trainers would read the reward model at different tokens; see README).
    * Reward model: a sequence classifier of the same shape, trained for `reward_steps` (Bradley-Terry) to prefer
      the ideal answer over a worse one, read at the EOS token; the value model starts as a copy of it.

    Everything is seeded; the warm-ups are plain torch loops, so neither trainer library is involved.
    """
    from hf_rlhf.data.world import TinyWorld
    from hf_rlhf.tokenizer import train_bpe_tokenizer

    world = TinyWorld(0)
    rng = random.Random(settings.seed)
    torch.manual_seed(settings.seed)
    tokenizer = train_bpe_tokenizer(world.documents(500), vocab_size=settings.vocab_size)
    tokenizer.save_pretrained(os.path.join(directory, "tokenizer"))

    def chat(question: str) -> str:
        messages = [{"role": "user", "content": question}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    train, held_out = world.split_prompts(settings.num_eval_prompts)
    settings.train_prompts = [chat(p.text) for p in train]
    settings.train_questions = [p.text for p in train]
    settings.eval_questions = [p.text for p in held_out]
    settings.eval_prompts = [chat(p.text) for p in held_out]

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.intermediate_size,
        num_hidden_layers=settings.num_hidden_layers,
        num_attention_heads=settings.num_attention_heads,
        num_key_value_heads=settings.num_attention_heads,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )

    def encode(prompt: str, answer: str) -> tuple[list[int], int]:
        """Token ids of prompt + answer + EOS and the number of prompt tokens (tokenized apart, as in rollouts)."""
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return p + a, len(p)

    def batch(rows: list[tuple[list[int], int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded ids, attention mask, and labels on the answer tokens only."""
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, (row, prompt_len) in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
            labels[i, prompt_len : len(row)] = torch.tensor(row[prompt_len:])
        return ids, mask, labels

    # supervised warm-up of the policy on demonstrations (the contractor mix: mostly ideal, some worse answers)
    policy = AutoModelForCausalLM.from_config(config)
    demos = world.demonstrations(train, 32 * settings.sft_steps, seed=settings.seed)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    policy.train()
    for step in range(settings.sft_steps):
        rows = [encode(chat(d["prompt"]), d["completion"]) for d in demos[step * 32 : (step + 1) * 32]]
        ids, mask, labels = batch(rows)
        loss = policy(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    policy.save_pretrained(os.path.join(directory, "policy"))

    # reward model: Bradley-Terry on (ideal answer, worse answer) pairs, read at the EOS token
    config.num_labels = 1
    reward_model = AutoModelForSequenceClassification.from_config(config)
    optimizer = torch.optim.AdamW(reward_model.parameters(), lr=3e-3)
    styles = ["terse", "rambling", "hedged", "wrong", "deflect"]
    reward_model.train()
    for _ in range(settings.reward_steps):
        prompts = [rng.choice(train) for _ in range(32)]
        chosen = [encode(chat(p.text), world.ideal_answer(p)) for p in prompts]
        rejected = [encode(chat(p.text), world._styled_answer(p, rng.choice(styles), rng)) for p in prompts]
        ids, mask, _ = batch(chosen + rejected)
        rewards = reward_at_last_token(reward_model, ids, mask)
        loss = -nn.functional.logsigmoid(rewards[:32] - rewards[32:]).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    reward_model.save_pretrained(os.path.join(directory, "reward_model"))
    reward_model.save_pretrained(os.path.join(directory, "value_model"))
    settings.save(directory)
    return settings
