"""The one generation configuration of hf_rlhf: what PPO rollouts, `sample`, `generate` / best-of-N and the report
sample with, whatever the model's own `generation_config.json` says.

transformers fills every field a `GenerationConfig` leaves unset (`None`) from the model's `generation_config`
before it falls back to its global defaults, so a model shipped with `min_p`, `no_repeat_ngram_size`,
`repetition_penalty` or `min_new_tokens` would silently change the distribution sampled from (and PPO's
log-probabilities would no longer be those of the sampler). `sampling_config` therefore sets every field that shapes
the distribution or the stopping rule to its neutral value, and `generate_with` runs `generate` with that config as
the model's own for the duration of the call, so nothing is inherited.

`GenerationBackend` is the interface every caller generates through (`hf_rlhf.generation_backend`: HF `generate` or
vLLM), returning `Generations`: token ids cut after the first EOS, whoever generated them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationConfig, PreTrainedTokenizerBase

# Every `GenerationConfig` field that changes which token is picked, or when generation stops, with its neutral value.
NEUTRAL_FIELDS: dict[str, object] = {
    "num_beams": 1,
    "num_beam_groups": 1,
    "num_return_sequences": 1,
    "penalty_alpha": None,
    "top_k": 0,
    "top_p": 1.0,
    "min_p": None,
    "top_h": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "length_penalty": 1.0,
    "diversity_penalty": 0.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "force_words_ids": None,
    "sequence_bias": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "exponential_decay_length_penalty": None,
    "renormalize_logits": False,
    "remove_invalid_values": False,
    "guidance_scale": None,
    "watermarking_config": None,
    "token_healing": False,
    "dola_layers": None,
    "min_length": 0,
    "min_new_tokens": None,  # no minimum (0 would make transformers add a no-op min-length processor)
    "max_length": None,
    "max_time": None,
    "stop_strings": None,
    "early_stopping": False,
    "use_cache": True,
    "prompt_lookup_num_tokens": None,
    "assistant_early_exit": None,
    "output_scores": False,
    "output_logits": False,
    "return_dict_in_generate": False,
}
# Options that only act when sampling (logits warpers); left unset for greedy decoding.
SAMPLING_ONLY = ("top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff")


def sampling_config(
    tokenizer: PreTrainedTokenizerBase, max_new_tokens: int, temperature: float = 1.0
) -> GenerationConfig:
    """Plain temperature sampling (greedy for `temperature == 0`) of at most `max_new_tokens` tokens, stopping at the
    tokenizer's EOS: every other sampling and stopping option off (`NEUTRAL_FIELDS`)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    fields = {k: v for k, v in NEUTRAL_FIELDS.items() if hasattr(GenerationConfig(), k)}  # older releases lack some
    if temperature == 0:  # greedy: the sampling-only options are unused (and transformers warns when they are set)
        fields.update(dict.fromkeys(SAMPLING_ONLY))
    return GenerationConfig(
        **fields,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def generating_model(model: nn.Module) -> nn.Module:
    """The module whose `generation_config` `generate` reads: the model itself, or the model under a peft wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextlib.contextmanager
def only_this_config(model: nn.Module, config: GenerationConfig) -> Iterator[None]:
    """Within the block, `config` is the model's own `generation_config`, so `generate` inherits nothing else."""
    inner = generating_model(model)
    saved = getattr(inner, "generation_config", None)
    inner.generation_config = config
    try:
        yield
    finally:
        inner.generation_config = saved


def generate_with(model: nn.Module, config: GenerationConfig, **inputs):
    """`model.generate(**inputs, generation_config=config)` with nothing inherited from the model's own config."""
    with only_this_config(model, config):
        return model.generate(**inputs, generation_config=config)


@dataclass
class Generations:
    """Completions, one per prompt: token ids up to and including the first EOS (at most `max_new_tokens`), and the
    sampler's log-probability of each token (after temperature) where the backend reports it (vLLM; `None` for HF)."""

    token_ids: list[list[int]]
    logprobs: list[list[float]] | None = None

    def padded(self, pad_token_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The token ids as a right-padded (B, T) tensor (T: the longest completion) and the log-probabilities as
        (B, T) float32 with 0 after each completion (or `None`)."""
        width = max((len(t) for t in self.token_ids), default=0)
        ids = torch.full((len(self.token_ids), width), pad_token_id, dtype=torch.long)
        logprobs = None if self.logprobs is None else torch.zeros((len(self.token_ids), width))
        for i, row in enumerate(self.token_ids):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            if logprobs is not None:
                logprobs[i, : len(row)] = torch.tensor(self.logprobs[i], dtype=torch.float32)
        return ids.to(device), None if logprobs is None else logprobs.to(device)


def cut_at_eos(row: Sequence[int], eos_token_id: int | None) -> list[int]:
    """A generated row up to and including its first EOS. `generate` pads only the rows that ended, after their EOS,
    so what is cut is padding, and a row without EOS is all sampled tokens (a PAD id sampled is kept: it was drawn)."""
    row = list(row)
    return row[: row.index(eos_token_id) + 1] if eos_token_id in row else row


class GenerationBackend:
    """Generates completions of tokenized prompts from a model with a `GenerationConfig` from
    `hf_rlhf.sampling.sampling_config`; `close()` releases what it holds (a server connection, an engine)."""

    name: str

    def generate(
        self,
        model: nn.Module,
        prompt_ids: Sequence[Sequence[int]],
        config: GenerationConfig,
        seeds: Sequence[int] | None = None,
        batch_size: int = 64,
    ) -> Generations:
        """One completion per prompt of `prompt_ids` (token ids, no padding); `config` carries EOS and PAD.

        Args:
            seeds (`Sequence[int]`, *optional*): One sampling seed per prompt (vLLM). HF samples from torch's global
                generator, which the caller seeds; `None` draws vLLM's seeds from that generator too, so a seeded run
                is reproducible with either backend.
            batch_size (`int`): Prompts per `generate` call (HF); vLLM schedules all of them itself.
        """
        raise NotImplementedError

    def close(self) -> None:
        pass
