"""Byte-level BPE tokenizer training and the assistant chat template.

The seed: "Tokenization. 10-100k tokens. BPE." Pretraining either trains a byte-level BPE tokenizer on its own
corpus (this module) or takes an existing tokenizer named by the recipe (`modeling.load_tokenizer`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|pad|>"
EOS_TOKEN = "<|end|>"  # ends a document in pretraining and a turn in chat; PAD is a different token
BOS_TOKEN = "<|begin|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
SPECIAL_TOKENS = [PAD_TOKEN, EOS_TOKEN, BOS_TOKEN, *ROLE_TOKENS]

# One turn is "<|role|>\n{content}<|end|>\n". `{% generation %}` marks the assistant's tokens so TRL's
# `assistant_only_loss` can mask everything else.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2, batch_size: int = 1000
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with PAD distinct from EOS and the assistant chat template.

    Args:
        texts (`Iterable[str]`): The pretraining corpus.
        vocab_size (`int`): Size of the vocabulary, special tokens and the 256 byte tokens included.
        min_frequency (`int`): Minimum count of a pair to be merged.
        batch_size (`int`): Texts handed to the trainer at a time.

    Returns:
        `PreTrainedTokenizerFast`: ready for `save_pretrained` and `AutoTokenizer.from_pretrained`.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} for byte-level BPE, got {vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )

    def batches() -> Iterator[list[str]]:
        batch = []
        for text in texts:
            batch.append(text)
            if len(batch) == batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    tokenizer.train_from_iterator(batches(), trainer=trainer)
    return wrap_tokenizer(tokenizer)


def wrap_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerFast:
    """Give a raw `tokenizers.Tokenizer` our special tokens and chat template as a transformers tokenizer."""
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=ROLE_TOKENS,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped
