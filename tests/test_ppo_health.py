"""PPO that notices it has failed (`hf_rlhf.ppo.health`): each check on hand-made metric sequences, healthy noisy
runs that never stop, and a PPO run made to diverge that stops with the message."""

from __future__ import annotations

import math
import os
import random

import pytest

from hf_rlhf.errors import NonFiniteLossError
from hf_rlhf.ppo.health import PPOFailedError, PPOHealthMonitor, check_health_options
from hf_rlhf.resilience import mark_checkpoint_complete
from tests.ppo_fixtures import ppo_config

HEALTHY = {"kl": 1.0, "entropy": 1.5, "response_length": 12.0, "score": 0.5}


def monitor(tmp_path, **overrides) -> PPOHealthMonitor:
    return PPOHealthMonitor(ppo_config(tmp_path, **overrides), str(tmp_path))


def feed(health: PPOHealthMonitor, rows: list[dict[str, float]]) -> tuple[int | None, str]:
    """Check rows as updates 1, 2, ...; returns (the update that stopped the run or None, the message)."""
    for update, row in enumerate(rows, start=1):
        try:
            health.check(update, {"step": update, **HEALTHY, **row})
        except PPOFailedError as e:
            return update, str(e)
    return None, ""


def save(tmp_path, *steps: int) -> None:
    for step in steps:
        os.makedirs(tmp_path / f"checkpoint-{step}")
        mark_checkpoint_complete(str(tmp_path / f"checkpoint-{step}"), step)


def test_kl_explosion_beyond_a_multiple_of_target_kl(tmp_path):
    # kl 30 from update 11: the median of 5 updates passes 4 x 6 = 24 once 3 of them are 30, at update 13
    rows = [{"kl": 1.0}] * 10 + [{"kl": 30.0}] * 10
    stopped, message = feed(monitor(tmp_path, health_max_kl_jump=None), rows)
    assert stopped == 15  # failing at 13, 14, 15: patience 3
    assert "PPO has failed at update 15: KL explosion: KL to the reference 30 nats per sequence (median of updates " \
        "11-15), beyond health_max_kl_multiple x target_kl = 4 x 6 = 24, for 3 consecutive updates; the trouble " \
        "shows from update 11" in message  # fmt: skip
    assert "no checkpoint had been saved before it: set save_strategy: steps" in message


def test_kl_jump_within_the_window(tmp_path):
    # update 10: 11 - min(kl of updates 5-9) = 10 > 8; the rise starts after the last low, update 8
    rows = [{"kl": 1.0}] * 8 + [{"kl": 6.0}, {"kl": 11.0}, {"kl": 16.0}, {"kl": 21.0}]
    stopped, message = feed(monitor(tmp_path), rows)
    assert stopped == 12
    assert "KL jump: KL to the reference rose from 1 (update 8) to 21 nats per sequence (update 12)" in message
    assert "more than health_max_kl_jump = 8 within 5 updates" in message
    assert "the trouble shows from update 9" in message  # the onset of the streak's first failure (update 10)


def test_entropy_collapse_names_the_last_good_checkpoint(tmp_path):
    save(tmp_path, 5, 10, 14)
    rows = [{"entropy": 1.5}] * 10 + [{"entropy": 0.05}] * 10  # limit 0.1 x 1.5: the window 9-13 first
    stopped, message = feed(monitor(tmp_path), rows)
    assert stopped == 15
    assert "entropy collapse: entropy 0.05 nats per token (median of updates 11-15), below health_min_entropy_ratio " \
        "x its 1.5 of updates 1-5 = 0.1 x 1.5" in message  # fmt: skip
    assert "the trouble shows from update 11" in message
    # checkpoint-10 holds the policy that sampled update 11, the first bad one
    assert f"the last good checkpoint is {tmp_path / 'checkpoint-5'} (its policy sampled update 6" in message
    assert "checkpoint-10, checkpoint-14 hold(s) the failing policy" in message


