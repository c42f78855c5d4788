"""The bad-input catalogue: every input a user can get wrong, refused with one line that names the place at fault.

Each case is one line of `CASES`: an id, the `hf-rlhf` command line (run in-process through `hf_rlhf.cli.main`),
the exit code (1: an hf_rlhf error, 2: an argparse error naming the option), a pattern the error line must match
(it names the file, key, row, column or path at fault), and what main did before issue 13 (`BEFORE`). Every case
also checks that no traceback was printed and that the outputs that existed before are byte-identical afterwards:
a complete stage in `{out}/done` (stage commands get `--output_dir {out}/done --overwrite`, so a refusal must come
before anything replaces it) and nothing new under `{out}` (no world generated, no partial directory left).

Placeholders in a command line: `{models}` (tiny saved models and broken copies), `{world}` (a tiny world),
`{data}` (bad datasets and recipes, `DATA` and `TEXTS`), `{out}` (outputs), `{recipes}` (the repo's recipes). A
new case is one more line; a new fixture file is one more entry in `DATA` or `TEXTS`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass

import pytest

from hf_rlhf.cli import main

from .conftest import RECIPES

# What main did before issue 13, per case (the catalogue of the issue, measured on 9fb17de and since)
BEFORE = {
    "traceback": "a traceback",
    "silent": "accepted silently, something wrong happened",
    "late": "a clear error, but only after the world was generated or a model loaded",
    "vague": "an error that did not name the place at fault, or named the wrong one",
    "clear": "already a clear one-line error",
}


@dataclass(frozen=True)
class Case:
    id: str
    argv: str  # the command line after `hf-rlhf`, with placeholders
    code: int  # exit code
    pattern: str  # re.search on the error line
    before: str  # a key of BEFORE


U = "--output_dir {out}/done --overwrite"  # stage output: a complete stage that must survive every refusal
ARGS = "--model_name_or_path {models}/policy --dataset_name {world}/demonstrations " + U
SFT = "sft --config {recipes}/tiny/sft.yaml --model_name_or_path {models}/policy --max_steps 1 " + U
REWARD = "reward --config {recipes}/tiny/reward.yaml --model_name_or_path {models}/policy --max_steps 1 " + U
REWARD_STRICT = REWARD + " --invalid_rows error --eval_split_size 0"
SAMPLE = (
    "sample --config {recipes}/tiny/sample.yaml --model_name_or_path {models}/policy --dataset_name {world}/prompts "
)
PRETRAIN = "pretrain --config {recipes}/tiny/pretrain.yaml --max_steps 1 " + U
RL = "rl --config {recipes}/tiny/rl.yaml --model_name_or_path {models}/policy --dataset_name {world}/prompts "
GEN = "generate --model {models}/policy --prompt hi"
SCORE = "score --reward_model {models}/rm --prompt hi --response there"
PIPE = "pipeline {data}/"

CASES = [
    # ---- recipes: types and numbers, refused when parsed (before data or models load), naming file and key
    Case("yaml-list-for-number", "sft --config {data}/epochs_list.yaml " + ARGS, 1, r"epochs_list\.yaml': key 'num_train_epochs' expects a number, got \[1, 2\]", "traceback"),
    Case("yaml-word-for-number", "sft --config {data}/epochs_word.yaml " + ARGS, 1, r"epochs_word\.yaml': key 'num_train_epochs' expects a number, got 'three'", "vague"),
    Case("yaml-float-for-integer", "sft --config {data}/batch_float.yaml " + ARGS, 1, r"batch_float\.yaml': key 'per_device_train_batch_size' expects an integer, got 2\.5", "traceback"),
    Case("yaml-number-for-flag", "sft --config {data}/bf16_int.yaml " + ARGS, 1, r"bf16_int\.yaml': key 'bf16' expects true or false, got 1", "traceback"),
    Case("yaml-misspelt-choice", "sft --config {data}/scheduler.yaml " + ARGS, 1, r"scheduler\.yaml': key 'lr_scheduler_type' is 'cosnie'.*Did you mean 'cosine'", "traceback"),
    Case("yaml-duplicate-key", "sft --config {data}/duplicate.yaml " + ARGS, 1, r"duplicate\.yaml': key 'learning_rate' is given twice \(line 3\)", "silent"),
    Case("yaml-unknown-key", "sft --config {data}/unknown.yaml " + ARGS, 1, r"unknown\.yaml': unknown key 'num_train_epoch'.*'num_train_epochs'", "clear"),
    Case("yaml-not-a-mapping", "sft --config {data}/a_list.yaml " + ARGS, 1, r"a_list\.yaml' must hold a mapping", "clear"),
    Case("yaml-syntax-error", "sft --config {data}/invalid.yaml " + ARGS, 1, r"invalid\.yaml' is not valid YAML", "clear"),
    Case("recipe-file-missing", "sft --config {data}/nowhere.yaml " + ARGS, 1, r"recipe file '.*nowhere\.yaml' does not exist", "clear"),
    Case("cli-unknown-flag", SFT + " --dataset_name {world}/demonstrations --learning_rat 1", 1, r"command line: unknown key 'learning_rat'.*'learning_rate'", "clear"),
    Case("cli-word-for-number", SFT + " --dataset_name {world}/demonstrations --num_train_epochs x", 2, r"argument --num_train_epochs.*invalid float value: 'x'", "clear"),
    Case("lr-negative", SFT + " --dataset_name {world}/demonstrations --learning_rate=-1e-3", 1, r"command line: learning_rate must be positive, got -0\.001", "traceback"),
    Case("lr-zero", SFT + " --dataset_name {world}/demonstrations --learning_rate 0", 1, r"command line: learning_rate must be positive, got 0", "silent"),
    Case("no-optimizer-step", SFT + " --dataset_name {world}/demonstrations --max_steps 0 --num_train_epochs 0", 1, r"command line: no optimizer step to take", "silent"),
    Case("eval-split-over-1", SFT + " --dataset_name {world}/demonstrations --eval_split_size 1.5", 1, r"eval_split_size must be a fraction in \[0, 1\), got 1\.5", "silent"),
    Case("max-train-samples-0", SFT + " --dataset_name {world}/demonstrations --max_train_samples 0", 1, r"max_train_samples must be at least 1", "traceback"),
    Case("batch-size-0", SFT + " --dataset_name {world}/demonstrations --per_device_train_batch_size 0", 1, r"command line: per_device_train_batch_size must be at least 1, got 0", "traceback"),
    Case("grad-accumulation-0", SFT + " --dataset_name {world}/demonstrations --gradient_accumulation_steps 0", 1, r"command line: gradient_accumulation_steps must be at least 1, got 0", "traceback"),
    Case("sft-max-length-0", SFT + " --dataset_name {world}/demonstrations --max_length 0", 1, r"command line: max_length must be at least 1, got 0", "traceback"),
    Case("sample-one-completion", SAMPLE + "--num_completions 1 " + U, 1, r"command line: num_completions must be at least 2, got 1", "clear"),
    Case("sample-batch-size-0", SAMPLE + "--batch_size 0 " + U, 1, r"command line: batch_size must be at least 1, got 0", "traceback"),
    Case("sample-max-new-tokens-0", SAMPLE + "--max_new_tokens 0 " + U, 1, r"command line: max_new_tokens must be at least 1, got 0", "traceback"),
    Case("sample-negative-temperature", SAMPLE + "--temperature -1 " + U, 1, r"command line: temperature must be at least 0 .*, got -1", "silent"),
    Case("sample-test-split-over-1", SAMPLE + "--test_split_size 1.5 " + U, 1, r"command line: test_split_size must be a fraction in \[0, 1\), got 1\.5", "silent"),
    Case("pretrain-vocab-too-small", PRETRAIN + " --dataset_name {world}/documents --vocab_size 100", 1, r"command line: vocab_size must be at least \d+ .*got 100", "traceback"),
    Case("pretrain-block-size-0", PRETRAIN + " --dataset_name {world}/documents --block_size 0", 1, r"command line: block_size must be at least 1, got 0", "traceback"),
    Case("rl-negative-kl", RL + "--reward_model_path {models}/rm --kl_coef -1 " + U, 1, r"command line: kl_coef must be at least 0, got -1", "silent"),
    Case("rl-zero-temperature", RL.replace("rl.yaml", "rl_grpo.yaml") + "--reward_model_path {models}/rm --temperature 0 " + U, 1, r"command line: temperature must be positive, got 0", "traceback"),
    # ---- pipeline recipes: every stage checked before the world is generated, naming the recipe and the stage
    Case("pipe-override-typo", PIPE + "pipe_typo.yaml", 1, r"pipe_typo\.yaml', stage 'pretrain', overrides: unknown key 'max_step'.*'max_steps'", "late"),
    Case("pipe-override-list", PIPE + "pipe_list.yaml", 1, r"pipe_list\.yaml', stage 'pretrain', overrides: key 'num_train_epochs' expects a number", "traceback"),
    Case("pipe-override-negative-lr", PIPE + "pipe_lr.yaml", 1, r"pipe_lr\.yaml', stage 'pretrain', overrides: learning_rate must be positive", "traceback"),
    Case("pipe-stage-recipe-bad-value", PIPE + "pipe_stage_recipe.yaml", 1, r"recipe file '.*epochs_list\.yaml' \(stage 'sft'\): key 'num_train_epochs' expects a number", "traceback"),
    Case("pipe-without-pretrain", PIPE + "pipe_no_pretrain.yaml", 1, r"pipe_no_pretrain\.yaml', stage 'sft': its 'model_name_or_path' comes from stage 'pretrain', which the recipe does not list", "vague"),
    Case("pipe-without-world", PIPE + "pipe_no_world.yaml", 1, r"pipe_no_world\.yaml', stage 'pretrain': its 'dataset_name' comes from the tiny world's 'documents'.*no 'world' section", "vague"),
    Case("pipe-later-stage-check", PIPE + "pipe_sample_k1.yaml", 1, r"pipe_sample_k1\.yaml', stage 'sample', overrides: num_completions must be at least 2", "late"),
    Case("pipe-unknown-stage", PIPE + "pipe_unknown_stage.yaml", 1, r"pipe_unknown_stage\.yaml', 'stages': unknown key 'pretrian'.*'pretrain'", "clear"),
    Case("pipe-stage-recipe-missing", PIPE + "pipe_missing_recipe.yaml", 1, r"stage 'sft': recipe file '.*missing\.yaml' does not exist", "clear"),
    # ---- data: the dataset, split, row, column and what was expected, before any model loads
    Case("sft-misnamed-columns", SFT + " --dataset_name {data}/sft_questions.jsonl", 1, r"sft_questions\.jsonl', split 'train': expected columns \('prompt', 'completion'\) or \('messages'\)", "clear"),
    Case("sft-text-and-message-rows", SFT + " --dataset_name {data}/sft_mixed.jsonl --eval_split_size 0", 1, r"sft_mixed\.jsonl', split 'train': columns 'prompt' and 'completion' mix plain text \(3 rows, first: row 0\) and lists of messages \(3 rows: 3, 4, 5\)", "traceback"),
    Case("sft-max-length-below-every-row", SFT + " --dataset_name {world}/demonstrations --max_length 3", 1, r"demonstrations', split 'train': max_length=3 \(keep_start\) leaves no row a response token.*shortest prompt is \d+ tokens \(row \d+\)", "traceback"),
    Case("sft-missing-completion", SFT + " --dataset_name {data}/sft_none.jsonl --eval_split_size 0", 1, r"row 3, column 'completion': expected a non-empty string, got None", "clear"),
    Case("sft-empty-response", SFT + " --dataset_name {data}/sft_empty_reply.jsonl --eval_split_size 0", 1, r"row 1, column 'completion': expected a non-empty 'assistant' message", "clear"),
    Case("sft-dataset-missing", SFT + " --dataset_name {data}/nowhere.jsonl", 1, r"dataset '.*nowhere\.jsonl' does not exist", "clear"),
    Case("sft-malformed-jsonl", SFT + " --dataset_name {data}/malformed.jsonl", 1, r"malformed\.jsonl' could not be read", "clear"),
    Case("pretrain-missing-text-column", PRETRAIN + " --dataset_name {data}/docs_body.jsonl", 1, r"docs_body\.jsonl', split 'train': expected columns \('text'\).*'body'", "clear"),
    Case("pretrain-empty-file", PRETRAIN + " --dataset_name {data}/empty.jsonl", 1, r"empty\.jsonl' is an empty file", "clear"),
    Case("reward-margin-not-a-number", REWARD_STRICT + " --dataset_name {data}/pairs_margin.jsonl", 1, r"pairs_margin\.jsonl', split 'train': row 2: column 'margin' is 'big' \(str\): expected a finite number", "traceback"),
    Case("reward-integer-completions", REWARD_STRICT + " --dataset_name {data}/ranked_int.jsonl", 1, r"row 2: column 'completions', item 0 is 1 \(int\): expected a string or a list of \{'role', 'content'\} messages", "vague"),
    Case("reward-rankings-all-dropped", REWARD + " --dataset_name {data}/ranked_zero.jsonl --eval_split_size 0", 1, r"ranked_zero\.jsonl', split 'train': every row is invalid.*10 with a ranking.*first, row 0: column 'ranking' is \[0, 0, 1\]: item 0 is 0, below 1 \(0-based\?", "vague"),
    Case("reward-ranking-too-short", REWARD_STRICT + " --dataset_name {data}/ranked_short.jsonl", 1, r"row 3: column 'ranking' is \[1, 2\]: 2 ranks for 3 completions", "clear"),
    Case("reward-ranking-not-integers", REWARD_STRICT + " --dataset_name {data}/ranked_float.jsonl", 1, r"row 1: column 'ranking' is \[1\.5, 2\.0, 3\.0\]: item 0 is 1\.5 \(float\), not an integer", "vague"),
    Case("reward-chosen-not-text", REWARD_STRICT + " --dataset_name {data}/pairs_int.jsonl", 1, r"row 1: column 'chosen' is 5 \(int\): expected a string or a list", "vague"),
    Case("reward-prompt-not-text", REWARD_STRICT + " --dataset_name {data}/ranked_prompt_int.jsonl", 1, r"row 1: column 'prompt' is 7 \(int\): expected a string or a list", "traceback"),
    Case("reward-no-comparison-columns", REWARD + " --dataset_name {data}/prefs_cols.jsonl", 1, r"prefs_cols\.jsonl', split 'train': expected columns \('chosen', 'rejected'\)", "clear"),
    # ---- models: the path and file at fault, and how to get it back
    Case("model-path-is-a-file", "generate --model {models}/policy/config.json --prompt hi", 1, r"path '.*policy/config\.json' is a file; expected a model directory", "vague"),
    Case("reward-model-path-is-a-file", "score --reward_model {models}/rm/model.safetensors --prompt hi --response x", 1, r"reward model path '.*rm/model\.safetensors' is a file", "vague"),
    Case("model-path-missing", SFT.replace("{models}/policy", "{models}/nowhere") + " --dataset_name {world}/demonstrations", 1, r"path '.*nowhere' does not exist", "clear"),
    Case("weights-truncated", "generate --model {models}/truncated --prompt hi", 1, r"weights file '.*truncated/model\.safetensors' is truncated or corrupt.*save the model there again", "traceback"),
    Case("weights-corrupt-header", "generate --model {models}/corrupt --prompt hi", 1, r"weights file '.*corrupt/model\.safetensors' is truncated or corrupt \(.*header", "traceback"),
    Case("weights-missing", "generate --model {models}/no_weights --prompt hi", 1, r"model '.*no_weights' has no weights: expected model\.safetensors", "traceback"),
    Case("weights-pickle-only", "generate --model {models}/bin_only --prompt hi", 1, r"'.*bin_only' has no weights.*pytorch_model\.bin: hf_rlhf reads safetensors only", "traceback"),
    Case("weights-truncated-reward-model", SCORE.replace("{models}/rm", "{models}/rm_truncated"), 1, r"reward model weights file '.*rm_truncated/model\.safetensors' is truncated", "traceback"),
    Case("weights-truncated-stage-output", "generate --model {models}/sft_stage --prompt hi", 1, r"sft_stage/model\.safetensors' is truncated.*written by the sft stage: run `hf-rlhf sft` again into", "traceback"),
    Case("weights-truncated-sft-input", SFT.replace("{models}/policy", "{models}/truncated") + " --dataset_name {world}/demonstrations", 1, r"truncated/model\.safetensors' is truncated or corrupt", "traceback"),
    Case("weights-truncated-hub-download", "generate --model alice/tiny-broken --prompt hi", 1, r"model\.safetensors' is truncated.*hf download alice/tiny-broken model\.safetensors --revision [0-9a-f]{40} --force-download", "traceback"),
    # ---- generate and score: counts and prompts refused by the parser, naming the option
    Case("generate-negative-max-new-tokens", GEN + " --max_new_tokens -3", 2, r"argument --max_new_tokens: must be at least 1, got -3", "traceback"),
    Case("generate-zero-max-new-tokens", GEN + " --max_new_tokens 0", 2, r"argument --max_new_tokens: must be at least 1, got 0", "traceback"),
    Case("generate-negative-temperature", GEN + " --temperature -1", 2, r"argument --temperature: must be at least 0, got -1", "silent"),
    Case("generate-best-of-0", GEN + " --best_of 0 --reward_model {models}/rm", 2, r"argument --best_of/--best-of: must be at least 1, got 0", "silent"),
    Case("generate-raw-empty-prompt", "generate --model {models}/policy --raw --prompt hi --prompt ''", 2, r"--prompt number 2 is empty: with --raw", "silent"),
    Case("generate-best-of-without-reward-model", GEN + " --best_of 2", 2, r"--best_of needs --reward_model", "clear"),
    Case("score-batch-size-0", SCORE + " --batch_size 0", 2, r"argument --batch_size: must be at least 1, got 0", "traceback"),
    Case("score-unpaired-responses", SCORE + " --prompt again", 2, r"give --dataset_name, or as many --response as --prompt", "clear"),
    # ---- model roles: a causal LM is no reward model, a reward model is no policy, tokenizers compared
    Case("score-causal-lm-as-reward-model", "score --reward_model {models}/policy --prompt hi --response there", 1, r"reward model '.*policy' is a causal language model \(LlamaForCausalLM in config\.json\), not a reward model: it would score with a newly initialised head", "silent"),
    Case("rl-causal-lm-as-reward-model", RL + "--reward_model_path {models}/policy " + U, 1, r"reward_model_path '.*policy' is a causal language model", "silent"),
    Case("rl-reward-model-as-policy", RL.replace("{models}/policy", "{models}/rm") + "--reward_model_path {models}/rm " + U, 1, r"model_name_or_path '.*rm' is a reward model .*not a causal language model", "silent"),
    Case("generate-reward-model-as-policy", "generate --model {models}/rm --prompt hi", 1, r"model '.*rm' is a reward model \(LlamaForSequenceClassification in config\.json\), not a causal language model", "silent"),
    Case("sft-reward-model-as-base", SFT.replace("{models}/policy", "{models}/rm") + " --dataset_name {world}/demonstrations", 1, r"model_name_or_path '.*rm' is a reward model", "silent"),
    Case("sample-reward-model-as-writer", SAMPLE.replace("{models}/policy", "{models}/rm") + U, 1, r"model_name_or_path '.*rm' is a reward model", "silent"),
    Case("score-reward-stage-as-policy", "generate --model {models}/rm_stage --prompt hi", 1, r"model '.*rm_stage' is a reward model \(an hf_rlhf reward stage\)", "silent"),
    Case("score-three-label-classifier", SCORE.replace("{models}/rm", "{models}/rm3"), 1, r"reward model '.*rm3' is a classifier with 3 labels", "silent"),
    Case("score-no-score-head", SCORE.replace("{models}/rm", "{models}/rm_no_head"), 1, r"reward model '.*rm_no_head' .*has no score head in its weights: it would be newly initialised", "silent"),
    Case("rl-value-model-other-tokenizer", RL + "--reward_model_path {models}/rm --value_model_path {models}/rm_other " + U, 1, r"value_model_path '.*rm_other' has another tokenizer than the policy .*vocabulary, merges or special tokens", "traceback"),
    Case("remote-code-foreign-repo", "generate --model {models}/foreign_code --prompt hi --trust_remote_code", 1, r"'.*foreign_code': config\.json auto_map\.AutoConfig = 'mallory/code--evil\.Config' runs code from the Hub repo 'mallory/code', which is not the model's own.*trust_remote_code_repos", "silent"),
    # ---- outputs: a complete stage is never replaced without --overwrite, nor written under a file
    Case("output-complete-without-overwrite", SFT.replace(" --overwrite", "") + " --dataset_name {world}/demonstrations", 1, r"output_dir '.*done' already holds a complete sft stage \(finished 2026-01-01T00:00:00Z\); pass --overwrite", "silent"),
    Case("output-holds-other-files", SFT + " --dataset_name {world}/demonstrations --output_dir {out}/notes", 1, r"output_dir '.*notes' holds files but no hf_rlhf stage", "silent"),
    Case("output-under-a-file", SFT + " --dataset_name {world}/demonstrations --output_dir {models}/policy/config.json/out", 1, r"cannot write output_dir '.*config\.json/out': '.*config\.json' is a regular file", "traceback"),
    Case("score-dataset-columns", "score --reward_model {models}/rm --dataset_name {data}/score_cols.jsonl", 1, r"score_cols\.jsonl': expected columns 'prompt' and 'response'", "clear"),
]  # fmt: skip

# Bad datasets, as JSONL rows
USER, ASSISTANT = ({"role": r, "content": "x"} for r in ("user", "assistant"))
PAIRS = [{"prompt": f"What color is fox {i}?", "chosen": "The fox is red.", "rejected": "No idea."} for i in range(8)]
RANKED = [{"prompt": f"q{i}", "completions": ["a", "b", "c"], "ranking": [1, 2, 3]} for i in range(8)]
DATA = {
    "sft_questions.jsonl": [{"question": "q", "answer": "a"}] * 4,
    "sft_mixed.jsonl": [{"prompt": "q", "completion": "a"}] * 3 + [{"prompt": [USER], "completion": [ASSISTANT]}] * 3,
    "sft_none.jsonl": [{"prompt": "q", "completion": "a"}] * 3 + [{"prompt": "q", "completion": None}],
    "sft_empty_reply.jsonl": [
        {"prompt": [USER], "completion": [ASSISTANT]},
        {"prompt": [USER], "completion": [{"role": "assistant", "content": "  "}]},
    ],
    "docs_body.jsonl": [{"body": "The fox is red."}] * 4,
    "pairs_margin.jsonl": [{**p, "margin": 1.0} for p in PAIRS[:2]] + [{**PAIRS[2], "margin": "big"}] + PAIRS[3:],
    "pairs_int.jsonl": PAIRS[:1] + [{**PAIRS[1], "chosen": 5}] + PAIRS[2:],
    "ranked_int.jsonl": RANKED[:2] + [{**RANKED[2], "completions": [1, 2, 3]}] + RANKED[3:],
    "ranked_zero.jsonl": [{**r, "ranking": [0, 0, 1]} for r in RANKED + RANKED[:2]],
    "ranked_short.jsonl": RANKED[:3] + [{**RANKED[3], "ranking": [1, 2]}] + RANKED[4:],
    "ranked_float.jsonl": RANKED[:1] + [{**RANKED[1], "ranking": [1.5, 2, 3]}] + RANKED[2:],
    "ranked_prompt_int.jsonl": RANKED[:1] + [{**RANKED[1], "prompt": 7}] + RANKED[2:],
    "prefs_cols.jsonl": [{"question": "q", "good": "a", "bad": "b"}] * 4,
    "score_cols.jsonl": [{"q": "q", "a": "a"}] * 2,
}
PIPELINE_WORLD = (
    "output_dir: {out}/pipe\nworld: {seed: 0, num_documents: 30, num_demonstrations: 10, num_eval_prompts: 4}\n"
)
TEXTS = {
    "epochs_list.yaml": "num_train_epochs: [1, 2]\n",
    "epochs_word.yaml": "num_train_epochs: three\n",
    "batch_float.yaml": "per_device_train_batch_size: 2.5\n",
    "bf16_int.yaml": "bf16: 1\n",
    "scheduler.yaml": "lr_scheduler_type: cosnie\n",
    "duplicate.yaml": "learning_rate: 1.0e-3\nmax_length: 64\nlearning_rate: 5.0e-4\n",
    "unknown.yaml": "num_train_epoch: 3\n",
    "a_list.yaml": "- a\n- b\n",
    "invalid.yaml": "max_length: [64\n",
    "malformed.jsonl": '{"text": "ok"}\n{"text": \n',
    "empty.jsonl": "",
    "pipe_typo.yaml": PIPELINE_WORLD + "stages:\n  pretrain:\n    recipe: {recipes}/tiny/pretrain.yaml\n    overrides:\n      max_step: 2\n",
    "pipe_list.yaml": PIPELINE_WORLD + "stages:\n  pretrain:\n    recipe: {recipes}/tiny/pretrain.yaml\n    overrides:\n      num_train_epochs: [1, 2]\n",
    "pipe_lr.yaml": PIPELINE_WORLD + "stages:\n  pretrain:\n    recipe: {recipes}/tiny/pretrain.yaml\n    overrides:\n      learning_rate: -1\n",
    "pipe_stage_recipe.yaml": PIPELINE_WORLD + "stages:\n  pretrain:\n    recipe: {recipes}/tiny/pretrain.yaml\n  sft:\n    recipe: {data}/epochs_list.yaml\n",
    "pipe_no_pretrain.yaml": PIPELINE_WORLD + "stages:\n  sft:\n    recipe: {recipes}/tiny/sft.yaml\n",
    "pipe_no_world.yaml": "output_dir: {out}/pipe\nstages:\n  pretrain:\n    recipe: {recipes}/tiny/pretrain.yaml\n",
    "pipe_sample_k1.yaml": PIPELINE_WORLD + "stages:\n  pretrain:\n    recipe: {recipes}/tiny/pretrain.yaml\n  sft:\n    recipe: {recipes}/tiny/sft.yaml\n  sample:\n    recipe: {recipes}/tiny/sample.yaml\n    overrides:\n      num_completions: 1\n",
    "pipe_unknown_stage.yaml": "output_dir: {out}/pipe\nstages:\n  pretrian: {}\n",
    "pipe_missing_recipe.yaml": "output_dir: {out}/pipe\nstages:\n  sft:\n    recipe: missing.yaml\n",
}  # fmt: skip
HUB_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill(text: str, places: dict[str, str]) -> str:
    for name, path in places.items():
        text = text.replace("{" + name + "}", path)
    return text


@pytest.fixture(scope="session")
def places(tmp_path_factory) -> dict[str, str]:
    """Tiny inputs (a world, saved models and broken copies, bad data and recipes) and a complete stage output."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    from hf_rlhf.configs import WorldArguments
    from hf_rlhf.data.world import TinyWorld, build_world_datasets
    from hf_rlhf.tokenizer import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("bad_input")
    places = {name: str(root / name) for name in ("models", "world", "data", "out", "hub")} | {"recipes": RECIPES}
    build_world_datasets(
        WorldArguments(output_dir=places["world"], num_documents=40, num_demonstrations=30, num_eval_prompts=4)
    )
    tokenizer = train_bpe_tokenizer(TinyWorld(0).documents(60), vocab_size=300)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, num_labels=1,
    )  # fmt: skip
    torch.manual_seed(0)
    models = places["models"]
    for cls, name in ((LlamaForCausalLM, "policy"), (LlamaForSequenceClassification, "rm")):
        cls(config).save_pretrained(os.path.join(models, name))
        tokenizer.save_pretrained(os.path.join(models, name))
    LlamaForSequenceClassification(LlamaConfig(**{**config.to_dict(), "num_labels": 3})).save_pretrained(
        os.path.join(models, "rm3")
    )
    tokenizer.save_pretrained(os.path.join(models, "rm3"))
    other = train_bpe_tokenizer(TinyWorld(3).documents(60), vocab_size=320)  # another family's tokenizer
    other_config = LlamaConfig(**{**config.to_dict(), "vocab_size": len(other), "pad_token_id": other.pad_token_id})
    LlamaForSequenceClassification(other_config).save_pretrained(os.path.join(models, "rm_other"))
    other.save_pretrained(os.path.join(models, "rm_other"))

    def copy(source: str, name: str, root: str = models) -> str:
        shutil.copytree(os.path.join(models, source), os.path.join(root, name))
        return os.path.join(root, name)

    def truncate(directory: str) -> None:
        weights = os.path.join(directory, "model.safetensors")
        os.truncate(weights, os.path.getsize(weights) // 2)

    for name in ("truncated", "sft_stage"):
        truncate(copy("policy", name))
    truncate(copy("rm", "rm_truncated"))
    with open(os.path.join(copy("policy", "corrupt"), "model.safetensors"), "r+b") as f:
        f.write(b"\xff" * 8)  # a header length no file has
    os.remove(os.path.join(copy("policy", "no_weights"), "model.safetensors"))
    bin_only = copy("policy", "bin_only")
    os.rename(os.path.join(bin_only, "model.safetensors"), os.path.join(bin_only, "pytorch_model.bin"))
    no_head = copy("policy", "rm_no_head")  # causal-LM weights under a classifier's config: no score head
    _edit_config(no_head, architectures=["LlamaForSequenceClassification"])
    _edit_config(copy("policy", "foreign_code"), auto_map={"AutoConfig": "mallory/code--evil.Config"})
    with open(os.path.join(copy("rm", "rm_stage"), "hf_rlhf_manifest.json"), "w") as f:
        json.dump({"stage": "reward", "complete": True, "finished_at": "2026-01-01T00:00:00Z"}, f)
    stage = {"stage": "sft", "complete": True, "finished_at": "2026-01-01T00:00:00Z"}
    os.makedirs(os.path.join(places["out"], "notes"))  # a directory of someone's files: never replaced
    with open(os.path.join(places["out"], "notes", "todo.txt"), "w") as f:
        f.write("label 200 prompts\n")
    for directory in (os.path.join(models, "sft_stage"), copy("policy", "done", places["out"])):
        with open(os.path.join(directory, "hf_rlhf_manifest.json"), "w") as f:
            json.dump(stage, f)
    repo = os.path.join(places["hub"], "models--alice--tiny-broken")  # a truncated download in the Hub cache
    shutil.copytree(os.path.join(models, "truncated"), os.path.join(repo, "snapshots", HUB_COMMIT))
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(HUB_COMMIT)

    os.makedirs(places["data"])
    for name, rows in DATA.items():
        with open(os.path.join(places["data"], name), "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    for name, text in TEXTS.items():
        with open(os.path.join(places["data"], name), "w") as f:
            f.write(fill(text, places))
    return places


def _edit_config(directory: str, **fields) -> None:
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump({**config, **fields}, f)


def snapshot(root: str) -> dict[str, str]:
    """Every file under `root`: relative path -> sha256 of its bytes."""
    out = {}
    for directory, _, files in os.walk(root):
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_refused_naming_the_place(case, places, capsys, monkeypatch):
    from huggingface_hub import constants

    from hf_rlhf.hub import resolve

    monkeypatch.setattr(constants, "HF_HUB_CACHE", places["hub"])  # `alice/tiny-broken` is in this cache
    monkeypatch.setattr(resolve, "_downloads", {})
    inputs = {name: snapshot(places[name]) for name in ("models", "world", "data")}
    outputs = snapshot(places["out"])
    capsys.readouterr()
    try:
        code = main(shlex.split(fill(case.argv, places)))
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("hf-rlhf") and ": error: " in line]
    assert len(lines) == 1, err[-2000:]
    assert re.search(case.pattern, lines[0]), lines[0]
    assert code == case.code, lines[0]
    assert snapshot(places["out"]) == outputs  # the complete stage untouched, nothing written beside it
    for name, files in inputs.items():  # inputs never changed (caches `datasets` adds beside them aside)
        now = snapshot(places[name])
        assert {path: now.get(path) for path in files} == files


def test_the_catalogue_says_what_each_case_did_before():
    assert len({case.id for case in CASES}) == len(CASES)
    assert {case.before for case in CASES} <= set(BEFORE)
