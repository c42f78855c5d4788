"""Prompts of `sample` and `rl`, checked before any model loads; labelers; the tiny recipes outside the tiny world."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from datasets import Dataset

from hf_rlhf import modeling
from hf_rlhf.cli import main as cli_main
from hf_rlhf.data.prompts import check_prompts, model_positions, prompt_length_limit, truncate_prompt
from hf_rlhf.data.world import TinyWorld, is_world_question
from hf_rlhf.errors import DataValidationError, RecipeError
from hf_rlhf.manifest import require_complete
from hf_rlhf.reward.scorer import tiny_world_gold
from hf_rlhf.stages import rl, sample
from hf_rlhf.stages.rl_rewards import trl_reward
from hf_rlhf.stages.sample_labelers import JUDGE_ANSWERS, JUDGE_TEMPLATE, JudgeScorer, rank

from .ppo_fixtures import tiny_models

RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "tiny")
# trl-lib/ultrafeedback-prompt's shape: one conversational `prompt` per row, none of them the tiny world's
OUTSIDE = [
    "Write a haiku about rain.",
    "Name two prime numbers.",
    "Is a tomato a fruit?",
    "Say hello in French.",
    "What is two plus two?",
    "Give me a color name.",
    "Why is the sky blue?",
    "What does a fox say?",
]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """An SFT-like policy and a reward model (random, 128 positions), and a 256-position config without weights."""
    tokenizer, policy, _, value_model, _ = tiny_models()
    root = tmp_path_factory.mktemp("models")
    dirs = {name: str(root / name) for name in ("sft", "reward", "positions256")}
    for name, model in (("sft", policy), ("reward", value_model)):
        model.save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
    policy.config.max_position_embeddings = 256
    policy.config.save_pretrained(dirs["positions256"])
    tokenizer.save_pretrained(dirs["positions256"])
    return dirs


@pytest.fixture()
def no_models(monkeypatch):
    """Every model load fails: what is checked before models load is checked without them."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(modeling, "load_pretrained", refuse)


def write_prompts(path, prompts) -> str:
    """A local dataset folder laid out as trl-lib/ultrafeedback-prompt on the Hub (data/train-*.parquet)."""
    os.makedirs(os.path.join(path, "data"), exist_ok=True)
    Dataset.from_dict({"prompt": prompts}).to_parquet(os.path.join(path, "data", "train-00000-of-00001.parquet"))
    return str(path)


def long_text(tokenizer, n: int) -> str:
    """A text of about `n` tokens (exactly, when decoding and encoding again agree)."""
    ids = tokenizer(" ".join(["the fox ate seven berries near the quiet river"] * n), add_special_tokens=False)
    text = tokenizer.decode(ids["input_ids"][:n])
    return text


# --------------------------------------------------------------------------------- bad prompts, before models
@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        (
            ["Hi?", ""],
            r"row 1, column 'prompt': expected a non-empty string or a conversation ending with a user turn",
        ),
        ([user("Hi?"), []], r"row 1, column 'prompt': expected a non-empty list of \{'role', 'content'\} messages"),
        ([3, 4], r"row 0, column 'prompt': expected a non-empty string or a conversation .*, got 3"),
        (
            [user("Hi?"), user("Hi?") + [{"role": "assistant", "content": "Hello."}]],
            r"row 1, column 'prompt': expected the last message from 'user'",
        ),
    ],
    ids=["empty string", "empty conversation", "integer", "ends with assistant"],
)
def test_bad_prompts_are_one_line_errors_before_models_load(prompts, message, models, tmp_path, no_models, capsys):
    data = write_prompts(tmp_path / "data", prompts)
    argv = ["--model_name_or_path", models["sft"], "--dataset_name", data, "--output_dir", str(tmp_path / "out")]
    with pytest.raises(DataValidationError, match=message):
        sample.main(argv)
    assert cli_main(["sample", *argv]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-1].startswith("hf-rlhf sample: error: dataset")
    with pytest.raises(DataValidationError, match=message):
        rl.main(["--config", os.path.join(RECIPES, "rl.yaml"), "--reward_model_path", models["reward"], *argv])


