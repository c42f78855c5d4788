"""The one place that loads tokenizers and models, for every stage and role.

Only safetensors are read (`use_safetensors=True`: loading never unpickles), `trust_remote_code` is off unless the
recipe turns it on, and a model path that does not exist is an error before anything is built.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import tempfile
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from trl import ModelConfig

from .checks import ADAPTER_CONFIG, check_weights
from .errors import ModelNotFoundError, ModelRoleError
from .hub.remote_code import from_pretrained_pinned
from .hub.resolve import parse_hub_id
from .model_roles import check_role, resolve_model, resolve_model_path  # noqa: F401 (re-exported)
from .placement import frozen, load_kwargs
from .quantization import quantization_kwargs
from .tokenizer import PAD_TOKEN

logger = logging.getLogger(__name__)
SCORE_BIAS_FLAG = "hf_rlhf_score_bias"  # config attribute: the head carries a bias saved as `score.bias`


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Give the tokenizer a PAD token distinct from EOS. Returns True if a token was added (resize embeddings)."""
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    added = tokenizer.add_special_tokens({"pad_token": PAD_TOKEN}) > 0
    return added


def load_tokenizer(
    name_or_path: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    trust_remote_code_repos: list[str] | None = None,
) -> PreTrainedTokenizerBase:
    """Load a tokenizer (local directory or Hub `org/name[@revision]`); make sure PAD exists and differs from EOS.
    Remote code is checked and pinned (`hf_rlhf.hub.remote_code`)."""
    source = resolve_model(name_or_path, "tokenizer", revision)
    tokenizer = from_pretrained_pinned(
        AutoTokenizer, source, trust_remote_code, trust_remote_code_repos, what="tokenizer"
    )
    ensure_pad_token(tokenizer)
    return tokenizer


def torch_dtype(name: str | torch.dtype | None) -> torch.dtype | str | None:
    if name in (None, "auto") or isinstance(name, torch.dtype):
        return name
    return getattr(torch, name)


def model_from_config(
    model_type: str, tokenizer: PreTrainedTokenizerBase, config_kwargs: dict[str, Any] | None = None
) -> PreTrainedModel:
    """A randomly initialised causal LM of any `AutoConfig` model type, sized to the tokenizer.

    `config_kwargs` may set a `vocab_size` larger than the tokenizer (e.g. rounded up for speed), never smaller; the
    special token ids always come from the tokenizer.
    """
    from .recipes import RecipeError

    kwargs = dict(config_kwargs or {})
    vocab_size = kwargs.pop("vocab_size", len(tokenizer))
    if vocab_size < len(tokenizer):
        raise RecipeError(
            f"model_config_kwargs.vocab_size={vocab_size} is smaller than the tokenizer ({len(tokenizer)})"
        )
    fixed = sorted(k for k in ("pad_token_id", "bos_token_id", "eos_token_id") if k in kwargs)
    if fixed:
        raise RecipeError(f"model_config_kwargs: {', '.join(fixed)} come from the tokenizer; remove them")
    config = AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **kwargs,
    )
    return AutoModelForCausalLM.from_config(config)


