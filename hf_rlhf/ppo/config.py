"""`PPOConfig`: `TrainingArguments` (logging, saving, `report_to`, seeds) plus what PPO for language models needs."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments

from ..generation_backend import GenerationBackendArguments


@dataclass
class PPOConfig(TrainingArguments, GenerationBackendArguments):
    """Configuration of hf_rlhf's PPO trainer.

    Batch sizes follow TRL's former PPO trainer: one update samples `rollout_batch_size` prompts per process
    (`per_device_train_batch_size * gradient_accumulation_steps * num_mini_batches`); each of the `num_ppo_epochs`
    passes over the rollouts is split into `num_mini_batches` shuffled minibatches, each one optimizer step
    accumulated over `gradient_accumulation_steps` micro-batches. `max_steps` counts PPO updates (rollouts).

    Precision: `bf16` / `fp16` turn on one autocast for every forward (generation, rollout, reference, update); the
    policy's and the value model's gradients are clipped separately. `optim`, `optim_args`, `adam_*`, `weight_decay`,
    `lr_scheduler_type`, `lr_scheduler_kwargs`, warm-up and `gradient_checkpointing` are honoured; options PPO does not
    use (`torch_compile`, `eval_strategy`, `deepspeed`, ...) are refused (`hf_rlhf.ppo.setup`).

    Defaults that differ from `TrainingArguments`: `learning_rate=3e-6` (PPO's usual), `logging_steps=1` (one log per
    update), `save_strategy="no"`, `max_steps=100`.
    """

    learning_rate: float = field(default=3e-6, metadata={"help": "AdamW learning rate (policy and value)."})
    logging_steps: float = field(default=1, metadata={"help": "Log every X PPO updates."})
    save_strategy: str = field(default="no", metadata={"help": "'steps' to checkpoint every save_steps updates."})
    max_steps: int = field(default=100, metadata={"help": "Number of PPO updates (rollout + optimisation)."})
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow custom model code shipped with a model (off unless a recipe turns it on)."},
    )

    # models
    shared_base: bool = field(
        default=False,
        metadata={
            "help": "With use_peft: policy, reference, value and reward are adapters of one copy of the SFT model "
            "(quantized or not); needs a LoRA reward model trained on that SFT model. False: separate models."
        },
    )

    # rollout
    num_mini_batches: int = field(default=1, metadata={"help": "Minibatches per PPO epoch."})
    num_ppo_epochs: int = field(default=4, metadata={"help": "Optimisation passes over each rollout."})
    max_new_tokens: int = field(default=32, metadata={"help": "Response length at most, in tokens."})
    temperature: float = field(
        default=1.0, metadata={"help": "Sampling temperature, applied to policy, old-policy and reference logits."}
    )
    rollout_forward_batch_size: int = field(
        default=64, metadata={"help": "Sequences per forward pass when generating and scoring rollouts."}
    )
    missing_eos_penalty: float | None = field(
        default=1.0, metadata={"help": "Subtracted from the score of a response that never produced EOS (None: off)."}
    )
    num_samples_per_prompt: int = field(
        default=1,
        metadata={
            "help": "Responses sampled per prompt: an update takes rollout_batch_size / num_samples_per_prompt "
            "prompts (the rollout keeps rollout_batch_size sequences)."
        },
    )

    # rewards
    kl_coef: float = field(default=0.05, metadata={"help": "Initial coefficient of the per-token KL penalty."})
    kl_estimator: str = field(default="k1", metadata={"help": "Per-token KL estimator: 'k1' or 'k3'."})
    adaptive_kl: bool = field(default=False, metadata={"help": "Adapt kl_coef towards target_kl (Ziegler et al.)."})
    target_kl: float = field(default=6.0, metadata={"help": "Target KL per sequence of the adaptive controller."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon (samples) of the adaptive controller."})
    kl_in_loss: bool = field(
        default=False,
        metadata={
            "help": "Put kl_coef x the k3 KL to the reference in the policy loss (as GRPO) instead of the per-token "
            "KL penalty in the reward."
        },
    )
    reward_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": "One weight per reward: the reward model first (if any), then reward_funcs (as TRL's GRPO). "
            "A weight of 0 logs that reward without optimising it."
        },
    )
    normalize_reward: bool = field(
        default=False, metadata={"help": "Standardise the reward model's score with its reward-stage mean/std."}
    )
    group_baseline: bool = field(
        default=False,
        metadata={
            "help": "Subtract from each score the mean score of the other samples of its prompt (leave-one-out; "
            "needs num_samples_per_prompt >= 2)."
        },
    )
    running_reward_norm: bool = field(
        default=False,
        metadata={"help": "Standardise the score with its running mean/std over all updates and processes."},
    )
    reward_clip: float | None = field(
        default=None,
        metadata={"help": "Clip the score to [-x, x] (None: off), after the baseline and running normalisation."},
    )

    # advantages and losses
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    whiten_advantages: bool = field(default=True, metadata={"help": "Whiten advantages over valid tokens."})
    cliprange: float = field(default=0.2, metadata={"help": "Policy ratio clip range."})
    dual_clip: float | None = field(
        default=None,
        metadata={"help": "Dual-clip constant c > 1: the loss of a token with A < 0 is at most c |A| (None: off)."},
    )
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip range."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    value_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the value model (None: learning_rate)."}
    )
    value_max_grad_norm: float | None = field(
        default=None,
        metadata={"help": "Gradient clipping of the value model, apart from the policy's (None: max_grad_norm)."},
    )
    critic_warmup_steps: int = field(
        default=0, metadata={"help": "First updates that train the value model only (the policy is not stepped)."}
    )
    ptx_coef: float = field(
        default=0.0,
        metadata={"help": "PPO-ptx: weight of the language-model loss on ptx_dataset in the policy loss (0: off)."},
    )
    ptx_max_length: int = field(default=512, metadata={"help": "PPO-ptx rows are cut to this many tokens."})

    # failure detection (hf_rlhf.ppo.health)
    health_checks: bool = field(
        default=True,
        metadata={
            "help": "Stop with PPOFailedError when the run has failed (KL explosion, entropy or response-length "
            "collapse, falling score), naming the update and the last good checkpoint (hf_rlhf.ppo.health)."
        },
    )
    health_window: int = field(default=5, metadata={"help": "Updates per window (median) of the health checks."})
    health_patience: int = field(
        default=3, metadata={"help": "Consecutive updates a health check must fail before the run stops."}
    )
    health_max_kl_multiple: float | None = field(
        default=4.0,
        metadata={"help": "Stop when the KL per sequence exceeds this multiple of target_kl (None: off)."},
    )
    health_max_kl_jump: float | None = field(
        default=8.0,
        metadata={"help": "Stop when the KL per sequence rises by more than this (nats) within health_window updates"},
    )
    health_min_entropy_ratio: float | None = field(
        default=0.1,
        metadata={"help": "Stop when the entropy falls below this fraction of the first health_window updates'."},
    )
    health_min_response_length: float | None = field(
        default=1.5,
        metadata={"help": "Stop when the response length (tokens, EOS included) falls below this (None: off)."},
    )
    health_max_score_drop: float | None = field(
        default=4.0,
        metadata={
            "help": "Stop when the score falls more than this many noise standard deviations (of one update's "
            "score) below its best (None: off)."
        },
    )

    # generation backend: the fields of `GenerationBackendArguments` (hf_rlhf.generation_backend), plus
    vllm_importance_sampling_cap: float | None = field(
        default=None,
        metadata={
            "help": "With vLLM: weight each token's policy loss by min(p_trainer / p_vllm, cap), truncated importance "
            "sampling for the two engines' mismatch (None: off)."
        },
    )

    @property
    def rollout_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.gradient_accumulation_steps * self.num_mini_batches

    def __post_init__(self):
        super().__post_init__()
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for PPO sampling, got {self.temperature}")
        if min(self.num_mini_batches, self.num_ppo_epochs, self.max_new_tokens, self.num_samples_per_prompt) < 1:
            raise ValueError(
                "num_mini_batches, num_ppo_epochs, max_new_tokens and num_samples_per_prompt must be >= 1"
            )
        if self.rollout_batch_size % self.num_samples_per_prompt:
            raise ValueError(
                f"rollout_batch_size {self.rollout_batch_size} (per_device_train_batch_size x "
                "gradient_accumulation_steps x num_mini_batches) must be a multiple of num_samples_per_prompt "
                f"{self.num_samples_per_prompt}"
            )
        if self.group_baseline and self.num_samples_per_prompt < 2:
            raise ValueError("group_baseline needs num_samples_per_prompt >= 2 (the other samples are the baseline)")
        if self.dual_clip is not None and self.dual_clip <= 1:
            raise ValueError(f"dual_clip must be a constant > 1 (Ye et al. use 3), got {self.dual_clip}")
        if self.critic_warmup_steps < 0 or self.ptx_coef < 0 or self.ptx_max_length < 2:
            raise ValueError("critic_warmup_steps and ptx_coef must be >= 0 and ptx_max_length >= 2")


def unsupported_layout(backend: str, zero_stage: int = 0) -> str | None:
    """Why PPO cannot run under a launch layout (`backend`: single | ddp | deepspeed | fsdp), or `None`.

    Shared by the trainer and the dry run. Under ZeRO-3 and FSDP the policy's parameters are sharded, so generation
    would need them gathered at every step, and the frozen reference and reward models (never prepared) would not be
    sharded at all.
    """
    if backend == "fsdp" or (backend == "deepspeed" and zero_stage == 3):
        what = "FSDP" if backend == "fsdp" else "DeepSpeed ZeRO-3"
        return (
            f"hf_rlhf's PPO does not run under {what} (generation would need the sharded policy gathered, and the "
            "frozen reference and reward models are not sharded): launch with `--accelerate_config multi_gpu` (DDP) "
            "or `zero2`, with LoRA/QLoRA (`use_peft`, `shared_base`) for a model that does not fit one GPU; "
            "`algorithm: grpo` or `rloo` (TRL) run under ZeRO-3 and FSDP"
        )
    return None
