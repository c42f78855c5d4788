"""hf_rlhf's PPO trainer for language models, on the public APIs of transformers, accelerate and peft.

One update is four short steps, each a method a subclass can replace:

1. `rollout`: sample responses to a batch of prompts (left-padded, positions from the attention mask, temperature
   sampling with top-k/top-p off), cut after the first EOS, and compute old logprobs, reference logprobs and values
   with the same forward pass the update uses (so the ratio is 1 on the first minibatch);
2. `score`: the reward model and/or reward functions, weighted; missing-EOS penalty, normalisation, clipping;
3. `compute_advantages`: per-token KL penalty in the reward, score at the EOS token, `advantage_fn` (GAE by default),
   whitening over valid tokens;
4. `update`: PPO epochs over shuffled minibatches with gradient accumulation, clipped policy and value losses.

Deliberately left out: a separate value-head class (the value model is any sequence-classification model, its head
applied to every position), reward models with another tokenizer than their own (responses are decoded and re-encoded
by `hf_rlhf.reward.scorer.encode_for_reward`), and vLLM generation.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, get_scheduler

from ..eval.generation import format_prompts
from ..resilience import (
    NonFiniteLossError,
    StopRequest,
    TrainingInterrupted,
    interrupted_message,
    mark_checkpoint_complete,
)
from ..reward.scorer import RewardFunction
from . import core
from .config import PPOConfig
from .roles import adapters_disabled

logger = logging.getLogger(__name__)
STATE_FILE = "ppo_trainer_state.json"


@dataclass
class Rollout:
    """One batch of experience; tensors are (B, P) for queries and (B, T) for responses."""

    prompts: list[Any]
    completions: list[str]
    query_ids: torch.Tensor
    query_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    has_eos: torch.Tensor
    logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    values: torch.Tensor
    entropy: torch.Tensor
    scores: torch.Tensor | None = None
    score_parts: dict[str, torch.Tensor] | None = None
    rewards: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> Rollout:
        """The rows `index` of every tensor field (lists and dicts are left whole)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Rollout(**{k: v[index] if isinstance(v, torch.Tensor) else v for k, v in values.items()})


class PolicyAndValue(nn.Module):
    """Policy and value model as one module: one optimizer, one `accelerator.prepare`, one DDP wrapper."""

    def __init__(self, policy: PreTrainedModel, value_model: PreTrainedModel):
        super().__init__()
        self.policy, self.value_model = policy, value_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, context_length: int):
        """Logits and values that predict the response tokens: positions context_length-1 .. end-1."""
        position_ids = core.position_ids_from_mask(attention_mask)
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        values = sequence_values(self.value_model, input_ids, attention_mask, position_ids)
        return logits[:, context_length - 1 : -1], values[:, context_length - 1 : -1]


def sequence_values(model: PreTrainedModel, input_ids, attention_mask, position_ids) -> torch.Tensor:
    """A sequence-classification model's head applied at every position: (B, L).

    Works for a plain model, a peft-wrapped one (a LoRA value model) and a role of the shared base
    (`hf_rlhf.ppo.roles.AdapterScalarModel`).
    """
    if hasattr(model, "per_token_scores"):
        return model.per_token_scores(input_ids, attention_mask, position_ids)
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).last_hidden_state
    return model.score(hidden).squeeze(-1)


