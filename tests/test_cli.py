"""The `hf-rlhf` command line: one process runs the real entry point; the rest call `hf_rlhf.cli.main` in-process
(the same code, without paying the imports of a new interpreter each time)."""

import subprocess
import sys

import pytest

from hf_rlhf.cli import COMMANDS, main


def run(*args):
    return subprocess.run([sys.executable, "-m", "hf_rlhf.cli", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_command():
    result = run("--help")
    assert result.returncode == 0
    for name, (_, help_) in COMMANDS.items():
        assert name in result.stdout and help_ in result.stdout


def help_of(command, capsys) -> str:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_stage_help_lists_options_with_help_text(capsys):
    text = help_of("sft", capsys)
    for option in ("--dataset_name", "--model_name_or_path", "--learning_rate", "--use_peft", "--max_length"):
        assert option in text
    assert "save_to_disk" in text and "--datasets" in text  # our own help text and options
    pre = help_of("pretrain", capsys)
    assert "--model_type" in pre and "--block_size" in pre and "AutoConfig" in pre


def test_errors_are_one_clear_line_and_nonzero(tmp_path, capsys):
    code = main(
        ["sft", "--dataset_name", str(tmp_path / "nope"), "--model_name_or_path", "x", "--output_dir", str(tmp_path)]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "hf-rlhf sft: error: dataset" in err and "does not exist" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["nonsense"]) == 2