def test_too_few_prompts_for_one_ppo_update(models, tmp_path, no_models):
    data = write_prompts(tmp_path / "data", [user("Hi?")])
    argv = ["--model_name_or_path", models["sft"], "--reward_model_path", models["reward"], "--dataset_name", data,
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(
        DataValidationError, match=r"1 prompt\(s\), but 4 are needed \(one ppo update: rollout_batch_size 4"
    ):
        rl.main(["--config", os.path.join(RECIPES, "rl.yaml"), *argv, "--per_device_train_batch_size", "4",
                 "--num_mini_batches", "1"])  # fmt: skip
    with pytest.raises(
        DataValidationError, match=r"2 are needed \(one grpo update: generation_batch_size 8 / num_generations 4\)"
    ):
        rl.main(["--config", os.path.join(RECIPES, "rl_grpo.yaml"), *argv, "--per_device_train_batch_size", "8",
                 "--num_generations", "4"])  # fmt: skip


def test_a_long_prompt_never_reaches_a_256_position_model(models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models["positions256"])
    text = long_text(tokenizer, 1201)
    assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) == 1201
    limit = prompt_length_limit(None, model_positions(models["positions256"]), 24)
    assert limit == 232
    data = Dataset.from_dict({"prompt": ["Short prompt.", text]})
    where = "dataset 'p', split 'train'"

    kept, counts = check_prompts(data, where, tokenizer, limit, "drop")
    assert kept["prompt"] == ["Short prompt."] and counts == {"used": 1, "dropped": {"over_max_prompt_length": 1}}

    kept, counts = check_prompts(data, where, tokenizer, limit, "truncate")
    assert counts == {"used": 2, "truncated": {"over_max_prompt_length": 1}}
    cut = kept["prompt"][1]
    assert text.endswith(cut) and 200 < len(tokenizer(cut, add_special_tokens=False)["input_ids"]) <= 232

    with pytest.raises(DataValidationError, match=r"1 prompt\(s\) longer than max_prompt_length=232 tokens: row 1 "):
        check_prompts(data, where, tokenizer, limit, "error")
    with pytest.raises(RecipeError, match="more than the model's 256 positions"):
        prompt_length_limit(250, 256, 24)


def test_chat_formatted_text_prompts_are_counted_and_warned_about(models, caplog):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models["positions256"])
    marked = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Q?"}], tokenize=False, add_generation_prompt=True
    )
    assert marked != "Q?"  # the template adds markup with special tokens
    data = Dataset.from_dict({"prompt": ["Plain question?", marked, marked]})
    with caplog.at_level("WARNING", logger="hf_rlhf.data.prompts"):
        kept, _ = check_prompts(data, "dataset 'p', split 'train'", tokenizer, None)
    assert len(kept) == 3  # kept as they are: content, not markup
    assert "2 of 3 text prompts contain special-token strings (row 1" in caplog.text and "conversations" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="hf_rlhf.data.prompts"):
        check_prompts(Dataset.from_dict({"prompt": [[{"role": "user", "content": "Q?"}]]}), "d", tokenizer, None)
    assert "special-token strings" not in caplog.text


def test_conversations_lose_their_oldest_turns_first_then_the_start_of_the_last(models):
    from transformers import AutoTokenizer

    from hf_rlhf.data.prompts import prompt_lengths

    tokenizer = AutoTokenizer.from_pretrained(models["sft"])
    system = {"role": "system", "content": "Be brief."}
    old = [{"role": "user", "content": long_text(tokenizer, 60)}, {"role": "assistant", "content": "Fine."}]
    conversation = [system, *old, {"role": "user", "content": "What color is the fox?"}]
    fitted = truncate_prompt(tokenizer, conversation, 40)
    assert fitted == [system, conversation[-1]]
    single = [{"role": "user", "content": long_text(tokenizer, 80)}]
    fitted = truncate_prompt(tokenizer, single, 40)
    assert single[0]["content"].endswith(fitted[0]["content"]) and prompt_lengths(tokenizer, [fitted])[0] <= 40
    assert truncate_prompt(tokenizer, [{"role": "system", "content": long_text(tokenizer, 80)}, *single], 40) is None


