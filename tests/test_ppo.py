"""hf_rlhf's PPO trainer on tiny models: padding, the first ratio, learning, resume, and the RL stage."""

import os

import pytest
import torch

from hf_rlhf.errors import RecipeError
from hf_rlhf.ppo import core
from hf_rlhf.ppo.trainer import PPOTrainer
from hf_rlhf.resilience import complete_checkpoints

from .ppo_fixtures import ppo_config, short_answers, tiny_models


@pytest.fixture()
def tiny():
    return tiny_models()


def test_left_padded_and_unpadded_logits_agree(tiny):
    tokenizer, policy, *_ = tiny
    policy.eval()
    ids = torch.tensor([tokenizer("The fox is red. The owl eats fish.")["input_ids"]])
    pad = tokenizer.pad_token_id
    padded = torch.cat([torch.full((1, 5), pad), ids], 1)
    mask = torch.cat([torch.zeros(1, 5, dtype=torch.long), torch.ones_like(ids)], 1)
    plain = policy(input_ids=ids).logits
    left = policy(input_ids=padded, attention_mask=mask, position_ids=core.position_ids_from_mask(mask)).logits
    torch.testing.assert_close(left[:, 5:], plain, atol=1e-5, rtol=1e-5)


def test_pad_must_differ_from_eos(tiny, tmp_path):
    tokenizer, policy, ref, value, prompts = tiny
    tokenizer.pad_token = tokenizer.eos_token
    with pytest.raises(ValueError, match="PAD token distinct from EOS"):
        PPOTrainer(ppo_config(tmp_path), policy, ref, value, tokenizer, prompts, [short_answers])


