"""The report's numbers on hand-computed cases: win rates with ties, intervals, distinct-n, missing EOS, the judge
asked in both orders, the KL bound of best-of-N, and the table every report and card shows."""

import json
import math

import pytest
import torch

from hf_rlhf.eval.judge import answer_logprobs, judge_both_orders
from hf_rlhf.eval.stats import (
    best_of_n_kl_bound,
    both_orders_outcomes,
    distinct_n,
    missing_eos_rate,
    pairwise_outcomes,
    win_rate,
)
from hf_rlhf.eval.tables import markdown_table

from .ppo_fixtures import tiny_models


def test_win_rate_counts_ties_as_half_and_reports_the_tie_rate():
    outcomes = pairwise_outcomes([3.0, 1.0, 2.0, 2.0], [1.0, 1.0, 3.0, 0.0])
    assert outcomes == [1.0, 0.5, 0.0, 1.0]
    w = win_rate(outcomes, num_resamples=500, seed=0)
    assert w["mean"] == pytest.approx(2.5 / 4)
    assert (w["wins"], w["ties"], w["losses"], w["n"]) == (2, 1, 1, 4)
    assert w["tie_rate"] == pytest.approx(0.25)
    assert 0.0 <= w["ci_low"] < w["mean"] < w["ci_high"] <= 1.0
    # every resample of four outcomes has a mean in {0, 1/8, ..., 1}: so do the percentile bounds
    assert (w["ci_low"] * 8) % 1 == pytest.approx(0) and (w["ci_high"] * 8) % 1 == pytest.approx(0)
    # the same completion is a tie even if its score differs in the last bits (scored in another batch)
    assert pairwise_outcomes([1.0 + 1e-7, 2.0], [1.0, 1.0], identical=[True, False]) == [0.5, 1.0]
    sure = win_rate([1.0] * 5)
    assert (sure["mean"], sure["ci_low"], sure["ci_high"], sure["tie_rate"]) == (1.0, 1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="1 \\(win\\), 0.5 \\(tie\\) or 0"):
        win_rate([0.7])
    with pytest.raises(ValueError, match="2 scores against 1"):
        pairwise_outcomes([1.0, 2.0], [1.0])


def test_win_rate_interval_narrows_with_more_prompts():
    few = win_rate([1.0, 0.0] * 10, seed=0)
    many = win_rate([1.0, 0.0] * 500, seed=0)
    assert few["mean"] == many["mean"] == 0.5
    assert (many["ci_high"] - many["ci_low"]) < (few["ci_high"] - few["ci_low"]) / 4


def test_distinct_n_over_all_completions():
    texts = ["a b a", "a b c"]
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)  # a, b, c among a b a a b c
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # (a b) twice, (b a), (b c)
    assert distinct_n(["same words", "same words"], 2) == pytest.approx(1 / 2)
    assert math.isnan(distinct_n(["one", ""], 2))  # no text has two words
    with pytest.raises(ValueError):
        distinct_n(texts, 0)


def test_missing_eos_rate_counts_completions_that_ran_out_of_tokens():
    eos = 2
    assert missing_eos_rate([[5, 2], [5, 6], [2], []], eos) == pytest.approx(2 / 4)
    assert missing_eos_rate([[7, 2]], eos) == 0.0
    with pytest.raises(ValueError):
        missing_eos_rate([], eos)


def test_both_orders_win_only_when_the_orders_agree():
    # > 0: the model's completion preferred; shown first, then second
    first = [1.0, 1.0, -1.0, -1.0, 0.0]
    second = [2.0, -1.0, -3.0, 1.0, 2.0]
    assert both_orders_outcomes(first, second) == [1.0, 0.5, 0.0, 0.5, 0.5]


class PositionBiased:
    """A judge that always prefers the response shown first, by `margin`; counts how often it is asked."""

    def __init__(self, margin=1.0):
        self.margin, self.calls = margin, 0

    def __call__(self, prompts, first, second):
        self.calls += len(prompts)
        return [self.margin] * len(prompts)


class PrefersLonger:
    def __call__(self, prompts, first, second):
        return [float(len(a) - len(b)) for a, b in zip(first, second, strict=True)]


