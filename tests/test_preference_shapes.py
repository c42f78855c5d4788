"""The public comparison shapes the reward stage reads: UltraFeedback-binarized (prompt repeated in the
conversations), text rows repeating the prompt, Anthropic/hh-rlhf dialogues, openbmb/UltraFeedback's rated
completions, per-response score columns (Stanford SHP); bad rows; and one reward run on an UltraFeedback-shaped file."""

import json
import os

import pytest
from datasets import Dataset

from hf_rlhf.data.formats import DataValidationError, preference_format
from hf_rlhf.data.preference import PreferenceOptions, parse_hh_dialogue, to_groups
from hf_rlhf.reward.scorer import encode_for_reward

ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
SHP = PreferenceOptions(score_columns={"human_ref_A": "score_A", "human_ref_B": "score_B"})


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def hh(*turns):
    """An Anthropic/hh-rlhf string: '\\n\\nHuman: ...\\n\\nAssistant: ...'."""
    return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns))


def completion(response, overall, fine_grained, ratings):
    """One of openbmb/UltraFeedback's `completions` (its fields; `annotations` {aspect: {"Rating", ...}})."""
    return {
        "model": "m",
        "principle": "helpfulness",
        "custom_system_prompt": "",
        "response": response,
        "overall_score": overall,
        "fine-grained_score": fine_grained,
        "critique": "c",
        "annotations": {a: {"Rating": r, "Rationale": "why"} for a, r in zip(ASPECTS, ratings, strict=True)},
    }


def ultrafeedback(instruction, completions):
    return {
        "source": "evol_instruct",
        "instruction": instruction,
        "models": ["m"] * len(completions),
        "completions": completions,
        "correct_answers": ["none"],
        "incorrect_answers": ["none"],
    }


@pytest.fixture(scope="module")
def world_tokenizer():
    from hf_rlhf.data.world import TinyWorld
    from hf_rlhf.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(TinyWorld(0).documents(200), vocab_size=300)


def test_ultrafeedback_binarized_row_encodes_the_user_turn_once(world_tokenizer):
    row = {
        "prompt": "What color is the fox?",
        "prompt_id": "abc",
        "chosen": [user("What color is the fox?"), assistant("The fox is red.")],
        "rejected": [user("What color is the fox?"), assistant("No idea.")],
        "messages": [user("What color is the fox?"), assistant("The fox is red.")],
        "score_chosen": 8.0,
        "score_rejected": 3.0,
    }
    groups, dropped, fmt = to_groups(Dataset.from_list([row]), "d")
    assert fmt == "pairwise" and dropped == {}
    group = groups[0]
    assert group["prompt"] == [user("What color is the fox?")]
    assert group["completions"] == [[assistant("The fox is red.")], [assistant("No idea.")]]
    assert group["pairs"] == [(0, 1)] and group["ranks"] == [1, 2] and group["converted"] == ["prompt_extracted"]
    text = world_tokenizer.decode(encode_for_reward(world_tokenizer, group["prompt"], group["completions"][0]))
    assert text == "<|user|>\nWhat color is the fox?<|end|>\n<|assistant|>\nThe fox is red.<|end|>"  # user turn once


def test_text_rows_repeating_the_prompt_lose_the_prefix_and_others_are_unchanged():
    rows = [
        {"prompt": "Q: sky?", "chosen": "Q: sky? Blue.", "rejected": "Q: sky? Green."},
        {"prompt": "Q: sea?", "chosen": " Wet.", "rejected": " Dry."},  # TRL's explicit prompt: kept as is
    ]
    groups, dropped, _ = to_groups(Dataset.from_list(rows), "d")
    assert groups[0]["prompt"] == "Q: sky?" and groups[0]["completions"] == [" Blue.", " Green."]
    assert groups[0]["converted"] == ["prompt_extracted"]
    assert groups[1]["completions"] == [" Wet.", " Dry."] and groups[1]["converted"] == []


