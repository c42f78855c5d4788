"""`--dry-run`: every recipe in recipes/ resolves to a plan and a GPU memory estimate, offline, without weights."""

import glob
import json
import os
import socket

import pytest

from hf_rlhf import cli
from hf_rlhf.errors import DataValidationError, RecipeError
from hf_rlhf.launching import configs_dir
from hf_rlhf.plan import DryRunError
from hf_rlhf.plan.architecture import BUNDLED, architecture
from hf_rlhf.plan.context import FORMAT_LABELS, Context
from hf_rlhf.plan.known_models import DATASETS, MODELS
from hf_rlhf.plan.launch import read_launch
from hf_rlhf.plan.pipeline import plan_pipeline, plan_stage
from hf_rlhf.stages import STAGES

from .conftest import RECIPES

ALL = sorted(glob.glob(os.path.join(RECIPES, "**", "*.yaml"), recursive=True))
CONFIGS = configs_dir()
ACCELERATE_CONFIGS = sorted(glob.glob(os.path.join(CONFIGS, "*.yaml")))  # the named configs (hf_rlhf.launching)
RECIPE_FILES = ALL
PIPELINES = [p for p in RECIPE_FILES if "stages:" in open(p).read()]
STAGE_RECIPES = [p for p in RECIPE_FILES if p not in PIPELINES]
QWEN = os.path.join(RECIPES, "qwen2.5-7b")

