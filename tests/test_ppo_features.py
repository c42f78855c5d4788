"""PPO's optional features against hand-computed values: dual clip, KL in the loss, PPO-ptx, critic warm-up, several
samples per prompt with a leave-one-out baseline, running reward normalisation, the prompt length limit, and the
LM head on response positions only."""

from __future__ import annotations

import math

import pytest
import torch
from datasets import Dataset

from hf_rlhf.ppo import core
from hf_rlhf.ppo.ptx import PtxBatches
from hf_rlhf.ppo.rollout import response_logits
from hf_rlhf.ppo.shaping import RunningMoments, group_baseline
from hf_rlhf.ppo.trainer import PPOTrainer

from .ppo_fixtures import ppo_config, short_answers, tiny_models


@pytest.fixture()
def tiny():
    return tiny_models()


def trainer_for(tiny, tmp_path, ptx_dataset=None, **overrides) -> PPOTrainer:
    tokenizer, policy, ref, value, prompts = tiny
    args = ppo_config(tmp_path, **overrides)
    return PPOTrainer(args, policy, ref, value, tokenizer, prompts, [short_answers], ptx_dataset=ptx_dataset)


def first_rollout(trainer: PPOTrainer):
    return trainer.compute_advantages(trainer.score(trainer.rollout(next(trainer.prompt_batches()))))


# ------------------------------------------------------------------------------------------------ pure maths
def test_dual_clip_bounds_the_loss_of_negative_advantages():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[5.0, 1.1, 5.0, 0.5]]))
    adv = torch.tensor([[-1.0, -2.0, 1.0, -1.0]])
    mask = torch.ones(1, 4)
    plain, _ = core.policy_loss(new, old, adv, mask, cliprange=0.2)
    # token 0: A=-1, r=5: max(5, 1.2) = 5; token 1: A=-2, r=1.1: 2.2; token 2: A=1, r=5: max(-5, -1.2) = -1.2;
    # token 3: A=-1, r=0.5: max(0.5, 0.8) = 0.8
    assert plain.item() == pytest.approx((5 + 2.2 - 1.2 + 0.8) / 4)
    dual, stats = core.policy_loss(new, old, adv, mask, cliprange=0.2, dual_clip=3.0)
    # c = 3: token 0 is bounded by 3 |A| = 3; token 1 (2.2 < 6) and token 3 (0.8 < 3) stay; A > 0 is untouched
    assert dual.item() == pytest.approx((3 + 2.2 - 1.2 + 0.8) / 4)
    assert stats["dual_clipfrac"].item() == pytest.approx(1 / 4)
    assert "dual_clipfrac" not in core.policy_loss(new, old, adv, mask, 0.2)[1]


def test_kl_loss_is_the_mean_k3_with_its_gradient():
    p = torch.log(torch.tensor([[0.5, 0.2, 0.9]])).requires_grad_(True)
    q = torch.log(torch.tensor([[0.25, 0.4, 0.1]]))
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss = core.kl_loss(p, q, mask)
    # k3 = r - 1 - log r, r = q / p: (0.5 - 1 - log 0.5) and (2 - 1 - log 2); the padded token is left out
    expected = ((0.5 - 1 - math.log(0.5)) + (2 - 1 - math.log(2))) / 2
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    # d/dlogp of (exp(logq - logp) - 1 + logp - logq) = 1 - r, divided by the 2 valid tokens
    assert p.grad.tolist()[0] == pytest.approx([(1 - 0.5) / 2, (1 - 2) / 2, 0.0])


def test_lm_loss_is_the_next_token_cross_entropy_on_masked_tokens():
    probs = torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])
    ids = torch.tensor([[2, 0, 1]])
    # position 0 predicts ids[1] = 0 (p 0.5), position 1 predicts ids[2] = 1 (p 0.8); the last logit is unused
    loss = core.lm_loss(probs.log(), ids, torch.ones(1, 3))
    assert loss.item() == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 2)
    completion_only = core.lm_loss(probs.log(), ids, torch.tensor([[0, 0, 1]]))
    assert completion_only.item() == pytest.approx(-math.log(0.8))


