"""Model roles: a causal LM is no reward model, a reward model is no policy; tokenizers compared before sharing ids."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from hf_rlhf.data.world import TinyWorld
from hf_rlhf.errors import ModelRoleError, TokenizerMismatchError
from hf_rlhf.model_roles import check_role, describe_model
from hf_rlhf.tokenizer import train_bpe_tokenizer


def _config(tokenizer, **kw):
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("roles")
    tok = train_bpe_tokenizer(TinyWorld(0).documents(200), vocab_size=300)
    other = train_bpe_tokenizer(TinyWorld(5).documents(200), vocab_size=320)
    torch.manual_seed(0)
    out = {}

    def save(name, model, tokenizer=tok):
        out[name] = str(root / name)
        model.save_pretrained(out[name])
        tokenizer.save_pretrained(out[name])

    save("lm", LlamaForCausalLM(_config(tok)))
    save("rm", LlamaForSequenceClassification(_config(tok, num_labels=1)))
    save("three_labels", LlamaForSequenceClassification(_config(tok, num_labels=3)))
    save("rm_other_tokenizer", LlamaForSequenceClassification(_config(other, num_labels=1)), other)
    save("no_head", LlamaForCausalLM(_config(tok)))  # causal-LM weights under a classifier's config
    with open(os.path.join(out["no_head"], "config.json")) as f:
        config = json.load(f)
    config["architectures"] = ["LlamaForSequenceClassification"]
    with open(os.path.join(out["no_head"], "config.json"), "w") as f:
        json.dump(config, f)
    return out


def test_what_a_directory_is(dirs):
    assert describe_model(dirs["lm"]).kind == "causal_lm"
    rm = describe_model(dirs["rm"])
    assert (rm.kind, rm.num_labels, rm.has_head) == ("reward_model", 1, True)
    assert describe_model(dirs["no_head"]).has_head is False


@pytest.mark.parametrize(
    "name,role,message",
    [
        ("lm", "reward_model", "is a causal language model (LlamaForCausalLM in config.json), not a reward model"),
        ("rm", "policy", "is a reward model (LlamaForSequenceClassification in config.json), not a causal"),
        ("three_labels", "reward_model", "is a classifier with 3 labels"),
        ("no_head", "reward_model", "has no score head in its weights"),
    ],
)
def test_a_model_in_the_wrong_role_is_refused_naming_it(dirs, name, role, message):
    with pytest.raises(ModelRoleError, match="reward_model_path '.*" + name) as e:
        check_role(dirs[name], role, "reward_model_path")
    assert message in str(e.value)


def test_entry_points_refuse_before_loading(dirs, monkeypatch):
    from hf_rlhf.eval.generation import main as generate_main
    from hf_rlhf.reward.scorer import main as score_main

    with pytest.raises(ModelRoleError, match="not a reward model"):
        score_main(["--reward_model", dirs["lm"], "--prompt", "q", "--response", "a"])
    with pytest.raises(ModelRoleError, match="not a causal language model"):
        generate_main(["--model", dirs["rm"], "--prompt", "q"])
    check_role(dirs["lm"], "init", "model_name_or_path")  # the reward stage starts a new head on an LM: fine


def test_the_value_model_starts_from_the_policy_when_the_reward_tokenizer_differs(dirs):
    from hf_rlhf.modeling import load_tokenizer
    from hf_rlhf.stages.rl_rewards import tokenizer_plan

    tok = load_tokenizer(dirs["lm"])
    model_args = SimpleNamespace(model_name_or_path=dirs["lm"])
    args = SimpleNamespace(trust_remote_code=False, shared_base=False)

    def rl_args(**kw):
        return SimpleNamespace(**{"algorithm": "ppo", "reward_model_path": None, "value_model_path": None, **kw})

    same = tokenizer_plan(rl_args(reward_model_path=dirs["rm"]), args, model_args, tok)
    assert same == {
        "reward_tokenizer": "the policy's",
        "value_model_init": {"from": "reward_model", "path": dirs["rm"]},
    }
    other = tokenizer_plan(rl_args(reward_model_path=dirs["rm_other_tokenizer"]), args, model_args, tok)
    assert other["reward_tokenizer"].startswith("its own")
    assert other["value_model_init"]["from"] == "policy" and other["value_model_init"]["path"] == dirs["lm"]
    with pytest.raises(TokenizerMismatchError, match="value_model_path '.*rm_other_tokenizer' has another tokenizer"):
        tokenizer_plan(
            rl_args(reward_model_path=dirs["rm"], value_model_path=dirs["rm_other_tokenizer"]), args, model_args, tok
        )


def test_scoring_re_encodes_with_the_reward_model_s_own_tokenizer(dirs):
    from hf_rlhf.modeling import load_tokenizer
    from hf_rlhf.reward.scorer import RewardModelScorer, encode_for_reward

    scorer = RewardModelScorer(dirs["rm_other_tokenizer"])
    ids = scorer.encode(["What colour is the fox?"], ["The fox is red."])[0]
    own = load_tokenizer(dirs["rm_other_tokenizer"])
    assert ids == encode_for_reward(own, "What colour is the fox?", "The fox is red.", scorer.chat)
    assert max(ids) < len(own) and scorer.tokenizer is not None
