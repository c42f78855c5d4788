"""`--accelerate_config NAME|FILE` and a pipeline recipe's `launch:`: which config, the `accelerate launch` command it
starts (accelerate's launcher mocked), in-process runs under a launcher; and one slow real 2-process pipeline."""

import os
import subprocess
import sys

import pytest
import yaml

from hf_rlhf import cli
from hf_rlhf.errors import RecipeError
from hf_rlhf.launching import LAUNCHED_ENV, config_names, configs_dir, is_launched, resolve_accelerate_config
from hf_rlhf.manifest import is_complete, read_manifest
from hf_rlhf.plan.launch import read_launch
from hf_rlhf.recipes import load_pipeline_recipe

from .conftest import RECIPES, REPO

NAMES = ["single_gpu", "multi_gpu", "zero1", "zero2", "zero3", "fsdp1", "fsdp2", "cpu_2proc", "multi_node_zero3"]


def shipped(name: str) -> str:
    return os.path.join(configs_dir(), f"{name}.yaml")


@pytest.fixture
def launched(monkeypatch):
    """`accelerate launch` mocked: the parsed arguments and environment of each launch, in order."""
    from accelerate.commands import launch as accelerate_launch

    calls = []

    def fake_launch_command(args):
        calls.append((args, os.environ.get(LAUNCHED_ENV)))

    monkeypatch.delenv(LAUNCHED_ENV, raising=False)
    for key in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(accelerate_launch, "launch_command", fake_launch_command)
    return calls


@pytest.fixture
def nothing_loads(monkeypatch):
    """A command that gets as far as loading its module fails the test."""

    def refuse(target):
        raise AssertionError(f"{target} was loaded")

    monkeypatch.setattr(cli, "_load", refuse)


def test_the_named_configs_are_trls_and_ours_and_resolve_to_shipped_files():
    assert config_names() == NAMES
    for name in NAMES:
        path = resolve_accelerate_config(name)
        assert path == shipped(name) and os.path.isfile(path)
        assert read_launch(name).config_path == path  # the dry run resolves through the same function
    assert resolve_accelerate_config("ddp") == shipped("multi_gpu")  # TRL's multi_gpu, under its older name too
    assert read_launch("zero3").describe().endswith("(zero3); 80 GiB per GPU")


def test_a_file_wins_over_a_name_and_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "zero3").write_text(open(shipped("cpu_2proc")).read())
    assert resolve_accelerate_config("zero3") == "zero3"
    assert read_launch("zero3").num_processes == 2


