"""Reward modeling: pair expansion and grouping, the grouped loss, centring, best-of-N, bad input, quality checks."""

import json
import math
import os

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForSequenceClassification

from hf_rlhf.data.formats import DataValidationError
from hf_rlhf.data.preference import pairs_from_ranking, to_groups
from hf_rlhf.modeling import load_reward_model, load_tokenizer
from hf_rlhf.reward.scorer import best_of_n, encode_for_reward, score_sequences, shift_reward
from hf_rlhf.reward.trainer import GroupedPreferenceCollator, grouped_pairwise_loss, quality_report
from hf_rlhf.stages.reward import RewardStageConfig, encode_groups, reference_pairs
from hf_rlhf.stages.sample import ranks_from_scores


def ranked(completions, ranking, prompt="q"):
    return {"prompt": prompt, "completions": completions, "ranking": ranking}


def test_pair_expansion_full_order_ties_and_k2():
    assert pairs_from_ranking([1, 2]) == [(0, 1)]
    assert pairs_from_ranking([2, 1]) == [(1, 0)]
    five = pairs_from_ranking([3, 1, 5, 2, 4])
    assert len(five) == 5 * 4 // 2
    assert (1, 3) in five and (3, 0) in five and (0, 4) in five and (4, 2) in five
    assert sorted(pairs_from_ranking([1, 1, 2])) == [(0, 2), (1, 2)]  # the tie gives no pair
    assert pairs_from_ranking([1, 1]) == []


def test_groups_keep_all_pairs_of_a_prompt_together():
    data = Dataset.from_list([ranked(["a", "b", "c", "d", "e"], [1, 2, 3, 4, 5]), ranked(["x", "y"], [2, 1])])
    groups, dropped, fmt = to_groups(data, "d")
    assert fmt == "ranked" and dropped == {} and len(groups) == 2
    assert len(groups[0]["pairs"]) == 10 and groups[1]["pairs"] == [(1, 0)]

    collated = GroupedPreferenceCollator(pad_token_id=0)(
        [
            {"input_ids": [[5, 6], [7], [8, 9, 1]], "pairs": [(0, 1), (0, 2)], "margins": [0.0, 0.0]},
            {"input_ids": [[4], [3, 3]], "pairs": [(1, 0)], "margins": [0.5]},
        ]  # fmt: skip
    )
    assert collated["input_ids"].tolist() == [[5, 6, 0], [7, 0, 0], [8, 9, 1], [4, 0, 0], [3, 3, 0]]
    assert collated["attention_mask"].sum(1).tolist() == [2, 1, 3, 1, 2]
    assert collated["chosen_index"].tolist() == [0, 0, 4]
    assert collated["rejected_index"].tolist() == [1, 2, 3]
    assert collated["pair_group"].tolist() == [0, 0, 1]
    assert collated["margin"].tolist() == [0.0, 0.0, 0.5]