def test_sample_counts_and_drops_long_prompts_before_models_load(models, tmp_path, no_models):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models["sft"])
    data = write_prompts(tmp_path / "data", [user("Hi?"), user(long_text(tokenizer, 300))])
    argv = ["--model_name_or_path", models["sft"], "--dataset_name", data, "--output_dir", str(tmp_path / "out"),
            "--long_prompts", "error"]  # fmt: skip
    with pytest.raises(DataValidationError, match=r"longer than max_prompt_length=96 tokens: row 1"):
        sample.main(argv)  # 128 positions - 32 new tokens


# -------------------------------------------------------------------------------------------------- labelers
def test_sample_with_a_python_function_labeler(models, tmp_path, monkeypatch):
    (tmp_path / "my_labelers.py").write_text(
        "def shortest_first(prompts, completions):\n    return [[-len(c) for c in row] for row in completions]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = write_prompts(tmp_path / "data", [user(p) for p in OUTSIDE[:3]])
    out = tmp_path / "out"
    manifest = sample.main(["--model_name_or_path", models["sft"], "--dataset_name", data, "--output_dir", str(out),
                            "--labeler", "my_labelers:shortest_first", "--num_completions", "3",
                            "--max_new_tokens", "6", "--test_split_size", "0"])  # fmt: skip
    assert manifest["metrics"]["labeler"] == "my_labelers:shortest_first"
    assert manifest["metrics"]["rows"] == {"train": {"used": 3}}
    for row in map(json.loads, open(out / "comparisons_train.jsonl")):
        lengths = [-len(c) for c in row["completions"]]
        assert row["ranking"] == [1 + sum(o > s for o in lengths) for s in lengths]
    with pytest.raises(RecipeError, match="labeler 'my_labelers:nope' could not be imported"):
        sample.main(["--model_name_or_path", models["sft"], "--dataset_name", data, "--output_dir", str(out),
                     "--labeler", "my_labelers:nope"])  # fmt: skip
    with pytest.raises(RecipeError, match="labeler 'reward_model' needs `labeler_model`"):
        sample.main(["--model_name_or_path", models["sft"], "--dataset_name", data, "--output_dir", str(out),
                     "--labeler", "reward_model"])  # fmt: skip


@pytest.mark.parametrize("labeler", ["reward_model", "judge"])
def test_sample_with_a_model_labeler(labeler, models, tmp_path):
    data = write_prompts(tmp_path / "data", [user(p) for p in OUTSIDE[:3]])
    out = tmp_path / "out"
    labeler_model = models["reward" if labeler == "reward_model" else "sft"]
    manifest = sample.main(["--model_name_or_path", models["sft"], "--dataset_name", data, "--output_dir", str(out),
                            "--labeler", labeler, "--labeler_model", labeler_model, "--num_completions", "3",
                            "--max_new_tokens", "6", "--test_split_size", "0"])  # fmt: skip
    assert manifest["metrics"]["labeler"] == labeler and manifest["metrics"]["labeler_model"] == labeler_model
    rows = [json.loads(line) for line in open(out / "comparisons_train.jsonl")]
    assert len(rows) == 3 and all(len(r["ranking"]) == 3 and min(r["ranking"]) == 1 for r in rows)


def test_judge_scores_yes_minus_no(models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models["sft"])
    model = AutoModelForCausalLM.from_pretrained(models["sft"]).eval()
    (score,) = JudgeScorer(model, tokenizer)(["Is a tomato a fruit?"], ["Yes, it is."])
    context = tokenizer(
        JUDGE_TEMPLATE.format(prompt="Is a tomato a fruit?", response="Yes, it is."), add_special_tokens=False
    )["input_ids"]
    logps = []
    for answer in JUDGE_ANSWERS:
        ids = context + tokenizer(answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        logps.append(sum(logp[i - 1, ids[i]].item() for i in range(len(context), len(ids))))
    assert score == pytest.approx(logps[0] - logps[1], abs=1e-3)  # padded batch vs one sequence: float noise


# --------------------------------------------------------------------------------- outside the tiny world
def test_world_questions_and_the_gold_reward_outside_the_world():
    question = TinyWorld(0).all_prompts()[5].text
    assert is_world_question(question) and is_world_question(user(question))
    assert not is_world_question("Where does the bear live in winter, and why?")
    gold = tiny_world_gold(0)
    scores = gold([user(question), user(OUTSIDE[0])], ["The fox is red.", "Rain falls."])
    assert math.isfinite(scores[0]) and math.isnan(scores[1])
    assert trl_reward(gold, "tiny_world_gold")([user(OUTSIDE[0])], [[{"role": "assistant", "content": "x"}]]) == [None]
    ranked = rank(sample.SampleArguments(labeler="tiny_world"), [question, OUTSIDE[0]], [["a", "b"], ["c", "d"]], None)
    assert len(ranked[0]) == 2 and ranked[1] == []


def test_the_tiny_sample_recipe_on_prompts_outside_the_world(models, tmp_path):
    data = write_prompts(tmp_path / "data", [user(p) for p in OUTSIDE[:4]])
    out = tmp_path / "out"
    manifest = sample.main(["--config", os.path.join(RECIPES, "sample.yaml"), "--model_name_or_path", models["sft"],
                            "--dataset_name", data, "--output_dir", str(out), "--max_new_tokens", "6",
                            "--num_completions", "2", "--labeler", "tiny_world"])  # fmt: skip
    metrics = manifest["metrics"]
    assert metrics["labeler"] == "tiny_world" and metrics["unranked_outside_world"] == 4
    require_complete(str(out))
    rows = [json.loads(line) for name in os.listdir(out) if name.endswith(".jsonl") for line in open(out / name)]
    assert len(rows) == 4 and all(r["ranking"] == [] and len(r["completions"]) == 2 for r in rows)


def test_the_tiny_rl_recipe_on_prompts_outside_the_world(models, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models["sft"])
    data = write_prompts(tmp_path / "data", [user(p) for p in OUTSIDE] + [user(long_text(tokenizer, 300))])
    argv = ["--config", os.path.join(RECIPES, "rl.yaml"), "--model_name_or_path", models["sft"],
            "--reward_model_path", models["reward"], "--dataset_name", data, "--output_dir", str(tmp_path / "rl"),
            "--max_steps", "2", "--per_device_train_batch_size", "4", "--num_mini_batches", "1",
            "--num_ppo_epochs", "1", "--max_new_tokens", "8"]  # fmt: skip
    manifest = rl.main(argv)
    metrics = manifest["metrics"]
    assert metrics["updates"] == 2 and metrics["unscored_outside_world"] == 8
    assert metrics["rows"] == {"train": {"used": 8, "dropped": {"over_max_prompt_length": 1}}}
    assert metrics["final_reward/tiny_world_gold"] is None and math.isfinite(metrics["final_score"])
    assert all(h["reward/tiny_world_gold"] is None for h in manifest["history"])
    require_complete(str(tmp_path / "rl"))


def test_a_weighted_gold_reward_outside_the_world_is_refused_before_models_load(models, tmp_path, no_models):
    data = write_prompts(tmp_path / "data", [user(p) for p in OUTSIDE])
    argv = ["--config", os.path.join(RECIPES, "rl.yaml"), "--model_name_or_path", models["sft"],
            "--reward_model_path", models["reward"], "--dataset_name", data, "--output_dir", str(tmp_path / "rl"),
            "--reward_weights", "1.0", "0.5", "--per_device_train_batch_size", "4", "--num_mini_batches", "1"]  # fmt: skip
    with pytest.raises(RecipeError, match=r"8 of 8 prompts are not questions of the tiny world.*weight 0"):
        rl.main(argv)


def test_grpo_skips_the_gold_reward_outside_the_world(models, tmp_path):
    data = write_prompts(tmp_path / "data", [user(p) for p in OUTSIDE[:4]])
    argv = ["--config", os.path.join(RECIPES, "rl_grpo.yaml"), "--model_name_or_path", models["sft"],
            "--reward_model_path", models["reward"], "--dataset_name", data, "--output_dir", str(tmp_path / "grpo"),
            "--max_steps", "1", "--per_device_train_batch_size", "4", "--num_generations", "2",
            "--max_completion_length", "6"]  # fmt: skip
    manifest = rl.main(argv)
    assert manifest["metrics"]["updates"] == 1 and manifest["metrics"]["unscored_outside_world"] == 4
    assert all(math.isfinite(h["reward"]) for h in manifest["history"])
    assert all(h["rewards/tiny_world_gold/mean"] is None for h in manifest["history"])  # NaN: scored no prompt