def test_leave_one_out_group_baseline():
    scores = torch.tensor([1.0, 2.0, 3.0, 0.0, 3.0, 6.0])
    out = group_baseline(scores, 3)
    # s_i - mean of the 2 others: 1 - 2.5, 2 - 2, 3 - 1.5 | 0 - 4.5, 3 - 3, 6 - 1.5
    assert out.tolist() == pytest.approx([-1.5, 0.0, 1.5, -4.5, 0.0, 4.5])
    groups = scores.view(2, 3)
    torch.testing.assert_close(out.view(2, 3), 3 / 2 * (groups - groups.mean(-1, keepdim=True)))
    assert group_baseline(torch.tensor([1.0, 5.0]), 2).tolist() == [-4.0, 4.0]
    with pytest.raises(ValueError, match="at least 2 samples"):
        group_baseline(scores, 1)
    with pytest.raises(ValueError, match="not groups of 4"):
        group_baseline(scores, 4)


def test_running_moments_merge_updates_and_processes():
    moments = RunningMoments()
    moments.update(torch.tensor([1.0, 2.0, 3.0]))
    assert (moments.count, moments.mean, moments.var) == (3, pytest.approx(2.0), pytest.approx(1.0))
    torch.testing.assert_close(moments.normalize(torch.tensor([1.0, 3.0])), torch.tensor([-1.0, 1.0]))
    moments.update(torch.tensor([5.0, 7.0]))
    # all of 1, 2, 3, 5, 7: mean 3.6, unbiased variance (2.6^2 + 1.6^2 + 0.6^2 + 1.4^2 + 3.4^2) / 4 = 5.8
    assert (moments.count, moments.mean, moments.var) == (5, pytest.approx(3.6), pytest.approx(5.8))
    two_processes = RunningMoments()  # both hold [1, 2, 3]: the reduced sums count 6 scores
    two_processes.update(torch.tensor([1.0, 2.0, 3.0]), reduce=lambda sums: sums * 2)
    assert (two_processes.count, two_processes.mean, two_processes.var) == (6, 2.0, pytest.approx(4 / 5))
    restored = RunningMoments()
    restored.load_state_dict(moments.state_dict())
    assert restored.state_dict() == moments.state_dict()


# -------------------------------------------------------------------------------------------------- options
def test_bad_feature_options_are_refused_before_work(tmp_path):
    with pytest.raises(ValueError, match="dual_clip must be a constant > 1"):
        ppo_config(tmp_path, dual_clip=1.0)
    with pytest.raises(ValueError, match="group_baseline needs num_samples_per_prompt >= 2"):
        ppo_config(tmp_path, group_baseline=True)
    with pytest.raises(ValueError, match="rollout_batch_size 32 .* multiple of num_samples_per_prompt 3"):
        ppo_config(tmp_path, num_samples_per_prompt=3)
    with pytest.raises(ValueError, match="critic_warmup_steps and ptx_coef must be >= 0"):
        ppo_config(tmp_path, critic_warmup_steps=-1)


def test_several_samples_per_prompt_with_a_group_baseline(tiny, tmp_path):
    trainer = trainer_for(tiny, tmp_path, num_samples_per_prompt=4, group_baseline=True)
    prompts = next(trainer.prompt_batches())
    assert len(prompts) == trainer.args.rollout_batch_size // 4 == 8
    rollout = first_rollout(trainer)
    assert len(rollout.prompts) == 32 and rollout.prompts[:4] == [prompts[0]] * 4
    assert torch.equal(rollout.query_ids[0], rollout.query_ids[3])
    raw = rollout.raw_scores.view(8, 4)
    loo = raw - (raw.sum(-1, keepdim=True) - raw) / 3
    torch.testing.assert_close(rollout.scores, loo.flatten())
    metrics = trainer.rollout_metrics(rollout)
    assert metrics["score"] == pytest.approx(rollout.raw_scores.mean().item(), abs=1e-6)
    assert metrics["score/shaped"] == pytest.approx(0.0, abs=1e-6)  # a leave-one-out baseline sums to 0 per group


