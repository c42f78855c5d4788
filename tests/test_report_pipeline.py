"""A run outside the tiny world: finished SFT, reward and RL stages of tiny random models, prompts that are not the
world's. The report measures every model against SFT on the RL dataset's test split, and the RL card's
`model-index` carries the same numbers."""

import os
import types

import pytest
from datasets import Dataset, DatasetDict
from huggingface_hub import ModelCard

from hf_rlhf.configs import DataArguments, EvaluationArguments
from hf_rlhf.eval.report import build_report, format_report, stage_evaluations
from hf_rlhf.hub.publish import publish_evaluation
from hf_rlhf.manifest import finish_stage

from .ppo_fixtures import tiny_models

QUESTIONS = [
    "Write a haiku about rain.",
    "What is the capital of France?",
    "Explain gravity to a child.",
    "Name three fruits.",
    "How do I boil an egg?",
    "Tell me a joke.",
]


def save_tiny_models(root) -> dict[str, str]:
    """Random SFT and RL policies (one tokenizer) and a reward model saved as model directories, and a prompt
    dataset (train and test splits) outside the tiny world."""
    tokenizer, sft, _, reward, _ = tiny_models(0)
    _, rl, _, _, _ = tiny_models(1)
    dirs = {name: str(root / name) for name in ("sft", "rl", "reward")}
    for name, model in (("sft", sft), ("rl", rl), ("reward", reward)):
        model.save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
    rows = Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in QUESTIONS]})
    dirs["prompts"] = str(root / "prompts")
    DatasetDict(train=rows, test=rows).save_to_disk(dirs["prompts"])
    return dirs


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The directories as a pipeline leaves them: each stage finished with its manifest and card."""
    root = tmp_path_factory.mktemp("run")
    dirs = save_tiny_models(root)
    dataset = {"name": dirs["prompts"], "fingerprint": "f"}
    finish_stage(dirs["sft"], "sft", configs={}, inputs={"model": "base", "dataset": dataset}, metrics={"loss": 1.0})
    finish_stage(dirs["reward"], "reward", configs={}, inputs={"model": dirs["sft"], "dataset": dataset}, metrics={})
    finish_stage(
        dirs["rl"],
        "rl",
        configs={"data": DataArguments(dataset_name=dirs["prompts"])},  # the report reads its test split
        inputs={"model": dirs["sft"], "reward_model": dirs["reward"], "reward_funcs": [], "dataset": dataset},
        metrics={"algorithm": "ppo"},
    )
    return root, dirs


def evaluation(**overrides) -> EvaluationArguments:
    values = dict(max_new_tokens=5, best_of_n=2, batch_size=8, bootstrap_resamples=50, num_samples_shown=2)
    return EvaluationArguments(**{**values, **overrides})


def test_report_outside_the_tiny_world_compares_every_model_with_sft(run):
    root, dirs = run
    stages = {name: dirs[name] for name in ("sft", "reward", "rl")}
    report = build_report(str(root), evaluation(), stages, prompts_dir=None, world_seed=None)
    assert report["prompts"] == {"dataset": "prompts", "split": "test", "num_prompts": len(QUESTIONS)}
    assert report["reference"] == "SFT"
    rows = {r["model"]: r for r in report["rows"]}
    assert list(rows) == ["SFT", "SFT best-of-2 (reward model)", "RL (PPO)"]
    assert not any("gold" in r for r in rows.values())  # no gold labeler outside the tiny world
    assert "rm_win_rate" not in rows["SFT"] and rows["SFT"]["kl_to_sft"] == 0.0
    for name in ("SFT best-of-2 (reward model)", "RL (PPO)"):
        w = rows[name]["rm_win_rate"]
        assert w["n"] == len(QUESTIONS) and w["wins"] + w["ties"] + w["losses"] == len(QUESTIONS)
        assert w["mean"] == pytest.approx((w["wins"] + 0.5 * w["ties"]) / len(QUESTIONS))
        assert 0 <= w["ci_low"] <= w["mean"] <= w["ci_high"] <= 1
    # best-of-N's completions are not sampled from one model: its KL is the bound log 2 - 1/2, not an estimate
    assert rows["SFT best-of-2 (reward model)"]["kl_to_sft_bound"] == pytest.approx(0.19315, abs=1e-5)
    assert rows["RL (PPO)"]["kl_to_sft"] != 0.0  # another random model: a non-zero estimate
    for row in rows.values():
        low, high = row["reward_model_ci"]
        assert low <= row["reward_model_score"] <= high
        assert 0 <= row["missing_eos_rate"] <= 1 and 0 < row["mean_length"] <= 5
    assert len(report["samples"]) == 2 and report["samples"][0]["prompt"] == QUESTIONS[0]
    text = format_report(report)
    assert "| model | n | reward model score | RM 95% interval | RM win rate vs SFT (95% CI) | RM ties |" in text
    assert "6 prompts from prompts (test split)" in text

    publish_evaluation(types.SimpleNamespace(output_dir=str(root), stages=stages, hub=None), report)
    card = ModelCard.load(os.path.join(dirs["rl"], "README.md"))
    results = {r.metric_type: r for r in card.data.eval_results}
    assert results["rm_win_rate_vs_sft"].metric_value == round(rows["RL (PPO)"]["rm_win_rate"]["mean"], 4)
    assert results["kl_to_sft"].metric_value == round(rows["RL (PPO)"]["kl_to_sft"], 4)
    assert {"reward_model_score", "missing_eos_rate", "distinct_1", "mean_length"} <= set(results)
    assert results["rm_win_rate_vs_sft"].dataset_name == "prompts" and "gold_score" not in results
    assert "| SFT | 6 |" in card.content and "| RL (PPO) | 6 |" in card.content  # the reference row beside it
    sft_card = ModelCard.load(os.path.join(dirs["sft"], "README.md"))
    assert "rm_win_rate_vs_sft" not in {r.metric_type for r in sft_card.data.eval_results}


def test_extra_models_and_another_reference(run):
    root, dirs = run
    stages = {name: dirs[name] for name in ("sft", "reward", "rl")}
    extra = {"models": {"other": dirs["rl"]}, "reference_model": "other"}
    ev = evaluation(eval_dataset=dirs["prompts"], eval_split="train", max_eval_prompts=4, best_of_n=1, **extra)
    report = build_report(str(root), ev, stages, prompts_dir=None, world_seed=None)
    rows = {r["model"]: r for r in report["rows"]}
    assert list(rows) == ["SFT", "RL (PPO)", "other"] and report["prompts"]["num_prompts"] == 4
    # the same model as the RL stage, sampled with the same seed: identical completions, every prompt a tie
    assert rows["RL (PPO)"]["rm_win_rate"]["tie_rate"] == 1.0 and rows["RL (PPO)"]["rm_win_rate"]["mean"] == 0.5
    assert rows["RL (PPO)"]["kl_to_sft"] == pytest.approx(0.0, abs=1e-5)  # KL to the reference, itself
    assert "other" not in stage_evaluations(report)  # no stage of the run: in no card
    assert stage_evaluations(report)["rl"]["reference_row"]["model"] == "other"


def test_a_run_without_held_out_prompts_says_so(run, tmp_path):
    root, dirs = run
    data = str(tmp_path / "only_train")
    DatasetDict(train=Dataset.from_dict({"prompt": QUESTIONS})).save_to_disk(data)
    rl = tmp_path / "rl"
    rl.mkdir()
    inputs = {"model": dirs["sft"], "dataset": {"name": data, "fingerprint": "f"}}
    finish_stage(str(rl), "rl", configs={"data": DataArguments(dataset_name=data)}, inputs=inputs, metrics={})
    report = build_report(str(root), evaluation(), {"rl": str(rl)}, prompts_dir=None, world_seed=None)
    assert report["rows"] == [] and "no test split: set evaluation.eval_dataset" in report["note"]
    assert "Not measured: the RL dataset has no test split" in format_report(report)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"reference_model": "RL"}, "reference_model` 'RL' must be 'SFT' or a name in `models`"),
        ({"models": {"SFT": "x"}}, "'SFT' is the name of a pipeline row"),
        ({"models": "{not json"}, "mapping or JSON object"),
        ({"best_of_n": 0}, "`best_of_n` must be an integer >= 1"),
        ({"max_eval_prompts": 0}, "`max_eval_prompts` must be at least 1"),
    ],
)
def test_evaluation_arguments_refuse_bad_values(values, message):
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)")):
        EvaluationArguments(**values)
