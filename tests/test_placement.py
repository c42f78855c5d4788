"""Where models run (`hf_rlhf.placement`): every loader of a model nobody prepares and every command's models follow
the one rule, inputs go to the model's device, and `sample` gives the same comparisons however its prompts are
shared out over processes.

The rule's device is the CPU on this machine; to see models really moved, `process_device` is replaced by the meta
device, where loading works and nothing is computed."""

from __future__ import annotations

import json
import os
import subprocess
import types

import pytest
import torch
from datasets import Dataset, DatasetDict
from trl import ModelConfig

from hf_rlhf import modeling, placement
from hf_rlhf.configs import EvaluationArguments, RLArguments, SampleArguments
from hf_rlhf.eval import generation, report
from hf_rlhf.modeling import load_model_for_inference
from hf_rlhf.quantization import quantization_kwargs
from hf_rlhf.reward import scorer
from hf_rlhf.reward.scorer import RewardModelScorer
from hf_rlhf.stages import sample
from hf_rlhf.stages.rl_rewards import reward_functions
from hf_rlhf.stages.sample_labelers import JudgeScorer

from .conftest import REPO
from .ppo_fixtures import tiny_models

META = torch.device("meta")
QUESTIONS = ["What color is the fox?", "Where does the owl live?", "What does the frog eat?"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A random policy and reward model saved as stage directories, with their tokenizer."""
    tokenizer, policy, _, reward_model, _ = tiny_models()
    root = tmp_path_factory.mktemp("placement")
    dirs = {"sft": str(root / "sft"), "reward": str(root / "reward")}
    for name, model in (("sft", policy), ("reward", reward_model)):
        model.save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
    return {"tokenizer": tokenizer, **dirs}


def devices(model: torch.nn.Module) -> set[torch.device]:
    return {t.device for t in (*model.parameters(), *model.buffers())}


@pytest.fixture()
def placed(monkeypatch) -> list[torch.nn.Module]:
    """Every model that goes through `placement.place`, in order."""
    seen, place = [], placement.place

    def recording_place(model, device=None):
        seen.append(model)
        return place(model, device)

    monkeypatch.setattr(placement, "place", recording_place)
    return seen


@pytest.fixture()
def loaded(monkeypatch) -> list[torch.nn.Module]:
    """Every model `hf_rlhf.modeling.load_pretrained` (the one loader of every role) returns, in order."""
    seen, load = [], modeling.load_pretrained

    def recording_load(*args, **kwargs):
        seen.append(load(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(modeling, "load_pretrained", recording_load)
    return seen


@pytest.fixture()
def on_meta(monkeypatch) -> None:
    """The rule's device is the meta device."""
    monkeypatch.setattr(placement, "process_device", lambda: META)


# ----------------------------------------------------------------------------------------------- the rule itself
def test_process_shares_cover_the_items_in_order():
    for n in range(9):
        for world in range(1, 5):
            shares = [placement.process_share(n, world, rank) for rank in range(world)]
            assert [i for share in shares for i in share] == list(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError, match="process 2 of 2: expected 0 <= process_index < num_processes"):
        placement.process_share(4, 2, 2)


def test_split_over_processes_with_one_process_is_the_function_applied_to_all():
    assert placement.split_over_processes(list("abc"), lambda xs: [x.upper() for x in xs]) == ["A", "B", "C"]
    with pytest.raises(ValueError, match="process 0 got 2 results for 3 items"):
        placement.split_over_processes(list("abc"), lambda xs: xs[:2])


def test_split_over_processes_gives_each_process_its_share_and_gathers_in_process_order(monkeypatch):
    import accelerate.utils

    from hf_rlhf import resilience

    items, calls = list(range(5)), []

    def fn(share):
        calls.append(share)
        return [10 * x for x in share]

    def run_as(rank: int, other: list[int]):
        """Process `rank` of 2; `other`: the other process's results, as all_gather_object brings them."""
        monkeypatch.setattr(
            resilience, "process_state", lambda: types.SimpleNamespace(num_processes=2, process_index=rank)
        )
        monkeypatch.setattr(
            accelerate.utils, "gather_object", lambda obj: [*obj, other] if rank == 0 else [other, *obj]
        )
        return placement.split_over_processes(items, fn)

    assert run_as(0, [20, 30, 40]) == [0, 10, 20, 30, 40] and calls[-1] == [0, 1]
    assert run_as(1, [0, 10]) == [0, 10, 20, 30, 40] and calls[-1] == [2, 3, 4]


def test_load_device_map_and_load_kwargs(monkeypatch):
    assert placement.process_device() == torch.device("cpu")  # no accelerator here
    assert placement.load_device_map() == {"": "cpu"} and placement.load_kwargs() == {}
    monkeypatch.setattr(placement, "process_device", lambda: torch.device("cuda", 1))  # process 1 under a launch
    assert placement.load_device_map() == {"": 1}
    assert placement.load_kwargs() == {"device_map": {"": 1}}


def test_quantized_loads_use_the_rule_s_device_map(monkeypatch):
    cpu = quantization_kwargs(ModelConfig(load_in_4bit=True))
    assert cpu["device_map"] == {"": "cpu"} and cpu["disable_mmap"] is True
    assert quantization_kwargs(ModelConfig()) == {}
    monkeypatch.setattr(placement, "process_device", lambda: torch.device("cuda", 1))
    args = ModelConfig(load_in_4bit=True, dtype=None)  # the compute dtype follows the device
    cuda = quantization_kwargs(args)
    assert cuda["device_map"] == {"": 1} and "disable_mmap" not in cuda and args.dtype == "bfloat16"


def test_place_moves_a_model_frozen_freezes_it_and_a_loader_placed_model_stays(on_meta):
    model = torch.nn.Sequential(torch.nn.Embedding(4, 2), torch.nn.BatchNorm1d(2))
    assert placement.place(model) is model and devices(model) == {META}
    trained = torch.nn.Linear(2, 2).train()
    placement.frozen(trained, "cpu")
    assert not trained.training and not any(p.requires_grad for p in trained.parameters())
    assert devices(trained) == {torch.device("cpu")}
    quantized = torch.nn.Linear(2, 2)
    quantized.is_loaded_in_4bit = True  # bitsandbytes put it on its device; `.to` would fail
    assert devices(placement.place(quantized)) == {torch.device("cpu")}
    assert placement.model_device(model) == META and placement.model_device(torch.nn.ReLU()) == META


# -------------------------------------------------------------------------------------------------- the loaders
def test_every_inference_loader_puts_its_model_on_the_rule_s_device(tiny, on_meta, placed):
    model, _ = load_model_for_inference(tiny["sft"])
    assert devices(model) == {META} and not model.training and not any(p.requires_grad for p in model.parameters())
    assert not model.use_kernels  # no Hub kernels swapped in (transformers >= 5.25 does so when `kernels` is there)
    reward = RewardModelScorer(tiny["reward"]).model
    assert devices(reward) == {META} and not reward.training
    rl_args = RLArguments(reward_model_path=tiny["reward"])
    training_args = types.SimpleNamespace(reward_weights=None, shared_base=False, trust_remote_code=False)
    funcs, names, _, _ = reward_functions(rl_args, training_args, ModelConfig(tiny["sft"]), tiny["tokenizer"])
    assert names == ["reward_model"] and devices(funcs[0].model) == {META} and not funcs[0].model.training
    assert [id(m) for m in placed] == [id(model), id(reward), id(funcs[0].model)]


def test_a_given_model_is_scored_where_it_is(tiny, placed):
    model = torch.nn.Identity()  # PPO's shared-base reward adapter: part of the policy, never moved or frozen
    model.train()
    RewardModelScorer(model, tiny["tokenizer"])
    assert placed == [] and model.training


class Stop(Exception):
    pass


@pytest.mark.parametrize("role", ["reward model", "judge"])
def test_scorer_inputs_go_to_the_model_s_device(tiny, role):
    _, policy, _, reward_model, _ = tiny_models()
    model = (reward_model if role == "reward model" else policy).to(META)
    seen = []

    def hook(module, args, kwargs):
        seen.append({name: kwargs[name].device for name in ("input_ids", "attention_mask")})
        raise Stop  # a meta model computes nothing to read back

    model.register_forward_pre_hook(hook, with_kwargs=True)
    score = (
        RewardModelScorer(model, tiny["tokenizer"])
        if role == "reward model"
        else JudgeScorer(model, tiny["tokenizer"])
    )
    with pytest.raises(Stop):
        score(["What color is the fox?"], ["The fox is red."])
    assert seen == [{"input_ids": META, "attention_mask": META}]


# ------------------------------------------------------------------------------------------------- the commands
def check_all_placed(loaded: list, placed: list, expected: int) -> None:
    """Each model the command loaded went through the rule and is on its device, all parameters and buffers."""
    assert len(loaded) == expected
    assert {id(m) for m in loaded} <= {id(m) for m in placed}
    for model in loaded:
        assert devices(model) == {placement.process_device()}


def write_prompts(path, prompts) -> str:
    Dataset.from_dict({"prompt": prompts}).to_json(str(path), lines=True)
    return str(path)


@pytest.mark.parametrize("labeler", ["reward_model", "judge"])
def test_sample_places_its_model_and_its_labeler(labeler, tiny, tmp_path, loaded, placed):
    data = write_prompts(tmp_path / "prompts.jsonl", [[{"role": "user", "content": q}] for q in QUESTIONS[:2]])
    sample.main(["--model_name_or_path", tiny["sft"], "--dataset_name", data, "--output_dir", str(tmp_path / "out"),
                 "--labeler", labeler, "--labeler_model", tiny["reward" if labeler == "reward_model" else "sft"],
                 "--num_completions", "2", "--max_new_tokens", "4", "--test_split_size", "0"])  # fmt: skip
    check_all_placed(loaded, placed, 2)


def test_generate_best_of_n_and_score_place_their_models(tiny, loaded, placed, capsys):
    generation.main(["--model", tiny["sft"], "--prompt", QUESTIONS[0], "--best_of", "2",
                     "--reward_model", tiny["reward"], "--max_new_tokens", "4"])  # fmt: skip
    check_all_placed(loaded, placed, 2)
    scorer.main(["--reward_model", tiny["reward"], "--prompt", QUESTIONS[0], "--response", "The fox is red."])
    check_all_placed(loaded, placed, 3)


def test_the_report_places_every_model(tiny, tmp_path, loaded, placed, monkeypatch):
    prompts = str(tmp_path / "prompts")
    test = Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in QUESTIONS]})
    DatasetDict(train=test, test=test).save_to_disk(prompts)
    monkeypatch.setattr(report, "require_complete", lambda path: {"metrics": {"algorithm": "ppo"}})
    stages = {"pretrain": tiny["sft"], "sft": tiny["sft"], "reward": tiny["reward"], "rl": tiny["sft"]}
    ev = EvaluationArguments(max_new_tokens=4, best_of_n=2, batch_size=8, bootstrap_resamples=20, few_shot_examples=1)
    built = report.build_report(str(tmp_path), ev, stages, prompts, world_seed=0)
    assert [row["stage"] for row in built["rows"]] == ["pretrain", "pretrain", "sft", "reward", "rl"]
    check_all_placed(loaded, placed, 4)  # reward model, base, SFT, RL policy