def test_running_reward_normalisation_then_clipping(tiny, tmp_path):
    trainer = trainer_for(tiny, tmp_path, running_reward_norm=True, reward_clip=1.0)
    batches = trainer.prompt_batches()
    first = trainer.score(trainer.rollout(next(batches)))
    raw1 = first.raw_scores.double()
    expected = ((raw1 - raw1.mean()) / raw1.std()).clamp(-1, 1)
    torch.testing.assert_close(first.scores.double(), expected, atol=1e-5, rtol=0)
    second = trainer.score(trainer.rollout(next(batches)))
    both = torch.cat([raw1, second.raw_scores.double()])  # the statistics of every score so far
    assert trainer.reward_moments.count == 64
    assert trainer.reward_moments.mean == pytest.approx(both.mean().item())
    assert trainer.reward_moments.std == pytest.approx(both.std().item())
    expected = ((second.raw_scores.double() - both.mean()) / both.std()).clamp(-1, 1)
    torch.testing.assert_close(second.scores.double(), expected, atol=1e-5, rtol=0)


def test_running_statistics_are_checkpointed(tiny, tmp_path):
    trainer = trainer_for(tiny, tmp_path, running_reward_norm=True, max_steps=1, save_strategy="steps", save_steps=1)
    trainer.train()
    saved = trainer.reward_moments.state_dict()
    assert saved["count"] == 32
    again = trainer_for(tiny_models(), tmp_path, running_reward_norm=True, max_steps=1)
    again.load_checkpoint(str(tmp_path / "checkpoint-1"))
    assert again.reward_moments.state_dict() == saved


