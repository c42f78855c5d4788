"""Stage 4: reinforcement learning against the reward model, with a KL penalty to the SFT model.

`algorithm: ppo` (default) runs hf_rlhf's own PPO trainer (`hf_rlhf.ppo`): policy = the SFT model, reference = a
frozen copy of it, value model initialised from the reward model. `algorithm: grpo | rloo` configure TRL's
`GRPOTrainer` / `RLOOTrainer` with the same inputs: the reward model and any reward functions become TRL reward
functions. Prompts are text or conversations (TRL's prompt-only format), checked and fitted to the policy's
positions before any model loads (`hf_rlhf.stages.rl_rewards.check_rl_prompts`). The RL model is deployable.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

from transformers import set_seed
from trl import ModelConfig, TrlParser

from ..configs import RL_CONFIGS, DataArguments, RLArguments
from ..data.formats import PROMPT_FORMATS
from ..data.loading import dataset_fingerprint, load_stage_dataset, resolve_dataset
from ..data.prompts import check_long_prompts, describe_policy
from ..hub import remote_code
from ..hub.push import push_request, push_stage, without_push
from ..modeling import (
    load_causal_lm,
    load_tokenizer,
    peft_config_for,
    resolve_model,
)
from ..outputs import check_output, finish_stage, start_stage
from ..plan import rows
from ..plan.context import Context, StagePlan, describe_data
from ..plan.memory import Role, estimate
from ..recipes import RecipeError, parse_command_line
from ..resilience import resilient
from ..storage import writing
from .rl_ppo import check_ptx, ppo_models, ptx_batches, run_ppo  # noqa: F401 (ppo_models re-exported)
from .rl_rewards import (
    check_rewards,
    check_rl_prompts,
    check_roles,
    escape_prompts,
    reward_functions,
    tokenizer_plan,
    trl_reward,
    without_nan,
)
from .rl_rewards import new_tokens as generated_tokens

logger = logging.getLogger(__name__)


def arguments(algorithm: str | None = None) -> tuple[type, ...]:
    """The dataclasses of this stage for `algorithm` (default ppo), in the order `run` takes them."""
    algorithm = algorithm or "ppo"
    if algorithm not in RL_CONFIGS:
        raise RecipeError(f"algorithm must be one of {sorted(RL_CONFIGS)}, got {algorithm!r}")
    return (DataArguments, RLArguments, RL_CONFIGS[algorithm], ModelConfig)


def make_parser(prog: str | None = None, algorithm: str = "ppo") -> TrlParser:
    return TrlParser(arguments(algorithm), prog=prog)


def check_arguments(data_args: DataArguments, rl_args: RLArguments, training_args, model_args: ModelConfig) -> None:
    """What `run` checks of the recipe before reading data (`plan` checks the same), the rewards first."""
    if not model_args.model_name_or_path or not training_args.output_dir:
        raise RecipeError("rl needs `model_name_or_path` (the SFT model) and `output_dir`")
    check_rewards(rl_args, training_args)
    check_long_prompts(rl_args.long_prompts)
    check_ptx(rl_args, training_args)
    shared_base = getattr(training_args, "shared_base", False)
    if rl_args.algorithm != "ppo" and shared_base:
        raise RecipeError("shared_base is a PPO layout")
    if rl_args.algorithm != "ppo":
        return
    from ..ppo.setup import check_options

    try:
        check_options(training_args)  # TrainingArguments options PPO would ignore
    except ValueError as e:
        raise RecipeError(str(e)) from e
    if (model_args.load_in_4bit or model_args.load_in_8bit) and not model_args.use_peft:
        raise RecipeError("a 4/8-bit policy cannot be trained in full: set `use_peft: true` (QLoRA)")
    if shared_base and (not model_args.use_peft or not rl_args.reward_model_path or rl_args.value_model_path):
        raise RecipeError("shared_base needs use_peft, a LoRA `reward_model_path` and no `value_model_path`")
    if not (rl_args.value_model_path or rl_args.reward_model_path):
        raise RecipeError("ppo needs `value_model_path` or `reward_model_path` to initialise the value model")


def completions_log(rl_args: RLArguments, training_args):
    """The completions table of the run (`hf_rlhf.completions_log`), or `None` with `log_completions_steps: 0`."""
    from ..completions_log import CompletionsLog

    if not rl_args.log_completions_steps:
        return None
    every, rows = rl_args.log_completions_steps, rl_args.log_completions_rows
    return CompletionsLog(training_args.output_dir, every, rows, training_args.report_to)


def run_trl(algorithm, policy, tokenizer, train, rl_args, training_args, model_args, rewards):
    from trl import GRPOTrainer, RLOOTrainer

    from ..completions_log import CompletionsCallback, RewardRecorder
    from ..ppo.plots import plot_training_curves

    funcs, names, weights, _ = rewards
    training_args.reward_weights = weights
    train, escaped = escape_prompts(train, tokenizer)  # TRL tokenizes the prompts: content must not be special
    recorder = RewardRecorder(names, weights)  # keeps the batch TRL last scored, for the completions table
    trainer_cls = resilient(GRPOTrainer if algorithm == "grpo" else RLOOTrainer)  # see hf_rlhf.resilience
    trainer = trainer_cls(
        model=policy,
        reward_funcs=recorder.wrap([trl_reward(f, n) for f, n in zip(funcs, names, strict=True)]),
        args=without_push(training_args),  # the trainer never pushes; the stage does, once complete
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=peft_config_for(model_args),
    )
    log = completions_log(rl_args, training_args)
    if log is not None:
        trainer.add_callback(CompletionsCallback(recorder, log, trainer))
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    with writing(training_args.output_dir):  # a full disk: one line, the previous output kept
        trainer.save_model(training_args.output_dir)
        if trainer.is_world_process_zero():
            tokenizer.save_pretrained(training_args.output_dir)
    history = [h for h in trainer.state.log_history if "reward" in h]
    if trainer.is_world_process_zero():
        plot_training_curves(history, os.path.join(training_args.output_dir, "training_curves.png"))
    return trainer, {
        "metrics": {
            "train_loss": result.training_loss,
            "updates": trainer.state.global_step,
            **({"prompts_with_special_text_escaped": escaped} if escaped else {}),
        },
        "history": history,
    }


def run(data_args: DataArguments, rl_args: RLArguments, training_args, model_args: ModelConfig) -> dict[str, Any]:
    """Train the policy with the chosen algorithm; save it with its tokenizer, curves and manifest."""
    check_arguments(data_args, rl_args, training_args, model_args)
    remote_code.start_run(data_args.trust_remote_code_repos)  # whose remote code may run; recorded
    check_output(training_args.output_dir, data_args.overwrite)  # a complete stage there is kept
    check_roles(rl_args, model_args)
    set_seed(training_args.seed)
    # every prompt trains: no evaluation split is carved (the trainers here do not evaluate)
    data = load_stage_dataset(dataclasses.replace(data_args, eval_split_size=0.0), seed=training_args.seed)
    where = f"dataset '{data_args.dataset_name}', split '{data_args.dataset_train_split}'"
    tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=training_args.trust_remote_code)
    train, prompt_rows, outside = check_rl_prompts(data["train"], where, rl_args, training_args, model_args, tokenizer)
    reward_model = rl_args.reward_model_path
    inputs = {
        "model": resolve_model(model_args.model_name_or_path),
        "reward_model": resolve_model(reward_model, "reward model") if reward_model else None,
        "reward_funcs": rl_args.reward_funcs or [],
        "dataset": {"name": resolve_dataset(data_args), "fingerprint": dataset_fingerprint(train)},
    }
    if rl_args.value_model_path:
        inputs["value_model"] = resolve_model(rl_args.value_model_path, "value model")
    ptx, ptx_source = ptx_batches(rl_args, training_args, tokenizer, training_args.seed)  # checked before models load
    if ptx_source is not None:
        inputs["ptx_dataset"] = ptx_source
    tokenizers = tokenizer_plan(rl_args, training_args, model_args, tokenizer)
    rewards = reward_functions(rl_args, training_args, model_args, tokenizer)
    push = push_request(training_args)  # checked now: a push that cannot happen fails before training
    start_stage(training_args, data_args.overwrite)  # written in <output_dir>.partial, swapped in when complete

    policy = load_causal_lm(model_args, tokenizer=tokenizer, trust_remote_code=training_args.trust_remote_code)
    if rl_args.algorithm == "ppo":
        value_init = tokenizers.get("value_model_init") or {
            "path": rl_args.value_model_path or rl_args.reward_model_path,
            "from": "value_model_path" if rl_args.value_model_path else "reward_model",
        }
        log = completions_log(rl_args, training_args)
        trainer, result = run_ppo(
            policy, tokenizer, train, rl_args, training_args, model_args, rewards, value_init, log, ptx
        )
        main_process = trainer.accelerator.is_main_process
    else:
        trainer, result = run_trl(
            rl_args.algorithm, policy, tokenizer, train, rl_args, training_args, model_args, rewards
        )
        main_process = trainer.is_world_process_zero()
    trainer.accelerator.wait_for_everyone()  # all have saved before the main process swaps the stage in
    if not main_process:
        return {}
    manifest = finish_stage(
        training_args.output_dir,
        "rl",
        configs={"data": data_args, "rl": rl_args, "training": training_args, "model": model_args},
        inputs=inputs,
        metrics={
            "algorithm": rl_args.algorithm,
            "rows": {"train": prompt_rows},
            **({"unscored_outside_world": outside} if outside is not None else {}),
            **result["metrics"],
        },
        extra={**tokenizers, "history": without_nan(result["history"])},
        push=push,
    )
    if push is not None:
        manifest = push_stage(training_args.output_dir, push)
    return manifest


def plan(
    data_args: DataArguments, rl_args: RLArguments, training_args, model_args: ModelConfig, ctx: Context
) -> StagePlan:
    """The dry run of `run`: the same checks, then the roles it would hold and train (`hf_rlhf.plan`)."""
    check_arguments(data_args, rl_args, training_args, model_args)
    _, weights = check_rewards(rl_args, training_args)
    args, algorithm, out = training_args, rl_args.algorithm, StagePlan("rl")
    if algorithm == "ppo":  # the layouts the trainer refuses (`hf_rlhf.ppo.setup`), before anything is sized
        from ..ppo.config import unsupported_layout

        layout = unsupported_layout(ctx.launch.backend, ctx.launch.zero_stage)
        if layout:
            raise RecipeError(layout)
    shared_base = algorithm == "ppo" and getattr(args, "shared_base", False)
    arch, label = ctx.model(model_args.model_name_or_path, "model_name_or_path", model_args.model_revision)
    rows.model_rows(out, arch, label)
    text, info = describe_data(data_args, ctx, PROMPT_FORMATS)
    out.rows.append(("data", text))
    policy_row = describe_policy(
        rl_args.max_prompt_length, arch.max_positions, generated_tokens(rl_args, args), rl_args.long_prompts
    )
    out.rows.append(("prompts", policy_row))
    reward_arch, rewards = None, []
    if rl_args.reward_model_path:
        reward_arch, reward_label = ctx.model(rl_args.reward_model_path, "reward_model_path")
        rewards.append(f"reward model {reward_label}")
    rewards += [f"reward function {name}" for name in rl_args.reward_funcs or []]
    out.rows.append(("rewards", "; ".join(f"{r} (weight {w:g})" for r, w in zip(rewards, weights, strict=True))))

    peft_config = rows.peft_config_of(model_args)
    quant, nested = rows.quantization_of(model_args)
    precision, e = rows.precision_row(args, model_args, ctx.launch)
    out.rows.append(("precision", precision))
    policy = rows.trained_role(
        "policy", arch, "lm", model_args, peft_config, args.optim, getattr(args, "optim_args", None)
    )
    if peft_config is not None:
        out.rows.append(("peft", rows.peft_row(peft_config, policy)))
    frozen = {"dtype": model_args.dtype, "quantization": quant, "nested_quant": nested, "prepared": False}
    roles, world, batch = [policy], ctx.launch.num_processes, args.per_device_train_batch_size
    value_arch = None
    if algorithm == "ppo":
        new_tokens = args.max_new_tokens
        roles.append(rows.reference_role(arch, peft_config, frozen))
        value_arch = reward_arch
        if rl_args.value_model_path:
            value_arch, _ = ctx.model(rl_args.value_model_path, "value_model_path")
        value = rows.trained_role("value", value_arch, "reward", model_args, rows.peft_config_of(model_args, "value"))
        roles.append(dataclasses.replace(value, shared_with="policy" if shared_base else None))
        per_update, k = args.rollout_batch_size, args.num_samples_per_prompt
        samples = f" ({per_update // k} prompts x {k} samples)" if k > 1 else ""
        out.rows.append(
            (
                "rollouts",
                f"{per_update} sequences{samples} per process x {world} = {per_update * world} per update, "
                f"{args.max_steps} updates; each {args.num_ppo_epochs} epochs x {args.num_mini_batches} minibatches "
                f"(micro-batch {batch}); temperature {args.temperature:g}, kl_coef {args.kl_coef:g} "
                f"({args.kl_estimator}), lr {args.learning_rate:g}",
            )
        )
        rollout_batch = min(args.rollout_forward_batch_size, per_update)
    else:
        new_tokens = args.max_completion_length
        if args.beta:  # TRL prepares the reference model (sharded under ZeRO-3 / FSDP)
            roles.append(rows.reference_role(arch, peft_config, {**frozen, "prepared": True}))
        per_step = batch * args.gradient_accumulation_steps * world
        steps = f"{args.max_steps} steps" if args.max_steps > 0 else f"{args.num_train_epochs:g} epochs"
        out.rows.append(
            (
                "groups",
                f"{args.num_generations} completions per prompt; {per_step} completions "
                f"({per_step // args.num_generations} prompts) per optimizer step, {steps}; beta {args.beta:g}, "
                f"lr {args.learning_rate:g}",
            )
        )
        rollout_batch = args.generation_batch_size or batch * args.gradient_accumulation_steps
    if reward_arch is not None and shared_base:
        reward_peft = rows.peft_config_of(model_args, "reward")
        roles.append(Role("reward", reward_arch, "reward", peft_config=reward_peft, shared_with="policy"))
    elif reward_arch is not None:
        roles.append(Role("reward", reward_arch, "reward", **frozen))

    checkpointing, eager = rows.uses_checkpointing(args, ctx.launch), rows.uses_eager(model_args)
    prompt = rows.prompt_tokens(info, arch, new_tokens)
    seq = prompt + new_tokens
    logits = algorithm == "ppo" or not rows.liger(args, out)  # TRL's GRPO/RLOO loss is fused by liger; PPO's is not
    update, rollout = rows.rl_activations(arch, value_arch, batch, seq, rollout_batch, e, checkpointing, eager, logits)
    peak = "update" if update >= rollout else "rollout"
    extra = f" (prompt <= {prompt} assumed + {new_tokens} new); rollout {rollout_batch} at a time; peak: {peak}"
    out.rows.append(("activations", rows.activation_row(checkpointing, batch, seq, extra)))
    out.roles = roles
    out.memory = estimate(roles, max(update, rollout), ctx.launch)
    if algorithm != "ppo":
        rows.optimizer_notes(out, args)
    if shared_base:
        out.notes.append(
            "shared_base: policy, reference (adapters off), value and reward are adapters of one copy of the SFT "
            "model; the reward stage must have trained a LoRA adapter on that same SFT model"
        )
    out.produces = arch
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(*parse_command_line(arguments, argv, prog="hf-rlhf rl"))
