"""A reward model from another model family: trained on another tokenizer, it still drives PPO (slow).

The policy is the quick pipeline's SFT model (tokenizer A). The reward model is trained by the reward stage from a
model with another byte-level BPE tokenizer (B: same kind, other merges and size), on the pipeline's comparisons.
PPO decodes the policy's completions and re-encodes them with B for scoring; the value model starts from the policy
with a new head, said in the manifest. Run alone, with figures: `python3 -m pytest -q -m slow -s
tests/test_cross_tokenizer.py`.
"""

from __future__ import annotations

import os

import pytest
import torch

from tests.conftest import RECIPES

pytestmark = pytest.mark.slow


def _other_family(tmp_path) -> str:
    """A causal LM with tokenizer B (trained on the same documents with another vocabulary size)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_rlhf.data.world import TinyWorld
    from hf_rlhf.tokenizer import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(TinyWorld(7).documents(400), vocab_size=700)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)  # fmt: skip
    out = str(tmp_path / "other_family")
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _rm_scores(model, tokenizer, scorer, questions, seed=0):
    from hf_rlhf.eval.generation import generate, user_turns

    chats = user_turns(questions)
    completions, ids = generate(model, tokenizer, chats, max_new_tokens=12, seed=seed, return_ids=True)
    return sum(scorer(chats, completions)) / len(questions), chats, ids


def test_ppo_raises_the_score_of_a_reward_model_with_another_tokenizer(quick_pipeline, tmp_path):
    from hf_rlhf.data.world import TinyWorld
    from hf_rlhf.encoding import same_tokenizer
    from hf_rlhf.eval.generation import sequence_kl
    from hf_rlhf.modeling import load_model_for_inference, load_tokenizer
    from hf_rlhf.reward.scorer import RewardModelScorer
    from hf_rlhf.stages import reward, rl

    out, _ = quick_pipeline
    sft, base_b = os.path.join(out, "sft"), _other_family(tmp_path)
    assert not same_tokenizer(load_tokenizer(sft), load_tokenizer(base_b))
    rm_b = str(tmp_path / "reward_b")
    reward.main(["--config", os.path.join(RECIPES, "tiny", "reward.yaml"), "--model_name_or_path", base_b,
                 "--dataset_name", os.path.join(out, "sample"), "--output_dir", rm_b, "--num_train_epochs", "6",
                 "--disable_tqdm", "true"])  # fmt: skip
    manifest = rl.main(["--config", os.path.join(RECIPES, "tiny", "rl.yaml"), "--model_name_or_path", sft,
                        "--reward_model_path", rm_b, "--dataset_name", os.path.join(out, "data", "prompts"),
                        "--output_dir", str(tmp_path / "rl"), "--max_steps", "12", "--per_device_train_batch_size",
                        "16", "--max_new_tokens", "12", "--learning_rate", "3e-4", "--kl_coef", "0.05",
                        "--disable_tqdm", "true"])  # fmt: skip
    assert manifest["reward_tokenizer"].startswith("its own")
    assert manifest["value_model_init"]["from"] == "policy"

    _, held_out = TinyWorld(0).split_prompts(24)  # the quick pipeline's held-out prompts: never trained on
    questions = [p.text for p in held_out]
    scorer = RewardModelScorer(rm_b)
    before_model, tokenizer = load_model_for_inference(sft)
    after_model, _ = load_model_for_inference(str(tmp_path / "rl"))
    before = [_rm_scores(before_model, tokenizer, scorer, questions, seed)[0] for seed in range(3)]
    after, kls = [], []
    for seed in range(3):
        score, chats, ids = _rm_scores(after_model, tokenizer, scorer, questions, seed)
        after.append(score)
        kls.append(sum(sequence_kl(after_model, before_model, tokenizer, chats, ids)) / len(chats))
    print(f"\ncross-tokenizer PPO, RM score on {len(questions)} held-out prompts x 3 sampling seeds: "
          f"before {sum(before) / 3:.3f} {[round(b, 3) for b in before]}, after {sum(after) / 3:.3f} "
          f"{[round(a, 3) for a in after]}; KL to SFT {sum(kls) / 3:.3f}")  # fmt: skip
    assert sum(after) / 3 > sum(before) / 3 + 0.1
    assert sum(kls) / 3 < 10