def test_kl_in_loss_moves_the_kl_from_the_reward_to_the_loss(tiny, tmp_path):
    trainer = trainer_for(tiny, tmp_path, kl_in_loss=True, kl_coef=0.5)
    rollout = first_rollout(trainer)
    # the reward is the score at the EOS token alone, whatever the KL
    mask = rollout.response_mask.float()
    expected, _ = core.compute_rewards(rollout.scores, torch.full_like(mask, 7.0), mask, kl_coef=0.0)
    torch.testing.assert_close(rollout.rewards, expected)
    batch = rollout.select(torch.arange(8))
    batch.ref_logprobs = batch.ref_logprobs - 0.3 * batch.response_mask  # a reference the policy differs from
    trainer.model.train()
    loss, parts = trainer.loss(batch)
    logits, _ = trainer.forward(trainer.model, batch.query_ids, batch.query_mask, batch.response_ids,
                                batch.response_mask)  # fmt: skip
    logprobs = core.logprobs_from_logits(logits, batch.response_ids)
    kl = core.masked_mean(torch.expm1(batch.ref_logprobs - logprobs) - (batch.ref_logprobs - logprobs), mask[:8])
    assert parts["loss/kl"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert parts["loss/kl"].item() == pytest.approx(math.expm1(-0.3) + 0.3, rel=1e-4)  # r = q / p = e^-0.3 everywhere
    total = parts["loss/policy"] + 0.1 * parts["loss/value"] + 0.5 * parts["loss/kl"]
    assert loss.item() == pytest.approx(total.item(), rel=1e-6)
    assert "loss/kl" not in trainer_for(tiny_models(), tmp_path / "b").loss(batch)[1]


def test_critic_warmup_trains_the_value_model_only(tiny, tmp_path):
    trainer = trainer_for(tiny, tmp_path, critic_warmup_steps=1, weight_decay=0.1)
    model = trainer.accelerator.unwrap_model(trainer.model)
    policy = {n: p.detach().clone() for n, p in model.policy.named_parameters()}
    value = {n: p.detach().clone() for n, p in model.value_model.named_parameters()}
    batches = trainer.prompt_batches()
    trainer.run_update(batches)
    assert all(torch.equal(p, policy[n]) for n, p in model.policy.named_parameters())  # not even weight decay
    assert any(not torch.equal(p, value[n]) for n, p in model.value_model.named_parameters())
    trainer.run_update(batches)  # warm-up over: the policy trains
    assert any(not torch.equal(p, policy[n]) for n, p in model.policy.named_parameters())


def ptx_rows(tokenizer):
    return Dataset.from_list(
        [{"text": "The fox is red. The owl eats fish."}, {"text": "The bear sleeps."}, {"text": "Rain falls."}]
    )


def test_ptx_rows_encode_and_cycle_in_a_seeded_order(tiny):
    tokenizer = tiny[0]
    rows = Dataset.from_list(
        [{"text": "The fox is red.", "prompt": None, "completion": None},
         {"text": None, "prompt": "Where is the fox?", "completion": " In the wood."}]
    )  # fmt: skip
    batches = PtxBatches(tokenizer, rows, max_length=64, seed=0)
    ids, attention, loss = batches.next(3, "cpu")  # wraps around into the next pass
    assert ids.shape[0] == 3 and batches.drawn == 3
    order = batches.order(0) + batches.order(1)[:1]
    for row, i in enumerate(order):
        tokens, mask = batches.rows[i]
        assert ids[row, : len(tokens)].tolist() == tokens and attention[row].sum() == len(tokens)
        assert loss[row, : len(tokens)].tolist() == mask
    prompt_completion = batches.rows[1][1]
    assert prompt_completion[0] == 0 and prompt_completion[-1] == 1  # the loss on the completion only
    assert PtxBatches(tokenizer, rows.select([0]), max_length=3, seed=0).rows[0][0] == batches.rows[0][0][:3]
    with pytest.raises(ValueError, match="ptx_dataset row 1: no token to train on within ptx_max_length=3"):
        PtxBatches(tokenizer, rows, max_length=3, seed=0)  # the cut leaves only prompt tokens
    with pytest.raises(ValueError, match=r"ptx_dataset row 0: expected a `text` string.*got columns \['chosen'\]"):
        PtxBatches(tokenizer, Dataset.from_list([{"chosen": "x"}]), 64, 0)


def test_ptx_adds_the_weighted_lm_loss_of_ptx_rows(tiny, tmp_path):
    tokenizer = tiny[0]
    with pytest.raises(ValueError, match="PPO-ptx needs both ptx_coef > 0 and a ptx_dataset"):
        trainer_for(tiny, tmp_path, ptx_coef=0.5)
    trainer = trainer_for(tiny, tmp_path, ptx_dataset=ptx_rows(tokenizer), ptx_coef=0.5)
    rollout = first_rollout(trainer)
    batch = rollout.select(torch.arange(2))
    trainer.model.train()
    loss, parts = trainer.loss(batch)
    assert trainer.ptx.drawn == 2
    # the same two rows through the policy by hand: their mean next-token NLL
    trainer.ptx.drawn = 0
    ids, attention, mask = trainer.ptx.next(2, "cpu")
    logits = trainer.accelerator.unwrap_model(trainer.model).policy(input_ids=ids, attention_mask=attention).logits
    nll = -core.masked_mean(core.logprobs_from_logits(logits[:, :-1], ids[:, 1:]), mask[:, 1:])
    assert parts["loss/ptx"].item() == pytest.approx(nll.item(), rel=1e-5)
    total = parts["loss/policy"] + 0.1 * parts["loss/value"] + 0.5 * parts["loss/ptx"]
    assert loss.item() == pytest.approx(total.item(), rel=1e-6)
    history = trainer.train()
    assert all(math.isfinite(h["loss/ptx"]) for h in history)


# ------------------------------------------------------------------------------------------- prompts, speed
def test_the_lm_head_runs_on_the_response_positions_only(tiny):
    tokenizer, policy, *_ = tiny
    policy.eval()
    ids = torch.tensor([tokenizer("The fox is red. The owl eats fish.")["input_ids"]])
    mask = torch.ones_like(ids)
    positions = core.position_ids_from_mask(mask)
    seen = []
    handle = policy.lm_head.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    context = ids.shape[1] - 4  # the last 4 tokens are the response
    kept = response_logits(policy, ids, mask, positions, context)
    handle.remove()
    assert seen == [5]  # T + 1 positions, not the whole sequence
    full = policy(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, context - 1 : -1]
    torch.testing.assert_close(kept, full, atol=1e-6, rtol=0)


def test_ppo_honours_max_prompt_length(tiny, tmp_path):
    """The RL stage fits PPO's prompts to max_prompt_length before models load (dropped or truncated, counted),
    and the trainer's queries are then at most that long."""
    from trl import ModelConfig

    from hf_rlhf.configs import RLArguments
    from hf_rlhf.encoding import encode_prompt
    from hf_rlhf.stages.rl_rewards import check_rl_prompts

    tokenizer, policy, ref, value, prompts = tiny
    policy.save_pretrained(tmp_path / "policy")  # the stage reads the policy's positions from its config
    lengths = [len(encode_prompt(tokenizer, p)) for p in prompts["prompt"]]
    limit = sorted(lengths)[len(lengths) // 2]  # about half the prompts are longer
    over = sum(n > limit for n in lengths)
    assert 0 < over < len(lengths) - 32
    model_args = ModelConfig(model_name_or_path=str(tmp_path / "policy"))
    args = ppo_config(tmp_path / "out", max_new_tokens=8)
    for mode, counted in (("drop", "dropped"), ("truncate", "truncated")):
        rl_args = RLArguments(reward_funcs=["tests.ppo_fixtures:short_answers"], max_prompt_length=limit,
                              long_prompts=mode)  # fmt: skip
        kept, rows, _ = check_rl_prompts(prompts, "prompts", rl_args, args, model_args, tokenizer)
        assert rows[counted] == {"over_max_prompt_length": over}
        assert len(kept) == (len(prompts) - over if mode == "drop" else len(prompts))
        assert max(len(encode_prompt(tokenizer, p)) for p in kept["prompt"]) <= limit
    trainer = PPOTrainer(args, policy, ref, value, tokenizer, kept, [short_answers])
    rollout = trainer.rollout(next(trainer.prompt_batches()))
    assert rollout.query_ids.shape[1] <= limit


def test_the_rl_stage_reads_ptx_data_with_the_stage_loader_and_checks_it_first(tiny, tmp_path):
    import json

    from hf_rlhf.configs import RLArguments
    from hf_rlhf.recipes import RecipeError
    from hf_rlhf.stages.rl_ppo import check_ptx, ptx_batches

    tokenizer = tiny[0]
    path = tmp_path / "ptx.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in ["The fox is red.", "The owl eats fish."]))
    rl_args = RLArguments(reward_funcs=["tiny_world_gold"], ptx_dataset_name=str(path))
    with pytest.raises(RecipeError, match="PPO-ptx needs both `ptx_coef` > 0 and `ptx_dataset_name`; got ptx_coef 0"):
        check_ptx(rl_args, ppo_config(tmp_path))
    with pytest.raises(RecipeError, match="got ptx_coef 0.5 and ptx_dataset_name None"):
        check_ptx(RLArguments(reward_funcs=["tiny_world_gold"]), ppo_config(tmp_path, ptx_coef=0.5))
    args = ppo_config(tmp_path, ptx_coef=0.5)
    check_ptx(rl_args, args)
    batches, source = ptx_batches(rl_args, args, tokenizer, seed=0)
    assert len(batches.rows) == 2 and batches.rows[0][0][-1] == tokenizer.eos_token_id
    assert source is not None
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"chosen": "x"}) + "\n")
    bad_args = RLArguments(reward_funcs=["tiny_world_gold"], ptx_dataset_name=str(bad))
    with pytest.raises(RecipeError, match=r"ptx_dataset_name '.*bad.jsonl', split 'train': ptx_dataset row 0"):
        ptx_batches(bad_args, args, tokenizer, seed=0)


def test_the_rl_stage_trains_ppo_ptx_on_the_sft_demonstrations(quick_pipeline, tmp_path):
    import os

    from hf_rlhf.stages import rl

    out, _ = quick_pipeline
    recipe = os.path.join(os.path.dirname(__file__), "..", "recipes", "tiny", "rl.yaml")
    argv = ["--config", recipe, "--model_name_or_path", os.path.join(out, "sft"),
            "--reward_model_path", os.path.join(out, "reward"), "--dataset_name", os.path.join(out, "data", "prompts"),
            "--output_dir", str(tmp_path / "rl"), "--max_steps", "1", "--per_device_train_batch_size", "8",
            "--num_mini_batches", "1", "--num_ppo_epochs", "1", "--max_new_tokens", "8",
            "--ptx_coef", "0.5", "--ptx_dataset_name", os.path.join(out, "data", "demonstrations")]  # fmt: skip
    manifest = rl.main(argv)
    assert "ptx_dataset" in manifest["inputs"]
    ptx = manifest["history"][0]["loss/ptx"]
    assert 0 < ptx < 10  # the SFT model's NLL on its own demonstrations: finite and well below log(vocab)