class PPOTrainer:
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
        self.reward_stats, self.advantage_fn = reward_stats, advantage_fn

        self.accelerator = Accelerator(
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            cpu=args.use_cpu,
            log_with=[r for r in (args.report_to or []) if r != "none"] or None,
            step_scheduler_with_optimizer=False,  # stepped once per optimizer step, not once per process
        )
        if self.accelerator.num_processes > 1:  # each process samples its own responses: seed + process index
            set_seed(args.seed, device_specific=True)
        for model in (policy, value_model, ref_policy):
            if model is not None:
                core.disable_dropout(model)
        self.model = PolicyAndValue(policy, value_model)
        self.ref_policy = ref_policy
        if ref_policy is not None:
            ref_policy.eval().requires_grad_(False)
            self.ref_policy = ref_policy.to(self.accelerator.device)
        self.num_updates = args.max_steps
        optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad],
            lr=args.learning_rate,
            weight_decay=args.weight_decay,
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
        )
        num_steps = self.num_updates * args.num_ppo_epochs * args.num_mini_batches
        scheduler = get_scheduler(
            args.lr_scheduler_type, optimizer, args.get_warmup_steps(num_steps), num_training_steps=num_steps
        )
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(self.model, optimizer, scheduler)
        self.kl_ctl = (
            core.AdaptiveKLController(args.kl_coef, args.target_kl, args.kl_horizon)
            if args.adaptive_kl
            else core.FixedKLController(args.kl_coef)
        )
        self.global_step, self.history = 0, []
        self.generation_config = GenerationConfig(
            do_sample=True,
            temperature=args.temperature,
            top_k=0,
            top_p=1.0,
            min_p=None,
            typical_p=1.0,
            repetition_penalty=1.0,
            max_new_tokens=args.max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )

    # ------------------------------------------------------------------------------------------ prompts
    def prompt_batches(self):
        """This process's share of each update's prompts, in a seeded order that a resumed run replays exactly."""
        n, world, rank = len(self.train_dataset), self.accelerator.num_processes, self.accelerator.process_index
        per_update = self.args.rollout_batch_size * world
        epoch, position, order = 0, 0, None
        while True:
            if order is None or position + per_update > n:
                generator = torch.Generator().manual_seed(self.args.seed + epoch)
                order, position, epoch = torch.randperm(n, generator=generator).tolist(), 0, epoch + 1
                if per_update > n:
                    raise ValueError(f"an update needs {per_update} prompts but the dataset has {n}")
            chunk = order[position : position + per_update]
            position += per_update
            mine = chunk[rank * self.args.rollout_batch_size : (rank + 1) * self.args.rollout_batch_size]
            yield [self.train_dataset[i]["prompt"] for i in mine]

    # ------------------------------------------------------------------------------------------ rollout
    def forward(self, model: nn.Module, query_ids, query_mask, response_ids, response_mask):
        """The training forward pass: (logits / temperature, values) for the response tokens."""
        input_ids = torch.cat([query_ids, response_ids], 1)
        attention_mask = torch.cat([query_mask, response_mask], 1)
        logits, values = model(input_ids, attention_mask, query_ids.shape[1])
        return logits / self.args.temperature, values

    def reference_logprobs(self, query_ids, query_mask, response_ids, response_mask) -> torch.Tensor:
        """Logprobs of the responses under the reference model, with the same temperature."""
        input_ids = torch.cat([query_ids, response_ids], 1)
        attention_mask = torch.cat([query_mask, response_mask], 1)
        position_ids = core.position_ids_from_mask(attention_mask)
        ref = self.ref_policy
        if ref is None:  # a peft policy: the reference is the base with the adapter disabled
            policy = self.accelerator.unwrap_model(self.model).policy
            with adapters_disabled(policy):
                logits = policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        else:
            logits = ref(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        logits = logits[:, query_ids.shape[1] - 1 : -1] / self.args.temperature
        return core.logprobs_from_logits(logits, response_ids)

    @torch.no_grad()
    def rollout(self, prompts: list[Any]) -> Rollout:
        """Sample one response per prompt and compute old logprobs, reference logprobs and values."""
        tok, device = self.tokenizer, self.accelerator.device
        side, tok.padding_side = tok.padding_side, "left"
        try:
            enc = tok(format_prompts(tok, prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = side
        query_ids, query_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        unwrapped = self.accelerator.unwrap_model(self.model)
        unwrapped.eval()
        chunks = []
        step = self.args.rollout_forward_batch_size
        for start in range(0, len(prompts), step):
            q, m = query_ids[start : start + step], query_mask[start : start + step]
            # generate derives position ids from the attention mask, so left padding does not shift them
            out = unwrapped.policy.generate(input_ids=q, attention_mask=m, generation_config=self.generation_config)
            chunks.append(out[:, q.shape[1] :])
        width = max(c.shape[1] for c in chunks)
        generated = torch.cat([nn.functional.pad(c, (0, width - c.shape[1]), value=tok.pad_token_id) for c in chunks])
        response_ids, response_mask, has_eos = core.truncate_after_eos(generated, tok.eos_token_id, tok.pad_token_id)
        logprobs, ref_logprobs, values, entropy = [], [], [], []
        for start in range(0, len(prompts), step):
            rows = slice(start, start + step)
            args = (query_ids[rows], query_mask[rows], response_ids[rows], response_mask[rows])
            logits, value = self.forward(self.model, *args)
            logprobs.append(core.logprobs_from_logits(logits, response_ids[rows]))
            entropy.append(core.entropy_from_logits(logits))
            values.append(value)
            ref_logprobs.append(self.reference_logprobs(*args))
        mask = response_mask.float()
        completions = tok.batch_decode(response_ids, skip_special_tokens=True)
        return Rollout(
            prompts=list(prompts),
            completions=[c.strip() for c in completions],
            query_ids=query_ids,
            query_mask=query_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            has_eos=has_eos,
            logprobs=torch.cat(logprobs) * mask,
            ref_logprobs=torch.cat(ref_logprobs) * mask,
            values=torch.cat(values) * mask,
            entropy=torch.cat(entropy) * mask,
        )

    # -------------------------------------------------------------------------------------------- score
    @torch.no_grad()
    def score(self, rollout: Rollout) -> Rollout:
        """Weighted sum of the reward functions, then missing-EOS penalty and clipping."""
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
            total += weight * values
        if self.args.missing_eos_penalty is not None:
            total = total - self.args.missing_eos_penalty * (~rollout.has_eos).float()
        if self.args.reward_clip is not None:
            total = total.clamp(-self.args.reward_clip, self.args.reward_clip)
        rollout.scores, rollout.score_parts = total, parts
        return rollout

    # ------------------------------------------------------------------------------------- advantages
    def compute_advantages(self, rollout: Rollout) -> Rollout:
        """Per-token rewards (KL penalty + score at EOS), advantages and returns; whitened over valid tokens."""
        mask = rollout.response_mask.float()
        rollout.kl = core.kl_penalty(rollout.logprobs, rollout.ref_logprobs, self.args.kl_estimator) * mask
        rollout.rewards, _ = core.compute_rewards(rollout.scores, rollout.kl, mask, self.kl_ctl.value)
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

    # --------------------------------------------------------------------------------------------- update
    def update(self, rollout: Rollout) -> dict[str, float]:
        """PPO epochs over shuffled minibatches; returns the mean of the per-micro-batch statistics."""
        args, model = self.args, self.model
        model.train()
        n = rollout.response_ids.shape[0]
        minibatch = n // args.num_mini_batches
        micro = max(1, minibatch // args.gradient_accumulation_steps)
        stats: dict[str, list[float]] = {}
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(n, device=rollout.response_ids.device)
            for mb_start in range(0, minibatch * args.num_mini_batches, minibatch):
                for micro_start in range(mb_start, mb_start + minibatch, micro):
                    batch = rollout.select(order[micro_start : micro_start + micro])
                    with self.accelerator.accumulate(model):
                        step_stats = self.training_step(batch)
                    for key, value in step_stats.items():
                        stats.setdefault(key, []).append(value)
        return {key: sum(v) / len(v) for key, v in stats.items()}

    def training_step(self, batch: Rollout) -> dict[str, float]:
        """One micro-batch: clipped policy and value losses, backward, and (on sync) clip and step."""
        args = self.args
        mask = batch.response_mask.float()
        logits, values = self.forward(
            self.model, batch.query_ids, batch.query_mask, batch.response_ids, batch.response_mask
        )
        logprobs = core.logprobs_from_logits(logits, batch.response_ids)
        pg_loss, pg_stats = core.policy_loss(logprobs, batch.logprobs, batch.advantages, mask, args.cliprange)
        vf_loss, vf_stats = core.value_loss(values, batch.values, batch.returns, mask, args.cliprange_value)
        loss = pg_loss + args.vf_coef * vf_loss
        self.accelerator.backward(loss)
        if self.accelerator.sync_gradients and args.max_grad_norm:
            self.accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
        self.optimizer.step()
        if self.accelerator.sync_gradients and not self.accelerator.optimizer_step_was_skipped:
            self.scheduler.step()
        self.optimizer.zero_grad()
        out = {"loss/policy": pg_loss.item(), "loss/value": vf_loss.item()}
        out.update({f"policy/{k}": v.item() for k, v in pg_stats.items()})
        out.update({f"value/{k}": v.item() for k, v in vf_stats.items()})
        return out

    # ------------------------------------------------------------------------------------------------ loop
    def rollout_metrics(self, rollout: Rollout) -> dict[str, float]:
        """Statistics of one rollout over valid tokens only, averaged over every process."""
        mask = rollout.response_mask.float()
        kl_per_seq = rollout.kl.sum(-1)
        local = {
            "score": rollout.scores.mean(),
            "rlhf_reward": (rollout.scores + (-self.kl_ctl.value * kl_per_seq)).mean(),
            "kl": kl_per_seq.mean(),
            "entropy": core.masked_mean(rollout.entropy, mask),
            "response_length": mask.sum(-1).mean(),
            "missing_eos_rate": (~rollout.has_eos).float().mean(),
            "value/explained_variance": core.explained_variance(rollout.values, rollout.returns, mask),
            **{f"reward/{name}": part.mean() for name, part in rollout.score_parts.items()},
        }
        stacked = torch.stack([v.float() for v in local.values()])
        reduced = self.accelerator.reduce(stacked, reduction="mean")
        return {k: v.item() for k, v in zip(local, reduced, strict=True)}

    def train(self, resume_from_checkpoint: str | bool | None = None) -> list[dict[str, float]]:
        """Run `max_steps` PPO updates; returns the logged history.

        A non-finite statistic stops with `NonFiniteLossError` before anything is saved from that state; SIGTERM stops
        at the end of the update every process agrees on, saves a checkpoint and raises `TrainingInterrupted`
        (`hf_rlhf.resilience`).
        """
        if self.accelerator.is_main_process:  # a checkpoint whose saving was cut short (never renamed)
            for path in glob.glob(os.path.join(self.args.output_dir, "checkpoint-*.tmp")):
                shutil.rmtree(path, ignore_errors=True)
        if self.args.report_to and self.args.report_to != ["none"] and self.accelerator.log_with:
            self.accelerator.init_trackers(self.args.run_name or "hf_rlhf_ppo", config=self.args.to_sanitized_dict())
        batches = self.prompt_batches()
        if resume_from_checkpoint:
            self.load_checkpoint(self.resolve_checkpoint(resume_from_checkpoint))
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
                if self.agree_to_stop(stop.requested):
                    saved = os.path.join(self.args.output_dir, f"checkpoint-{self.global_step}")
                    if not os.path.isfile(os.path.join(saved, STATE_FILE)):
                        saved = self.save_checkpoint()
                    raise TrainingInterrupted(
                        interrupted_message(self.args.output_dir, self.global_step, self.num_updates, saved)
                    )
        bar.close()
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
        if not all(math.isfinite(v) for v in metrics.values()):  # reduced: every process agrees
            raise NonFiniteLossError(self.nonfinite_message(metrics))
        self.history.append(metrics)
        if self.global_step % max(1, int(self.args.logging_steps)) == 0:
            self.log(metrics)
        return metrics

    def agree_to_stop(self, requested: bool) -> bool:
        """Whether any process was asked to stop (SIGTERM); every process gets the same answer."""
        flag = torch.tensor(float(requested), device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum") > 0)

    def nonfinite_message(self, metrics: dict[str, float]) -> str:
        bad = ", ".join(f"{k}={v}" for k, v in metrics.items() if not math.isfinite(v))
        kept = self.checkpoints()
        kept = f"the last good checkpoint, {kept[-1]}, is kept" if kept else "no checkpoint had been saved before it"
        return (
            f"{self.args.output_dir}: non-finite PPO statistics at update {self.global_step} ({bad}). Training "
            f"stopped; no checkpoint or model was saved from this state and the stage is not complete; {kept}. Try "
            "a lower learning_rate, max_grad_norm, a larger kl_coef, reward_clip or normalize_reward, or check the "
            "reward functions for NaN/inf; a run resumed with the same settings may diverge again."
        )

    def log(self, metrics: dict[str, float]) -> None:
        if self.accelerator.log_with:
            self.accelerator.log(metrics, step=self.global_step)
        if self.accelerator.is_main_process:
            keys = ("score", "kl", "entropy", "policy/clipfrac", "response_length", "missing_eos_rate")
            tqdm.write(
                json.dumps({"step": self.global_step, **{k: round(metrics[k], 4) for k in keys if k in metrics}})
            )

    # ---------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> str:
        """Write `checkpoint-<step>` atomically (a temporary directory renamed when complete)."""
        final = os.path.join(self.args.output_dir, f"checkpoint-{self.global_step}")
        tmp = final + ".tmp"
        if self.accelerator.is_main_process and os.path.exists(tmp):
            shutil.rmtree(tmp)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(tmp, safe_serialization=True)
        self.accelerator.wait_for_everyone()  # every process's RNG state is in `tmp` before it is renamed
        if self.accelerator.is_main_process:
            state = {"global_step": self.global_step, "kl_ctl": self.kl_ctl.state_dict(), "history": self.history}
            with open(os.path.join(tmp, STATE_FILE), "w") as f:
                json.dump(state, f)
            mark_checkpoint_complete(tmp, self.global_step)  # flushed to disk before the rename makes it visible
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(tmp, final)
            self.rotate_checkpoints()
        self.accelerator.wait_for_everyone()
        return final

    def checkpoints(self) -> list[str]:
        root = self.args.output_dir
        if not os.path.isdir(root):
            return []
        found = [d for d in os.listdir(root) if d.startswith("checkpoint-") and d.split("-")[-1].isdigit()]
        found = [d for d in found if os.path.isfile(os.path.join(root, d, STATE_FILE))]
        return [os.path.join(root, d) for d in sorted(found, key=lambda d: int(d.split("-")[-1]))]

    def rotate_checkpoints(self) -> None:
        limit = self.args.save_total_limit
        if limit:
            for old in self.checkpoints()[:-limit]:
                shutil.rmtree(old)

    def resolve_checkpoint(self, resume_from_checkpoint: str | bool) -> str:
        if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.lower() not in ("true", "latest"):
            return resume_from_checkpoint
        found = self.checkpoints()
        if not found:
            raise FileNotFoundError(f"no complete checkpoint to resume from in '{self.args.output_dir}'")
        return found[-1]

    def load_checkpoint(self, path: str) -> None:
        """Restore policy, value model, optimizer, scheduler, RNG states, KL controller and step."""
        with open(os.path.join(path, STATE_FILE)) as f:
            state = json.load(f)
        self.accelerator.load_state(path)
        self.global_step, self.history = state["global_step"], state["history"]
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        logger.warning("resumed PPO from %s at update %d", path, self.global_step)

    def save_model(self, output_dir: str) -> None:
        """Save the trained policy (safetensors; with LoRA, its adapter only) and tokenizer; the value model goes to
        `value_model/`."""
        self.accelerator.wait_for_everyone()
        unwrapped = self.accelerator.unwrap_model(self.model)
        if self.accelerator.is_main_process:
            policy = unwrapped.policy
            only_policy = {"selected_adapters": ["default"]} if hasattr(policy, "peft_config") else {}
            policy.save_pretrained(output_dir, safe_serialization=True, **only_policy)
            self.tokenizer.save_pretrained(output_dir)
            unwrapped.value_model.save_pretrained(os.path.join(output_dir, "value_model"), safe_serialization=True)
