"""PPO's four roles on one base model: policy, reference, value and reward as adapters of one peft model.

With LoRA, the policy is the SFT model plus a trainable adapter, and the reference is the same model with the
adapter disabled, so policy and reference always share one base. `shared_base` goes further: the reward model (a
LoRA reward stage output, trained on the same SFT model) and the value model (initialised from it) become two more
adapters of that base, each with its own scalar head, so one copy of the base weights, quantized or not, serves all
four roles. Only one adapter is active at a time; `active_adapter` switches and puts back which parameters train.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..modeling import adapter_base, is_adapter_dir

HEAD_FILE = "score.safetensors"


@contextmanager
def kept_trainable(model: nn.Module) -> Iterator[None]:
    """Put back every parameter's `requires_grad` on exit (peft's adapter switches reset them)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def active_adapter(model: nn.Module, name: str) -> Iterator[None]:
    """Run with adapter `name` of a peft model active, then the previous one again; trainability unchanged."""
    previous = model.active_adapter
    with kept_trainable(model):
        model.set_adapter(name)
        try:
            yield
        finally:
            model.set_adapter(previous)


@contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run the base model of a peft model (every adapter off): PPO's reference; trainability unchanged."""
    with kept_trainable(model), model.disable_adapter():
        yield


def backbone(peft_model: nn.Module) -> nn.Module:
    """The transformer body (without the LM head) of a peft-wrapped causal LM."""
    base = peft_model.get_base_model()
    return getattr(base, base.base_model_prefix)


class AdapterScalarModel(nn.Module):
    """A scalar head read from the hidden states of one adapter of a shared peft model: the value or reward role.

    The shared model is not registered as a submodule (it is registered once, as the policy), so this module's own
    parameters are the head's only. Called like a sequence-classification model, it returns `.logits` of shape
    (B, 1) read at the last attended token; `per_token_scores` gives the head at every position (the value model).
    """

    def __init__(
        self, peft_model: nn.Module, adapter_name: str, head: nn.Linear, parameter_names: frozenset[str] = frozenset()
    ):
        super().__init__()
        self._shared = (peft_model,)  # a tuple: not a submodule
        self.adapter_name, self.score = adapter_name, head
        self.parameter_names = parameter_names  # this adapter's parameters in the shared model

    def adapter_parameters(self) -> list[nn.Parameter]:
        """This role's adapter weights in the shared model (the head is this module's own parameter)."""
        return [p for n, p in self.peft_model.named_parameters() if n in self.parameter_names]

    @property
    def peft_model(self) -> nn.Module:
        return self._shared[0]

    def per_token_scores(self, input_ids, attention_mask, position_ids=None) -> torch.Tensor:
        with active_adapter(self.peft_model, self.adapter_name):
            hidden = backbone(self.peft_model)(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
            ).last_hidden_state
        return self.score(hidden.to(self.score.weight.dtype)).squeeze(-1)

    def forward(self, input_ids, attention_mask, position_ids=None) -> SimpleNamespace:
        scores = self.per_token_scores(input_ids, attention_mask, position_ids)
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask * positions).argmax(-1)
        return SimpleNamespace(logits=scores.gather(1, last[:, None]))

    def save_pretrained(self, output_dir: str, **_) -> None:
        """The adapter (peft format, in `output_dir/<adapter_name>/`) and the head (`score.safetensors`)."""
        os.makedirs(output_dir, exist_ok=True)
        self.peft_model.save_pretrained(output_dir, selected_adapters=[self.adapter_name], safe_serialization=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.score.state_dict().items()}, _head(output_dir))


def _head(directory: str) -> str:
    return os.path.join(directory, HEAD_FILE)


def check_shared_base(policy_path: str, reward_path: str) -> None:
    """A reward model can share the policy's base only if it is a LoRA adapter trained on that very model."""
    if not is_adapter_dir(reward_path):
        raise ValueError(
            f"shared_base needs a LoRA reward model (a reward stage run with use_peft); '{reward_path}' holds full "
            "weights. Use separate models (shared_base: false) or retrain the reward model with LoRA"
        )
    base = adapter_base(reward_path)
    same = base == policy_path or (
        os.path.isdir(base) and os.path.isdir(policy_path) and os.path.realpath(base) == os.path.realpath(policy_path)
    )
    if not same:
        raise ValueError(
            f"shared_base: the reward adapter '{reward_path}' was trained on '{base}', not on the policy's model "
            f"'{policy_path}'; the roles can share one base only if it is the same model"
        )


def add_scalar_adapter(peft_model: nn.Module, reward_path: str, name: str, trainable: bool) -> AdapterScalarModel:
    """Load a LoRA reward adapter (its LoRA weights and score head) as adapter `name` of the shared model."""
    from peft import LoraConfig, set_peft_model_state_dict

    config = LoraConfig.from_pretrained(reward_path)
    config.task_type, config.modules_to_save, config.inference_mode = "CAUSAL_LM", None, not trainable
    before = {n for n, _ in peft_model.named_parameters()}
    peft_model.add_adapter(name, config)
    added = frozenset(n for n, _ in peft_model.named_parameters() if n not in before)
    state = load_file(os.path.join(reward_path, "adapter_model.safetensors"))
    lora = {k: v for k, v in state.items() if "lora_" in k}
    result = set_peft_model_state_dict(peft_model, lora, adapter_name=name)
    missing = [k for k in result.missing_keys if f".{name}." in k and "lora_" in k]
    if missing:
        raise ValueError(f"reward adapter '{reward_path}' does not fit the shared base: missing {missing[:3]}")
    weight = next(v for k, v in state.items() if k.endswith("score.weight"))
    bias = next((v for k, v in state.items() if k.endswith("score.bias")), torch.zeros(weight.shape[0]))
    head = nn.Linear(weight.shape[1], weight.shape[0], bias=True)
    with torch.no_grad():
        head.weight.copy_(weight.float())
        head.bias.copy_(bias.float())
    head.requires_grad_(trainable)
    device = next(p.device for p in peft_model.parameters())
    return AdapterScalarModel(peft_model, name, head.to(device), added)


def shared_roles(peft_policy: nn.Module, reward_path: str) -> tuple[AdapterScalarModel, AdapterScalarModel]:
    """The value role (trainable, initialised from the reward adapter) and the reward role (frozen) on the policy's
    base. `reward_path` must be a LoRA reward adapter trained on the policy's base model (`check_shared_base`)."""
    flags = {n: p.requires_grad for n, p in peft_policy.named_parameters()}
    value = add_scalar_adapter(peft_policy, reward_path, "value", trainable=True)
    reward = add_scalar_adapter(peft_policy, reward_path, "reward", trainable=False)
    for n, p in peft_policy.named_parameters():  # the policy's as before; the value adapter's train; the reward's not
        p.requires_grad_(flags[n] if n in flags else n in value.parameter_names)
    return value, reward