def test_rollout_ratio_is_one_on_the_first_minibatch_and_dropout_is_off(tiny, tmp_path):
    tokenizer, policy, ref, value, prompts = tiny
    trainer = PPOTrainer(ppo_config(tmp_path), policy, ref, value, tokenizer, prompts, [short_answers])
    assert all(m.p == 0 for m in policy.modules() if isinstance(m, torch.nn.Dropout))
    assert policy.config.attention_dropout == 0.0
    assert all(getattr(m, "attention_dropout", 0.0) == 0.0 for m in policy.modules())
    rollout = trainer.compute_advantages(trainer.score(trainer.rollout(next(trainer.prompt_batches()))))
    # sampling settings overrode the model's own generation config
    assert trainer.generation_config.top_k == 0 and trainer.generation_config.top_p == 1.0
    # responses are cut after the first EOS and the mask covers exactly the valid tokens
    for ids, mask in zip(rollout.response_ids, rollout.response_mask, strict=True):
        n = int(mask.sum())
        assert (ids[n:] == tokenizer.pad_token_id).all()
        assert tokenizer.eos_token_id not in ids[: n - 1].tolist()
    # the first minibatch of the first epoch sees exactly the logprobs the rollout recorded: ratio 1
    batch = rollout.select(torch.randperm(len(rollout.prompts))[:8])
    trainer.model.train()
    logits, values = trainer.forward(
        trainer.model, batch.query_ids, batch.query_mask, batch.response_ids, batch.response_mask
    )
    logprobs = core.logprobs_from_logits(logits, batch.response_ids, trainer.args.temperature) * batch.response_mask
    mask = batch.response_mask.float()
    ratio = core.masked_mean(torch.exp(logprobs - batch.logprobs), mask)
    assert ratio.item() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(logprobs, batch.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(values * mask, batch.values, atol=1e-5, rtol=0)
    # reference = a frozen copy of the policy: KL is 0 before any update
    assert rollout.kl.abs().max().item() < 1e-5
    # the score sits at the last valid token
    last = rollout.response_mask.sum(-1) - 1
    at_eos = rollout.rewards[torch.arange(len(last)), last]
    torch.testing.assert_close(at_eos, rollout.scores + rollout.rewards.new_zeros(len(last)), atol=1e-5, rtol=0)
    # whitened advantages over valid tokens
    assert core.masked_mean(rollout.advantages, mask_all := rollout.response_mask.float()).abs().item() < 1e-5
    assert (rollout.advantages * (1 - mask_all)).abs().max().item() == 0


def test_temperature_is_applied_to_policy_and_reference(tiny, tmp_path):
    tokenizer, policy, ref, value, prompts = tiny
    hot = PPOTrainer(ppo_config(tmp_path, temperature=2.0), policy, ref, value, tokenizer, prompts, [short_answers])
    rollout = hot.rollout(next(hot.prompt_batches()))
    mask = rollout.response_mask.float()
    manual = policy(
        input_ids=torch.cat([rollout.query_ids, rollout.response_ids], 1),
        attention_mask=torch.cat([rollout.query_mask, rollout.response_mask], 1),
        position_ids=core.position_ids_from_mask(torch.cat([rollout.query_mask, rollout.response_mask], 1)),
    ).logits[:, rollout.query_ids.shape[1] - 1 : -1]
    expected = core.logprobs_from_logits(manual / 2.0, rollout.response_ids) * mask
    torch.testing.assert_close(rollout.logprobs, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(rollout.ref_logprobs, expected, atol=1e-5, rtol=0)


def test_ppo_raises_the_reward_while_kl_stays_bounded(quick_pipeline, tmp_path):
    """4 updates of 16 prompts on the quick pipeline's SFT model: the short-answer reward rises (about -1.0 to -0.3
    on this seed) and responses get shorter, with the KL to the SFT model bounded."""
    from datasets import load_from_disk
    from transformers import set_seed

    from hf_rlhf.modeling import load_model_for_inference, load_reward_model

    out, _ = quick_pipeline
    policy, tokenizer = load_model_for_inference(os.path.join(out, "sft"))  # loaded frozen: train it
    policy.requires_grad_(True)
    ref, _ = load_model_for_inference(os.path.join(out, "sft"))
    value = load_reward_model(os.path.join(out, "reward"))  # the value model starts from the reward model
    prompts = load_from_disk(os.path.join(out, "data", "prompts"))["train"]
    args = ppo_config(
        tmp_path,
        max_steps=4,
        per_device_train_batch_size=4,
        max_new_tokens=8,
        learning_rate=1e-3,
        missing_eos_penalty=None,
        lr_scheduler_type="constant",
    )
    set_seed(0)  # sampling draws from the global RNG: the same responses whatever ran before
    history = PPOTrainer(args, policy, ref, value, tokenizer, prompts, [short_answers]).train()
    first, last = history[0], history[-1]
    assert last["score"] > first["score"] + 0.2
    assert last["response_length"] < first["response_length"]
    assert all(h["kl"] < 10 for h in history)
    for key in ("entropy", "policy/clipfrac", "policy/approxkl", "loss/value", "value/explained_variance",
                "missing_eos_rate", "reward/short_answers"):  # fmt: skip
        assert key in last


def test_save_resume_and_continue_gives_the_uninterrupted_result(tmp_path):
    import shutil

    def run(output_dir, resume=None, save=False):
        tokenizer, policy, ref, value, prompts = tiny_models()
        extra = {"save_strategy": "steps", "save_steps": 1} if save else {}
        trainer = PPOTrainer(
            ppo_config(output_dir, max_steps=3, **extra), policy, ref, value, tokenizer, prompts, [short_answers]
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    straight = run(tmp_path / "straight")
    interrupted = run(tmp_path / "resumed", save=True)
    saved = [os.path.basename(p) for p in complete_checkpoints(tmp_path / "resumed")]
    assert saved == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]  # each marked complete
    shutil.rmtree(tmp_path / "resumed" / "checkpoint-3")  # as if the run was killed during update 3
    resumed = run(tmp_path / "resumed", resume=True)
    assert resumed.global_step == 3 and len(resumed.history) == 3
    assert resumed.history[:2] == interrupted.history[:2]
    a = straight.accelerator.unwrap_model(straight.model).state_dict()
    b = resumed.accelerator.unwrap_model(resumed.model).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=0, msg=key)
    assert straight.history[-1]["score"] == pytest.approx(resumed.history[-1]["score"], abs=1e-6)
    assert resumed.scheduler.get_last_lr() == straight.scheduler.get_last_lr()


def test_save_total_limit_and_resume_without_checkpoint(tiny, tmp_path):
    tokenizer, policy, ref, value, prompts = tiny
    args = ppo_config(tmp_path, max_steps=3, save_strategy="steps", save_steps=1, save_total_limit=2)
    trainer = PPOTrainer(args, policy, ref, value, tokenizer, prompts, [short_answers])
    with pytest.raises(RecipeError, match="resume_from_checkpoint: no complete checkpoint in"):
        trainer.train(resume_from_checkpoint=True)
    trainer.train()
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-2", "checkpoint-3"]
    assert complete_checkpoints(str(tmp_path)) == [str(tmp_path / "checkpoint-2"), str(tmp_path / "checkpoint-3")]


@pytest.mark.parametrize("algorithm", ["ppo", "grpo", "rloo"])
def test_rl_stage_runs_each_algorithm(algorithm, quick_pipeline, tmp_path):
    from transformers import AutoModelForCausalLM

    from hf_rlhf.manifest import require_complete
    from hf_rlhf.stages import rl

    out, _ = quick_pipeline
    recipe = os.path.join(
        os.path.dirname(__file__), "..", "recipes", "tiny", "rl.yaml" if algorithm == "ppo" else f"rl_{algorithm}.yaml"
    )
    small = (
        ["--per_device_train_batch_size", "8", "--max_new_tokens", "8"]
        if algorithm == "ppo"
        else ["--per_device_train_batch_size", "4", "--num_generations", "4", "--max_completion_length", "8"]
    )
    argv = ["--config", recipe, "--model_name_or_path", os.path.join(out, "sft"),
            "--reward_model_path", os.path.join(out, "reward"), "--dataset_name", os.path.join(out, "data", "prompts"),
            "--output_dir", str(tmp_path / algorithm), "--max_steps", "2", *small]  # fmt: skip
    manifest = rl.main(argv)
    assert manifest["metrics"]["algorithm"] == algorithm and manifest["metrics"]["updates"] == 2
    require_complete(str(tmp_path / algorithm))
    trained, loading = AutoModelForCausalLM.from_pretrained(str(tmp_path / algorithm), output_loading_info=True)
    assert not any(loading.values()), loading  # every weight saved, none missing, unexpected or mismatched
    sft = AutoModelForCausalLM.from_pretrained(os.path.join(out, "sft")).state_dict()
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, sft[k])]
    assert changed, "the saved model is the SFT model: the trained policy was not saved"
    if algorithm == "ppo":
        assert os.path.isfile(tmp_path / algorithm / "training_curves.png")
        assert "final_reward/tiny_world_gold" in manifest["metrics"]


def test_rl_stage_bad_reward_settings(quick_pipeline, tmp_path):
    from hf_rlhf.recipes import RecipeError
    from hf_rlhf.stages import rl

    out, _ = quick_pipeline
    base = ["--model_name_or_path", os.path.join(out, "sft"), "--dataset_name", os.path.join(out, "data", "prompts"),
            "--output_dir", str(tmp_path)]  # fmt: skip
    with pytest.raises(RecipeError, match="needs `reward_model_path` and/or `reward_funcs`"):
        rl.main(base)
    with pytest.raises(RecipeError, match="unknown reward function 'nope'"):
        rl.main(base + ["--reward_funcs", "nope"])
    with pytest.raises(RecipeError, match="reward_weights has 1 entries for 2 rewards"):
        rl.main(base + ["--reward_funcs", "tiny_world_gold", "--reward_model_path", os.path.join(out, "reward"),
                        "--reward_weights", "1.0"])  # fmt: skip
    with pytest.raises(RecipeError, match="algorithm must be one of"):
        rl.main(base + ["--algorithm", "dpo"])
