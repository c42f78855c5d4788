"""Recipes: YAML loading with key checks, the pipeline recipe, and the command-line parse of a stage.

A stage recipe is a flat YAML mapping of the keys of the stage's dataclasses (TRL's `TrlParser` convention); a
pipeline recipe (`PipelineRecipe`) names an output directory, the tiny world to generate, the stages with their
recipes and overrides, how to evaluate, and optionally the Hub and launch settings. Every error names the file and
the key at fault, with a suggestion for a misspelt key.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import yaml
from transformers import HfArgumentParser
from trl import TrlParser

from .configs import EvaluationArguments, WorldArguments
from .errors import RecipeError
from .launching import resolve_accelerate_config

STAGE_NAMES = ("pretrain", "sft", "sample", "reward", "rl")  # in pipeline order; `hf_rlhf.stages.STAGES` has them


def parser_keys(parser: TrlParser) -> set[str]:
    return {action.dest for action in parser._actions if action.dest != "help"}


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: set = set()
        for key_node, _ in node.value:  # the mapping's own keys: `<<:` merges may be overridden, as YAML says
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise _DuplicateKey(f"key '{key}' is given twice (line {key_node.start_mark.line + 1}): keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml_mapping(path: str) -> dict:
    """Read a YAML file that must hold a mapping, with the file named in every error (a key given twice is one)."""
    if not os.path.isfile(path):
        raise RecipeError(f"recipe file '{path}' does not exist")
    try:
        with open(path) as f:
            content = yaml.load(f, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except _DuplicateKey as e:
        raise RecipeError(f"recipe file '{path}': {e}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"recipe file '{path}' is not valid YAML: {e}") from e
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise RecipeError(f"recipe file '{path}' must hold a mapping of keys to values, got {type(content).__name__}")
    return content


def check_keys(keys: dict | list, valid: set[str], where: str) -> None:
    """Raise a `RecipeError` naming `where` and the first key that no dataclass of the stage knows."""
    for key in keys:
        if key not in valid and key != "env":
            close = difflib.get_close_matches(str(key), sorted(valid), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise RecipeError(f"{where}: unknown key '{key}'.{hint}")


def parse_command_line(
    arguments: Callable[[str | None], tuple[type, ...]], argv: list[str] | None, prog: str
) -> tuple:
    """A stage's dataclasses from its command line: `--config <recipe>` (read once) and `--key value` overrides.

    What `TrlParser.parse_args_and_config` does (the recipe's values become the parser's defaults, the command line
    overrides them, `env:` sets environment variables), with every unknown key reported with the recipe file or the
    command line at fault. `arguments(algorithm)` gives the stage's dataclasses; `algorithm` is read from the command
    line, else the recipe (the RL stage's config class depends on it).
    """
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    config, where = {}, "command line"
    if "--config" in args:
        i = args.index("--config")
        if i + 1 >= len(args):
            raise RecipeError("--config needs a path to a YAML recipe")
        path = args[i + 1]
        del args[i : i + 2]
        config, where = load_yaml_mapping(path), f"recipe file '{path}'"
    algorithm = _flag_value(args, "algorithm") or config.get("algorithm")
    parser = TrlParser(arguments(algorithm), prog=prog)
    valid = parser_keys(parser)
    check_keys(config, valid, where)
    flags = [a[2:].split("=", 1)[0].replace("-", "_") for a in args if a.startswith("--")]
    check_keys([f for f in flags if f != "help"], valid, "command line")
    set_environment(config.pop("env", None), where)
    parser.set_defaults_with_config(**typed_values(config, parser_actions(parser), where))
    origins = {**dict.fromkeys(config, where), **dict.fromkeys(flags, "command line")}
    return check_numbers(pin_revisions(parser.parse_args_into_dataclasses(args=args)), origins)


def parse_values(
    types: tuple[type, ...], values: dict[str, Any], where: str, origins: dict[str, str] | None = None
) -> tuple:
    """A stage's dataclasses from a mapping of values (a recipe's, the pipeline's wiring, overrides), parsed once.

    Strings are converted by the parser's own types (as `TrlParser` does for YAML values, e.g. `1e-3`), a value of
    the wrong type (a list or a word where a number is expected) and unknown keys are reported with `where` (or the
    key's entry in `origins`: the file it came from) and a suggestion, and `env:` sets environment variables.
    """
    values = dict(values)
    set_environment(values.pop("env", None), where)
    parser = HfArgumentParser(types)
    actions = parser_actions(parser)
    check_keys(values, set(actions), where)
    origins = origins or {}
    converted = {}
    for key, value in values.items():
        converted.update(typed_values({key: value}, actions, origins.get(key, where)))
    return check_numbers(pin_revisions(parser.parse_dict(converted)), {**dict.fromkeys(values, where), **origins})


def parser_actions(parser: HfArgumentParser) -> dict[str, Any]:
    """The parser's options by name (`argparse` actions: their `type`, `nargs` and `choices`)."""
    return {action.dest: action for action in parser._actions if action.dest != "help"}


def typed_values(values: dict[str, Any], actions: dict[str, Any], where: str) -> dict[str, Any]:
    """Recipe values converted by the parser's types, as the command line would be; a `RecipeError` naming `where`,
    the key and the type expected for a value no conversion fits (`num_train_epochs: [1, 2]`, `max_steps: ten`,
    `per_device_train_batch_size: 2.5`, `lr_scheduler_type: cosnie`)."""
    out = {}
    for key, value in values.items():
        action = actions.get(key)
        if action is None or value is None:
            out[key] = value
        elif action.nargs in ("+", "*"):  # a list option: a list of items, or one item
            items = [_typed(key, v, action, where) for v in (value if isinstance(value, list) else [value])]
            out[key] = items if isinstance(value, list) else items[0]
        else:
            out[key] = _typed(key, value, action, where)
    return out


def _typed(key: str, value: Any, action: Any, where: str) -> Any:
    from argparse import ArgumentTypeError

    convert, shown = action.type, f"{value!r}" + (f" (a {type(value).__name__})" if isinstance(value, list) else "")
    flag = getattr(convert, "__name__", None) == "string_to_bool"  # transformers' and TRL's copy of it
    expected = "true or false" if flag else {int: "an integer", float: "a number"}.get(convert)
    if expected is not None:  # numbers and flags: the value's own type must fit, not only a string's
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if convert is int and number and float(value).is_integer():
            return int(value)
        if (convert is float and number) or (flag and isinstance(value, bool)):
            return value
        if not isinstance(value, str):
            raise RecipeError(f"{where}: key '{key}' expects {expected}, got {shown}")
    if isinstance(value, str) and convert is not None:
        try:
            value = convert(value)
        except (TypeError, ValueError, ArgumentTypeError):
            raise RecipeError(f"{where}: key '{key}' expects {expected or convert.__name__}, got {shown}") from None
    if action.choices is not None and value not in action.choices:
        choices = [str(c) for c in action.choices]
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise RecipeError(f"{where}: key '{key}' is {shown}: expected one of {', '.join(choices)}.{hint}")
    return value


# Counts no run can use below these (`option: minimum`), checked on every parsed dataclass that has the option.
AT_LEAST = {
    **dict.fromkeys(("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"), 1),
    **dict.fromkeys(("batch_size", "rollout_forward_batch_size", "num_mini_batches", "num_ppo_epochs"), 1),
    **dict.fromkeys(("max_new_tokens", "max_completion_length", "max_length", "max_prompt_length", "block_size"), 1),
    **dict.fromkeys(("max_prompts", "reference_max_samples", "calibration_bins"), 1),
    "num_completions": 2,
}


def check_numbers(parsed: tuple, origins: dict[str, str] | None = None) -> tuple:
    """Numbers no stage can run with, refused when the recipe is parsed (before data or models load): a learning
    rate that is not positive, a schedule with no optimizer step, a count below `AT_LEAST`, a negative sampling
    temperature (0 samples greedily; trainers divide logits by it, so there it must be positive), a split fraction
    outside [0, 1), a negative KL coefficient. `origins` maps an option to where it was set (file or command line),
    named in the error."""
    from transformers import TrainingArguments

    from .tokenizer import SPECIAL_TOKENS

    def fail(key: str, message: str) -> None:
        where = (origins or {}).get(key)
        raise RecipeError(f"{where}: {message}" if where else message)

    def number(config: Any, key: str) -> float | None:
        value = getattr(config, key, None)
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    for config in parsed:
        for key, low in AT_LEAST.items():
            value = number(config, key)
            if value is not None and value < low:
                fail(key, f"{key} must be at least {low}, got {value}")
        trainer = isinstance(config, TrainingArguments)
        temperature = number(config, "temperature")
        if temperature is not None and (temperature <= 0 if trainer else temperature < 0):
            bound = "positive" if trainer else "at least 0 (0 samples greedily)"
            fail("temperature", f"temperature must be {bound}, got {temperature}")
        split = number(config, "test_split_size")
        if split is not None and not 0 <= split < 1:
            fail("test_split_size", f"test_split_size must be a fraction in [0, 1), got {split}")
        if (number(config, "kl_coef") or 0) < 0:
            fail("kl_coef", f"kl_coef must be at least 0, got {config.kl_coef}")
        vocab = number(config, "vocab_size")
        if vocab is not None and vocab < 256 + len(SPECIAL_TOKENS):
            low = 256 + len(SPECIAL_TOKENS)
            fail("vocab_size", f"vocab_size must be at least {low} (256 bytes and the special tokens), got {vocab}")
        if not trainer:
            continue
        if not config.learning_rate > 0:
            fail("learning_rate", f"learning_rate must be positive, got {config.learning_rate}")
        if config.max_steps <= 0 and config.num_train_epochs <= 0:
            key = "max_steps" if "max_steps" in (origins or {}) else "num_train_epochs"
            steps = f"max_steps is {config.max_steps} and num_train_epochs is {config.num_train_epochs}"
            fail(key, f"no optimizer step to take: {steps}; set one of them above 0")
    return parsed


def pin_revisions(parsed: tuple) -> tuple:
    """`model_name_or_path: org/name@revision` sets `model_revision` (the Hub resolver's one parser)."""
    from .hub.resolve import pin_model_revision

    for config in parsed:
        pin_model_revision(config)
    return parsed


def set_environment(env: Any, where: str) -> None:
    """A recipe's `env:` mapping, as TRL's parser applies it."""
    if env is None:
        return
    if not isinstance(env, dict):
        raise RecipeError(f"{where}: 'env' must map environment variable names to values")
    for key, value in env.items():
        os.environ[str(key)] = str(value)


def _flag_value(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == f"--{name}" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def to_cli_args(values: dict[str, Any]) -> list[str]:
    """Turn a mapping of overrides into `--key value` strings that `TrlParser` parses back."""
    out = []
    for key, value in values.items():
        if isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, dict):
            value = json.dumps(value)
        elif isinstance(value, list):
            out.append(f"--{key}")
            out.extend(str(v) for v in value)
            continue
        out.extend([f"--{key}", str(value)])
    return out


@dataclass
class HubSettings:
    """A pipeline recipe's `hub:` section: push every stage, and chain the stages through the Hub.

    No token here, ever: it comes from HF_TOKEN or `hf auth login`.
    """

    namespace: str  # user or organisation of the repos
    repo_prefix: str | None = None  # repo names are <repo_prefix><stage>; default "<output_dir name>-"
    private: bool | None = None  # create the repos private
    revision: str = "main"  # branch every stage pushes to (and is read from)
    endpoint: str | None = None  # Hub URL; default HF_ENDPOINT (huggingface.co)
    pull: bool = True  # stage N+1 reads stage N's repo at the pushed commit, not its local directory
    push_datasets: bool = True  # push the tiny world's datasets as dataset repos (read from there with `pull`)

    def repo_id(self, name: str, output_dir: str) -> str:
        prefix = self.repo_prefix if self.repo_prefix is not None else os.path.basename(os.path.normpath(output_dir))
        prefix = prefix if self.repo_prefix is not None else f"{prefix}-"
        return f"{self.namespace}/{prefix}{REPO_NAMES.get(name, name)}"


REPO_NAMES = {"sample": "comparisons"}  # a stage's repo name, when it is not the stage's name


@dataclass
class PipelineRecipe:
    path: str
    output_dir: str
    stages: dict[str, dict[str, Any]]
    world: WorldArguments | None = None
    evaluation: EvaluationArguments = field(default_factory=EvaluationArguments)
    hub: HubSettings | None = None
    # `launch:` how the recipe runs: `accelerate_config` (resolved to a file; `hf-rlhf pipeline` launches under it and
    # `--dry-run` plans for it, unless `--accelerate_config` names another) and `gpu_memory_gb` (the dry run's)
    launch: dict[str, Any] = field(default_factory=dict)


def load_pipeline_recipe(path: str, output_dir: str | None = None) -> PipelineRecipe:
    """Read and check a pipeline recipe; every error names the file and the key at fault."""
    raw = load_yaml_mapping(path)
    where = f"pipeline recipe '{path}'"
    check_keys(raw, {"output_dir", "world", "stages", "evaluation", "hub", "launch"}, where)
    stages = raw.get("stages") or {}
    if not isinstance(stages, dict) or not stages:
        raise RecipeError(f"{where}: 'stages' must map stage names ({', '.join(STAGE_NAMES)}) to their settings")
    check_keys(stages, set(STAGE_NAMES), f"{where}, 'stages'")
    base = os.path.dirname(os.path.abspath(path))
    for name, spec in stages.items():
        spec = spec or {}
        check_keys(spec, {"recipe", "overrides", "merge"}, f"{where}, stage '{name}'")
        if "recipe" in spec:
            spec["recipe"] = os.path.join(base, spec["recipe"])
            if not os.path.isfile(spec["recipe"]):
                raise RecipeError(f"{where}, stage '{name}': recipe file '{spec['recipe']}' does not exist")
            spec["values"] = load_yaml_mapping(spec["recipe"])  # read once; the stage is built from these values
        overrides = spec.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise RecipeError(f"{where}, stage '{name}': 'overrides' must map option names to values")
        stages[name] = spec
    world = raw.get("world")
    if world is not None:
        check_keys(world, {f.name for f in fields(WorldArguments)} - {"output_dir"}, f"{where}, 'world'")
    evaluation = raw.get("evaluation") or {}
    check_keys(evaluation, {f.name for f in fields(EvaluationArguments)}, f"{where}, 'evaluation'")
    hub_section = raw.get("hub")
    if hub_section is not None:
        check_keys(hub_section, {f.name for f in fields(HubSettings)}, f"{where}, 'hub'")
        if not hub_section.get("namespace"):
            raise RecipeError(f"{where}, 'hub': set 'namespace' (the user or organisation of the repos)")
    launch = raw.get("launch") or {}
    check_keys(launch, {"accelerate_config", "gpu_memory_gb"}, f"{where}, 'launch'")
    if "accelerate_config" in launch:  # a named config, or a file relative to the recipe
        value = launch["accelerate_config"]
        if not isinstance(value, str) or not value:
            raise RecipeError(f"{where}, 'launch': 'accelerate_config' must be a config name or a file, got {value!r}")
        launch["accelerate_config"] = resolve_accelerate_config(value, base, f"{where}, 'launch', 'accelerate_config'")
    out = output_dir or raw.get("output_dir")
    if not out:
        raise RecipeError(f"{where}: set 'output_dir' in the recipe or pass --output_dir")
    try:
        evaluation_args = EvaluationArguments(**evaluation)
    except (RecipeError, ValueError) as e:
        raise RecipeError(f"{where}, 'evaluation': {e}") from None
    return PipelineRecipe(
        path=path,
        output_dir=out,
        stages={name: stages[name] for name in STAGE_NAMES if name in stages},
        world=WorldArguments(output_dir=os.path.join(out, "data"), **world) if world is not None else None,
        evaluation=evaluation_args,
        hub=HubSettings(**hub_section) if hub_section is not None else None,
        launch=launch,
    )