def is_quantized(model: torch.nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def is_adapter_dir(path: str) -> bool:
    """A directory that holds a peft adapter (`adapter_config.json`) rather than full weights."""
    return os.path.isfile(os.path.join(path, ADAPTER_CONFIG))


def adapter_base(path: str) -> str:
    """The base model an adapter was trained on (`base_model_name_or_path`): a directory, Hub id or adapter."""
    with open(os.path.join(path, ADAPTER_CONFIG)) as f:
        config = json.load(f)
    base, revision = config.get("base_model_name_or_path"), config.get("revision")
    if not base:
        raise ModelNotFoundError(f"adapter '{path}' does not name its base model (base_model_name_or_path)")
    hub_id = parse_hub_id(base) if revision and not os.path.isdir(base) else None
    if hub_id is not None and hub_id[1] is None:
        return f"{hub_id[0]}@{revision}"  # a Hub base at the exact commit the adapter was trained on
    return base


def load_pretrained(
    model_class: type,
    name_or_path: str,
    *,
    model_args: ModelConfig | None = None,
    trust_remote_code: bool = False,
    trust_remote_code_repos: list[str] | None = None,
    quantize: bool = True,
    **kwargs: Any,
) -> PreTrainedModel:
    """Load any role's model with `model_class` (`AutoModelForCausalLM`, `AutoModelForSequenceClassification`...).

    The one loader of every stage. `name_or_path` is a full model or a peft adapter; an adapter is loaded on its
    base (resolved from its adapter config, recursively: a LoRA reward model on a LoRA SFT model on a pretrained
    base) and merged, so the result is the model the adapter stands for. With quantization (`model_args`), an
    adapter is first merged in full precision into a temporary directory, which is then loaded quantized.
    Safetensors only; dtype, attention and quantization from `model_args`; remote code checked and pinned
    (`hf_rlhf.hub.remote_code`: another repo's only if `trust_remote_code_repos` lists it).
    """
    args = model_args or ModelConfig(dtype=None)
    revision = args.model_revision if name_or_path == args.model_name_or_path else None
    source = resolve_model(name_or_path, revision=None if revision in (None, "main") else revision)
    check_weights(source, required=True)  # a missing, truncated or corrupt weights file, named
    path = source.path
    quant = quantization_kwargs(args) if quantize else {}
    common = {"model_args": args, "trust_remote_code": trust_remote_code, **kwargs}
    common["trust_remote_code_repos"] = trust_remote_code_repos
    if is_adapter_dir(path) and quant:
        model = load_pretrained(model_class, merged_model_dir(path, trust_remote_code), **common)
    elif is_adapter_dir(path):
        model = merge_adapter(path, model_class, **common)
    else:
        model = from_pretrained_pinned(
            model_class,
            source,
            trust_remote_code,
            trust_remote_code_repos,
            dtype=torch_dtype(args.dtype),
            attn_implementation=args.attn_implementation,
            use_safetensors=True,
            # transformers >= 5.25 swaps in Hub kernels (downloaded code) at every load when `kernels` is installed
            use_kernels=False,
            **{**kwargs, **quant},  # a quantized load's `device_map` is the one `hf_rlhf.placement` gives
        )
        if not quant and getattr(model.config, "quantization_config", None):
            model = model.dequantize()  # a pre-quantized checkpoint, asked for in full precision
    # what adapters trained on it name as their base: the Hub id as given, a local directory in full
    model.name_or_path = os.path.abspath(name_or_path) if os.path.isdir(name_or_path) else name_or_path
    model.config._name_or_path = model.name_or_path
    return model


def merge_adapter(path: str, model_class: type, *, model_args: ModelConfig | None = None, **kwargs: Any):
    """The full model an adapter directory stands for: its base (loaded by `load_pretrained`) with it merged in.

    A causal-LM adapter asked for under another head (the LoRA SFT model as the reward model's start) is merged as a
    causal LM first, and the merged weights are loaded with `model_class`.
    """
    from peft import PeftModel

    if adapter_task(path) == "SEQ_CLS" and model_class is AutoModelForCausalLM:
        raise ValueError(f"'{path}' is a reward-model (sequence-classification) adapter, not a causal LM")
    if adapter_task(path) == "CAUSAL_LM" and model_class is not AutoModelForCausalLM:
        merged = merged_model_dir(path, kwargs.get("trust_remote_code", False))
        return load_pretrained(model_class, merged, model_args=model_args, quantize=False, **kwargs)
    base = load_pretrained(model_class, adapter_base(path), model_args=model_args, quantize=False, **kwargs)
    try:
        peft_model = PeftModel.from_pretrained(base, path, is_trainable=False)
    except (RuntimeError, ValueError) as e:  # shapes or module names of another base
        raise ModelRoleError(
            f"adapter '{path}' does not fit its base '{adapter_base(path)}' (trained on another model?): "
            f"{str(e).splitlines()[0][:300]}"
        ) from None
    restore_score_bias(peft_model, path)
    model = peft_model.merge_and_unload()
    head, embeddings = model.get_output_embeddings(), model.get_input_embeddings()
    if (
        head is not None
        and getattr(model.config, "tie_word_embeddings", False)
        and head.weight is not embeddings.weight
    ):
        # the adapter trained the LM head (modules_to_save) apart from the tied input embeddings: keep them apart,
        # or saving and loading would tie the trained head back to the untrained embeddings
        model.config.tie_word_embeddings = False
    return model


def adapter_task(path: str) -> str | None:
    """The peft task type of an adapter directory (`CAUSAL_LM`, `SEQ_CLS`...)."""
    with open(os.path.join(path, ADAPTER_CONFIG)) as f:
        return json.load(f).get("task_type")


_MERGED_DIRS: dict[str, str] = {}


def merged_model_dir(path: str, trust_remote_code: bool = False) -> str:
    """A temporary directory holding the merged full model of an adapter, made once per process."""
    key = os.path.abspath(path)
    if key not in _MERGED_DIRS:
        task = adapter_task(path)
        model_class = AutoModelForSequenceClassification if task == "SEQ_CLS" else AutoModelForCausalLM
        extra = {"num_labels": 1} if task == "SEQ_CLS" else {}
        model = merge_adapter(path, model_class, trust_remote_code=trust_remote_code, **extra)
        out = tempfile.mkdtemp(prefix="hf_rlhf-merged-")
        atexit.register(shutil.rmtree, out, True)
        model.save_pretrained(out, safe_serialization=True)
        logger.info("merged adapter '%s' into its base for quantized loading (%s)", path, out)
        _MERGED_DIRS[key] = out
    return _MERGED_DIRS[key]


def reward_head(model: PreTrainedModel) -> nn.Linear:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, "score", None)
    if not isinstance(head, nn.Module):
        raise ValueError(
            f"{type(base).__name__} has no `score` head; reward models need a sequence-classification head"
        )
    # peft wraps modules_to_save in a ModulesToSaveWrapper; the trained copy is what scores
    saved = getattr(head, "modules_to_save", None)
    return saved["default"] if saved is not None and "default" in saved else head


