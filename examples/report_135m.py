"""The report of a run outside the tiny world, on a real model's shapes, without the Hub or a GPU.

Random weights in SmolLM2-135M's Llama configuration (30 layers, hidden 576, 9 query / 3 key-value heads,
intermediate 1536, tied embeddings; the vocabulary is that of a byte-level BPE tokenizer trained here on a small
corpus, about 700 tokens instead of 49,152, so 106M parameters instead of 135M) as the SFT model and, with another seed, as the reward model; general prompts that are not the
tiny world's (train and test splits). `hf-rlhf rl` runs a few PPO updates of the SFT model against that reward model,
then `hf-rlhf evaluate` measures SFT, SFT best-of-N and the RL model on the held-out prompts: reward-model score,
win rate against SFT, KL to SFT, length, missing EOS, distinct-n and samples side by side (docs/evaluation.md).

    python3 examples/report_135m.py [--output_dir outputs/report-135m] [--updates 3]

About 5 minutes on a 2-core CPU. Random models write random text: the figures exercise the report, they do not
measure RL. Everything lands in `<output_dir>/eval/report.md` (and `report.json`).
"""

from __future__ import annotations

import argparse
import os
import sys

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# SmolLM2-135M's config.json (HuggingFaceTB/SmolLM2-135M), less its vocabulary and special-token ids
SMOLLM2_135M = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    rms_norm_eps=1e-5,
    tie_word_embeddings=True,
    hidden_act="silu",
)
PROMPTS = [
    "Write a haiku about rain.",
    "What is the capital of France?",
    "Explain gravity to a child.",
    "Name three fruits that are red.",
    "How do I boil an egg?",
    "Tell me a joke about computers.",
    "Summarize the plot of Romeo and Juliet in one sentence.",
    "Give me two tips for a job interview.",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
    "Suggest a name for a black cat.",
    "What should I pack for a day hike?",
    "Write a limerick about a teapot.",
    "How many legs does a spider have?",
    "Recommend a book for a long flight.",
    "What is photosynthesis?",
]
CORPUS = [
    "The rain fell softly on the quiet town while the children slept.",
    "Paris is the capital of France and a city of museums, cafes and bridges.",
    "Gravity pulls everything toward the ground, which is why an apple falls from a tree.",
    "Strawberries, cherries and raspberries are red fruits that taste sweet in summer.",
    "To boil an egg, place it in boiling water for about eight minutes, then cool it.",
    "A good interview answer is short, honest and backed by an example from your work.",
    "The sky looks blue because air scatters blue sunlight more than red sunlight.",
    "Plants turn sunlight, water and carbon dioxide into sugar and oxygen: photosynthesis.",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=os.path.join(REPO_DIR, "outputs", "report-135m"))
    parser.add_argument("--updates", type=int, default=3, help="PPO updates (default 3).")
    return parser.parse_args(argv)


def build_models(root: str) -> dict[str, str]:
    """The tokenizer, the random SFT and reward models in SmolLM2-135M's shapes, and the prompt dataset."""
    import torch
    from datasets import Dataset, DatasetDict
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from hf_rlhf.data.world import TinyWorld
    from hf_rlhf.tokenizer import train_bpe_tokenizer

    dirs = {name: os.path.join(root, name) for name in ("sft", "reward", "prompts")}
    if all(os.path.isdir(d) for d in dirs.values()):
        return dirs
    texts = CORPUS * 50 + TinyWorld(0).documents(2000)
    tokenizer = train_bpe_tokenizer(texts, vocab_size=4096)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        num_labels=1,
        **SMOLLM2_135M,
    )
    for name, cls, seed in (("sft", LlamaForCausalLM, 0), ("reward", LlamaForSequenceClassification, 1)):
        torch.manual_seed(seed)
        model = cls(config)
        print(f"{name}: {cls.__name__}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
        model.save_pretrained(dirs[name])
        tokenizer.save_pretrained(dirs[name])
    rows = [{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS]
    DatasetDict(train=Dataset.from_list(rows[:8]), test=Dataset.from_list(rows[8:])).save_to_disk(dirs["prompts"])
    return dirs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, REPO_DIR)
    from hf_rlhf.eval import evaluate
    from hf_rlhf.stages import rl

    root = os.path.abspath(args.output_dir)
    dirs = build_models(root)
    rl_dir = os.path.join(root, "rl")
    if not os.path.isfile(os.path.join(rl_dir, "hf_rlhf_manifest.json")):
        rl.main(
            [
                "--model_name_or_path", dirs["sft"], "--reward_model_path", dirs["reward"],
                "--dataset_name", dirs["prompts"], "--output_dir", rl_dir,
                "--algorithm", "ppo", "--max_steps", str(args.updates), "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
                "--num_mini_batches", "1", "--num_ppo_epochs", "2", "--max_new_tokens", "16",
                "--learning_rate", "1e-5", "--kl_coef", "0.1", "--logging_steps", "1", "--report_to", "none",
                "--save_strategy", "no",
            ]
        )  # fmt: skip
    evaluate.main(
        [
            "--models", f"sft={dirs['sft']}", f"rl={rl_dir}", "--reward_model", dirs["reward"],
            "--prompts", dirs["prompts"], "--best_of_n", "4", "--max_new_tokens", "16", "--batch_size", "8",
            "--output_dir", os.path.join(root, "eval"),
        ]
    )  # fmt: skip
    return 0  # evaluate.main printed the report


if __name__ == "__main__":
    raise SystemExit(main())
