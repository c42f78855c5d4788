"""`hf-rlhf evaluate`: the pipeline report's model comparison, on given models, without a pipeline.

    hf-rlhf evaluate --models sft=outputs/sft rl=outputs/rl --reward_model outputs/reward \
        --prompts trl-lib/ultrafeedback-prompt --max_prompts 200 --output_dir outputs/eval

Every model is sampled on the same prompts with the same settings and measured against the reference model (the
first of `--models` unless `--reference` names another) by `hf_rlhf.eval.measure`, the code of the pipeline's
report: reward-model score and win rate with 95% bootstrap intervals, an optional judge model's win rate asked in
both orders, KL to the reference, length, missing-EOS rate, distinct-1/2, and samples side by side. Writes
`report.json` and `report.md` in `--output_dir`. Everything that can be checked without loading a model (names,
paths, the reference, the prompts) is checked first.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, fields
from typing import Any

from ..checks import at_least, check_weights, non_negative
from ..configs import DataArguments, EvaluationArguments
from ..errors import DataValidationError, ModelNotFoundError
from ..hub.cards import display_name
from ..hub.resolve import is_hub_id
from .measure import load_prompts, measure, sample_models, samples_table
from .report import write_report

SETTINGS = ("temperature", "max_new_tokens", "best_of_n", "batch_size", "num_samples_shown", "seed")


def _help(name: str) -> str:
    return next(f.metadata.get("help", "") for f in fields(EvaluationArguments) if f.name == name)


def build_parser() -> argparse.ArgumentParser:
    defaults = EvaluationArguments()
    parser = argparse.ArgumentParser(prog="hf-rlhf evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models",
        nargs="+",
        required=True,
        metavar="NAME=PATH",
        help="Models to compare: a directory or Hub id each.",
    )
    parser.add_argument("--reference", help="The NAME every other model is compared with (default: the first).")
    parser.add_argument("--reward_model", "--reward-model", help="Reward model (directory or Hub id) that judges.")
    parser.add_argument("--judge_model", "--judge-model", help=_help("judge_model"))
    parser.add_argument("--prompts", required=True, help="Dataset with a `prompt` column (a Hub id, folder or file).")
    parser.add_argument("--prompts_split", default="test", help="Split of --prompts to use (default: test).")
    parser.add_argument("--max_prompts", type=at_least(1), help=_help("max_eval_prompts"))
    parser.add_argument("--output_dir", "--output-dir", required=True, help="Where report.json / report.md go.")
    parser.add_argument("--temperature", type=non_negative, default=defaults.temperature, help=_help("temperature"))
    for name in SETTINGS[1:]:
        minimum = 0 if name == "num_samples_shown" else 1
        default, text = getattr(defaults, name), _help(name)
        if name == "best_of_n":  # only when asked for here
            default, text = 1, "Add best-of-N from the reference model, picked by --reward_model (1: no such row)."
        parser.add_argument(f"--{name}", type=at_least(minimum), default=default, help=text)
    parser.add_argument(
        "--bootstrap_resamples",
        type=at_least(1),
        default=defaults.bootstrap_resamples,
        help=_help("bootstrap_resamples"),
    )
    parser.add_argument("--trust_remote_code", action="store_true", help=_help("trust_remote_code"))
    return parser


def model_problem(path: str, what: str) -> str | None:
    """Why `path` cannot be a model, in a line, or None: a directory with its weights, or a Hub id."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")) and not os.path.isfile(
            os.path.join(path, "adapter_config.json")
        ):
            return f"{what} '{path}' is a directory without config.json (not a saved model)"
        try:
            check_weights(path, what, required=True)
        except ModelNotFoundError as e:
            return str(e)
        return None
    if is_hub_id(path):
        return None
    return f"{what} '{path}' does not exist: expected a model directory or a Hub id 'org/name[@revision]'"


def parse_models(entries: list[str]) -> tuple[dict[str, str], str | None]:
    """`NAME=PATH` entries as {name: path}, or a one-line problem."""
    models: dict[str, str] = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            return {}, f"--models expects NAME=PATH entries, got {entry!r}"
        if name in models:
            return {}, f"--models names '{name}' twice"
        models[name] = path
    return models, None


def check_args(args: argparse.Namespace) -> tuple[dict[str, str], str]:
    """Every check that needs no model: returns the models and the reference, or raises `ValueError` (one line)."""
    models, problem = parse_models(args.models)
    if problem:
        raise ValueError(problem)
    reference = args.reference or next(iter(models))
    if reference not in models:
        raise ValueError(f"--reference '{reference}' is not among --models ({', '.join(models)})")
    if args.best_of_n > 1 and not args.reward_model:
        raise ValueError("--best_of_n needs --reward_model (the reward model picks the best of N)")
    roles = [(path, f"--models {name}") for name, path in models.items()]
    roles += [(getattr(args, k), f"--{k}") for k in ("reward_model", "judge_model") if getattr(args, k)]
    for path, what in roles:
        problem = model_problem(path, what)
        if problem:
            raise ValueError(problem)
    return models, reference


def evaluate(
    models: dict[str, str],
    reference: str,
    prompts: list[Any],
    ev: EvaluationArguments,
    reward_model: str | None = None,
) -> dict[str, Any]:
    """The report of `models` ({name: directory or Hub id}) on `prompts`, compared with `reference`.

    `ev` gives the sampling settings and the judge (`ev.judge_model`); its `models` / `reference_model` (the
    pipeline's) are not used.
    """
    from ..reward.scorer import RewardModelScorer

    scorer = RewardModelScorer(reward_model, trust_remote_code=ev.trust_remote_code) if reward_model else None
    candidates, _ = sample_models({n: (p, None) for n, p in models.items()}, reference, prompts, ev, scorer, reference)
    settings = {k: v for k, v in asdict(ev).items() if k not in ("models", "reference_model", "few_shot_examples")}
    return {
        "title": "hf_rlhf evaluation report",
        "stages": {},
        "models": {name: display_name(path) for name, path in models.items()},
        "reward_model": display_name(reward_model) if reward_model else None,
        "evaluation": settings,
        "reference": reference,
        "rows": measure(candidates, prompts, reference, ev, scorer),
        "samples": samples_table(prompts, candidates, ev.num_samples_shown),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`hf-rlhf evaluate`: see the module docstring."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        models, reference = check_args(args)
        data = DataArguments(dataset_name=args.prompts, dataset_train_split=args.prompts_split)
        prompts = load_prompts(data, "train", args.max_prompts)
        ev = EvaluationArguments(
            **{k: getattr(args, k) for k in (*SETTINGS, "bootstrap_resamples", "trust_remote_code")},
            judge_model=args.judge_model,
        )
    except (ValueError, DataValidationError) as e:
        parser.error(str(e))
    report = evaluate(models, reference, prompts, ev, args.reward_model)
    report["prompts"] = {
        "dataset": display_name(args.prompts),
        "split": args.prompts_split,
        "num_prompts": len(prompts),
    }
    os.makedirs(args.output_dir, exist_ok=True)
    write_report(report, args.output_dir)
    return report


if __name__ == "__main__":
    main()