def test_response_length_collapse(tmp_path):
    save(tmp_path, 24)
    rows = [{"response_length": 12.0}] * 20 + [{"response_length": 1.0}] * 10
    stopped, message = feed(monitor(tmp_path), rows)
    assert stopped == 25  # the window 19-23 is the first whose median is below 1.5
    assert "response-length collapse: response length 1 tokens, EOS included (median of updates 21-25)" in message
    assert "the trouble shows from update 21" in message
    assert (
        "every checkpoint kept (checkpoint-24) was saved after the trouble started: raise save_total_limit" in message
    )


def test_falling_score_in_noise_units(tmp_path):
    # +-0.1 alternation: |consecutive difference| 0.2 (median), one update's noise 1.4826 / sqrt(2) * 0.2 = 0.2097
    rows = [{"score": 1.0 + 0.1 * (-1) ** u} for u in range(1, 21)] + [
        {"score": 0.1 * (-1) ** u} for u in range(21, 31)
    ]
    stopped, message = feed(monitor(tmp_path), rows)
    # best window median 1.1 (windows ending on an even update, 3 of 5 high); window 19-23 (0.9, 1.1, -0.1, 0.1,
    # -0.1) has median 0.1: (1.1 - 0.1) / 0.2097 = 4.8 > 4 first at update 23; window 21-25: -0.1, 5.7 units down
    assert stopped == 25
    assert "falling score: score -0.1 (median of updates 21-25), 5.7 noise units below its best 1.1 (median of " \
        "updates 16-20; one update's noise 0.21, health_max_score_drop = 4)" in message  # fmt: skip
    assert "the trouble shows from update 21" in message


def test_a_single_bad_update_and_short_runs_never_stop(tmp_path):
    spike = [dict(HEALTHY)] * 10 + [{"kl": 40.0, "entropy": 0.0, "response_length": 1.0, "score": -9.0}] + [{}] * 10
    assert feed(monitor(tmp_path / "a"), spike)[0] is None
    dead = [{"kl": 100.0, "entropy": 0.0, "response_length": 1.0, "score": -9.0}] * 4  # shorter than one window
    assert feed(monitor(tmp_path / "b"), dead)[0] is None
    off = [{}] * 10 + [{"kl": 100.0, "response_length": 1.0}] * 10
    assert feed(monitor(tmp_path / "c", health_checks=False), off)[0] is None
    stopped, message = feed(monitor(tmp_path / "d", health_patience=1), off)
    assert stopped == 11 and "KL jump" in message  # at once


@pytest.mark.parametrize("seed", range(10))
def test_healthy_noisy_runs_never_stop(tmp_path, seed):
    """200 updates: KL rising to ~6, entropy sharpening by a third, score rising then drifting down a little, all
    with noise and outliers (e.g. a reward-model glitch), as a healthy run's statistics look."""
    rng = random.Random(seed)
    rows = []
    for u in range(1, 201):
        score = min(1.0, u / 30) - 0.002 * max(0, u - 100) + rng.gauss(0, 0.15)
        if rng.random() < 0.03:
            score -= 1.0
        rows.append(
            {
                "kl": max(0.0, 6 * (1 - math.exp(-u / 60)) + rng.gauss(0, 0.5)),
                "entropy": 1.5 - 0.5 * u / 200 + rng.gauss(0, 0.1),
                "response_length": max(1.0, 10 - 4 * u / 200 + rng.gauss(0, 1.5)),
                "score": score,
            }
        )
    assert feed(monitor(tmp_path), rows) == (None, "")


def test_resume_replays_the_history(tmp_path):
    rows = [{"entropy": 1.5}] * 10 + [{"entropy": 0.05}] * 10
    straight, _ = feed(monitor(tmp_path / "a"), rows)
    assert straight == 15
    resumed = monitor(tmp_path / "b")  # resumed from checkpoint-13, whose history has updates 1-13 (two failing)
    resumed.resume([{"step": u, **HEALTHY, **row} for u, row in enumerate(rows[:13], start=1)])
    resumed.check(14, {"step": 14, **HEALTHY, **rows[13]})
    with pytest.raises(PPOFailedError, match="at update 15: entropy collapse.*trouble shows from update 11"):
        resumed.check(15, {"step": 15, **HEALTHY, **rows[14]})


