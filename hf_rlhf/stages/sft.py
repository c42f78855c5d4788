"""Stage 2: supervised finetuning on demonstrations with TRL `SFTTrainer`.

Accepts TRL's prompt-completion (standard or conversational), conversational `messages` and `text` formats. The
loss is on the response tokens by default: the completion for prompt-completion data (TRL's `completion_only_loss`),
the assistant turns for `messages` data (`assistant_only_loss`, turned on here when the tokenizer's chat template
marks assistant turns with `{% generation %}`, as hf_rlhf's does). The SFT model is deployable.
"""

from __future__ import annotations

import logging
import math

from transformers import set_seed
from trl import ModelConfig, SFTTrainer, TrlParser

from ..configs import DataArguments, SFTStageConfig
from ..data.formats import check_sft_dataset, is_conversational_dataset, load_stage_dataset
from ..manifest import save_trainer_stage, start_stage
from ..modeling import load_causal_lm, load_tokenizer, peft_config_for, resolve_model_path, trainable_parameters
from ..recipes import RecipeError, parse_stage_args
from ..resilience import resilient

logger = logging.getLogger(__name__)


def arguments(algorithm: str | None = None) -> tuple[type, ...]:
    """The dataclasses of this stage, in the order `run` takes them."""
    return (DataArguments, SFTStageConfig, ModelConfig)


def make_parser(prog: str | None = None) -> TrlParser:
    return TrlParser(arguments(), prog=prog)


def run(data_args: DataArguments, training_args: SFTStageConfig, model_args: ModelConfig) -> dict:
    """Finetune `model_args.model_name_or_path` on demonstrations; save model, tokenizer and manifest.

    Returns:
        `dict`: the stage manifest (metrics include held-out `eval_loss` and `perplexity` on responses).
    """
    if not model_args.model_name_or_path:
        raise RecipeError("sft needs `model_name_or_path` (the pretraining output)")
    if not training_args.output_dir:
        raise RecipeError("sft needs `output_dir`")
    set_seed(training_args.seed)

    data = load_stage_dataset(data_args, seed=training_args.seed)
    formats = {
        split: check_sft_dataset(ds, f"dataset '{data_args.dataset_name}', split '{split}'")
        for split, ds in data.items()
    }
    resolve_model_path(model_args.model_name_or_path)
    tokenizer = load_tokenizer(model_args.model_name_or_path, trust_remote_code=training_args.trust_remote_code)
    conversational = is_conversational_dataset(data["train"])
    if conversational and not tokenizer.chat_template and not training_args.chat_template_path:
        raise RecipeError(
            f"dataset '{data_args.dataset_name}' is conversational but the tokenizer of "
            f"'{model_args.model_name_or_path}' has no chat template; set `chat_template_path`"
        )
    if formats["train"] == "conversational" and "{% generation %}" in (tokenizer.chat_template or ""):
        training_args.assistant_only_loss = True
    start_stage(training_args.output_dir, training_args)  # takes over push_to_hub: one push, when complete

    model = load_causal_lm(model_args, tokenizer=tokenizer, trust_remote_code=training_args.trust_remote_code)
    trainer = resilient(SFTTrainer)(  # complete checkpoints, NaN/inf loss stop, SIGTERM (hf_rlhf.resilience)
        model=model,
        args=training_args,
        train_dataset=data["train"],
        eval_dataset=data.get("test"),
        processing_class=tokenizer,
        peft_config=peft_config_for(model_args),
    )
    trainable, total = trainable_parameters(trainer.model)
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = {"train_loss": train_result.training_loss, "format": formats["train"]}
    metrics.update(trainable_parameters=trainable, total_parameters=total)
    if "test" in data:
        eval_loss = trainer.evaluate()["eval_loss"]
        metrics.update(eval_loss=eval_loss, perplexity=math.exp(min(eval_loss, 50)))

    return save_trainer_stage(
        trainer,
        tokenizer,
        "sft",
        data_args=data_args,
        training_args=training_args,
        model_args=model_args,
        train_dataset=data["train"],
        metrics=metrics,
    )


def main(argv: list[str] | None = None) -> dict:
    data_args, training_args, model_args = parse_stage_args(make_parser("hf-rlhf sft"), argv)
    return run(data_args, training_args, model_args)
