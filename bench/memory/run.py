"""Memory benchmark: peak memory and trainable parameters of SFT, reward modeling and PPO in full / LoRA / QLoRA-4bit,
and of PPO with four separate models against every role on one (4-bit) base.

Every measurement is a fresh process (`bench/memory/worker.py`) running the real stage (`hf_rlhf.stages.*.main`) for a
few steps on prepared random-initialised models of two sizes: the tiny recipe's Llama (~1M parameters) and a larger
Llama (~220M parameters, a size this 24 GiB machine holds four fp32 copies of with their optimizer states). The peak
is the process's resident memory above its post-import baseline (sampled every 10 ms) from the first optimizer step
on, i.e. what training holds (the load transient is shown beside it), or `max_memory_allocated` with `--device cuda`. Printed as a table with ratios to the full-precision run of the same stage; the PPO target is
that the shared 4-bit base holds at most 40% of the memory of four separate full-precision models.

Usage:
    python3 bench/memory/run.py              # both sizes (~15 minutes on 2 CPU cores; also `make bench`)
    python3 bench/memory/run.py --sizes tiny # the tiny model only (~3 minutes)
Results go to bench/results/memory.json. Exit status 0 whatever the figures; nonzero only if a run crashes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(os.path.dirname(BENCH_DIR))
SIZES = {
    "tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=4, tie_word_embeddings=True),
    "220M": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16,
                 num_key_value_heads=16, tie_word_embeddings=False, vocab_size=32000),
}  # fmt: skip
# (stage, method, shared base): the PPO rows compare four separate models with one shared base
RUNS = [
    ("sft", "full", False), ("sft", "lora", False), ("sft", "qlora", False),
    ("reward", "full", False), ("reward", "lora", False), ("reward", "qlora", False),
    ("rl", "full", False), ("rl", "lora", False), ("rl", "qlora", False), ("rl", "lora", True), ("rl", "qlora", True),
]  # fmt: skip
PPO_TARGET = 0.40


def log(message: str) -> None:
    print(f"[bench memory {time.strftime('%H:%M:%S')}] {message}", flush=True)


def prepare(size: str, work: str) -> None:
    """Tokenizer, data, a random 'SFT' model, a full reward model and a LoRA reward adapter on the SFT model."""
    import torch
    from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM
    from trl import ModelConfig

    from hf_rlhf.configs import WorldArguments
    from hf_rlhf.data.world import TinyWorld, build_world_datasets
    from hf_rlhf.modeling import load_pretrained, peft_config_for
    from hf_rlhf.tokenizer import train_bpe_tokenizer

    paths = build_world_datasets(WorldArguments(output_dir=work, num_documents=300, num_demonstrations=200))
    world = TinyWorld(0)
    tokenizer = train_bpe_tokenizer(world.documents(300), vocab_size=512)
    settings = dict(SIZES[size])
    config = LlamaConfig(
        vocab_size=max(settings.pop("vocab_size", 0), len(tokenizer)),
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **settings,
    )
    torch.manual_seed(0)
    sft = os.path.join(work, "sft")
    LlamaForCausalLM(config).save_pretrained(sft, safe_serialization=True)
    tokenizer.save_pretrained(sft)
    reward = load_pretrained(AutoModelForSequenceClassification, sft, num_labels=1)
    reward.config.pad_token_id = tokenizer.pad_token_id
    reward.save_pretrained(os.path.join(work, "reward_full"), safe_serialization=True)
    tokenizer.save_pretrained(os.path.join(work, "reward_full"))
    from peft import get_peft_model

    lora = ModelConfig(use_peft=True, lora_r=16, lora_alpha=32, lora_target_modules=["all-linear"])
    get_peft_model(reward, peft_config_for(lora, "reward")).save_pretrained(os.path.join(work, "reward_lora"))
    tokenizer.save_pretrained(os.path.join(work, "reward_lora"))
    prompts = [p.text for p in world.all_prompts()[:200]]
    with open(os.path.join(work, "comparisons.jsonl"), "w") as f:
        for i, prompt in enumerate(prompts):
            f.write(json.dumps({"prompt": prompt, "chosen": f"answer {i} " * 8, "rejected": f"no {i}"}) + "\n")
    assert os.path.isdir(paths["prompts"]) and os.path.isdir(paths["demonstrations"])


def measure(size: str, work: str, stage: str, method: str, shared: bool, device: str, steps: int) -> dict:
    out = tempfile.mkdtemp(prefix=f"mem-{stage}-{method}-", dir=work)
    cmd = [sys.executable, os.path.join(BENCH_DIR, "worker.py"), "--stage", stage, "--method", method,
           "--work", work, "--out", out, "--device", device, "--steps", str(steps)] + (["--shared"] if shared else [])  # fmt: skip
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    proc = subprocess.run(cmd, cwd=REPO_DIR, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"memory run {size}/{stage}/{method}{'/shared' if shared else ''} failed")
    with open(os.path.join(out, "result.json")) as f:
        return {"size": size, **json.load(f)}


def layout(row: dict) -> str:
    if row["stage"] != "rl":
        return row["method"]
    if row["method"] == "full":
        return "full (4 separate models)"
    return f"{row['method']} ({'one shared base' if row['shared'] else 'separate value/reward models'})"


def table(rows: list[dict]) -> str:
    lines = [
        "| size | stage | method | training peak MiB | vs full | load peak MiB | trainable params | of total | seconds |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    full = {(r["size"], r["stage"]): r["peak_bytes"] for r in rows if r["method"] == "full"}
    for r in rows:
        ratio = r["peak_bytes"] / full[(r["size"], r["stage"])] if full.get((r["size"], r["stage"])) else None
        share = r["trainable_parameters"] / r["total_parameters"] if r["total_parameters"] else None
        lines.append(
            f"| {r['size']} | {'ppo' if r['stage'] == 'rl' else r['stage']} | {layout(r)} | "
            f"{r['peak_bytes'] / 2**20:,.0f} | {ratio:.2f} | {(r['load_peak_bytes'] or 0) / 2**20:,.0f} | "
            f"{r['trainable_parameters']:,} | {share:.2%} | "
            f"{r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=2, help="Training steps (PPO updates) per run.")
    parser.add_argument("--quick", action="store_true", help="The tiny size only.")
    args = parser.parse_args(argv)
    sizes = ["tiny"] if args.quick else args.sizes
    rows = []
    with tempfile.TemporaryDirectory(prefix="hf_rlhf-bench-memory-") as root:
        for size in sizes:
            work = os.path.join(root, size)
            log(f"preparing the {size} models and data")
            prepare(size, work)
            for stage, method, shared in RUNS:
                row = measure(size, work, stage, method, shared, args.device, args.steps)
                log(f"{size} {stage} {layout(row)}: peak {row['peak_bytes'] / 2**20:,.0f} MiB")
                rows.append(row)
    print("\n" + table(rows) + "\n")
    for size in sizes:
        full = next(r for r in rows if r["size"] == size and r["stage"] == "rl" and r["method"] == "full")
        shared = next(
            r for r in rows if r["size"] == size and r["stage"] == "rl" and r["shared"] and r["method"] == "qlora"
        )
        ratio = shared["peak_bytes"] / full["peak_bytes"]
        verdict = "meets" if ratio <= PPO_TARGET else "misses"
        print(f"PPO {size}: one shared 4-bit base / four separate fp32 models = {ratio:.3f} "
              f"({verdict} the target <= {PPO_TARGET:.2f})")  # fmt: skip
    os.makedirs(os.path.join(REPO_DIR, "bench", "results"), exist_ok=True)
    with open(os.path.join(REPO_DIR, "bench", "results", "memory.json"), "w") as f:
        json.dump({"device": args.device, "steps": args.steps, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