def test_hh_rlhf_dialogues_become_conversations_auto_or_forced():
    rows = [
        {"chosen": hh("Hi", "Hello!", "Best pet?", "A cat."), "rejected": hh("Hi", "Hello!", "Best pet?", "Rocks.")},
        {"chosen": "plain text", "rejected": "other text"},
    ]
    data = Dataset.from_list(rows)
    groups, dropped, fmt = to_groups(data, "d")
    assert fmt == "pairwise" and dropped == {}
    assert groups[0]["prompt"] == [user("Hi"), assistant("Hello!"), user("Best pet?")]
    assert groups[0]["completions"] == [[assistant("A cat.")], [assistant("Rocks.")]]
    assert groups[0]["converted"] == ["hh_dialogue"]
    assert groups[1]["prompt"] == "" and groups[1]["completions"] == ["plain text", "other text"]  # left as text
    forced = PreferenceOptions(dataset_format="hh-rlhf")
    with pytest.raises(DataValidationError, match=r"^d: row 1: column 'chosen' is not a .*dialogue") as e:
        to_groups(data, "d", options=forced)
    assert "\n" not in str(e.value)
    assert to_groups(data, "d", "drop", forced)[1] == {"not_hh_dialogue": 1}
    # turns must alternate Human/Assistant and end with the Assistant
    assert parse_hh_dialogue(hh("Hi", "Hello")) == [user("Hi"), assistant("Hello")]
    assert parse_hh_dialogue("\n\nHuman: a\n\nHuman: b\n\nAssistant: c") is None
    assert parse_hh_dialogue(hh("Hi")) is None and parse_hh_dialogue("Hi\n\nAssistant: x") is None


def ultrafeedback_rows():
    return [
        ultrafeedback(
            "Name a red animal.",
            [
                completion("The fox.", 8.0, 4.5, ["5", "5", "N/A", "4"]),
                completion("A crow.", 3.0, 2.0, ["2", "2", "2", "2"]),
                completion("A cardinal.", 8.0, 4.0, ["4", "4", "4", "4"]),
                completion("Unrated.", None, None, ["N/A", "N/A", "N/A", "N/A"]),
            ],
        )
    ]


@pytest.mark.parametrize(
    "options, ranks, pairs",
    [
        (PreferenceOptions(), [1, 3, 1], [(0, 1), (2, 1)]),  # overall_score: 8 = 8 tie
        (PreferenceOptions(rating_score="fine-grained_score"), [1, 3, 2], [(0, 1), (0, 2), (2, 1)]),
        (PreferenceOptions(rating_score="aspects"), [1, 3, 2], [(0, 1), (0, 2), (2, 1)]),  # 4.67 (N/A skipped)
        (PreferenceOptions(rating_score="aspects", rating_aspects=("instruction_following",)), [2, 1], [(1, 0)]),
    ],
)
def test_ultrafeedback_ratings_become_k_way_rankings(options, ranks, pairs):
    groups, dropped, fmt = to_groups(Dataset.from_list(ultrafeedback_rows()), "d", options=options)
    assert fmt == "rated" and dropped == {}
    group = groups[0]
    assert group["prompt"] == [user("Name a red animal.")]
    kept = [c[0]["content"] for c in group["completions"]]
    scored = ["The fox.", "A crow.", "A cardinal."]
    if options.rating_aspects:  # only the crow and the cardinal rate instruction following
        scored = ["A crow.", "A cardinal."]
    assert kept == scored and group["ranks"] == ranks and sorted(group["pairs"]) == sorted(pairs)
    assert group["unscored_completions"] == 4 - len(scored) and group["converted"] == ["rated_to_ranking"]


def test_score_columns_rank_responses_and_bad_groups_are_counted_or_named():
    rows = [
        {"history": "Best pet?", "human_ref_A": "Cats.", "human_ref_B": "Dogs.", "score_A": 3, "score_B": 12},
        {"history": "Tea?", "human_ref_A": "Yes.", "human_ref_B": "No.", "score_A": 5, "score_B": 5},
        {"history": "Why?", "human_ref_A": "So.", "human_ref_B": "Because.", "score_A": None, "score_B": 1},
    ]
    data = Dataset.from_list(rows)
    assert preference_format(data.column_names, "d", score_columns=SHP.score_columns) == "scored"
    groups, dropped, fmt = to_groups(data, "d", "drop", SHP)
    assert fmt == "scored" and dropped == {"all_tied": 1, "too_few_completions": 1}
    assert groups[0]["prompt"] == [user("Best pet?")]
    assert groups[0]["completions"] == [[assistant("Cats.")], [assistant("Dogs.")]]
    assert groups[0]["ranks"] == [2, 1] and groups[0]["pairs"] == [(1, 0)]
    with pytest.raises(DataValidationError, match=r"^d: row 1: every completion has the same score"):
        to_groups(data, "d", options=SHP)
    with pytest.raises(DataValidationError, match=r"row 1: 1 of 2 completions have a usable score"):
        to_groups(data.select([0, 2]), "d", options=SHP)