def test_the_error_is_a_user_error_like_a_non_finite_loss():
    from hf_rlhf.errors import USER_ERRORS

    assert issubclass(PPOFailedError, NonFiniteLossError) and issubclass(PPOFailedError, USER_ERRORS)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"health_window": 0}, r"health_window must be an integer >= 1, got 0"),
        ({"health_patience": 1.5}, r"health_patience must be an integer >= 1, got 1.5"),
        ({"health_max_kl_jump": 0.0}, r"health_max_kl_jump must be > 0 \(or null to turn the check off\), got 0.0"),
        ({"health_min_entropy_ratio": 1.0}, r"health_min_entropy_ratio must be in \(0, 1\)"),
        ({"health_min_response_length": -1.0}, r"health_min_response_length must be > 0 tokens"),
        ({"target_kl": 0.0}, r"health_max_kl_multiple needs target_kl > 0"),
    ],
)
def test_bad_health_options(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        check_health_options(ppo_config(tmp_path, **overrides))


# ------------------------------------------------------------------------------------------ a real PPO run
def test_a_ppo_run_made_to_diverge_stops_with_the_message(tmp_path):
    """Learning rate 0.3 (warmed up over 6 updates) on the tiny fixtures: KL to the reference leaps from ~4 to ~20
    nats within a few updates (measured: at update 9, stopped at 11 naming checkpoint-6); the default checks stop
    the run and name the last checkpoint saved before the trouble."""
    import re

    from hf_rlhf.ppo.trainer import PPOTrainer
    from tests.ppo_fixtures import short_answers, tiny_models

    tokenizer, policy, ref, value, prompts = tiny_models()
    args = ppo_config(
        tmp_path,
        learning_rate=0.3,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=24,
        per_device_train_batch_size=4,
        max_steps=16,
        save_strategy="steps",
        save_steps=1,
    )
    trainer = PPOTrainer(args, policy, ref, value, tokenizer, prompts, [short_answers])
    with pytest.raises(PPOFailedError) as error:
        trainer.train()
    message = str(error.value)
    found = re.search(
        r"PPO has failed at update (\d+): KL (jump|explosion).* the trouble shows from update (\d+)\..* the last good "
        r"checkpoint is (\S+)/checkpoint-(\d+) \(its policy sampled update (\d+), before the trouble\)",
        message,
    )
    assert found, message
    stopped, onset, good, sampled = (int(found.group(i)) for i in (1, 3, 5, 6))
    assert found.group(4) == str(tmp_path) and sampled == good + 1 < onset < stopped < 16
    assert len(trainer.history) == stopped
    leap = max(h["kl"] for h in trainer.history[onset - 1 :]) - trainer.history[sampled - 1]["kl"]
    assert leap > args.health_max_kl_jump  # KL after the onset, against the good checkpoint's own rollout
    assert not os.path.exists(tmp_path / f"checkpoint-{stopped}")  # nothing saved from the failing state


def test_the_rl_stage_is_left_incomplete(quick_pipeline, tmp_path):
    from hf_rlhf.manifest import MANIFEST, is_complete
    from hf_rlhf.stages import rl

    out, _ = quick_pipeline
    stage = tmp_path / "rl"
    argv = ["--config", os.path.join(os.path.dirname(__file__), "..", "recipes", "tiny", "rl.yaml"),
            "--model_name_or_path", os.path.join(out, "sft"), "--reward_model_path", os.path.join(out, "reward"),
            "--dataset_name", os.path.join(out, "data", "prompts"), "--output_dir", str(stage),
            "--per_device_train_batch_size", "8", "--max_new_tokens", "8", "--max_steps", "4",
            # a KL limit any trained policy passes at once: 0.001 x 0.001 nats, one update's median, no patience
            "--target_kl", "0.001", "--health_max_kl_multiple", "0.001", "--health_window", "1",
            "--health_patience", "1", "--learning_rate", "1e-3"]  # fmt: skip
    with pytest.raises(PPOFailedError, match=r"PPO has failed at update 2: KL explosion"):
        rl.main(argv)
    assert not is_complete(str(stage)) and not os.path.exists(stage)
    assert not os.path.exists(tmp_path / "rl.partial" / MANIFEST)
