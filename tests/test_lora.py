"""LoRA and 4-bit QLoRA through SFT, reward and PPO: adapter outputs, the next stage loading them, merging, and PPO's
roles on one base (the reference is the SFT model, not the pretrained base)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors import safe_open

RECIPES = os.path.join(os.path.dirname(__file__), "..", "recipes", "tiny")
LORA = ["--use_peft", "--lora_r", "8", "--lora_alpha", "16", "--lora_target_modules", "all-linear"]


def adapter_keys(path: str) -> list[str]:
    with safe_open(os.path.join(path, "adapter_model.safetensors"), framework="pt") as f:
        return list(f.keys())


def tensors(path: str) -> dict[str, torch.Tensor]:
    with safe_open(os.path.join(path, "adapter_model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def lora_chain(quick_pipeline, tmp_path_factory):
    """A LoRA SFT adapter on the quick pretrained model, and a LoRA reward adapter on that SFT adapter."""
    from hf_rlhf.stages import reward, sft

    out, _ = quick_pipeline
    tmp = tmp_path_factory.mktemp("lora")
    sft.main(["--config", os.path.join(RECIPES, "sft.yaml"), "--model_name_or_path", os.path.join(out, "pretrain"),
              "--dataset_name", os.path.join(out, "data", "demonstrations"), "--output_dir", str(tmp / "sft"),
              "--max_steps", "4", "--learning_rate", "5e-3", *LORA, "--lora_modules_to_save", "lm_head"])  # fmt: skip
    reward.main(["--config", os.path.join(RECIPES, "reward.yaml"), "--model_name_or_path", str(tmp / "sft"),
                 "--dataset_name", os.path.join(out, "sample"), "--output_dir", str(tmp / "reward"),
                 "--reference_dataset", os.path.join(out, "data", "demonstrations"), "--max_steps", "3", *LORA])  # fmt: skip
    return out, tmp


def test_sft_and_reward_write_adapters_that_name_their_base(lora_chain):
    from hf_rlhf.manifest import require_complete

    out, tmp = lora_chain
    for stage, base in (("sft", os.path.join(out, "pretrain")), ("reward", str(tmp / "sft"))):
        path = tmp / stage
        assert not (path / "model.safetensors").exists() and (path / "adapter_model.safetensors").exists()
        config = json.load(open(path / "adapter_config.json"))
        assert os.path.realpath(config["base_model_name_or_path"]) == os.path.realpath(base)
        manifest = require_complete(str(path))
        assert 0 < manifest["metrics"]["trainable_parameters"] < manifest["metrics"]["total_parameters"] / 2
        weights = tensors(str(path))
        # adapter only, and the fully trained modules: the reward head, the SFT model's (tied) LM head
        assert all("lora_" in k or ".score." in k or "lm_head" in k for k in weights)
        assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())  # trained: B starts at zero
    assert json.load(open(tmp / "reward" / "adapter_config.json"))["task_type"] == "SEQ_CLS"
    assert {k for k in adapter_keys(str(tmp / "reward")) if ".score." in k} == {
        "base_model.model.score.weight",
        "base_model.model.score.bias",  # the reward centring's bias, kept with the trained head
    }


def test_merge_round_trip_matches_the_adapter_model(lora_chain, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from hf_rlhf.merge import main as merge_main
    from hf_rlhf.modeling import load_pretrained, load_reward_model, restore_score_bias

    out, tmp = lora_chain
    ids = torch.randint(5, 300, (3, 20))
    base = AutoModelForCausalLM.from_pretrained(os.path.join(out, "pretrain"))
    unmerged = PeftModel.from_pretrained(base, str(tmp / "sft")).eval()
    merge_main([str(tmp / "sft"), str(tmp_path / "sft")])
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "sft"), use_safetensors=True).eval()
    with torch.no_grad():
        expected, got = unmerged(input_ids=ids).logits, merged(input_ids=ids).logits
        with unmerged.disable_adapter():
            assert not torch.allclose(
                expected, unmerged(input_ids=ids).logits, atol=1e-3
            )  # the adapter does something
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    # the reward adapter: unmerged (on the merged SFT body) vs `hf-rlhf merge` vs the loader every stage uses
    from transformers import AutoModelForSequenceClassification

    body = load_pretrained(AutoModelForSequenceClassification, str(tmp_path / "sft"), num_labels=1)
    unmerged_rm = PeftModel.from_pretrained(body, str(tmp / "reward")).eval()
    restore_score_bias(unmerged_rm, str(tmp / "reward"))
    merge_main([str(tmp / "reward"), str(tmp_path / "reward")])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = unmerged_rm(input_ids=ids, attention_mask=mask).logits
        merged_rm = load_reward_model(str(tmp_path / "reward")).eval()
        loaded = load_reward_model(str(tmp / "reward")).eval()
        torch.testing.assert_close(merged_rm(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask).logits, expected, atol=1e-4, rtol=0)
    assert json.load(open(tmp_path / "reward" / "hf_rlhf_manifest.json"))["merged_from"]["adapter"] == str(
        tmp / "reward"
    )


def ppo_setup(out, tmp, tmp_path, *extra):
    """PPO models and trainer for the LoRA chain, built the way the RL stage builds them."""
    from hf_rlhf.configs import DataArguments
    from hf_rlhf.data.loading import load_stage_dataset
    from hf_rlhf.modeling import load_causal_lm, load_tokenizer
    from hf_rlhf.ppo.trainer import PPOTrainer
    from hf_rlhf.recipes import parse_command_line
    from hf_rlhf.stages import rl

    argv = ["--config", os.path.join(RECIPES, "rl.yaml"), "--model_name_or_path", str(tmp / "sft"),
            "--reward_model_path", str(tmp / "reward"), "--dataset_name", os.path.join(out, "data", "prompts"),
            "--output_dir", str(tmp_path), "--max_steps", "2", "--per_device_train_batch_size", "8",
            "--num_ppo_epochs", "2", "--max_new_tokens", "8", "--learning_rate", "1e-2", "--disable_tqdm", "true",
            *LORA, *extra]  # fmt: skip
    data_args, rl_args, args, model_args = parse_command_line(rl.arguments, argv, prog="hf-rlhf rl")
    tokenizer = load_tokenizer(model_args.model_name_or_path)
    funcs, names, weights, stats = rl.reward_functions(rl_args, args, model_args, tokenizer)
    policy = load_causal_lm(model_args, tokenizer=tokenizer)
    value_init = {"path": rl_args.reward_model_path, "from": "reward_model"}
    policy, ref, value = rl.ppo_models(policy, tokenizer, rl_args, args, model_args, funcs, value_init)
    train = load_stage_dataset(DataArguments(dataset_name=data_args.dataset_name))["train"]
    return PPOTrainer(args, policy, ref, value, tokenizer, train, funcs, weights, names, stats)


@pytest.mark.parametrize("shared", ["false", "true"])
def test_ppo_with_lora_trains_adapters_only_and_keeps_the_sft_model_as_reference(lora_chain, tmp_path, shared):
    from hf_rlhf.modeling import load_causal_lm
    from hf_rlhf.ppo import core
    from hf_rlhf.ppo.roles import AdapterScalarModel

    out, tmp = lora_chain
    trainer = ppo_setup(out, tmp, tmp_path, "--shared_base", shared)
    assert trainer.ref_policy is None  # one base: the reference is the policy with its adapters off
    model = trainer.accelerator.unwrap_model(trainer.model)
    assert isinstance(model.value_model, AdapterScalarModel) == (shared == "true")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n or "score" in n for n in changed), sorted(changed)[:5]
    assert any(".default." in n for n in changed)  # the policy adapter
    assert any(("value" in n and "lora_" in n) or "value_model.score" in n for n in changed)  # the value model
    assert not any(".reward." in n for n in changed)  # the shared reward adapter is frozen

    # The reference (adapters disabled) is the SFT model (itself a merged LoRA adapter), not the pretrained base.
    rollout = trainer.rollout(trainer.train_dataset["prompt"][:4])
    args = (rollout.query_ids, rollout.query_mask, rollout.response_ids, rollout.response_mask)
    sft = load_causal_lm(trainer_model_args(tmp)).eval()
    input_ids = torch.cat([rollout.query_ids, rollout.response_ids], 1)
    mask = torch.cat([rollout.query_mask, rollout.response_mask], 1)
    with torch.no_grad():
        logits = sft(input_ids=input_ids, attention_mask=mask, position_ids=core.position_ids_from_mask(mask)).logits
        expected = core.logprobs_from_logits(logits[:, rollout.query_ids.shape[1] - 1 : -1], rollout.response_ids)
        torch.testing.assert_close(trainer.reference_logprobs(*args), expected, atol=1e-4, rtol=0)
        assert not torch.allclose(rollout.logprobs, expected * rollout.response_mask, atol=1e-3)  # policy moved

    trainer.save_model(str(tmp_path / "out"))
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert all(".default." not in k and ".value." not in k for k in adapter_keys(str(tmp_path / "out")))


def trainer_model_args(tmp):
    from trl import ModelConfig

    return ModelConfig(model_name_or_path=str(tmp / "sft"))


def test_qlora_4bit_through_sft_reward_and_ppo_on_one_base(quick_pipeline, tmp_path):
    """4-bit QLoRA (bitsandbytes on CPU): SFT, a reward model on it, and PPO with every role on one 4-bit base."""
    from hf_rlhf.manifest import require_complete
    from hf_rlhf.stages import reward, rl, sft

    out, _ = quick_pipeline
    qlora = [*LORA, "--load_in_4bit", "--bnb_4bit_quant_type", "nf4"]
    sft.main(["--config", os.path.join(RECIPES, "sft.yaml"), "--model_name_or_path", os.path.join(out, "pretrain"),
              "--dataset_name", os.path.join(out, "data", "demonstrations"), "--output_dir", str(tmp_path / "sft"),
              "--max_steps", "2", "--eval_strategy", "no", "--eval_split_size", "0", *qlora])  # fmt: skip
    reward.main(["--config", os.path.join(RECIPES, "reward.yaml"), "--model_name_or_path", str(tmp_path / "sft"),
                 "--dataset_name", os.path.join(out, "sample"), "--output_dir", str(tmp_path / "reward"),
                 "--max_steps", "2", *qlora])  # fmt: skip
    manifest = rl.main(["--config", os.path.join(RECIPES, "rl.yaml"), "--model_name_or_path", str(tmp_path / "sft"),
                        "--reward_model_path", str(tmp_path / "reward"), "--output_dir", str(tmp_path / "rl"),
                        "--dataset_name", os.path.join(out, "data", "prompts"), "--max_steps", "1",
                        "--per_device_train_batch_size", "4", "--num_ppo_epochs", "1", "--max_new_tokens", "6",
                        "--shared_base", "true", *qlora])  # fmt: skip
    for stage in ("sft", "reward", "rl"):
        require_complete(str(tmp_path / stage))
        assert (tmp_path / stage / "adapter_model.safetensors").exists()
    metrics = manifest["metrics"]
    assert metrics["updates"] == 1 and metrics["trainable_parameters"] < metrics["total_parameters"] / 4
    assert json.load(open(tmp_path / "rl" / "adapter_config.json"))["base_model_name_or_path"].endswith("sft")


def test_lora_and_layout_errors_are_clear(lora_chain, quick_pipeline, tmp_path):
    from hf_rlhf.recipes import RecipeError

    out, tmp = lora_chain
    with pytest.raises(RecipeError, match="cannot be trained in full"):
        ppo_setup(out, tmp, tmp_path, "--use_peft", "false", "--load_in_4bit")
    with pytest.raises(RecipeError, match="full weights"):  # a full reward model cannot share the LoRA base
        from hf_rlhf.stages import rl

        rl.main(["--config", os.path.join(RECIPES, "rl.yaml"), "--model_name_or_path", os.path.join(out, "sft"),
                 "--reward_model_path", os.path.join(out, "reward"), "--output_dir", str(tmp_path / "x"),
                 "--dataset_name", os.path.join(out, "data", "prompts"), "--shared_base", "true", *LORA])  # fmt: skip


def test_pipeline_merges_an_adapter_stage_once_when_asked(lora_chain, tmp_path):
    import shutil

    from hf_rlhf.manifest import require_complete
    from hf_rlhf.modeling import is_adapter_dir
    from hf_rlhf.pipeline import merged_output

    out, tmp = lora_chain
    stage = tmp_path / "sft"
    shutil.copytree(tmp / "sft", stage)
    merged = merged_output(str(stage))
    assert merged == str(stage) + "-merged" and not is_adapter_dir(merged)
    manifest = require_complete(merged)
    assert manifest["stage"] == "sft" and manifest["merged_from"]["adapter"] == str(stage)
    stamp = os.path.getmtime(os.path.join(merged, "model.safetensors"))
    assert merged_output(str(stage)) == merged  # the same run of the stage is merged once
    assert os.path.getmtime(os.path.join(merged, "model.safetensors")) == stamp
    assert merged_output(os.path.join(out, "sft")) == os.path.join(out, "sft")  # full weights: used as they are


def test_compare_puts_runs_side_by_side(quick_pipeline, tmp_path):
    from hf_rlhf.eval.compare import main as compare_main

    out, report = quick_pipeline
    text = compare_main([out, out, "--labels", "full", "again", "--output", str(tmp_path / "c.md")])
    sft = next(r for r in report["rows"] if r["model"] == "SFT")["gold"]
    assert f"| SFT | {sft['mean']:.3f} [{sft['ci_low']:.3f}, {sft['ci_high']:.3f}] |" in text
    assert text.splitlines()[0] == "| gold score (95% CI) | full | again |"
    assert open(tmp_path / "c.md").read().strip() == text
    with pytest.raises(SystemExit):
        compare_main([str(tmp_path)])  # no report.json: a usage error, not a traceback


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["pipeline_lora.yaml", "pipeline_qlora.yaml"])
def test_quick_pipeline_runs_as_the_lora_and_qlora_variants(variant, quick_pipeline, tmp_path):
    """The quick pipeline with the LoRA / QLoRA variant's stage overrides, compared with the full-precision run."""
    from hf_rlhf.eval.compare import compare
    from hf_rlhf.modeling import is_adapter_dir
    from hf_rlhf.pipeline import run_pipeline
    from hf_rlhf.recipes import load_pipeline_recipe

    full_dir, _ = quick_pipeline
    recipe = load_pipeline_recipe(os.path.join(RECIPES, "quick.yaml"), str(tmp_path))
    variant_stages = load_pipeline_recipe(os.path.join(RECIPES, variant)).stages
    for name in ("sft", "reward", "rl"):
        peft = {k: v for k, v in variant_stages[name]["overrides"].items() if k != "learning_rate"}
        recipe.stages[name]["overrides"] = {**(recipe.stages[name].get("overrides") or {}), **peft}
    report = run_pipeline(recipe)
    for name in ("sft", "reward", "rl"):
        assert is_adapter_dir(str(tmp_path / name))
        stage = report["stages"][name]
        assert stage["trainable_parameters"] < stage["total_parameters"] / 2
    assert [r["model"] for r in report["rows"]][-1] == "RL (PPO)"
    table = compare([full_dir, str(tmp_path)], ["full", variant])
    assert table.count("[") >= 2 * len(report["rows"])  # every model row has a gold score in both columns
