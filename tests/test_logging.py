"""Logging of the RL stage: the completions table (`hf_rlhf.completions_log`) in `completions.jsonl` and the trackers,
TensorBoard event files read back, and `training_curves.png` for PPO, GRPO and RLOO. Tiny models, seconds each."""

from __future__ import annotations

import json
import math
import os
import sys
import types

import pytest
from datasets import DatasetDict
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hf_rlhf.completions_log import COMPLETIONS_FILE, MAX_CELL_CHARS, CompletionsLog, RewardRecorder, render_text
from hf_rlhf.ppo.plots import curve_keys, plot_training_curves
from hf_rlhf.ppo.trainer import PPOTrainer

from .ppo_fixtures import ppo_config, short_answers, tiny_models

CHAT = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What colour is the fox?"}]


def read_events(directory) -> tuple[dict[str, list[tuple[int, float]]], dict[str, list[tuple[int, str]]]]:
    """Every scalar and text summary in the event files under `directory`: `({tag: [(step, value)]}, {tag: [(step,
    text)]})`, text tags without torch's `/text_summary` suffix."""
    scalars, texts = {}, {}
    for root, _, files in os.walk(directory):
        if not any(f.startswith("events.out.tfevents") for f in files):
            continue
        acc = EventAccumulator(root, size_guidance={"scalars": 0, "tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
        for tag in acc.Tags()["tensors"]:
            name = tag.removesuffix("/text_summary")
            texts.setdefault(name, []).extend(
                (e.step, e.tensor_proto.string_val[0].decode()) for e in acc.Tensors(tag)
            )
    return scalars, texts


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------------------------------------ CompletionsLog
def test_completions_log_writes_jsonl_and_a_tensorboard_table(tmp_path):
    log = CompletionsLog(str(tmp_path), every=2, rows=2, report_to=["tensorboard", "mlflow"])  # mlflow: ignored
    assert [s for s in range(7) if log.due(s)] == [2, 4, 6]
    long = "a | b\n" + "x" * (2 * MAX_CELL_CHARS)
    prompts = [CHAT, "The owl eats | fish", "never logged: over rows"]
    completions = [[{"role": "assistant", "content": long}], "red", "blue"]
    log.log(2, prompts, completions, {"score": [0.5, float("nan"), 1.0], "gold": [1, None, 0]})
    log.log(4, prompts[:1], ["short"], {"score": [-1.0], "gold": [0.0]})
    log.close()

    rows = read_jsonl(tmp_path / COMPLETIONS_FILE)
    assert [r["step"] for r in rows] == [2, 2, 4]  # capped at 2 rows per table
    assert all(list(r) == ["step", "prompt", "completion", "score", "gold"] for r in rows)
    assert rows[0]["prompt"] == "system: Answer briefly.\nuser: What colour is the fox?"
    assert rows[0]["completion"] == long  # whole in the jsonl
    assert rows[1]["score"] is None and rows[1]["gold"] is None  # NaN and None: null
    assert log.logging_dir.startswith(str(tmp_path / "runs"))  # the Trainer's default: <output_dir>/runs/<date_host>
    _, texts = read_events(tmp_path / "runs")
    assert [step for step, _ in texts["completions"]] == [2, 4]
    table = texts["completions"][0][1]
    header, rule, first, second = table.split("\n")
    assert header == "| step | prompt | completion | score | gold |" and rule == "|---|---|---|---|---|"
    assert "user: What colour is the fox?" in first and "a \\| b<br>" in first  # one line per row, | escaped
    assert first.count("x") < MAX_CELL_CHARS + 10 and "…" in first  # truncated in the tracker only
    assert second == "| 2 | The owl eats \\| fish | red |  |  |"
    assert "short" in texts["completions"][1][1]


def test_completions_log_rejects_mismatched_rows(tmp_path):
    log = CompletionsLog(str(tmp_path), every=1, rows=4)
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        log.log(1, ["a", "b"], ["c"], {})
    with pytest.raises(ValueError, match="score 'score' has 1 values for 2 completions"):
        log.log(1, ["a", "b"], ["c", "d"], {"score": [1.0]})
    with pytest.raises(ValueError, match="score name 'prompt' is a column"):
        log.log(1, ["a"], ["c"], {"prompt": [1.0]})
    with pytest.raises(ValueError, match="every >= 0 and rows >= 1"):
        CompletionsLog(str(tmp_path), every=1, rows=0)
    assert not os.path.exists(tmp_path / COMPLETIONS_FILE)
    assert not any(CompletionsLog(str(tmp_path), every=0, rows=4).due(s) for s in range(20))


def test_completions_log_to_wandb_and_trackio(tmp_path, monkeypatch):
    """Fake `wandb` and `trackio` modules: a table is logged to each, and to wandb only while a run is active."""
    logged = {"wandb": [], "trackio": []}

    class Table:
        def __init__(self, columns=None, data=None, dataframe=None):
            self.columns = list(dataframe.columns) if dataframe is not None else columns
            self.data = dataframe.values.tolist() if dataframe is not None else data

    for name in logged:
        module = types.ModuleType(name)
        module.Table, module.run = Table, object()
        module.log = lambda values, name=name: logged[name].append(values)
        monkeypatch.setitem(sys.modules, name, module)
    log = CompletionsLog(str(tmp_path), every=1, rows=8, report_to=["wandb", "trackio"])
    log.log(1, [CHAT], ["red"], {"score": [0.25]})
    for name in logged:
        (values,) = logged[name]
        assert values["completions"].columns == ["step", "prompt", "completion", "score"]
        assert values["completions"].data == [[1, render_text(CHAT), "red", 0.25]]
    sys.modules["wandb"].run = None  # no active run: nothing logged
    log.log(2, ["q"], ["a"], {})
    assert len(logged["wandb"]) == 1 and len(logged["trackio"]) == 2


def test_reward_recorder_keeps_the_last_batch_and_the_weighted_total():
    def gold(prompts, completions, **kwargs):
        return [None if c == "?" else 1.0 for c in completions]

    recorder = RewardRecorder(["short_answers", "gold"], [1.0, 0.5])
    funcs = recorder.wrap([lambda prompts, completions, **kw: short_answers(prompts, completions), gold])
    assert funcs[1].__name__ == "gold"
    for batch in (["old"], ["aaaa", "?"]):  # TRL calls every function on a batch, in order
        for fn in funcs:
            fn(prompts=["p"] * len(batch), completions=batch, trainer_state=None)
    assert recorder.completions == ["aaaa", "?"]
    scores = recorder.scores()
    assert list(scores) == ["reward", "short_answers", "gold"]
    assert scores["reward"] == pytest.approx([-0.2 + 0.5, -0.05])  # a missing reward is left out of the total
    assert scores["gold"] == [1.0, None]


def test_training_curves_from_trl_and_ppo_histories(tmp_path):
    trl_history = [
        {"step": s, "reward": 0.1 * s, "reward_std": 0.2, "kl": 0.01 * s, "entropy": 2.0, "loss": 0.0,
         "completions/mean_length": 8.0, "rewards/gold/mean": None if s == 1 else 1.0, "rewards/gold/std": 0.0}
        for s in (1, 2, 3)
    ]  # fmt: skip
    keys = curve_keys(trl_history)
    assert keys == ["reward", "kl", "entropy", "completions/mean_length", "rewards/gold/mean"]
    plot_training_curves(trl_history, str(tmp_path / "trl.png"))
    assert os.path.getsize(tmp_path / "trl.png") > 0
    ppo_history = [{"step": 1, "score": -1.0, "kl": 0.0, "reward/gold": math.nan, "response_length": 4.0}]
    assert curve_keys(ppo_history) == ["score", "kl", "response_length", "reward/gold"]
    plot_training_curves(ppo_history, str(tmp_path / "ppo.png"))
    assert os.path.isfile(tmp_path / "ppo.png")
    plot_training_curves([{"step": 1, "loss": 0.1}], str(tmp_path / "none.png"))
    assert not os.path.exists(tmp_path / "none.png")  # no curve to draw: no file


# ------------------------------------------------------------------------------------------------ the RL stage
@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory) -> tuple[str, str]:
    """A random tiny policy with its tokenizer, and tiny-world prompts, saved as the RL stage reads them."""
    tokenizer, policy, _, _, prompts = tiny_models()
    out = tmp_path_factory.mktemp("tiny_policy")
    policy.save_pretrained(out / "policy")
    tokenizer.save_pretrained(out / "policy")
    DatasetDict({"train": prompts}).save_to_disk(str(out / "prompts"))
    return str(out / "policy"), str(out / "prompts")


def run_trl_stage(algorithm: str, tiny_policy, output_dir, *extra: str) -> dict:
    from hf_rlhf.stages import rl

    policy, prompts = tiny_policy
    recipe = os.path.join(os.path.dirname(__file__), "..", "recipes", "tiny", f"rl_{algorithm}.yaml")
    return rl.main(["--config", recipe, "--model_name_or_path", policy, "--dataset_name", prompts,
                    "--reward_funcs", "tests.ppo_fixtures:short_answers", "tiny_world_gold",
                    "--reward_weights", "1.0", "0.0", "--output_dir", str(output_dir), "--max_steps", "2",
                    "--per_device_train_batch_size", "4", "--num_generations", "4", "--max_completion_length", "6",
                    "--logging_steps", "1", *extra])  # fmt: skip


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_trl_stage_logs_completions_scalars_and_curves(algorithm, tiny_policy, tmp_path):
    out = tmp_path / algorithm
    extra = ["--report_to", "tensorboard", "--log_completions_steps", "1", "--log_completions_rows", "3"]
    manifest = run_trl_stage(algorithm, tiny_policy, out, *extra)
    assert manifest["metrics"]["updates"] == 2
    assert os.path.getsize(out / "training_curves.png") > 0

    rows = read_jsonl(out / COMPLETIONS_FILE)
    assert [r["step"] for r in rows] == [1, 1, 1, 2, 2, 2]
    assert all(list(r) == ["step", "prompt", "completion", "reward", "short_answers", "tiny_world_gold"] for r in rows)
    for r in rows:
        assert r["prompt"].startswith("user: ") and isinstance(r["completion"], str)
        assert r["short_answers"] == pytest.approx(-len(r["completion"]) / 20)
        assert r["reward"] == pytest.approx(r["short_answers"])  # tiny_world_gold has weight 0
        assert r["tiny_world_gold"] in (0.0, 1.0)

    scalars, texts = read_events(out)
    for tag in ("train/reward", "train/rewards/short_answers/mean", "train/completions/mean_length"):
        assert [step for step, _ in scalars[tag]] == [1, 2], tag
    assert [step for step, _ in texts["completions"]] == [1, 2]
    table = texts["completions"][1][1]
    assert table.count("\n") == 2 + 3 - 1 and rows[-1]["prompt"] in table  # header, rule and 3 rows


def test_log_completions_steps_0_writes_no_table(tiny_policy, tmp_path):
    extra = ["--report_to", "tensorboard", "--log_completions_steps", "0", "--max_steps", "1"]
    run_trl_stage("grpo", tiny_policy, tmp_path / "grpo", *extra)
    assert not os.path.exists(tmp_path / "grpo" / COMPLETIONS_FILE)
    scalars, texts = read_events(tmp_path / "grpo")
    assert "train/reward" in scalars and "completions" not in texts
    assert os.path.isfile(tmp_path / "grpo" / "training_curves.png")


def test_ppo_tensorboard_logging(tmp_path, monkeypatch):
    """PPO with `report_to: tensorboard` and no logging directory set writes its scalars under `output_dir` (the
    Accelerator's project dir; the Trainer's default is `<output_dir>/runs/<date_host>`), and the completions table of
    every `log_completions_steps` update through `completions_log`. Was: "Logging with tensorboard requires a
    logging_dir" after the models loaded."""
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    tokenizer, policy, ref, value, prompts = tiny_models()
    args = ppo_config(tmp_path / "out", report_to=["tensorboard"], max_steps=2, num_ppo_epochs=1, max_new_tokens=6)
    log = CompletionsLog(args.output_dir, every=1, rows=3, report_to=args.report_to)
    trainer = PPOTrainer(args, policy, ref, value, tokenizer, prompts, [short_answers], completions_log=log)
    history = trainer.train()
    assert len(history) == 2

    scalars, texts = read_events(tmp_path / "out")
    for tag in ("score", "kl"):
        assert [step for step, _ in scalars[tag]] == [1, 2], tag
        assert scalars[tag][-1][1] == pytest.approx(history[-1][tag], abs=1e-5)
    assert [step for step, _ in texts["completions"]] == [1, 2]
    rows = read_jsonl(tmp_path / "out" / COMPLETIONS_FILE)
    assert [r["step"] for r in rows] == [1, 1, 1, 2, 2, 2]
    assert all(r["prompt"].startswith("user: ") and "short_answers" in r for r in rows)
    for r in rows:
        assert r["short_answers"] == pytest.approx(-len(r["completion"]) / 20)
