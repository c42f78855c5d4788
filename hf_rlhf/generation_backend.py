"""Who generates: one interface for PPO rollouts, `sample`, `generate` / best-of-N and the report.

`generation_backend: hf` runs transformers' `generate` on the model itself (`hf_rlhf.sampling.generate_with`);
`generation_backend: vllm` sends the same prompts and the same sampling settings to vLLM (`hf_rlhf.vllm_backend`),
after syncing the model's current weights to it. Either way the caller gets `Generations`: each completion's token ids
up to and including its first EOS (or `max_new_tokens` tokens), which the caller decodes with its own tokenizer, so
text, EOS handling and special tokens are the same whatever generated them. See docs/vllm.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

from .encoding import left_padded
from .placement import model_device
from .sampling import GenerationBackend, Generations, cut_at_eos, generate_with

BACKENDS = ("hf", "vllm")
VLLM_MODES = ("server", "colocate")
VLLM_DTYPES = ("float32", "bfloat16", "float16")

# The options of the generation backend: one definition, shared by `GenerationBackendArguments` (sample, report) and
# `PPOConfig` through `backend_option`.
OPTIONS: dict[str, tuple[Any, str]] = {
    "generation_backend": ("hf", "Who generates: 'hf' (transformers `generate`) or 'vllm' (docs/vllm.md)."),
    "vllm_mode": (
        "server",
        "'server': an `hf-rlhf vllm-serve` process at vllm_server_url (any environment, any machine sharing "
        "vllm_sync_dir); 'colocate': vLLM inside this process (CUDA, vLLM importable here).",
    ),
    "vllm_server_url": ("http://127.0.0.1:8000", "Address of the `hf-rlhf vllm-serve` server (server mode)."),
    "vllm_server_timeout": (600.0, "Seconds to wait for the server to answer (its start-up included)."),
    "vllm_sync_dir": (
        None,
        "Directory the model's weights are written to (safetensors) for vLLM to reload, readable by the server "
        "(default: a new temporary directory).",
    ),
    "vllm_dtype": (
        None,
        "dtype vLLM must serve in: float32, bfloat16 or float16 (None: the model's parameter dtype); a server "
        "serving another dtype is refused.",
    ),
    "vllm_gpu_memory_utilization": (0.3, "colocate: the share of GPU memory vLLM may take."),
    "vllm_enable_sleep_mode": (
        True,
        "colocate: free vLLM's GPU memory (weights offloaded, KV cache dropped) between generations.",
    ),
}


def backend_option(name: str):
    """A dataclass field for option `name` of `OPTIONS` (its default and help)."""
    default, help_text = OPTIONS[name]
    return field(default=default, metadata={"help": help_text})


@dataclass
class GenerationBackendArguments:
    """Who generates (docs/vllm.md): HF `generate`, or vLLM with the model's weights
    synced to it. `PPOConfig` has the same options."""

    generation_backend: str = backend_option("generation_backend")
    vllm_mode: str = backend_option("vllm_mode")
    vllm_server_url: str = backend_option("vllm_server_url")
    vllm_server_timeout: float = backend_option("vllm_server_timeout")
    vllm_sync_dir: str | None = backend_option("vllm_sync_dir")
    vllm_dtype: str | None = backend_option("vllm_dtype")
    vllm_gpu_memory_utilization: float = backend_option("vllm_gpu_memory_utilization")
    vllm_enable_sleep_mode: bool = backend_option("vllm_enable_sleep_mode")


def check_backend_options(options) -> None:
    """Raise `ValueError` naming the key when an option of `options` (any object with `OPTIONS`' attributes) is
    invalid; called before any model loads or any request is sent."""
    choices = {"generation_backend": BACKENDS, "vllm_mode": VLLM_MODES, "vllm_dtype": (None, *VLLM_DTYPES)}
    for key, allowed in choices.items():
        value = getattr(options, key, OPTIONS[key][0])
        if value not in allowed:
            shown = ", ".join(repr(a) for a in allowed)
            raise ValueError(f"{key} must be one of {shown}, got {value!r}")
    url = getattr(options, "vllm_server_url", OPTIONS["vllm_server_url"][0])
    if not str(url).startswith(("http://", "https://")):
        raise ValueError(f"vllm_server_url must start with http:// or https://, got {url!r}")
    share = getattr(options, "vllm_gpu_memory_utilization", OPTIONS["vllm_gpu_memory_utilization"][0])
    if not 0 < share <= 1:
        raise ValueError(f"vllm_gpu_memory_utilization must be in (0, 1], got {share}")
    if getattr(options, "vllm_server_timeout", 1.0) <= 0:
        raise ValueError(f"vllm_server_timeout must be > 0, got {options.vllm_server_timeout}")
    cap = getattr(options, "vllm_importance_sampling_cap", None)
    if cap is not None and cap < 1:
        raise ValueError(f"vllm_importance_sampling_cap must be >= 1 (None: off), got {cap}")


def add_backend_arguments(parser) -> None:
    """The backend options as `--name value` arguments of an argparse command line (`hf-rlhf generate`)."""
    for name, (default, help_text) in OPTIONS.items():
        kind = type(default) if default is not None else str
        if kind is bool:
            kind = lambda value: value.lower() in ("1", "true", "yes")  # noqa: E731
        parser.add_argument(f"--{name}", type=kind, default=default, help=help_text.replace("%", "%%"))


class HFBackend(GenerationBackend):
    """transformers' `generate` on the model itself, left-padded batches of `batch_size`, with nothing inherited from
    the model's own `generation_config` (`hf_rlhf.sampling`)."""

    name = "hf"

    def generate(self, model, prompt_ids, config, seeds=None, batch_size=64) -> Generations:
        device, out = model_device(model), []
        padding = SimpleNamespace(pad_token_id=config.pad_token_id)  # all `left_padded` reads of a tokenizer
        for start in range(0, len(prompt_ids), batch_size):
            input_ids, attention_mask = left_padded(padding, prompt_ids[start : start + batch_size])
            # generate derives position ids from the attention mask, so left padding does not shift them
            ids = generate_with(
                model, config, input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)
            )[:, input_ids.shape[1] :]
            out.extend(cut_at_eos(row, config.eos_token_id) for row in ids.tolist())
        return Generations(out)


