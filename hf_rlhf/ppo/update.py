"""PPO's optimisation of one rollout: epochs over shuffled minibatches, gradient accumulation, and the loss of a
micro-batch (clipped policy loss, clipped value loss, and the optional KL, PPO-ptx and critic warm-up terms)."""

from __future__ import annotations

import torch

from . import core, setup
from .rollout import Rollout


class PPOUpdate:
    """The update step of `PPOTrainer`; needs `args`, `accelerator`, `model`, `optimizer`, `scheduler`,
    `param_groups`, `kl_ctl`, `global_step`, `ptx` (or None) and `forward`."""

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

    @property
    def critic_warmup(self) -> bool:
        """Whether the current update trains the value model only (`critic_warmup_steps`)."""
        return self.global_step < self.args.critic_warmup_steps

    def loss(self, batch: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The micro-batch's loss and its parts:

        pg + vf_coef * vf [+ kl_coef * k3 KL (`kl_in_loss`)] [+ ptx_coef * LM loss on ptx rows (`ptx_coef`)];
        during critic warm-up only vf_coef * vf trains (the policy terms are multiplied by 0, so every parameter
        still takes part in the backward pass, as DDP needs).
        """
        args = self.args
        mask = batch.response_mask.float()
        inputs = (batch.query_ids, batch.query_mask, batch.response_ids, batch.response_mask)
        ptx = self.ptx.next(batch.response_ids.shape[0], self.accelerator.device) if self.ptx is not None else None
        logits, values, *ptx_logits = self.forward(self.model, *inputs, ptx=ptx[:2] if ptx else None)
        logprobs = core.logprobs_from_logits(logits, batch.response_ids, args.temperature)
        pg_loss, pg_stats = core.policy_loss(
            logprobs, batch.logprobs, batch.advantages, mask, args.cliprange, args.dual_clip, batch.importance_weights
        )
        vf_loss, vf_stats = core.value_loss(values, batch.values, batch.returns, mask, args.cliprange_value)
        policy_terms = pg_loss
        parts = {"loss/policy": pg_loss, "loss/value": vf_loss}
        if args.kl_in_loss:
            kl = core.kl_loss(logprobs, batch.ref_logprobs, mask)
            policy_terms = policy_terms + self.kl_ctl.value * kl
            parts["loss/kl"] = kl
        if ptx is not None:
            ptx_loss = core.lm_loss(ptx_logits[0], ptx[0], ptx[2])
            policy_terms = policy_terms + args.ptx_coef * ptx_loss
            parts["loss/ptx"] = ptx_loss
        if self.critic_warmup:
            policy_terms = policy_terms * 0.0
        parts.update({f"policy/{k}": v for k, v in pg_stats.items()})
        parts.update({f"value/{k}": v for k, v in vf_stats.items()})
        return policy_terms + args.vf_coef * vf_loss, parts

    def training_step(self, batch: Rollout) -> dict[str, float]:
        """One micro-batch: the loss, backward, and (on sync) clip and step."""
        loss, parts = self.loss(batch)
        self.accelerator.backward(loss)
        norms = (
            setup.clip_gradients(self.accelerator, self.args, self.param_groups)
            if self.accelerator.sync_gradients
            else {}
        )
        if self.critic_warmup:  # no policy step at all: Adam skips parameters without a gradient (no weight decay)
            for p in self.param_groups["policy"]:
                p.grad = None
        self.optimizer.step()
        if self.accelerator.sync_gradients and not self.accelerator.optimizer_step_was_skipped:
            self.scheduler.step()
        self.optimizer.zero_grad()
        out = {k: v.item() for k, v in parts.items()}
        out.update(norms)
        return out
