"""`--accelerate_config NAME|FILE`: a stage or pipeline command run under `accelerate launch`, as `trl <command>` is.

A NAME is one of the configs shipped in `hf_rlhf/accelerate_configs/` (`config_names()`: `single_gpu`, `multi_gpu` or
`ddp`, `zero1`, `zero2`, `zero3`, `fsdp1`, `fsdp2`, `cpu_2proc`, `multi_node_zero3`); anything else must be an
accelerate config file. `hf-rlhf <command> ... --accelerate_config X`, started outside a launcher, runs again as
`accelerate launch --config_file X -m hf_rlhf.cli <command> ...` (accelerate's own parser and launcher), without the
option; in a process a launcher started (accelerate, torchrun, deepspeed), it runs where it is. A pipeline recipe's
`launch: {accelerate_config: ...}` does the same when the command line names no config. The dry run reads the
layout it plans for through the same `resolve_accelerate_config` (`hf_rlhf.plan.launch.read_launch`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from importlib import resources

from .errors import RecipeError

ALIASES = {"ddp": "multi_gpu"}
# The order names are listed in: TRL's names first, then hf_rlhf's own
ORDER = ("single_gpu", "multi_gpu", "zero1", "zero2", "zero3", "fsdp1", "fsdp2", "cpu_2proc", "multi_node_zero3")
LAUNCHED_ENV = "HF_RLHF_LAUNCHED"  # the config `launch` started this process with (a one-process launch sets no rank)
LAUNCHER_ENV = (
    LAUNCHED_ENV,
    "LOCAL_RANK",
    "WORLD_SIZE",
)  # torchrun, accelerate's multi-process and deepspeed launchers
# Options of `accelerate launch` that `hf-rlhf` passes on to it, after the config file (they override its values)
LAUNCH_OPTIONS = ("num_processes", "num_machines", "machine_rank", "main_process_ip", "main_process_port")
MODULE = "hf_rlhf.cli"


def configs_dir() -> str:
    return str(resources.files("hf_rlhf.accelerate_configs"))


def config_names() -> list[str]:
    """The named configs shipped with hf_rlhf (file names in `hf_rlhf/accelerate_configs/` without `.yaml`)."""
    names = [f[: -len(".yaml")] for f in os.listdir(configs_dir()) if f.endswith(".yaml")]
    return sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def names_text() -> str:
    aliases = {target: alias for alias, target in ALIASES.items()}
    return ", ".join(f"{n} (or {aliases[n]})" if n in aliases else n for n in config_names())


def resolve_accelerate_config(value: str, base_dir: str | None = None, where: str = "--accelerate_config") -> str:
    """The accelerate config file `value` names: a file (relative to `base_dir`, else to the working directory), else
    a named config; a `RecipeError` naming `where` and listing the names otherwise."""
    path = os.path.join(base_dir, value) if base_dir else value
    if os.path.isfile(path):
        return path
    name = ALIASES.get(value, value)
    if name in config_names():
        return os.path.join(configs_dir(), f"{name}.yaml")
    beside = f" (relative to {base_dir})" if base_dir else ""
    raise RecipeError(
        f"{where}: '{value}' is neither an accelerate config file{beside} nor a named config: {names_text()}"
    )


def config_name(path: str | None) -> str | None:
    """The name of a shipped config file, `None` for any other file."""
    if not path or os.path.dirname(os.path.abspath(path)) != os.path.abspath(configs_dir()):
        return None
    return os.path.basename(path).removesuffix(".yaml")


def split_launch_options(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """`--accelerate_config` and the `LAUNCH_OPTIONS` (`--key value` or `--key=value`) taken out of a command line."""
    keys = {f"--{k}" for k in ("accelerate_config", *LAUNCH_OPTIONS)}
    options: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(argv):
        key, sep, value = argv[i].partition("=")
        if key not in keys:
            rest.append(argv[i])
        elif sep:
            options[key[2:]] = value
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            options[key[2:]], i = argv[i + 1], i + 1
        else:
            raise RecipeError(f"{key} expects a value")
        i += 1
    return options, rest


def is_launched(environ: dict[str, str] | None = None) -> bool:
    """Whether this process was started by a launcher (`accelerate launch`, torchrun, deepspeed)."""
    environ = os.environ if environ is None else environ
    return any(key in environ for key in LAUNCHER_ENV)


def launch_arguments(config_path: str, argv: list[str], options: dict[str, str] | None = None) -> list[str]:
    """The arguments of `accelerate launch` that run `hf-rlhf ARGV` with `config_path`."""
    passed = [item for key, value in (options or {}).items() for item in (f"--{key}", str(value))]
    return ["--config_file", config_path, *passed, "-m", MODULE, *argv]


def launch(config_path: str, argv: list[str], options: dict[str, str] | None = None) -> int:
    """Run `hf-rlhf ARGV` under `accelerate launch --config_file config_path`; returns the run's exit code."""
    from accelerate.commands.launch import launch_command, launch_command_parser
    from accelerate.utils import patch_environment
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    arguments = launch_arguments(config_path, argv, options)
    print(f"[hf-rlhf] accelerate launch {' '.join(arguments)}", flush=True)
    args = launch_command_parser().parse_args(arguments)
    try:
        with patch_environment(**{LAUNCHED_ENV: config_name(config_path) or os.path.basename(config_path)}):
            launch_command(args)
    except subprocess.CalledProcessError as e:  # one process, or deepspeed's multi-machine launcher
        return exit_code(e.returncode)
    except ChildFailedError as e:  # torchrun: the first process that failed
        return exit_code(e.get_first_failure()[1].exitcode)
    return 0


def launched_config() -> str | None:
    """The accelerate config `launch` started this process with: a name, or a file's name; `None` otherwise."""
    return os.environ.get(LAUNCHED_ENV) or None


def exit_code(returncode: int) -> int:
    """A child's return code as a shell reports it: 128 + N for a process killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def launch_or_continue(
    command: str, argv: list[str], default_config: Callable[[list[str]], str | None] | None = None
) -> tuple[int | None, list[str]]:
    """What `hf-rlhf COMMAND ARGV` does about launching, decided before anything loads.

    Returns `(exit code, argv)` once the command ran under `accelerate launch`, else `(None, argv)` to run it in this
    process: without a config (`--accelerate_config`, else `default_config(argv)`, a pipeline recipe's `launch`), or
    under a launcher already. `argv` comes back without `--accelerate_config` and the `LAUNCH_OPTIONS`.
    """
    options, rest = split_launch_options(argv)
    given = options.pop("accelerate_config", None)
    config = resolve_accelerate_config(given) if given is not None else None
    if is_launched():
        unused = {**({"accelerate_config": given} if given is not None else {}), **options}
        if unused:
            shown = " ".join(f"--{key} {value}" for key, value in unused.items())
            print(f"[hf-rlhf] already started by a launcher: {shown} not used", file=sys.stderr)
        return None, rest
    config = config or (default_config(rest) if default_config is not None else None)
    if config is None:
        if options:
            option = next(iter(options))
            raise RecipeError(
                f"--{option} is an option of accelerate launch: give it with --accelerate_config NAME|FILE"
            )
        return None, rest
    return launch(config, [command, *rest], options), rest
