"""The PPO benchmark's TRL 1.12 environment sees exactly the packages of the interpreter running hf_rlhf."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("baseline_env", os.path.join(REPO, "bench", "ppo", "baseline_env.py"))
baseline_env = importlib.util.module_from_spec(spec)
spec.loader.exec_module(baseline_env)

WHERE = "import json, torch, transformers; print(json.dumps([torch.__file__, transformers.__file__]))"


def run_python(python: str, code: str) -> str:
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_pth_adds_each_site_directory_in_order():
    assert baseline_env.pth_text(["/a/site-packages", "/b/it's"]) == (
        "import site; site.addsitedir('/a/site-packages'); site.addsitedir(\"/b/it's\")\n"
    )


def test_linked_venv_resolves_the_same_packages(tmp_path):
    venv = str(tmp_path / "baseline")
    baseline_env.link_parent_site(venv, log=lambda m: None)
    baseline_env.check_same_packages(venv, None)  # every distribution: same version, same place
    python = baseline_env.venv_python(venv)
    assert json.loads(run_python(python, WHERE)) == json.loads(run_python(sys.executable, WHERE))
    baseline_env.link_parent_site(venv, log=lambda m: None)  # idempotent: the .pth is rewritten, nothing added
    assert os.listdir(baseline_env.venv_site_packages(venv)) == [baseline_env.PTH_FILE]


def test_check_names_what_the_venv_does_not_see(tmp_path):
    venv = str(tmp_path / "bare")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    with pytest.raises(RuntimeError, match=r"does not see the packages of .*missing \[.*'torch'"):
        baseline_env.check_same_packages(venv, None)


@pytest.mark.slow
def test_fresh_venv_with_hf_rlhf_installed(tmp_path):
    """hf_rlhf installed in a user's venv: the old `--system-site-packages` baseline misses the venv's packages, the
    linked one sees them all, with TRL 1.12 from PyPI in front of the newer TRL."""
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "trl==1.12.0", "-d", str(tmp_path / "dl")],
        capture_output=True,
    )
    if probe.returncode != 0:
        pytest.skip("trl==1.12.0 cannot be downloaded from the package index here")
    user = str(tmp_path / "user")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", user], check=True)
    user_python = baseline_env.venv_python(user)
    subprocess.run(
        [user_python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", REPO],
        check=True,
        cwd=str(tmp_path),
    )
    bench = os.path.join(REPO, "bench", "ppo")
    driver = (
        f"import sys; sys.path.insert(0, {bench!r}); import baseline_env as b, subprocess; "
        f"subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', {str(tmp_path / 'old')!r}], "
        "check=True)\n"
        "try:\n"
        f"    b.check_same_packages({str(tmp_path / 'old')!r}, 'trl'); print('old: same')\n"
        "except RuntimeError as e:\n"
        "    print('old:', e)\n"
        f"print('trl', b.ensure_baseline_venv({str(tmp_path / 'new')!r}, 'trl', '1.12.0', log=lambda m: None))\n"
        f"b.check_same_packages({str(tmp_path / 'new')!r}, 'trl'); print('new: same')\n"
    )
    lines = run_python(user_python, driver).splitlines()
    assert lines[0].startswith("old:") and "'hf-rlhf'" in lines[0] and "missing" in lines[0], lines
    assert lines[1:] == ["trl 1.12.0", "new: same"]
    new_python = baseline_env.venv_python(str(tmp_path / "new"))
    seen = json.loads(
        run_python(new_python, "import json, hf_rlhf, torch, trl; print(json.dumps([hf_rlhf.__file__, trl.__file__]))")
    )
    assert seen[0] == os.path.join(REPO, "hf_rlhf", "__init__.py")
    assert seen[1].startswith(str(tmp_path / "new"))
