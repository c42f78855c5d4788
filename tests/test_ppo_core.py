"""The pure PPO maths against hand-computed values on tiny tensors."""

import math

import pytest
import torch

from hf_rlhf.ppo import core


def test_masked_mean_var_and_whitening_ignore_padding():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0], [4.0, 5.0, -50.0, 7.0]])
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert core.masked_mean(x, m).item() == pytest.approx(3.0)  # (1+2+3+4+5)/5
    assert core.masked_mean(x, m, dim=1).tolist() == pytest.approx([2.0, 4.5])
    assert core.masked_var(x, m).item() == pytest.approx(2.5)  # sample variance of 1..5
    assert core.masked_var(x, m, unbiased=False).item() == pytest.approx(2.0)
    w = core.masked_whiten(x, m)
    assert core.masked_mean(w, m).item() == pytest.approx(0.0, abs=1e-6)
    assert core.masked_var(w, m).item() == pytest.approx(1.0, abs=1e-5)
    assert w[0, 3].item() == 0 and w[1, 2].item() == 0  # padding stays 0
    kept = core.masked_whiten(x, m, shift_mean=False)
    assert core.masked_mean(kept, m).item() == pytest.approx(3.0, abs=1e-5)


def test_truncate_after_first_eos():
    eos, pad = 9, 0
    ids = torch.tensor([[5, 9, 7, 9], [5, 6, 7, 8], [9, 1, 2, 3]])
    out, mask, has_eos = core.truncate_after_eos(ids, eos, pad)
    assert out.tolist() == [[5, 9, 0, 0], [5, 6, 7, 8], [9, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert has_eos.tolist() == [True, False, True]


def test_position_ids_start_at_the_first_real_token():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert core.position_ids_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_logprobs_and_entropy():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]]))
    lp = core.logprobs_from_logits(logits, torch.tensor([[0, 1]]))
    assert lp.tolist()[0] == pytest.approx([math.log(0.5), math.log(0.8)])
    ent = core.entropy_from_logits(logits)[0]
    assert ent[0].item() == pytest.approx(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))


def test_kl_estimators():
    logp = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.4)])
    k1 = core.kl_penalty(logp, ref, "k1")
    assert k1.tolist() == pytest.approx([math.log(2), math.log(0.5)])
    k3 = core.kl_penalty(logp, ref, "k3")
    # r = q/p: (r - 1) - log r
    assert k3.tolist() == pytest.approx([(0.5 - 1) - math.log(0.5), (2 - 1) - math.log(2)])
    assert (k3 >= 0).all()
    with pytest.raises(ValueError):
        core.kl_penalty(logp, ref, "k2")


def test_rewards_put_the_score_at_the_eos_token_and_kl_everywhere():
    scores = torch.tensor([1.0, -2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    rewards, non_score = core.compute_rewards(scores, kl, mask, kl_coef=0.5)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, -0.1, -0.15 + 1.0], [-0.25 - 2.0, 0.0, 0.0]]))
    torch.testing.assert_close(non_score, torch.tensor([[-0.05, -0.1, -0.15], [-0.25, 0.0, 0.0]]))


def test_gae_matches_a_hand_computation():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.9, 7.0]])  # the last token is padding: its value must not leak in
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    gamma, lam = 1.0, 0.95
    d2 = 1.0 + 0 - 0.9
    d1 = 0.0 + 0.9 - 0.4
    d0 = 0.0 + 0.4 - 0.5
    a2, a1 = d2, d1 + gamma * lam * d2
    a0 = d0 + gamma * lam * a1
    adv, ret = core.gae(rewards, values, mask, gamma, lam)
    assert adv.tolist()[0] == pytest.approx([a0, a1, a2, 0.0])
    assert ret.tolist()[0] == pytest.approx([a0 + 0.5, a1 + 0.4, a2 + 0.9, 0.0])
    # gamma 0.5, lambda 1: discounted returns minus values
    adv, _ = core.gae(rewards, torch.zeros_like(values), mask, 0.5, 1.0)
    assert adv.tolist()[0] == pytest.approx([0.25, 0.5, 1.0, 0.0])


def test_clipped_policy_loss():
    old = torch.zeros(1, 3)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))
    adv = torch.tensor([[1.0, -1.0, 2.0]])
    mask = torch.ones(1, 3)
    loss, stats = core.policy_loss(new, old, adv, mask, cliprange=0.2)
    # token 0: ratio 1.5 > 1.2 and A > 0 -> clipped: -1.2; token 1: ratio 0.5 < 0.8, A < 0 -> clipped: 0.8;
    # token 2: inside the range: -2.2
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    assert stats["ratio"].item() == pytest.approx((1.5 + 0.5 + 1.1) / 3)
    same, stats = core.policy_loss(old, old, adv, mask, 0.2)
    assert stats["clipfrac"].item() == 0 and stats["approxkl"].item() == 0


def test_clipped_value_loss():
    values = torch.tensor([[2.0, 0.0]])
    old = torch.tensor([[1.0, 0.1]])
    returns = torch.tensor([[3.0, 1.0]])
    loss, stats = core.value_loss(values, old, returns, torch.ones(1, 2), cliprange_value=0.5)
    # token 0: unclipped (2-3)^2 = 1, clipped 1.5 -> (1.5-3)^2 = 2.25 -> 2.25; token 1: (0-1)^2 = 1, clip 0 -> 1
    assert loss.item() == pytest.approx(0.5 * (2.25 + 1.0) / 2)
    assert stats["vf_clipfrac"].item() == pytest.approx(0.5)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(1, 4)
    assert core.explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert core.explained_variance(torch.zeros_like(returns), returns, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_kl_controllers():
    fixed = core.FixedKLController(0.1)
    fixed.update(100.0, 64)
    assert fixed.value == 0.1
    adaptive = core.AdaptiveKLController(0.1, target=6.0, horizon=1000)
    adaptive.update(12.0, 100)  # error clipped to +0.2
    assert adaptive.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 1000))
    adaptive.update(3.0, 100)  # error -0.5 clipped to -0.2
    assert adaptive.value == pytest.approx(0.1 * 1.02 * (1 - 0.02))
    restored = core.AdaptiveKLController(0.5, 6.0, 1000)
    restored.load_state_dict(adaptive.state_dict())
    assert restored.value == adaptive.value