def test_an_unknown_name_is_one_line_listing_the_names_before_anything_loads(nothing_loads, launched, capsys):
    code = cli.main(["sft", "--config", "recipe.yaml", "--accelerate_config", "zero4"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and not launched
    assert err.startswith("hf-rlhf sft: error: --accelerate_config: 'zero4' is neither an accelerate config file")
    assert all(name in err for name in NAMES) and "multi_gpu (or ddp)" in err


def test_a_launch_option_needs_a_config(nothing_loads, launched, capsys):
    assert cli.main(["reward", "--config", "recipe.yaml", "--num_processes", "2"]) == 1
    assert (
        "--num_processes is an option of accelerate launch: give it with --accelerate_config"
        in capsys.readouterr().err
    )


def test_a_stage_relaunches_itself_under_accelerate_without_the_option(nothing_loads, launched, capsys):
    argv = ["sft", "--config", "r.yaml", "--accelerate_config=cpu_2proc", "--output_dir", "o", "--num_processes", "3"]
    assert cli.main(argv) == 0
    ((args, env),) = launched
    assert (args.config_file, args.num_processes, args.module) == (shipped("cpu_2proc"), 3, True)
    assert (args.training_script, args.training_script_args) == (
        "hf_rlhf.cli",
        ["sft", "--config", "r.yaml", "--output_dir", "o"],
    )
    assert env == "cpu_2proc" and LAUNCHED_ENV not in os.environ  # set for the launched processes only
    assert "[hf-rlhf] accelerate launch --config_file" in capsys.readouterr().out


def test_a_failed_launch_returns_the_run_exit_code(nothing_loads, launched, monkeypatch):
    from accelerate.commands import launch as accelerate_launch

    def fail(args):
        raise subprocess.CalledProcessError(-15, ["python"])

    monkeypatch.setattr(accelerate_launch, "launch_command", fail)
    assert cli.main(["rl", "--config", "r.yaml", "--accelerate_config", "single_gpu"]) == 128 + 15


def test_under_a_launcher_the_command_runs_in_this_process(launched, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(cli, "_load", lambda target: lambda argv: ran.append((target, argv)))
    monkeypatch.setenv(LAUNCHED_ENV, "zero3")
    assert cli.main(["sft", "--config", "r.yaml", "--accelerate_config", "zero3", "--seed", "1"]) == 0
    assert ran == [("hf_rlhf.stages.sft:main", ["--config", "r.yaml", "--seed", "1"])] and not launched
    assert "already started by a launcher: --accelerate_config zero3 not used" in capsys.readouterr().err
    assert is_launched({"LOCAL_RANK": "0", "WORLD_SIZE": "2"}) and not is_launched({})  # torchrun, deepspeed, ...


def test_without_a_config_the_command_runs_in_this_process_as_before(launched, monkeypatch):
    ran = []
    monkeypatch.setattr(cli, "_load", lambda target: lambda argv: ran.append((target, argv)))
    assert cli.main(["sample", "--config", "r.yaml"]) == 0
    assert ran == [("hf_rlhf.stages.sample:main", ["--config", "r.yaml"])] and not launched


def pipeline_recipe(folder, launch: dict | None = None) -> str:
    """The quick tiny pipeline (its stage recipes by absolute path) in `folder`, with a `launch:` section."""
    with open(os.path.join(RECIPES, "tiny", "quick.yaml")) as f:
        recipe = yaml.safe_load(f)
    for spec in recipe["stages"].values():
        spec["recipe"] = os.path.join(RECIPES, "tiny", spec["recipe"])
    folder.mkdir(exist_ok=True)
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump({**recipe, **({"launch": launch} if launch else {})}))
    return str(path)


def test_the_recipe_launch_section_names_a_config_or_a_file_beside_the_recipe(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "mine.yaml").write_text(open(shipped("cpu_2proc")).read())
    monkeypatch.chdir(REPO)  # not the recipe's folder
    beside = load_pipeline_recipe(pipeline_recipe(tmp_path / "recipes", {"accelerate_config": "mine.yaml"}))
    assert beside.launch["accelerate_config"] == str(tmp_path / "recipes" / "mine.yaml")
    named = load_pipeline_recipe(pipeline_recipe(tmp_path / "named", {"accelerate_config": "ddp"}))
    assert named.launch["accelerate_config"] == shipped("multi_gpu")
    with pytest.raises(RecipeError, match=r"'launch', 'accelerate_config': 'nope.yaml' is neither .* \(relative to "):
        load_pipeline_recipe(pipeline_recipe(tmp_path / "bad", {"accelerate_config": "nope.yaml"}))


def test_the_pipeline_launches_as_its_dry_run_plans_and_the_flag_overrides_the_recipe(tmp_path, launched):
    from hf_rlhf.plan.pipeline import plan_pipeline

    path = pipeline_recipe(tmp_path, {"accelerate_config": "cpu_2proc"})
    assert cli.main(["pipeline", path, "--output_dir", str(tmp_path / "out")]) == 0
    assert cli.main(["pipeline", path, "--accelerate_config", "zero2", "--output_dir", str(tmp_path / "out")]) == 0
    (recipe_args, _), (flag_args, _) = launched
    assert recipe_args.config_file == plan_pipeline(path).launch.config_path == shipped("cpu_2proc")
    assert (
        flag_args.config_file == plan_pipeline(path, accelerate_config="zero2").launch.config_path == shipped("zero2")
    )
    assert flag_args.training_script_args == ["pipeline", path, "--output_dir", str(tmp_path / "out")]


def test_ppo_under_zero3_is_refused_by_the_dry_run_as_by_the_run(tmp_path):
    from hf_rlhf.errors import RecipeError
    from hf_rlhf.plan.pipeline import plan_pipeline

    path = pipeline_recipe(tmp_path, {"accelerate_config": "zero3"})
    with pytest.raises(RecipeError, match="multi_gpu.*zero2"):
        plan_pipeline(path)


@pytest.mark.slow
def test_the_pipeline_under_cpu_2proc_completes_as_one_process_does_and_records_two_processes(tmp_path):
    from .test_distributed import ENV, free_port, full_pipeline

    two_dir, one_dir = tmp_path / "two", tmp_path / "one"
    command = [sys.executable, "-m", "hf_rlhf.cli", "pipeline", full_pipeline(tmp_path, halve=True)]
    command += [
        "--output_dir",
        str(two_dir),
        "--accelerate_config",
        "cpu_2proc",
        "--main_process_port",
        str(free_port()),
    ]
    two = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=1800)
    assert two.returncode == 0, two.stderr[-4000:]
    assert "[hf-rlhf] accelerate launch --config_file" in two.stdout
    assert cli.main(["pipeline", full_pipeline(tmp_path, halve=False), "--output_dir", str(one_dir)]) == 0

    for stage in ("pretrain", "sft", "sample", "reward", "rl"):
        assert is_complete(str(two_dir / stage)) and is_complete(str(one_dir / stage)), stage
        assert two.stdout.count(f"[hf-rlhf] {stage}: hf-rlhf {stage} ") == 1  # the main process reports
        assert read_manifest(str(two_dir / stage))["launch"] == {
            "num_processes": 2,
            "distributed_type": "MULTI_CPU",
            "accelerate_config": "cpu_2proc",
        }
        assert read_manifest(str(one_dir / stage))["launch"]["num_processes"] == 1
        files = {run: sorted(os.listdir(run / stage)) for run in (one_dir, two_dir)}
        assert files[one_dir] == files[two_dir], stage  # the same outputs and checkpoints
    assert sorted(os.listdir(one_dir)) == sorted(os.listdir(two_dir))  # report.json, report.md, ...