def test_grouped_loss_equals_hand_computation():
    rewards = torch.tensor([2.0, 0.5, -1.0, 0.3, 0.1])
    chosen, rejected = torch.tensor([0, 0, 1, 4]), torch.tensor([1, 2, 2, 3])
    group = torch.tensor([0, 0, 0, 1])

    def nll(d):
        return -math.log(1 / (1 + math.exp(-d)))

    group0 = (nll(2.0 - 0.5) + nll(2.0 + 1.0) + nll(0.5 + 1.0)) / 3
    group1 = nll(0.1 - 0.3)
    expected = (group0 + group1) / 2  # each prompt weighs the same, whatever its number of pairs
    loss = grouped_pairwise_loss(rewards, chosen, rejected, group, 2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    with_margin = grouped_pairwise_loss(rewards, chosen, rejected, group, 2, torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert with_margin.item() == pytest.approx((group0 + nll(0.1 - 0.3 - 1.0)) / 2, rel=1e-6)
    # pairwise rows (one pair per group) reduce to TRL's RewardTrainer loss
    pairwise = grouped_pairwise_loss(rewards, torch.tensor([0, 3]), torch.tensor([1, 4]), torch.tensor([0, 1]), 2)
    upstream = -torch.nn.functional.logsigmoid(rewards[[0, 3]] - rewards[[1, 4]]).mean()
    assert pairwise.item() == pytest.approx(upstream.item())


@pytest.mark.parametrize(
    "row, message",
    [
        (ranked(["a", "b"], [1]), "expected 2 ranks"),
        (ranked(["a", "b"], [1, 0]), "expected 2 ranks"),
        (ranked(["a"], [1]), "has 1 completions, expected >= 2"),
        (ranked(["a", ""], [1, 2]), "item 1 is empty"),
        (ranked(["a", "b"], [1, 1]), "ties every completion"),
    ],
)
def test_bad_ranked_rows_name_the_row(row, message):
    data = Dataset.from_list([ranked(["ok", "fine"], [1, 2]), row])
    with pytest.raises(DataValidationError, match=rf"dataset 'd', split 'train': row 1: .*{message}"):
        to_groups(data, "dataset 'd', split 'train'")


def test_ranking_of_wrong_type():
    with pytest.raises(
        DataValidationError,
        match=r"row 0: column 'ranking' is \['1', '2'\]: item 0 is '1' \(str\), not an integer; expected 2 ranks",
    ):
        to_groups(Dataset.from_list([ranked(["a", "b"], ["1", "2"])]), "d")


def test_bad_pairwise_rows_and_drop_mode_counts():
    rows = [
        {"prompt": "q", "chosen": "good", "rejected": "bad", "margin": 1.0},
        {"prompt": "q", "chosen": "same", "rejected": "same", "margin": 0.0},
        {"prompt": "q", "chosen": "", "rejected": "bad", "margin": 0.0},
    ]
    data = Dataset.from_list(rows)
    with pytest.raises(DataValidationError, match="row 1: column 'chosen' equals column 'rejected'"):
        to_groups(data, "d")
    groups, dropped, fmt = to_groups(data, "d", on_invalid="drop")
    assert fmt == "pairwise" and len(groups) == 1
    assert dropped == {"chosen_equals_rejected": 1, "empty_completion": 1}
    assert groups[0]["margins"] == [1.0] and groups[0]["pairs"] == [(0, 1)]
    conversational = Dataset.from_list(
        [
            {
                "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}],
            }
        ]  # fmt: skip
    )
    assert len(to_groups(conversational, "d")[0]) == 1
    with pytest.raises(DataValidationError, match="expected columns"):
        to_groups(Dataset.from_list([{"prompt": "q", "answer": "a"}]), "d")


def test_long_rows_are_dropped_truncated_or_refused_and_counted(world_tokenizer):
    groups = [
        {"prompt": "short", "completions": ["a", "b"], "pairs": [(0, 1)], "margins": [0.0], "ranks": [1, 2]},
        {"prompt": "long " * 80, "completions": ["a", "b"], "pairs": [(0, 1)], "margins": [0.0], "ranks": [1, 2]},
    ]
    args = RewardStageConfig(output_dir="x", max_length=40, too_long="drop")
    kept, counts = encode_groups(groups, world_tokenizer, args, "d")
    assert len(kept) == 1 and counts["too_long_dropped"] == 1
    args.too_long = "truncate"
    kept, counts = encode_groups(groups, world_tokenizer, args, "d")
    assert len(kept) == 2 and counts["too_long_truncated"] == 1
    assert all(len(ids) <= 40 for ids in kept[1]["input_ids"])
    assert kept[1]["input_ids"][0][-1] == world_tokenizer("a" + world_tokenizer.eos_token)["input_ids"][-1]
    args.too_long = "error"
    with pytest.raises(DataValidationError, match="row 1 has a sequence of .* over max_length=40"):
        encode_groups(groups, world_tokenizer, args, "d")


@pytest.fixture(scope="module")
def world_tokenizer():
    from hf_rlhf.data.world import TinyWorld
    from hf_rlhf.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(TinyWorld(0).documents(200), vocab_size=300)


def test_centring_shifts_the_head_bias_and_survives_save_and_load(tmp_path, world_tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(world_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=world_tokenizer.pad_token_id,
    )  # fmt: skip
    model = LlamaForSequenceClassification(config).eval()
    reference = [world_tokenizer(t)["input_ids"] for t in ["The fox is red.", "The owl eats fish.", "why?"]]
    before = score_sequences(model, reference, world_tokenizer.pad_token_id)
    assert abs(before.mean().item()) > 1e-4
    shift_reward(model, -before.mean().item())
    after = score_sequences(model, reference, world_tokenizer.pad_token_id)
    assert after.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert torch.allclose(after - before, after[0] - before[0])  # a constant shift: preferences unchanged
    model.save_pretrained(tmp_path)
    loaded = load_reward_model(str(tmp_path))
    assert torch.allclose(score_sequences(loaded, reference, world_tokenizer.pad_token_id), after, atol=1e-5)


def test_best_of_n_picks_the_argmax():
    def reward_fn(prompts, completions):
        return [float(len(c)) for c in completions]

    best, scores = best_of_n(["p1", "p2"], [["a", "abc", "ab"], ["zz", "z", "zz"]], reward_fn)
    assert best == ["abc", "zz"]  # first of the tied maxima
    assert scores == [[1.0, 3.0, 2.0], [2.0, 1.0, 2.0]]


def test_ranks_from_scores_gives_competition_ranks_with_ties():
    assert ranks_from_scores([0.5, 1.0, 0.5, 0.0]) == [2, 1, 2, 4]


def test_quality_report_accuracy_distance_and_symmetric_calibration():
    groups = [{"pairs": [(0, 1), (0, 2), (1, 2)], "ranks": [1, 2, 3]}, {"pairs": [(1, 0)], "ranks": [2, 1]}]
    rewards = [[3.0, 1.0, 2.0], [0.0, 1.0]]
    q = quality_report(groups, rewards, bins=4)
    assert q["num_pairs"] == 4
    assert q["accuracy"] == pytest.approx(3 / 4)  # (1, 2) is the only mistake
    assert q["accuracy_by_rank_distance"] == {"1": pytest.approx(2 / 3), "2": 1.0}
    assert q["reward_gap"] == pytest.approx((2 + 1 - 1 + 1) / 4)
    assert sum(c["count"] for c in q["calibration"]) == 8  # each pair in both orders
    low, high = q["calibration"][0], q["calibration"][-1]
    assert low["observed"] == pytest.approx(1 - high["observed"])


def test_quick_pipeline_through_the_reward_stage(quick_pipeline):
    out, report = quick_pipeline
    names = [r["model"] for r in report["rows"]]
    assert names[-2] == "SFT best-of-3 (reward model)" and names[-1] == "RL (PPO)"
    assert all("reward_model_score" in r for r in report["rows"])
    manifest = json.load(open(os.path.join(out, "reward", "hf_rlhf_manifest.json")))
    # The centring survives saving: the saved model, loaded as every stage loads it, scores the reference rows with
    # mean 0 and the recorded spread (the manifest's own `mean` is a constant the stage writes, so it is not checked).
    centring = manifest["metrics"]["reward_centring"]
    prompts, completions = reference_pairs(os.path.join(out, "data", "demonstrations"), centring["num_rows"])
    tokenizer = load_tokenizer(os.path.join(out, "reward"))
    encoded = [encode_for_reward(tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
    scores = score_sequences(load_reward_model(os.path.join(out, "reward")), encoded, tokenizer.pad_token_id)
    assert len(scores) == centring["num_rows"] and centring["std"] > 0
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-3 * centring["std"] + 1e-6)
    assert scores.std(unbiased=False).item() == pytest.approx(centring["std"], rel=1e-3)
    quality = manifest["metrics"]["eval"]
    assert 0 <= quality["accuracy"] <= 1
    assert os.path.isfile(os.path.join(out, "reward", "calibration.png"))
    card = open(os.path.join(out, "reward", "README.md")).read()
    # the card reports this run's figures, not just its template's text
    assert f"Pairwise accuracy {quality['accuracy']:.3f} on {quality['num_pairs']} held-out pairs" in card
    assert f"(it was {centring['mean_before']:.4f}), with standard deviation {centring['std']:.4f}" in card
    assert "/tmp" not in card and out not in card  # no local paths in cards
    comparisons = os.path.join(out, "sample")
    rows = [json.loads(line) for line in open(os.path.join(comparisons, "comparisons_train.jsonl"))]
    assert len(rows[0]["completions"]) == 3 and len(rows[0]["ranking"]) == 3
    assert "Reward model checks" in open(os.path.join(out, "report.md")).read()


def test_hand_ranked_jsonl_round_trip(quick_pipeline, tmp_path):
    """People rank the exported JSONL by hand; the reward stage reads it back."""
    from hf_rlhf.stages import reward

    out, _ = quick_pipeline
    rows = [json.loads(line) for line in open(os.path.join(out, "sample", "comparisons_train.jsonl"))][:12]
    for row in rows:
        row["ranking"] = list(range(1, len(row["completions"]) + 1))  # "the first is best"
        row["completions"] = [c or "(empty)" for c in row["completions"]]
    path = tmp_path / "ranked.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = reward.main(
        [
            "--config",
            os.path.join(os.path.dirname(__file__), "..", "recipes", "tiny", "reward.yaml"),
            "--model_name_or_path",
            os.path.join(out, "sft"),
            "--dataset_name",
            str(path),
            "--output_dir",
            str(tmp_path / "rm"),
            "--max_steps",
            "2",
            "--eval_split_size",
            "0.25",
        ]  # fmt: skip
    )
    assert manifest["metrics"]["format"] == "ranked" and manifest["metrics"]["eval"]["num_pairs"] == 3 * 3


def test_reward_is_read_at_the_eos_token(world_tokenizer):
    from hf_rlhf.reward.scorer import encode_for_reward

    conversational = encode_for_reward(world_tokenizer, [{"role": "user", "content": "What color is the fox?"}], "red")
    plain = encode_for_reward(world_tokenizer, "What color is the fox? ", "red")
    assert conversational[-1] == plain[-1] == world_tokenizer.eos_token_id
    assert world_tokenizer.convert_tokens_to_ids("<|assistant|>") in conversational


def test_implicit_prompt_rows_split_the_shared_messages_off(world_tokenizer):
    """TRL's implicit-prompt preference rows (no `prompt` column; the conversations share the user turn)."""
    user = {"role": "user", "content": "What color is the fox?"}
    row = {
        "chosen": [user, {"role": "assistant", "content": "The fox is red."}],
        "rejected": [user, {"role": "assistant", "content": "No idea."}],
    }
    groups, dropped, fmt = to_groups(Dataset.from_list([row]), "implicit")
    assert fmt == "pairwise" and not dropped
    assert groups[0]["prompt"] == [user]
    assert groups[0]["completions"] == [row["chosen"][1:], row["rejected"][1:]]
    ids = encode_for_reward(world_tokenizer, groups[0]["prompt"], groups[0]["completions"][0])
    explicit = encode_for_reward(world_tokenizer, [user], "The fox is red.")
    assert ids == explicit  # the same tokens as with an explicit prompt: no empty user turn in front


def test_a_new_reward_head_is_drawn_from_n_0_1_over_sqrt_d_plus_1(tmp_path, world_tokenizer):
    from transformers import LlamaForCausalLM

    from hf_rlhf.configs import RewardStageConfig
    from hf_rlhf.modeling import reward_head
    from hf_rlhf.recipes import RecipeError
    from hf_rlhf.stages.reward import init_reward_head

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(world_tokenizer), hidden_size=120, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=world_tokenizer.pad_token_id,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "sft")  # an SFT model: no score head in its weights
    model = load_reward_model(str(tmp_path / "sft"), require_trained_head=False)
    std = init_reward_head(model, str(tmp_path / "sft"), "stiennon")
    assert std == pytest.approx(1 / 11)  # 1 / sqrt(120 + 1)
    weight = reward_head(model).weight
    assert weight.shape == (1, 120)
    assert abs(weight.mean().item()) < 3 * std / math.sqrt(120)  # 3 standard errors of the mean
    assert weight.std().item() == pytest.approx(1 / 11, rel=0.2)  # 3 standard errors; transformers' init is 0.02
    assert reward_head(model).bias is None or not reward_head(model).bias.any()
    # a head the checkpoint already holds (a trained reward model) is kept, and `model` keeps the architecture's init
    model.save_pretrained(tmp_path / "rm")
    trained = load_reward_model(str(tmp_path / "rm"))
    kept = reward_head(trained).weight.clone()
    assert init_reward_head(trained, str(tmp_path / "rm"), "stiennon") is None
    assert torch.equal(reward_head(trained).weight, kept)
    fresh = load_reward_model(str(tmp_path / "sft"), require_trained_head=False)
    before = reward_head(fresh).weight.clone()
    assert init_reward_head(fresh, str(tmp_path / "sft"), "model") is None
    assert torch.equal(reward_head(fresh).weight, before)
    assert RewardStageConfig(output_dir=str(tmp_path)).reward_head_init == "stiennon"  # the literature's default
    from trl import ModelConfig

    from hf_rlhf.configs import DataArguments
    from hf_rlhf.stages.reward import check_arguments

    bad = RewardStageConfig(output_dir=str(tmp_path / "out"), reward_head_init="xavier")
    with pytest.raises(RecipeError, match="reward_head_init must be 'stiennon' or 'model', got 'xavier'"):
        check_arguments(DataArguments(dataset_name="x"), bad, ModelConfig(model_name_or_path=str(tmp_path / "sft")))
