"""hf_rlhf's PPO trainer for language models, on the public APIs of transformers, accelerate and peft.

One update is four short steps, each a method a subclass can replace:

1. `rollout`: sample `num_samples_per_prompt` responses to each prompt of a batch (left-padded, positions from the
   attention mask, temperature sampling with top-k/top-p off), cut after the first EOS, and compute old logprobs,
   reference logprobs and values with the same forward pass the update uses (so the ratio is 1 on the first
   minibatch); the LM head runs on the response positions only;
2. `score`: the reward model and/or reward functions, weighted; missing-EOS penalty, group baseline, running
   normalisation, clipping (`hf_rlhf.ppo.shaping`);
3. `compute_advantages`: per-token KL penalty in the reward (unless `kl_in_loss`), score at the EOS token,
   `advantage_fn` (GAE by default), whitening over valid tokens;
4. `update`: PPO epochs over shuffled minibatches with gradient accumulation, clipped policy and value losses, and the
   optional KL, PPO-ptx and critic warm-up terms (`hf_rlhf.ppo.update`).

Precision, optimizer, clipping and the refused layouts (ZeRO-3, FSDP): `hf_rlhf.ppo.setup`.
Generation: HF `generate` or vLLM (`generation_backend`, `hf_rlhf.generation_backend`). Deliberately left out: a
separate value-head class (the value model is any sequence-classification model, its head applied to every position)
and reward models with another tokenizer than their own (responses are decoded and re-encoded by
`hf_rlhf.reward.scorer.encode_for_reward`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from typing import Any

import torch
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..errors import NonFiniteLossError, TrainingInterrupted
from ..generation_backend import make_backend, sampler_corrections
from ..placement import frozen
from ..resilience import (
    StopRequest,
    interrupted_message,
    is_complete_checkpoint,
    nonfinite_statistics_message,
    remove_incomplete_checkpoints,
    resolve_resume,
)
from ..reward.scorer import RewardFunction
from ..sampling import sampling_config
from . import checkpoint, core, setup
from .config import PPOConfig
from .health import PPOHealthMonitor
from .logs import PPOLogging
from .ptx import PtxBatches
from .roles import adapters_disabled
from .rollout import PolicyAndValue, Rollout, encode_prompts, generate_responses, prompt_batches, response_logits
from .shaping import RunningMoments, group_baseline
from .update import PPOUpdate

logger = logging.getLogger(__name__)


class PPOTrainer(PPOUpdate, PPOLogging):
    """PPO with a KL penalty to a reference model, for causal LMs.

    Args:
        args (`PPOConfig`): Hyperparameters, logging and saving.
        policy (`PreTrainedModel`): The model to train (the SFT model).
        ref_policy (`PreTrainedModel` or `None`): The frozen reference (the SFT model). `None` with a peft policy:
            the policy with its adapters disabled (one base for both).
        value_model (`PreTrainedModel`): A sequence-classification model (initialised from the reward model), plain
            or peft-wrapped, or an `AdapterScalarModel` on the policy's own base (`hf_rlhf.ppo.roles`).
        tokenizer (`PreTrainedTokenizerBase`): The policy's tokenizer, with a chat template for conversational
            prompts and PAD distinct from EOS.
        train_dataset: Rows with a `prompt` (text, or a list of messages).
        reward_funcs (`Sequence[RewardFunction]`): `f(prompts, completions) -> list[float]`, e.g. a
            `RewardModelScorer` and rule-based rewards; their weighted sum is the score.
        reward_weights (`Sequence[float]`, *optional*): One per reward function (default 1 each; 0 logs only).
        reward_names (`Sequence[str]`, *optional*): Names used in the logs.
        reward_stats (`dict`, *optional*): `{"mean", "std"}` of the first reward function's score for
            `normalize_reward` (the reward stage's manifest).
        advantage_fn: `(rewards, values, mask, gamma, lam) -> (advantages, returns)`; GAE by default.
        completions_log (`hf_rlhf.completions_log.CompletionsLog`, *optional*): Logs a table of sample completions
            with their scores every `every` updates (main process).
        ptx_dataset (*optional*): PPO-ptx rows (`text`, `messages` or `prompt` + `completion`), or their
            `hf_rlhf.ppo.ptx.PtxBatches`, whose LM loss is mixed into the policy's with weight `ptx_coef`; needed
            when `ptx_coef > 0`.
    """

    def __init__(
        self,
        args: PPOConfig,
        policy: PreTrainedModel,
        ref_policy: PreTrainedModel | None,
        value_model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        train_dataset,
        reward_funcs: Sequence[RewardFunction],
        reward_weights: Sequence[float] | None = None,
        reward_names: Sequence[str] | None = None,
        reward_stats: dict[str, float] | None = None,
        advantage_fn: Callable = core.gae,
        completions_log=None,
        ptx_dataset=None,
    ):
        if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
            raise ValueError("PPO needs a PAD token distinct from EOS (responses are cut after the first EOS)")
        if not reward_funcs:
            raise ValueError("PPO needs at least one reward function or a reward model")
        self.args, self.tokenizer, self.train_dataset = args, tokenizer, train_dataset
        self.reward_funcs = list(reward_funcs)
        self.reward_weights = list(reward_weights) if reward_weights is not None else [1.0] * len(reward_funcs)
        self.reward_names = list(
            reward_names or [getattr(f, "__name__", f"reward_{i}") for i, f in enumerate(reward_funcs)]
        )
        if len(self.reward_weights) != len(self.reward_funcs) or len(self.reward_names) != len(self.reward_funcs):
            raise ValueError("reward_weights and reward_names need one entry per reward function")
        self.reward_stats, self.advantage_fn, self.completions_log = reward_stats, advantage_fn, completions_log
        setup.check_inputs(args, policy, ref_policy, ptx_dataset)
        setup.check_options(args)
        self.generation_backend = make_backend(args)  # HF `generate` or vLLM, its options checked (docs/vllm.md)
        self.health = PPOHealthMonitor(args, args.output_dir)  # stops a run gone wrong (`hf_rlhf.ppo.health`)
        self.ptx = ptx_dataset
        if ptx_dataset is not None and not isinstance(ptx_dataset, PtxBatches):  # rows: encoded and checked now
            self.ptx = PtxBatches(tokenizer, ptx_dataset, args.ptx_max_length, args.seed)
        self.logging_dir = setup.default_logging_dir(args)
        self.accelerator = setup.make_accelerator(args, self.logging_dir)
        if self.accelerator.num_processes > 1:  # each process samples its own responses: seed + process index
            set_seed(args.seed, device_specific=True)
        self.dropout_rates = [core.config_dropout(model) for model in (policy, value_model)]  # put back when saved
        for model in (policy, value_model, ref_policy):
            if model is not None:
                core.disable_dropout(model)
        setup.set_precision(self.accelerator, policy, value_model)
        setup.gradient_checkpointing(args, policy, value_model)
        self.model = PolicyAndValue(policy, value_model)
        self.ref_policy = None if ref_policy is None else frozen(ref_policy, self.accelerator.device)
        self.num_updates = args.max_steps
        self.param_groups = self.model.parameter_groups()
        for role, params in self.param_groups.items():
            if not params:
                raise ValueError(
                    f"the {role} model has no trainable parameters (every requires_grad is False; a model from "
                    "`load_model_for_inference` is frozen): PPO would not train it"
                )
        optimizer = setup.make_optimizer(args, self.model, self.param_groups)
        scheduler = setup.make_scheduler(
            args, optimizer, self.num_updates * args.num_ppo_epochs * args.num_mini_batches
        )
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(self.model, optimizer, scheduler)
        self.kl_ctl = (
            core.AdaptiveKLController(args.kl_coef, args.target_kl, args.kl_horizon)
            if args.adaptive_kl
            else core.FixedKLController(args.kl_coef)
        )
        self.global_step, self.history = 0, []
        self.reward_moments = RunningMoments()  # `running_reward_norm`
        self.generation_config = sampling_config(tokenizer, args.max_new_tokens, args.temperature)

    # ------------------------------------------------------------------------------------------ prompts
    def prompt_batches(self) -> Iterator[list[Any]]:
        """This process's share of each update's prompts, in a seeded order that a resumed run replays exactly."""
        acc = self.accelerator
        per_update = self.args.rollout_batch_size // self.args.num_samples_per_prompt
        return prompt_batches(self.train_dataset, per_update, self.args.seed, acc.num_processes, acc.process_index)

    # ------------------------------------------------------------------------------------------ rollout
    def forward(self, model: nn.Module, query_ids, query_mask, response_ids, response_mask, ptx=None):
        """The training forward pass under the run's autocast: (logits, fp32 values) for the response tokens; the
        log-probabilities are `core.logprobs_from_logits(logits, response_ids, temperature)` (fp32). With `ptx`
        (ids, mask) of PPO-ptx rows, also the policy's logits on them, as a third element."""
        input_ids = torch.cat([query_ids, response_ids], 1)
        attention_mask = torch.cat([query_mask, response_mask], 1)
        with self.accelerator.autocast():
            logits, values, *rest = model(input_ids, attention_mask, query_ids.shape[1], ptx=ptx)
        return (logits, values.float(), *rest)

    def reference_logprobs(self, query_ids, query_mask, response_ids, response_mask) -> torch.Tensor:
        """Logprobs of the responses under the reference model, with the same temperature."""
        input_ids = torch.cat([query_ids, response_ids], 1)
        attention_mask = torch.cat([query_mask, response_mask], 1)
        position_ids = core.position_ids_from_mask(attention_mask)
        ref = self.ref_policy
        with ExitStack() as stack:
            stack.enter_context(self.accelerator.autocast())  # the policy's precision: KL is 0 at initialisation
            if ref is None:  # a peft policy: the reference is the base with the adapter disabled
                ref = self.accelerator.unwrap_model(self.model).policy
                stack.enter_context(adapters_disabled(ref))
            logits = response_logits(ref, input_ids, attention_mask, position_ids, query_ids.shape[1])
        return core.logprobs_from_logits(logits, response_ids, self.args.temperature)

    @torch.no_grad()
    def rollout(self, prompts: list[Any]) -> Rollout:
        """Sample `num_samples_per_prompt` responses per prompt (consecutive rows) and compute old logprobs,
        reference logprobs and values."""
        tok, step = self.tokenizer, self.args.rollout_forward_batch_size
        prompts = [p for p in prompts for _ in range(self.args.num_samples_per_prompt)]
        query_ids, query_mask = encode_prompts(tok, prompts, self.accelerator.device)
        unwrapped = self.accelerator.unwrap_model(self.model)
        unwrapped.eval()
        with self.accelerator.autocast():  # sample from the distribution the update trains
            generated, sampler_logprobs = generate_responses(
                unwrapped.policy, query_ids, query_mask, self.generation_config, step, self.generation_backend, True
            )
        response_ids, response_mask, has_eos = core.truncate_after_eos(generated, tok.eos_token_id, tok.pad_token_id)
        logprobs, ref_logprobs, values, entropy = [], [], [], []
        for start in range(0, len(prompts), step):
            rows = slice(start, start + step)
            args = (query_ids[rows], query_mask[rows], response_ids[rows], response_mask[rows])
            logits, value = self.forward(self.model, *args)
            logprobs.append(core.logprobs_from_logits(logits, response_ids[rows], self.args.temperature))
            entropy.append(core.entropy_from_logits(logits, self.args.temperature))
            values.append(value)
            ref_logprobs.append(self.reference_logprobs(*args))
        mask = response_mask.float()
        per_token = {"logprobs": logprobs, "ref_logprobs": ref_logprobs, "values": values, "entropy": entropy}
        rollout = Rollout(
            prompts=list(prompts),
            completions=[c.strip() for c in tok.batch_decode(response_ids, skip_special_tokens=True)],
            query_ids=query_ids,
            query_mask=query_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            has_eos=has_eos,
            **{name: torch.cat(chunks) * mask for name, chunks in per_token.items()},
        )
        rollout.sampler_logprobs, rollout.importance_weights = sampler_corrections(  # vLLM's tokens (None: HF)
            sampler_logprobs, rollout.logprobs, mask, self.args.vllm_importance_sampling_cap
        )
        return rollout

    # -------------------------------------------------------------------------------------------- score
    @torch.no_grad()
    def score(self, rollout: Rollout) -> Rollout:
        """Weighted sum of the reward functions, then missing-EOS penalty, group baseline, running normalisation and
        clipping (`hf_rlhf.ppo.shaping`); `raw_scores` keep the score before the last three."""
        device = self.accelerator.device
        total = torch.zeros(len(rollout.prompts), device=device)
        parts = {}
        for i, (fn, weight, name) in enumerate(
            zip(self.reward_funcs, self.reward_weights, self.reward_names, strict=True)
        ):
            values = torch.tensor(fn(rollout.prompts, rollout.completions), dtype=torch.float, device=device)
            if i == 0 and self.args.normalize_reward and self.reward_stats:
                values = (values - self.reward_stats["mean"]) / max(self.reward_stats["std"], 1e-8)
            parts[name] = values
            if weight:  # a weight of 0 only logs: its NaN (a prompt it cannot score, tiny_world_gold) stays out
                total += weight * values
        if self.args.missing_eos_penalty is not None:
            total = total - self.args.missing_eos_penalty * (~rollout.has_eos).float()
        rollout.raw_scores, rollout.score_parts = total, parts
        if self.args.group_baseline:
            total = group_baseline(total, self.args.num_samples_per_prompt)
        if self.args.running_reward_norm:
            self.reward_moments.update(total, lambda t: self.accelerator.reduce(t, reduction="sum"))
            total = self.reward_moments.normalize(total)
        if self.args.reward_clip is not None:
            total = total.clamp(-self.args.reward_clip, self.args.reward_clip)
        rollout.scores = total
        return rollout

    # ------------------------------------------------------------------------------------- advantages
    def compute_advantages(self, rollout: Rollout) -> Rollout:
        """Per-token rewards (KL penalty + score at EOS), advantages and returns; whitened over valid tokens. With
        `kl_in_loss` the reward is the score alone (the KL is a loss term, `hf_rlhf.ppo.update`)."""
        mask = rollout.response_mask.float()
        rollout.kl = core.kl_penalty(rollout.logprobs, rollout.ref_logprobs, self.args.kl_estimator) * mask
        kl_coef = 0.0 if self.args.kl_in_loss else self.kl_ctl.value
        rollout.rewards, _ = core.compute_rewards(rollout.scores, rollout.kl, mask, kl_coef)
        advantages, rollout.returns = self.advantage_fn(
            rollout.rewards, rollout.values, mask, self.args.gamma, self.args.lam
        )
        if self.args.whiten_advantages:
            mean, var = self.global_masked_stats(advantages, mask)
            advantages = core.masked_whiten(advantages, mask, mean=mean, var=var)
        rollout.advantages = advantages
        return rollout

    def global_masked_stats(self, values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked mean and (unbiased) variance over the valid tokens of every process."""
        sums = torch.stack([(values * mask).sum(), (values**2 * mask).sum(), mask.sum()])
        total, total_sq, count = self.accelerator.reduce(sums, reduction="sum")
        mean = total / count.clamp(min=1)
        var = (total_sq / count.clamp(min=1) - mean**2) * count / (count - 1).clamp(min=1)
        return mean, var

    # ------------------------------------------------------------------------------------------------ loop
    def train(self, resume_from_checkpoint: str | bool | None = None) -> list[dict[str, float]]:
        """Run `max_steps` PPO updates; returns the logged history.

        A non-finite statistic stops with `NonFiniteLossError` before anything is saved from that state; SIGTERM stops
        at the end of the update every process agrees on, saves a checkpoint and raises `TrainingInterrupted`
        (`hf_rlhf.resilience`).
        """
        resume = resolve_resume(self.args.output_dir, resume_from_checkpoint)
        if self.accelerator.is_main_process:  # checkpoints whose saving was cut short
            remove_incomplete_checkpoints(self.args.output_dir, keep=resume)
        if self.args.report_to and self.args.report_to != ["none"] and self.accelerator.log_with:
            self.accelerator.init_trackers(self.args.run_name or "hf_rlhf_ppo", config=self.args.to_sanitized_dict())
            board = next((t for t in self.accelerator.trackers if t.name == "tensorboard"), None)
            if board is not None and self.completions_log is not None:  # the table beside the scalars
                self.completions_log.logging_dir = board.logging_dir
        batches = self.prompt_batches()
        if resume:
            self.load_checkpoint(resume)
            for _ in range(self.global_step):  # replay the prompt order up to where the run stopped
                next(batches)
        bar = tqdm(
            total=self.num_updates,
            initial=self.global_step,
            desc="PPO updates",
            disable=self.args.disable_tqdm or not self.accelerator.is_main_process,
        )
        stop = StopRequest()
        with stop.on_sigterm():
            while self.global_step < self.num_updates:
                self.run_update(batches)
                bar.update(1)
                if self.args.save_strategy == "steps" and self.global_step % self.args.save_steps == 0:
                    self.save_checkpoint()
                if stop.agreed(self.accelerator):
                    saved = os.path.join(self.args.output_dir, f"checkpoint-{self.global_step}")
                    if not is_complete_checkpoint(saved):
                        saved = self.save_checkpoint()
                    raise TrainingInterrupted(
                        interrupted_message(self.args.output_dir, self.global_step, self.num_updates, saved)
                    )
        bar.close()
        self.generation_backend.close()
        for tracker in self.accelerator.trackers:  # not `end_training()`: it destroys the process group, which
            tracker.finish()  # saving the model and the later stages of a pipeline still use
        return self.history

    def run_update(self, batches) -> dict[str, float]:
        """One PPO update (rollout, score, advantages, optimisation) on the next prompts; logs and returns metrics."""
        start = time.perf_counter()
        rollout = self.compute_advantages(self.score(self.rollout(next(batches))))
        metrics = self.rollout_metrics(rollout)
        update_stats = self.update(rollout)
        reduced = self.accelerator.reduce(
            torch.tensor(list(update_stats.values()), device=self.accelerator.device), "mean"
        )
        metrics.update(zip(update_stats, reduced.tolist(), strict=True))
        self.kl_ctl.update(metrics["kl"], self.args.rollout_batch_size * self.accelerator.num_processes)
        self.global_step += 1
        metrics.update(
            step=self.global_step,
            kl_coef=self.kl_ctl.value,
            lr=self.scheduler.get_last_lr()[0],
            seconds_per_update=time.perf_counter() - start,
        )
        # reduced: every process agrees. A reward part may be NaN (no prompt it scores); a weighted NaN shows in score
        if not all(math.isfinite(v) for k, v in metrics.items() if not k.startswith("reward/")):
            raise NonFiniteLossError(nonfinite_statistics_message(self.args.output_dir, self.global_step, metrics))
        self.history.append(metrics)
        if self.global_step % max(1, int(self.args.logging_steps)) == 0:
            self.log(metrics)
        self.health.check(self.global_step, metrics)
        if self.completions_log is not None and self.completions_log.due(self.global_step):
            self.log_completions(rollout)
        return metrics

    # ---------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> str:
        """Write `checkpoint-<step>` (complete once marked, `hf_rlhf.resilience`); returns its path."""
        state = {
            "global_step": self.global_step,
            "kl_ctl": self.kl_ctl.state_dict(),
            "history": self.history,
            "reward_moments": self.reward_moments.state_dict(),
            **({"ptx": self.ptx.state_dict()} if self.ptx is not None else {}),
        }
        return checkpoint.save_checkpoint(self.accelerator, self.args.output_dir, state, self.args.save_total_limit)

    def load_checkpoint(self, path: str) -> None:
        """Restore policy, value model, optimizer, scheduler, RNG states, KL controller and step."""
        state = checkpoint.load_checkpoint(self.accelerator, path)
        self.global_step, self.history = state["global_step"], state["history"]
        self.health.resume(self.history)
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        if "reward_moments" in state:  # checkpoints written before running normalisation existed have none
            self.reward_moments.load_state_dict(state["reward_moments"])
        if self.ptx is not None and "ptx" in state:
            self.ptx.load_state_dict(state["ptx"])

    def save_model(self, output_dir: str) -> None:
        """Save the trained policy (with LoRA, its adapter only) and tokenizer; the value model to `value_model/`;
        each config with its original dropout rates."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        with (
            core.original_dropout(unwrapped.policy, self.dropout_rates[0]),
            core.original_dropout(unwrapped.value_model, self.dropout_rates[1]),
        ):
            checkpoint.save_model(self.accelerator, self.model, self.tokenizer, output_dir)
