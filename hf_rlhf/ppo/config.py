"""`PPOConfig`: `TrainingArguments` (logging, saving, `report_to`, seeds) plus what PPO for language models needs."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments


@dataclass
class PPOConfig(TrainingArguments):
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

    # rewards
    kl_coef: float = field(default=0.05, metadata={"help": "Initial coefficient of the per-token KL penalty."})
    kl_estimator: str = field(default="k1", metadata={"help": "Per-token KL estimator: 'k1' or 'k3'."})
    adaptive_kl: bool = field(default=False, metadata={"help": "Adapt kl_coef towards target_kl (Ziegler et al.)."})
    target_kl: float = field(default=6.0, metadata={"help": "Target KL per sequence of the adaptive controller."})
    kl_horizon: int = field(default=10000, metadata={"help": "Horizon (samples) of the adaptive controller."})
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
    reward_clip: float | None = field(default=None, metadata={"help": "Clip the total score to [-x, x] (None: off)."})

    # advantages and losses
    gamma: float = field(default=1.0, metadata={"help": "Discount factor."})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda."})
    whiten_advantages: bool = field(default=True, metadata={"help": "Whiten advantages over valid tokens."})
    cliprange: float = field(default=0.2, metadata={"help": "Policy ratio clip range."})
    cliprange_value: float = field(default=0.2, metadata={"help": "Value clip range."})
    vf_coef: float = field(default=0.1, metadata={"help": "Weight of the value loss."})
    value_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the value model (None: learning_rate)."}
    )
    value_max_grad_norm: float | None = field(
        default=None,
        metadata={"help": "Gradient clipping of the value model, apart from the policy's (None: max_grad_norm)."},
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
        if min(self.num_mini_batches, self.num_ppo_epochs, self.max_new_tokens) < 1:
            raise ValueError("num_mini_batches, num_ppo_epochs and max_new_tokens must be >= 1")


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
