import subprocess
import sys

from hf_rlhf.cli import COMMANDS


def run(*args):
    return subprocess.run([sys.executable, "-m", "hf_rlhf.cli", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_command():
    result = run("--help")
    assert result.returncode == 0
    for name, (_, help_) in COMMANDS.items():
        assert name in result.stdout and help_ in result.stdout


def test_stage_help_lists_options_with_help_text():
    result = run("sft", "--help")
    assert result.returncode == 0
    for option in ("--dataset_name", "--model_name_or_path", "--learning_rate", "--use_peft", "--max_length"):
        assert option in result.stdout
    assert "save_to_disk" in result.stdout  # our own help text
    pre = run("pretrain", "--help")
    assert "--model_type" in pre.stdout and "--block_size" in pre.stdout and "AutoConfig" in pre.stdout


def test_errors_are_one_clear_line_and_nonzero(tmp_path):
    result = run(
        "sft", "--dataset_name", str(tmp_path / "nope"), "--model_name_or_path", "x", "--output_dir", str(tmp_path)
    )
    assert result.returncode == 1
    assert "hf-rlhf sft: error: dataset" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert run("nonsense").returncode == 2