@pytest.mark.parametrize(
    "rows, options, message",
    [
        ([ultrafeedback("", [completion("a", 1, 1, ["1"] * 4)] * 2)], None, r"row 0: column 'instruction' is ''"),
        (
            [ultrafeedback("q", [completion("a", 1.0, 1, ["1"] * 4), completion("", 2.0, 1, ["1"] * 4)])],
            None,
            r"row 0: column 'completions', item 1 is empty",
        ),
        ([{"history": "q", "human_ref_A": "a"}], SHP, r"expected columns \['human_ref_A', 'score_A'"),
        ([{"chosen": "a", "rejected": "b"}], PreferenceOptions(dataset_format="rated"), r"expected columns"),
    ],
)
def test_bad_rows_give_one_line_errors_naming_the_row(rows, options, message):
    with pytest.raises(DataValidationError, match=message) as e:
        to_groups(Dataset.from_list(rows), "dataset 'd', split 'train'", options=options)
    assert str(e.value).startswith("dataset 'd', split 'train': ") and "\n" not in str(e.value)


def test_reward_stage_on_ultrafeedback_ranks_k4_and_counts_rows(tmp_path, world_tokenizer):
    """Two steps on an openbmb/UltraFeedback-shaped JSONL: K=4 rated completions, ranked; the manifest counts rows."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_rlhf.plan.context import Context
    from hf_rlhf.plan.launch import read_launch
    from hf_rlhf.plan.pipeline import plan_stage
    from hf_rlhf.stages import reward

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(world_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
        pad_token_id=world_tokenizer.pad_token_id, eos_token_id=world_tokenizer.eos_token_id,
    )  # fmt: skip
    model_dir = str(tmp_path / "sft")
    LlamaForCausalLM(config).save_pretrained(model_dir)
    world_tokenizer.save_pretrained(model_dir)

    def row(i, scores, long=False):
        responses = [f"Answer {j} to {i}." + (" word" * 200 if long and j == 0 else "") for j in range(4)]
        return ultrafeedback(
            f"Question {i}?", [completion(r, s, 1.0, ["3"] * 4) for r, s in zip(responses, scores, strict=True)]
        )

    rows = [row(i, [9.0, 7.0, 5.0, 2.0]) for i in range(6)]
    rows += [row(6, [9.0, 7.0, None, 2.0]), row(7, [8.0, 8.0, 5.0, 5.0], long=True)]
    rows += [row(8, [6.0, 6.0, 6.0, 6.0]), row(9, [None, None, None, 4.0])]  # all tied; one usable score
    path = tmp_path / "ultrafeedback.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = [
        "--config", os.path.join(os.path.dirname(__file__), "..", "recipes", "tiny", "reward.yaml"),
        "--model_name_or_path", model_dir,
        "--dataset_name", str(path),
        "--output_dir", str(tmp_path / "rm"),
        "--max_steps", "2",
        "--eval_split_size", "0",
        "--max_length", "96",
        "--too_long", "truncate",
    ]  # fmt: skip
    planned = dict(plan_stage("reward", argv, Context(read_launch(None))).rows)  # the dry run detects the same
    assert "rated format: 'instruction', 'completions'" in planned["data"]
    assert planned["conversion"].startswith("completions ranked by 'overall_score'")
    manifest = reward.main(argv)
    metrics = manifest["metrics"]
    assert metrics["format"] == "rated"
    assert metrics["rows"] == {
        "train": {
            "used": 8,
            "dropped": {"all_tied": 1, "too_few_completions": 1},
            "truncated": {"too_long_truncated": 1},
            "converted": {"rated_to_ranking": 8},
            "completions_dropped": {"no_usable_score": 1},
        }
    }


@pytest.mark.parametrize(
    "data, training, message",
    [
        ({}, {"rating_score": "stars"}, "rating_score must be one of overall_score, fine-grained_score, aspects"),
        ({}, {"rating_aspects": []}, "rating_aspects must be a non-empty list"),
        ({}, {"score_columns": {"human_ref_A": 1}}, "score_columns must map response columns to score columns"),
        ({"dataset_format": "sharegpt"}, {}, "dataset_format 'sharegpt' is not a comparison format"),
        ({"dataset_format": "hh-rlhf"}, {"score_columns": {"a": "b"}}, "score_columns makes the format 'scored'"),
    ],
)
def test_reward_options_are_checked_before_any_data(data, training, message):
    from trl import ModelConfig

    from hf_rlhf.configs import DataArguments, RewardStageConfig
    from hf_rlhf.errors import RecipeError
    from hf_rlhf.stages.reward import check_arguments

    args = RewardStageConfig(output_dir="out", report_to="none", **training)
    with pytest.raises(RecipeError, match=message):
        check_arguments(DataArguments(dataset_name="d", **data), args, ModelConfig(model_name_or_path="m"))