def make_backend(options=None) -> GenerationBackend:
    """The backend `options` (a `GenerationBackendArguments`, a `PPOConfig`, or `None` for HF) asks for, checked."""
    if options is None or getattr(options, "generation_backend", "hf") == "hf":
        if options is not None:
            check_backend_options(options)
        return HFBackend()
    check_backend_options(options)
    from .vllm_backend import VLLMBackend

    return VLLMBackend.from_options(options)


def logprob_mismatch(sampler_logprobs: torch.Tensor, logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over valid tokens of |log p_sampler - log p_trainer| (all (B, T)): how far the generating engine's
    distribution is from the one PPO computes with the training forward (logged as `rollout/logprob_mismatch`)."""
    mask = mask.to(logprobs.dtype)
    return ((sampler_logprobs - logprobs).abs() * mask).sum() / mask.sum().clamp(min=1)


def truncated_importance_weights(
    logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor, cap: float
) -> torch.Tensor:
    """Per-token weights min(p_trainer / p_sampler, cap) (B, T), 1 on padding: truncated importance sampling that
    corrects PPO's loss for tokens sampled by another engine than the one it trains (Yao et al., 2025, "Your
    efficient RL framework secretly brings you off-policy RL training"). No gradient flows through them."""
    weights = (logprobs - sampler_logprobs).exp().clamp(max=cap)
    return torch.where(mask.bool(), weights, torch.ones_like(weights)).detach()


def sampler_corrections(
    sampler_logprobs: torch.Tensor | None, logprobs: torch.Tensor, mask: torch.Tensor, cap: float | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """What PPO keeps of a rollout another engine sampled: that engine's log-probabilities (0 on padding) and, with a
    `cap`, the truncated importance weights of its tokens (`truncated_importance_weights`); `(None, None)` when the
    trainer's own model generated (HF)."""
    if sampler_logprobs is None:
        return None, None
    sampler_logprobs = sampler_logprobs * mask
    weights = None if cap is None else truncated_importance_weights(logprobs, sampler_logprobs, mask, cap)
    return sampler_logprobs, weights