def test_judge_in_both_orders_cancels_position_bias_and_skips_identical_pairs():
    prompts = ["p1", "p2", "p3"]
    biased = PositionBiased()
    outcomes, agreement = judge_both_orders(biased, prompts, ["long answer", "x", "same"], ["short", "yy", "same"])
    assert outcomes == [0.5, 0.5, 0.5] and agreement == 0.0  # first always wins: the orders never agree
    assert biased.calls == 4  # two pairs, asked in both orders; the identical pair is a tie without asking
    outcomes, agreement = judge_both_orders(PrefersLonger(), prompts, ["long answer", "x", "z"], ["short", "yy", "z"])
    assert outcomes == [1.0, 0.0, 0.5] and agreement == 1.0


def test_answer_logprobs_match_the_full_sequence_logprob():
    tokenizer, policy, *_ = tiny_models()
    policy.eval()
    contexts = [[5, 9, 11, 4], [5, 9]]
    for answers in ([[7], [8, 3]], [[7], [8]]):  # continuations, and single tokens read from one forward pass
        got = answer_logprobs(policy, tokenizer.pad_token_id, contexts, answers, batch_size=3)
        for ctx, row in zip(contexts, got, strict=True):
            for answer, value in zip(answers, row, strict=True):
                ids = torch.tensor([ctx + answer])
                with torch.no_grad():
                    logp = policy(input_ids=ids).logits[0, :-1].log_softmax(-1)
                expected = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(answer))
                assert value == pytest.approx(expected, abs=1e-4)


def test_best_of_n_kl_bound():
    assert best_of_n_kl_bound(1) == 0.0
    assert best_of_n_kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    assert best_of_n_kl_bound(8) == pytest.approx(2.0794415 - 0.875)


def test_model_table_marks_the_reference_and_keeps_every_row_as_wide_as_the_header():
    win = {"mean": 0.625, "ci_low": 0.25, "ci_high": 0.875, "n": 8, "tie_rate": 0.125}
    rows = [
        {"model": "SFT", "n": 8, "reward_model_score": 0.1, "reward_model_ci": [0.0, 0.2], "kl_to_sft": 0.0,
         "mean_length": 3.0, "missing_eos_rate": 0.0, "distinct_1": 0.5, "distinct_2": float("nan")},
        {"model": "SFT best-of-4 (reward model)", "n": 8, "reward_model_score": 0.3, "reward_model_ci": [0.1, 0.4],
         "rm_win_rate": win, "kl_to_sft_bound": best_of_n_kl_bound(4), "mean_length": 4.0},
        {"model": "a|b", "n": 8, "rm_win_rate": win, "kl_to_sft": 1.5, "mean_length": 5.5},
    ]  # fmt: skip
    lines = markdown_table(rows, "SFT")
    assert lines[0].startswith("| model | n | reward model score | RM 95% interval | RM win rate vs SFT (95% CI) |")
    assert "KL to SFT" in lines[0] and "judge" not in lines[0] and "gold" not in lines[0]
    assert {line.replace("\\|", "").count("|") for line in lines} == {lines[0].count("|")}
    assert "| SFT | 8 | 0.100 | [0.000, 0.200] | reference | - | 0.000 | 3.0 | 0.000 | 0.500 | - |" in lines
    assert "| 0.625 [0.250, 0.875] | 0.125 | <= 0.636 | 4.0 | - |" in lines[3]
    assert lines[4].startswith("| a\\|b | 8 | - | - | 0.625")


def test_compare_shows_win_rates_for_runs_outside_the_tiny_world(tmp_path):
    from hf_rlhf.eval.compare import compare

    win = {"mean": 0.625, "ci_low": 0.25, "ci_high": 0.875}
    for run, mean in (("a", 0.625), ("b", 0.5)):
        rows = [
            {"model": "SFT", "stage": "sft"},
            {"model": "RL (PPO)", "stage": "rl", "rm_win_rate": {**win, "mean": mean}, "kl_to_sft": 0.25},
        ]
        (tmp_path / run).mkdir()
        (tmp_path / run / "report.json").write_text(json.dumps({"stages": {}, "reference": "SFT", "rows": rows}))
    lines = compare([str(tmp_path / "a"), str(tmp_path / "b")]).splitlines()
    assert lines[0] == "| RM win rate vs SFT (95% CI) | a | b |"
    assert lines[2] == "| SFT | - | - |"
    assert lines[3] == "| RL (PPO) | 0.625 [0.250, 0.875] | 0.500 [0.250, 0.875] |"
    assert "| RL KL to SFT | 0.250 | 0.250 |" in lines