# Published sizes (model cards / papers), to 3 significant figures
PUBLISHED = {
    "HuggingFaceTB/SmolLM2-135M": 134.5e6,
    "HuggingFaceTB/SmolLM2-360M": 362e6,
    "HuggingFaceTB/SmolLM2-1.7B": 1.71e9,
    "meta-llama/Llama-3.2-1B": 1.24e9,
    "meta-llama/Llama-3.1-8B": 8.03e9,
    "Qwen/Qwen2.5-0.5B": 0.494e9,
    "Qwen/Qwen2.5-7B": 7.62e9,
    "mistralai/Mistral-7B-v0.3": 7.25e9,
}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: the dry run never reaches the Hub."""
    assert os.environ.get("HF_HUB_OFFLINE") == "1"

    def refuse(*args, **kwargs):
        raise AssertionError(f"the dry run tried to reach the network: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def stage_of(path: str) -> str:
    return next(stage for stage in STAGES if os.path.basename(path).startswith(stage))


def test_there_are_real_recipes_and_accelerate_configs():
    names = {os.path.relpath(p, RECIPES) for p in ALL}
    assert {"smollm2-135m/pipeline.yaml", "qwen2.5-7b/pipeline_qlora.yaml", "qwen2.5-7b/pipeline_lora.yaml"} <= names
    configs = {os.path.basename(p) for p in ACCELERATE_CONFIGS}
    assert {
        "single_gpu.yaml",
        "multi_gpu.yaml",
        "zero1.yaml",
        "zero2.yaml",
        "zero3.yaml",
        "fsdp1.yaml",
        "fsdp2.yaml",
        "cpu_2proc.yaml",
        "multi_node_zero3.yaml",
    } <= configs


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: os.path.relpath(p, RECIPES))
def test_pipeline_recipe_dry_runs(path, capsys):
    assert cli.main(["pipeline", path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    stages = [line for line in out.splitlines() if line.startswith("[")]
    assert stages and all(f"hf-rlhf {line[1:].split(']')[0]} " in line for line in stages)
    assert out.count("memory/GPU") == len(stages)
    assert out.count("parameters") >= len(stages)
    assert "GiB per GPU: fits" in out
    assert "memory per GPU = weights" in out  # the formula is printed


@pytest.mark.parametrize("path", STAGE_RECIPES, ids=lambda p: os.path.relpath(p, RECIPES))
def test_stage_recipe_dry_runs(path, capsys):
    stage = stage_of(path)
    assert cli.main([stage, "--config", path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"[{stage}] hf-rlhf {stage} --config" in out
    assert "memory/GPU" in out and "GiB per GPU" in out


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_match_published_sizes(name):
    total = architecture(name).count()["total"]
    assert total == pytest.approx(PUBLISHED[name], rel=0.005)


def test_exact_parameter_counts():
    assert architecture("HuggingFaceTB/SmolLM2-135M").count()["total"] == 134_515_008
    assert architecture("meta-llama/Llama-3.1-8B").count()["total"] == 8_030_261_248
    assert architecture("Qwen/Qwen2.5-7B").count()["total"] == 7_615_616_512
    assert architecture("Qwen/Qwen2.5-7B@v1.0").revision == "v1.0"


def test_every_known_model_has_the_decoder_shape_its_fields_say():
    """The bundled fields build the intended Llama-style decoder: embeddings, attention (Qwen2: q/k/v biases),
    gated MLP, two norms per layer, the final norm, and an LM head unless tied."""
    for name, fields in MODELS.items():
        arch = architecture(name)
        assert arch.source == BUNDLED  # offline, nothing cached: the fallback, and the plan says so
        h, i, layers, v = (
            fields["hidden_size"],
            fields["intermediate_size"],
            fields["num_hidden_layers"],
            fields["vocab_size"],
        )
        q = fields["num_attention_heads"] * fields.get("head_dim", h // fields["num_attention_heads"])
        kv = fields["num_key_value_heads"] * fields.get("head_dim", h // fields["num_attention_heads"])
        bias = q + 2 * kv if fields["model_type"] == "qwen2" else 0
        layer = h * q + 2 * h * kv + q * h + bias + 3 * h * i + 2 * h
        expected = v * h * (1 if fields["tie_word_embeddings"] else 2) + layers * layer + h
        assert arch.count()["total"] == expected, name


def _total(argv, launch=None) -> float:
    plan = plan_stage(
        "sft", ["--config", os.path.join(QWEN, "sft_lora.yaml"), *argv], Context(launch or read_launch(None))
    )
    return plan.memory.total


def test_lora_counts_from_two_layers_equal_peft_on_the_whole_model():
    from trl import ModelConfig

    from hf_rlhf.plan.counting import meta_model, peft_counts
    from hf_rlhf.plan.rows import peft_config_of

    arch = architecture("HuggingFaceTB/SmolLM2-135M")
    for role, head in (("causal_lm", "lm"), ("reward", "reward")):
        peft_config = peft_config_of(ModelConfig(use_peft=True, lora_r=16, lora_target_modules=["all-linear"]), role)
        fast = arch.count(head, peft_config)
        assert (fast["trainable"], fast["total"]) == peft_counts(meta_model(arch.config, head), peft_config, "t")


def test_memory_qlora_below_lora_below_full_finetuning():
    qlora = _total(["--load_in_4bit", "true", "--use_bnb_nested_quant", "true"])
    lora = _total([])
    full = _total(["--use_peft", "false"])
    assert qlora < lora < full


def test_memory_zero3_below_zero2_below_ddp_for_full_finetuning():
    full = ["--use_peft", "false"]
    totals = {name: _total(full, read_launch(name)) for name in ("multi_gpu", "zero1", "zero2", "zero3", "fsdp1")}
    assert totals["zero3"] < totals["zero2"] < totals["zero1"] < totals["multi_gpu"]
    assert totals["fsdp1"] < totals["multi_gpu"]


def test_lora_trainable_parameters_counted_with_peft():
    plan = plan_stage("sft", ["--config", os.path.join(QWEN, "sft_qlora.yaml")], Context(read_launch(None)))
    # rank 16 on q, k, v, o, gate, up, down of 28 layers: 16 x sum(in + out) per layer
    h, i, kv = 3584, 18944, 512
    per_layer = 16 * ((h + h) * 2 + (h + kv) * 2 + (h + i) * 2 + (i + h))
    assert plan.roles[0].count()["trainable"] == 28 * per_layer
    assert "40,370,176 trainable parameters" in dict(plan.rows)["peft"]


def test_ppo_counts_the_four_roles():
    plan = plan_pipeline(os.path.join(QWEN, "pipeline_qlora.yaml"))
    rl = plan.stages[-1]
    assert [r.name for r in rl.roles] == ["policy", "reference", "value", "reward"]
    assert rl.roles[1].shared_with == "policy"  # LoRA: the reference is the policy with its adapter disabled
    assert rl.memory.weights > 2.4 * plan.stages[0].memory.weights  # three 4-bit bases: policy, value, reward


def test_unknown_model_gives_a_clear_error(capsys):
    argv = ["sft", "--config", os.path.join(QWEN, "sft_qlora.yaml"), "--model_name_or_path", "acme/unknown-7b"]
    assert cli.main([*argv, "--dry-run"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'acme/unknown-7b' is not a local directory" in err
    assert "hf download acme/unknown-7b config.json" in err and "edit" not in err


def test_local_model_directory_is_read_from_its_config(tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.for_model(
        "llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=100
    )
    config.save_pretrained(tmp_path)
    argv = ["--config", os.path.join(QWEN, "sft_lora.yaml"), "--model_name_or_path", str(tmp_path)]
    plan = plan_stage("sft", argv, Context(read_launch(None)))
    assert "config.json in" in dict(plan.rows)["architecture"]
    assert plan.roles[0].arch.count()["total"] == 100 * 64 * 2 + 2 * (4 * 64 * 64 + 3 * 64 * 128 + 2 * 64) + 64


def test_dataset_columns_are_checked_against_the_stage():
    ctx = Context(read_launch(None))
    sft = os.path.join(QWEN, "sft_qlora.yaml")
    expected = r"dataset 'trl-lib/ultrafeedback-prompt', split 'train': expected columns \('prompt', 'completion'\) or"
    with pytest.raises(DataValidationError, match=expected + r".*found \['prompt'\]"):  # the run's own check
        plan_stage(
            "sft",
            ["--config", sft, "--dataset_name", "trl-lib/ultrafeedback-prompt", "--dataset_train_split", "train"],
            ctx,
        )
    with pytest.raises(DryRunError, match="has no split 'train'.*dataset_train_split"):
        plan_stage("sft", ["--config", sft, "--dataset_train_split", "train"], ctx)
    plan = plan_stage("sft", ["--config", sft, "--dataset_name", "someone/private-chats"], ctx)
    assert "columns checked at load time" in dict(plan.rows)["data"]


def test_bf16_recipes_plan_on_a_machine_without_gpu():
    plan = plan_stage(
        "sft", ["--config", os.path.join(QWEN, "sft_lora.yaml"), "--bf16", "true"], Context(read_launch(None))
    )
    assert "autocast bf16 (recipe)" in dict(plan.rows)["precision"]


def test_pipeline_dry_run_returns_a_json_plan():
    plan = plan_pipeline(os.path.join(RECIPES, "smollm2-135m", "pipeline.yaml"), gpu_memory_gb=24)
    data = json.loads(json.dumps(plan.to_dict()))
    assert [s["stage"] for s in data["stages"]] == ["pretrain", "sft", "reward", "rl"]
    assert data["launch"]["gpu_memory_gb"] == 24 and data["launch"]["mixed_precision"] == "bf16"
    assert not data["stages"][0]["memory"]["fits"]  # 8 x 2048-token blocks of a 49k vocabulary need ~38 GiB


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=os.path.basename)
def test_accelerate_config_loads(path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    config = load_config_from_file(path)
    launch_args = {action.dest for action in launch_command_parser()._actions}
    for key in config.fsdp_config:
        assert (key if key.startswith("fsdp_") else f"fsdp_{key}") in launch_args, key
    for key in config.deepspeed_config:
        assert key in launch_args, key
    try:  # what `accelerate launch --config_file` checks before starting processes
        from accelerate.commands.launch import _validate_launch_command
    except ImportError:
        return
    args, _, _ = _validate_launch_command(
        launch_command_parser().parse_args(["--config_file", path, "-m", "hf_rlhf.cli"])
    )
    cpu = os.path.basename(path).startswith("cpu")  # cpu_2proc.yaml: the CPU tests' layout, fp32
    assert args.mixed_precision == ("no" if cpu else "bf16")


def test_accelerate_layouts_are_read():
    zero3 = read_launch("zero3")
    assert (zero3.backend, zero3.zero_stage, zero3.num_processes, zero3.shards()) == ("deepspeed", 3, 8, (8, 8, 8))
    assert read_launch(os.path.join(CONFIGS, "zero3.yaml")).shards() == zero3.shards()  # a name or its file
    assert read_launch("zero2").shards() == (1, 8, 8)
    assert read_launch("zero1").shards() == (1, 1, 8)
    assert read_launch("fsdp1").fsdp_sharding == "FULL_SHARD"
    assert read_launch("fsdp2").shards() == (8, 8, 8)
    assert read_launch("multi_gpu").shards() == read_launch("ddp").shards() == (1, 1, 1)
    assert read_launch("zero3", num_processes=4).shards() == (4, 4, 4)  # `--num_processes`, as accelerate launch
    multi = read_launch("multi_node_zero3")
    assert (multi.num_processes, multi.num_machines) == (16, 2)


def test_smollm2_chat_template_marks_assistant_turns():
    from transformers.utils.chat_template_utils import render_jinja_template

    with open(os.path.join(RECIPES, "smollm2-135m", "chat_template.jinja")) as f:
        template = f.read()
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    (text,), (spans,) = render_jinja_template([messages], chat_template=template, return_assistant_tokens_mask=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    assert [text[a:b] for a, b in spans] == ["Hello!<|im_end|>"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_activation_formula_matches_what_autograd_saves(dtype):
    """The per-layer activation fit, b.s.(8h + 4.5i + 2kv).e, against the tensors autograd keeps for backward."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from hf_rlhf.plan.architecture import Architecture
    from hf_rlhf.plan.memory import layer_activations

    config = AutoConfig.for_model(
        "llama", hidden_size=256, intermediate_size=704, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=1000,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(config).to(getattr(torch, dtype)).train()
    batch, seq = 2, 128
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def keep(t):
        if t.untyped_storage().data_ptr() not in params and t.numel() < batch * (seq - 1) * config.vocab_size:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, config.vocab_size, (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        model(input_ids=ids, labels=ids)
    e = 4 if dtype == "float32" else 2
    estimate = config.num_hidden_layers * layer_activations(Architecture("t", "test", config), batch, seq, e, False)
    assert sum(saved.values()) == pytest.approx(estimate, rel=0.2)


# --------------------------------------------------------------------------------- the stages' own checks
TINY = os.path.join(RECIPES, "tiny")


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_check_added_to_a_stage_fails_its_run_and_its_dry_run_alike(stage, monkeypatch, capsys):
    """`plan` calls the very check functions `run` calls: one that raises stops both with the same error."""
    module = STAGES[stage].module

    def refuse(*args, **kwargs):
        raise RecipeError(f"{stage} refuses this recipe")

    monkeypatch.setattr(module, "check_arguments", refuse)
    assert cli.main([stage, "--config", os.path.join(TINY, f"{stage}.yaml"), "--dry-run"]) == 1
    assert capsys.readouterr().err.strip() == f"hf-rlhf {stage}: error: {stage} refuses this recipe"
    with pytest.raises(RecipeError, match=f"^{stage} refuses this recipe$"):
        plan_pipeline(os.path.join(TINY, "pipeline.yaml"), until=stage)


def test_a_check_added_to_a_stage_fails_its_run_alike(monkeypatch):
    from hf_rlhf.recipes import parse_command_line

    for stage, spec in STAGES.items():

        def refuse(*args, stage=stage, **kwargs):
            raise RecipeError(f"{stage} refuses this recipe")

        monkeypatch.setattr(spec.module, "check_arguments", refuse)
        args = parse_command_line(spec.arguments, ["--config", os.path.join(TINY, f"{stage}.yaml")], stage)
        with pytest.raises(RecipeError, match=f"^{stage} refuses this recipe$"):
            spec.module.run(*args)  # before any data or model is read
        with pytest.raises(RecipeError, match=f"^{stage} refuses this recipe$"):
            spec.module.plan(*args, Context(read_launch(None)))


def test_rl_and_sample_checks_are_the_runs():
    pipeline = os.path.join(TINY, "pipeline.yaml")
    with pytest.raises(
        RecipeError, match=r"reward_weights has 3 entries for 2 rewards \(reward_model, tiny_world_gold\)"
    ):
        plan_pipeline(pipeline, until="rl", extra={"reward_weights": [1, 2, 3]})
    with pytest.raises(RecipeError, match="unknown reward function 'nope'"):
        plan_pipeline(pipeline, until="rl", extra={"reward_funcs": ["nope"], "reward_weights": [1, 1]})
    with pytest.raises(RecipeError, match="labeler must be one of"):
        plan_pipeline(pipeline, until="sample", extra={"labeler": "gpt4"})
    with pytest.raises(RecipeError, match="shared_base needs use_peft"):
        plan_pipeline(pipeline, until="rl", extra={"shared_base": True})


def _format(stage_plan) -> str | None:
    """The format a stage's plan found, read off its data row."""
    data = dict(stage_plan.rows)["data"]
    if " format: " not in data:
        return None
    label = data.split(" format: ")[0].rsplit("; ", 1)[-1]
    return {label: fmt for fmt, label in FORMAT_LABELS.items()}.get(label, label)


def test_dry_run_and_run_detect_the_same_format_for_every_recipes_data(tmp_path):
    """Each pipeline's planned formats equal what the stages' checks find on datasets with those columns: the tiny
    world's, generated, and the public datasets' known columns (empty rows)."""
    from datasets import Dataset

    from hf_rlhf.configs import WorldArguments
    from hf_rlhf.data.formats import (
        PROMPT_FORMATS,
        check_sft_dataset,
        check_text_dataset,
        sft_ignored_columns,
        text_formats,
    )
    from hf_rlhf.data.preference import preference_format
    from hf_rlhf.data.world import build_world_datasets
    from hf_rlhf.plan.context import SAMPLE_COLUMNS

    world = build_world_datasets(
        WorldArguments(output_dir=str(tmp_path), num_documents=20, num_demonstrations=20, num_eval_prompts=4)
    )
    from datasets import load_from_disk

    real = {name: load_from_disk(path)["train"] for name, path in world.items()}
    real["sample"] = Dataset.from_dict({c: [] for c in SAMPLE_COLUMNS})
    real.update({name: Dataset.from_dict({c: [] for c in d["columns"]}) for name, d in DATASETS.items()})
    detect = {
        "pretrain": lambda ds: check_text_dataset(ds, "t") == 0 and text_formats().detect(ds.column_names, "t")[0],
        "sft": lambda ds: check_sft_dataset(ds, "t"),
        "reward": lambda ds: preference_format(ds, "t"),
        "sample": lambda ds: PROMPT_FORMATS.detect(ds.column_names, "t")[0],
        "rl": lambda ds: PROMPT_FORMATS.detect(ds.column_names, "t")[0],
    }
    checked = 0
    for path in PIPELINES:
        plan = plan_pipeline(path)
        for stage_plan in plan.stages:
            data = dict(stage_plan.rows)["data"].split(":")[0].split(" @ ")[0]
            name = os.path.basename(data) if os.path.basename(data) in real else data
            assert detect[stage_plan.stage](real[name]) == _format(stage_plan), (path, stage_plan.stage, name)
            checked += 1
    assert checked >= 20
    ultrachat = DATASETS["HuggingFaceH4/ultrachat_200k"]["columns"]
    assert sft_ignored_columns("conversational", ultrachat) == ["prompt"]  # TRL would read it as prompt-completion


def test_ultrachat_plan_says_the_sft_stage_drops_its_prompt_column():
    plan = plan_stage("sft", ["--config", os.path.join(QWEN, "sft_qlora.yaml")], Context(read_launch(None)))
    assert "conversational format: 'messages'" in dict(plan.rows)["data"]
    assert "prompt dropped" in dict(plan.rows)["data"]


# ------------------------------------------------------------------------------------------ any model id
QWEN3_8B = {
    "model_type": "qwen3",
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 151936,
    "tie_word_embeddings": False,
    "max_position_embeddings": 40960,
}


def _meta_count(config_dir) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir))
    return sum(p.numel() for p in model.parameters())


def _write_config(directory) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(QWEN3_8B, f)


def test_model_outside_the_table_is_planned_from_its_local_config(tmp_path, capsys):
    assert "qwen3" not in {fields["model_type"] for fields in MODELS.values()}
    _write_config(tmp_path)
    argv = ["sft", "--config", os.path.join(QWEN, "sft_qlora.yaml"), "--model_name_or_path", str(tmp_path)]
    assert cli.main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    total = _meta_count(tmp_path)
    assert total == 8_190_735_360  # Qwen3-8B's published 8.2B
    assert f"parameters    {total:,} (8.19B)" in out
    assert "qwen3 (Qwen3ForCausalLM): 36 layers" in out and "config from config.json in" in out


def test_hub_id_outside_the_table_is_read_from_the_hf_cache_offline(tmp_path):
    import subprocess
    import sys

    commit = "0" * 40
    repo = tmp_path / "hub" / "models--acme--qwen3-8b"
    _write_config(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    argv = ["sft", "--config", os.path.join(QWEN, "sft_qlora.yaml"), "--model_name_or_path", "acme/qwen3-8b"]
    result = subprocess.run(
        [sys.executable, "-m", "hf_rlhf.cli", *argv, "--dry-run"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "model         acme/qwen3-8b @ main" in result.stdout
    assert f"parameters    {_meta_count(repo / 'snapshots' / commit):,} (8.19B)" in result.stdout
    assert "config from config.json of acme/qwen3-8b" in result.stdout


def test_bundled_table_is_a_fallback_that_says_so():
    plan = plan_stage("sft", ["--config", os.path.join(QWEN, "sft_lora.yaml")], Context(read_launch(None)))
    assert f"config from {BUNDLED}" in dict(plan.rows)["architecture"]


# ------------------------------------------------------------------------------- optimizer and liger
def _sft_plan(argv):
    return plan_stage("sft", ["--config", os.path.join(QWEN, "sft_lora.yaml"), *argv], Context(read_launch(None)))


def test_optimizer_state_follows_optim():
    full = ["--use_peft", "false"]
    adamw, paged = _sft_plan(full), _sft_plan([*full, "--optim", "paged_adamw_8bit"])
    params = adamw.roles[0].count()["total"]
    assert adamw.memory.optimizer == params * 2 * 2  # two bf16 moments
    assert paged.memory.optimizer == params * 2  # two 8-bit moments
    assert paged.memory.total < adamw.memory.total
    assert any("paged" in note and "CPU" in note for note in paged.notes)
    assert _sft_plan([*full, "--optim", "sgd"]).memory.optimizer == 0
    assert _sft_plan([*full, "--optim", "sgd", "--optim_args", "momentum=0.9"]).memory.optimizer == params * 2
    assert _sft_plan([*full, "--optim", "adafactor"]).memory.optimizer < params * 0.01


def test_liger_removes_the_logits_term():
    plain, liger = _sft_plan([]), _sft_plan(["--use_liger_kernel", "true"])
    arch, batch, seq = plain.roles[0].arch, 4, 2048
    assert plain.memory.activations - liger.memory.activations == pytest.approx(batch * seq * arch.vocab * (2 + 12))
    assert any("use_liger_kernel" in note for note in liger.notes)