# ------------------------------------------------------------------------------------------- sample, sharded
def shared_out(cut: int):
    """`split_over_processes` as 2 processes would run it, the first taking `cut` items."""
    return lambda items, fn: [*fn(list(items[:cut])), *fn(list(items[cut:]))]


def test_sample_completions_do_not_depend_on_how_the_chunks_are_shared_out(tiny, monkeypatch):
    model, tokenizer = load_model_for_inference(tiny["sft"])
    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS]
    args = SampleArguments(num_completions=3, max_new_tokens=6, batch_size=2, seed=3)  # 9 sequences: 5 chunks
    one = sample.sample_completions(model, tokenizer, prompts, args)
    assert [len(c) for c in one] == [3, 3, 3] and len({c for row in one for c in row}) > 1
    for cut in (1, 5):  # 1 of the 5 chunks for the first process; all 5 (the second gets none)
        monkeypatch.setattr(sample, "split_over_processes", shared_out(cut))
        assert sample.sample_completions(model, tokenizer, prompts, args) == one, cut
    assert sample.sample_completions(model, tokenizer, prompts, SampleArguments(**{**vars(args), "seed": 4})) != one


@pytest.mark.slow
def test_sample_with_two_processes_writes_what_one_process_writes(tiny, tmp_path):
    from .test_distributed import ENV, launch_command  # the 2-process CPU launch of the distributed tests

    data = write_prompts(tmp_path / "prompts.jsonl", [[{"role": "user", "content": q}] for q in QUESTIONS * 2])
    argv = ["sample", "--model_name_or_path", tiny["sft"], "--dataset_name", data, "--labeler", "reward_model",
            "--labeler_model", tiny["reward"], "--num_completions", "3", "--batch_size", "4",
            "--max_new_tokens", "6", "--test_split_size", "0.5"]  # fmt: skip
    two = subprocess.run(launch_command(*argv, "--output_dir", str(tmp_path / "two")), cwd=REPO, env=ENV,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert two.returncode == 0, two.stderr[-4000:]
    sample.main([*argv[1:], "--output_dir", str(tmp_path / "one")])
    for split in ("train", "test"):
        name = f"comparisons_{split}.jsonl"
        assert (tmp_path / "two" / name).read_text() == (tmp_path / "one" / name).read_text()
    rows = [json.loads(line) for line in open(tmp_path / "one" / "comparisons_train.jsonl")]
    assert rows and all(len(r["ranking"]) == 3 for r in rows)
    assert not os.path.exists(tmp_path / "two.partial")
