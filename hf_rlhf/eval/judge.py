"""A causal LM as a pairwise judge: which of two responses to a request is better, asked in both orders.

The judge reads `PAIRWISE_TEMPLATE` (through its chat template as a user turn, when it has one; else as plain text
ending in "Answer:") and its verdict is log p("A") - log p("B") for the next tokens, the answer scored as the
`judge` sample labeler scores " Yes" / " No" (`hf_rlhf.stages.sample_labelers.JudgeScorer`, with `answer_logprobs`), so no sampling or
parsing of free text is involved. Judges prefer the response shown first (or second) more often than they should;
`judge_both_orders` asks each pair in both orders and counts a win only when both agree (`both_orders_outcomes`),
as MT-Bench's conservative pairwise grading does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..encoding import encode_prompt, encode_text
from ..placement import model_device
from .stats import both_orders_outcomes

PAIRWISE_TEMPLATE = (
    "Below is a request and two responses to it, A and B.\n\n"
    "### Request:\n{prompt}\n\n"
    "### Response A:\n{first}\n\n"
    "### Response B:\n{second}\n\n"
    "Which response answers the request more helpfully and correctly? Answer with the letter A or B only."
)
CHAT_ANSWERS = ("A", "B")  # the assistant's first token, after the template's generation prompt
TEXT_ANSWERS = (" A", " B")  # after "Answer:", for a judge without a chat template


def request_text(prompt: Any) -> str:
    """A prompt as the judge reads it: text as is, a conversation as one `role: content` line per message."""
    return prompt if isinstance(prompt, str) else "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


@torch.no_grad()
def answer_logprobs(
    model: PreTrainedModel,
    pad_token_id: int,
    contexts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    batch_size: int = 8,
) -> list[list[float]]:
    """log p(answer | context) for every context and answer: `[len(contexts)][len(answers)]`.

    Single-token answers are read from one forward pass of the context; longer ones are scored as continuations.
    A context longer than the model's positions keeps its end (the question and answer slot come last).
    """
    single = all(len(a) == 1 for a in answers)
    positions = getattr(model.config, "max_position_embeddings", None)
    room = positions - (0 if single else max(map(len, answers))) if positions else None
    rows, starts = [], []
    for context in contexts:
        context = list(context[-room:] if room else context)
        for answer in [[]] if single else answers:
            rows.append(context + list(answer))
            starts.append(len(context))
    device, out = model_device(model), []
    for begin in range(0, len(rows), batch_size):
        batch = [torch.tensor(r) for r in rows[begin : begin + batch_size]]
        ids = nn.utils.rnn.pad_sequence(batch, batch_first=True, padding_value=pad_token_id)
        mask = (torch.arange(ids.shape[1])[None] < torch.tensor([len(b) for b in batch])[:, None]).long()
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().cpu()
        if single:  # the next token's distribution after each context (right padding: at its last position)
            last = logits[torch.arange(len(batch)), mask.sum(1) - 1].log_softmax(-1)
            out.extend(last[:, [a[0] for a in answers]].tolist())
            continue
        logp = logits[:, :-1].log_softmax(-1).gather(2, ids[:, 1:, None]).squeeze(-1)
        for i, row in enumerate(batch):
            out.append(float(logp[i, starts[begin + i] - 1 : len(row) - 1].sum()))
    if single:
        return out
    k = len(answers)
    return [out[i * k : (i + 1) * k] for i in range(len(contexts))]


class PairwiseJudge:
    """`judge(prompts, first, second)`: per prompt, log p("A") - log p("B"), > 0 when the judge prefers `first`.

    Args:
        model: An instruct causal LM, frozen on this process's device (`load_model_for_inference`).
        tokenizer: Its tokenizer; with a chat template the question is a user turn.
        batch_size: Sequences scored at a time.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, batch_size: int = 8):
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.chat = bool(tokenizer.chat_template)
        self.answers = [encode_text(tokenizer, a) for a in (CHAT_ANSWERS if self.chat else TEXT_ANSWERS)]

    def context(self, prompt: Any, first: str, second: str) -> list[int]:
        question = PAIRWISE_TEMPLATE.format(prompt=request_text(prompt), first=first, second=second)
        if self.chat:
            return encode_prompt(self.tokenizer, [{"role": "user", "content": question}])
        return encode_prompt(self.tokenizer, question + "\nAnswer:")

    def __call__(self, prompts: Sequence[Any], first: Sequence[str], second: Sequence[str]) -> list[float]:
        contexts = [self.context(p, a, b) for p, a, b in zip(prompts, first, second, strict=True)]
        logps = answer_logprobs(self.model, self.tokenizer.pad_token_id, contexts, self.answers, self.batch_size)
        return [a - b for a, b in logps]


def judge_both_orders(
    judge: PairwiseJudge, prompts: Sequence[Any], completions: Sequence[str], reference: Sequence[str]
) -> tuple[list[float], float]:
    """Per prompt, 1 / 0.5 / 0 for the model's completion against the reference's, judged in both orders;
    identical completions tie without asking. Also returns the share of asked prompts whose two orders agreed."""
    asked = [i for i, (c, r) in enumerate(zip(completions, reference, strict=True)) if c != r]
    outcomes = [0.5] * len(prompts)
    if not asked:
        return outcomes, float("nan")
    p, c, r = ([seq[i] for i in asked] for seq in (prompts, completions, reference))
    model_first = judge(p, c, r)
    model_second = [-v for v in judge(p, r, c)]  # > 0: the model's completion (now B) preferred
    for i, outcome in zip(asked, both_orders_outcomes(model_first, model_second), strict=True):
        outcomes[i] = outcome
    agreed = sum((a > 0) == (b > 0) for a, b in zip(model_first, model_second, strict=True)) / len(asked)
    return outcomes, agreed
