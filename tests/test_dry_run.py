"""`--dry-run`: every recipe in recipes/ resolves to a plan and a GPU memory estimate, offline, without weights."""

import glob
import json
import os
import socket

import pytest

from hf_rlhf import cli
from hf_rlhf.plan.dryrun import Context, DryRunError, architecture, plan_pipeline, plan_stage, read_launch
from hf_rlhf.plan.known_models import MODELS
from hf_rlhf.stages import STAGES

from .conftest import RECIPES

ALL = sorted(glob.glob(os.path.join(RECIPES, "**", "*.yaml"), recursive=True))
ACCELERATE_CONFIGS = [p for p in ALL if "accelerate_configs" in p]
RECIPE_FILES = [p for p in ALL if p not in ACCELERATE_CONFIGS]
PIPELINES = [p for p in RECIPE_FILES if "stages:" in open(p).read()]
STAGE_RECIPES = [p for p in RECIPE_FILES if p not in PIPELINES]
QWEN = os.path.join(RECIPES, "qwen2.5-7b")
CONFIGS = os.path.join(RECIPES, "accelerate_configs")

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
        "ddp.yaml",
        "fsdp.yaml",
        "deepspeed_zero2.yaml",
        "deepspeed_zero3.yaml",
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


def test_every_known_model_builds_on_meta():
    for name in MODELS:
        assert architecture(name).count()["total"] > 0


def _total(argv, launch=None) -> float:
    plan = plan_stage(
        "sft", ["--config", os.path.join(QWEN, "sft_lora.yaml"), *argv], Context(launch or read_launch(None))
    )
    return plan.memory.total


def test_lora_counts_from_two_layers_equal_peft_on_the_whole_model():
    from trl import ModelConfig

    from hf_rlhf.plan.dryrun import _meta_model, _peft, _peft_counts

    arch = architecture("HuggingFaceTB/SmolLM2-135M")
    for role, head in (("causal_lm", "lm"), ("reward", "reward")):
        peft_config = _peft(ModelConfig(use_peft=True, lora_r=16, lora_target_modules=["all-linear"]), role)
        fast = arch.count(head, peft_config)
        assert (fast["trainable"], fast["total"]) == _peft_counts(_meta_model(arch.config, head), peft_config, "t")


def test_memory_qlora_below_lora_below_full_finetuning():
    qlora = _total(["--load_in_4bit", "true", "--use_bnb_nested_quant", "true"])
    lora = _total([])
    full = _total(["--use_peft", "false"])
    assert qlora < lora < full


def test_memory_zero3_below_zero2_below_ddp_for_full_finetuning():
    full = ["--use_peft", "false"]
    totals = {
        name: _total(full, read_launch(os.path.join(CONFIGS, f"{name}.yaml")))
        for name in ("ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp")
    }
    assert totals["deepspeed_zero3"] < totals["deepspeed_zero2"] < totals["ddp"]
    assert totals["fsdp"] < totals["ddp"]


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
    assert "hf_rlhf/known_models.py" in err and "config.json" in err


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
    with pytest.raises(DryRunError, match=r"columns \['prompt'\], but the sft stage accepts"):
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
    zero3 = read_launch(os.path.join(CONFIGS, "deepspeed_zero3.yaml"))
    assert (zero3.backend, zero3.zero_stage, zero3.num_processes, zero3.shards()) == ("deepspeed", 3, 8, (8, 8, 8))
    assert read_launch(os.path.join(CONFIGS, "deepspeed_zero2.yaml")).shards() == (1, 8, 8)
    assert read_launch(os.path.join(CONFIGS, "fsdp.yaml")).fsdp_sharding == "FULL_SHARD"
    assert read_launch(os.path.join(CONFIGS, "fsdp2.yaml")).shards() == (8, 8, 8)
    assert read_launch(os.path.join(CONFIGS, "ddp.yaml")).shards() == (1, 1, 1)
    multi = read_launch(os.path.join(CONFIGS, "multi_node_zero3.yaml"))
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

    from hf_rlhf.plan.dryrun import Architecture, layer_activations

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