def load_reward_model(
    path: str,
    *,
    trust_remote_code: bool = False,
    dtype: Any = None,
    model_args: Any = None,
    require_trained_head: bool = True,
    what: str = "reward model",
    device_map: Any = None,
) -> PreTrainedModel:
    """Load a reward (or value) model: `AutoModelForSequenceClassification` with one label, safetensors only.

    `path` is a full reward model or a LoRA reward adapter (merged into its base). `model_args` (TRL's
    `ModelConfig`) may ask for dtype and 4/8-bit quantization. Restores the head bias written by `shift_reward`.
    A model that is not a reward model is refused before it loads (`hf_rlhf.model_roles`); with
    `require_trained_head=False` (a head the stage trains: the reward stage's SFT model, PPO's value model) any
    model may start it. `device_map` loads it straight onto a device (`hf_rlhf.placement.load_kwargs`, for a
    frozen reward model).
    """
    from transformers.utils import logging as hf_logging
    from trl import ModelConfig

    shown, path = path, resolve_model_path(path, "reward model")
    check_role(path, "reward_model" if require_trained_head else "init", what, shown)
    model_args = model_args or ModelConfig(dtype=dtype)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # `score.bias` would be reported as unexpected; it is restored below
    try:
        model = load_pretrained(
            AutoModelForSequenceClassification,
            path,
            model_args=model_args,
            trust_remote_code=trust_remote_code,
            num_labels=1,
            **({"device_map": device_map} if device_map is not None else {}),
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    restore_score_bias(model, path)
    return model


def restore_score_bias(model: torch.nn.Module, path: str) -> None:
    """Put back a score-head bias saved by `hf_rlhf.reward.scorer.shift_reward` that `from_pretrained` does not load.

    Reward centring adds a bias to heads that have none (`score.bias`); transformers and peft drop such unexpected
    keys, so it is read from the safetensors file (full model or adapter) and set on the head.
    """
    from safetensors import safe_open

    for name in ("model.safetensors", "adapter_model.safetensors"):
        weights = os.path.join(path, name)
        if not os.path.isfile(weights):
            continue
        with safe_open(weights, framework="pt") as f:
            key = next((k for k in f.keys() if k == "score.bias" or k.endswith(".score.bias")), None)
            if key is None:
                return
            bias = f.get_tensor(key)
        head = reward_head(model)
        head.bias = torch.nn.Parameter(bias.to(device=head.weight.device, dtype=head.weight.dtype))
        return


def load_causal_lm(
    model_args: ModelConfig,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    trust_remote_code: bool = False,
    name_or_path: str | None = None,
    quantize: bool = True,
    device_map: Any = None,
) -> PreTrainedModel:
    """Load a causal LM (full weights, or an adapter merged into its base) with the dtype, attention and
    quantization of `model_args`; `device_map` loads it straight onto a device (`hf_rlhf.placement.load_kwargs`).

    If the tokenizer has more tokens than the embedding (a PAD token was added), the embeddings are resized.
    """
    name_or_path = name_or_path or model_args.model_name_or_path
    check_role(resolve_model_path(name_or_path), "policy", "model", name_or_path)
    model = load_pretrained(
        AutoModelForCausalLM,
        name_or_path,
        model_args=model_args,
        trust_remote_code=trust_remote_code,
        quantize=quantize,
        **({"device_map": device_map} if device_map is not None else {}),
    )
    if tokenizer is not None:
        sync_model_to_tokenizer(model, tokenizer)
    return model


def sync_model_to_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Resize embeddings to the tokenizer and use its PAD/EOS ids in the model and generation configs."""
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        if is_quantized(model):
            raise ValueError(
                f"the tokenizer has {len(tokenizer)} tokens but the quantized model's embedding has "
                f"{model.get_input_embeddings().num_embeddings}; add the PAD token in a full-precision stage first"
            )
        model.resize_token_embeddings(len(tokenizer))
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is not None:
            cfg.pad_token_id = tokenizer.pad_token_id
            cfg.eos_token_id = tokenizer.eos_token_id


def peft_config_for(model_args: ModelConfig, role: str = "causal_lm"):
    """TRL's `get_peft_config` for a role; `None` without `use_peft`.

    The reward and value roles are sequence-classification adapters whose `score` head is trained in full
    (`modules_to_save`), whatever `lora_modules_to_save` says.
    """
    from trl import get_peft_config

    config = get_peft_config(model_args)
    if config is None or role == "causal_lm":
        return config
    config.task_type = "SEQ_CLS"
    # a sequence-classification model has no LM head: `lm_head` in a shared recipe's modules_to_save is the policy's
    config.modules_to_save = sorted({*(config.modules_to_save or []), "score"} - {"lm_head"})
    return config


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters as peft (`get_nb_trainable_parameters`) or transformers (`num_parameters`) count
    them, 4-bit weights unpacked; another module (PPO's `PolicyAndValue`, a scalar head) sums over its parts."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    if isinstance(model, PreTrainedModel):
        return model.num_parameters(only_trainable=True), model.num_parameters()
    parts = [trainable_parameters(child) for child in model.children()]
    parts += [(p.numel() if p.requires_grad else 0, p.numel()) for p in model.parameters(recurse=False)]
    return sum(t for t, _ in parts), sum(n for _, n in parts)


def load_model_for_inference(
    path: str, *, trust_remote_code: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a finished stage's causal LM (full or adapter) and tokenizer for generation: frozen (eval mode, no
    gradients) on this process's device (`hf_rlhf.placement`)."""
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    model = load_causal_lm(
        ModelConfig(model_name_or_path=path),
        tokenizer=tokenizer,
        trust_remote_code=trust_remote_code,
        **load_kwargs(),
    )
    return frozen(model), tokenizer
