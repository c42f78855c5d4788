"""The TRL 1.12 baseline's virtual environment: the running interpreter's packages, with TRL 1.12 in front.

TRL removed PPO in 1.13, so the baseline needs TRL 1.12 while hf_rlhf's side runs whatever TRL its environment has.
The baseline venv must see exactly the packages of the interpreter that runs hf_rlhf (the same torch, transformers,
accelerate, datasets files), whether that interpreter is a virtual environment or not. `--system-site-packages`
does not do that from inside a venv: it exposes the *base* interpreter's site-packages, not the venv's, so the
baseline could not import torch.

Instead the venv is created without system site-packages and without pip, and one `.pth` file in its site-packages
calls `site.addsitedir` on each site directory of the running interpreter, in its `sys.path` order (their own `.pth`
files, e.g. editable installs, are processed as they are there). The venv's own site-packages comes first on
`sys.path`, so TRL 1.12 installed there (`--no-deps --ignore-installed`, with the running interpreter's pip, which
the `.pth` makes visible) shadows the newer TRL and nothing else. `check_same_packages` proves it: every
distribution the baseline resolves is the running interpreter's one, from the same place, except TRL.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys

PTH_FILE = "hf_rlhf_bench_parent_site.pth"
INSTALLERS = {"pip", "setuptools", "wheel"}  # what a venv may bring of its own; never imported by either side

# Run by the baseline's interpreter and by this one: {normalised distribution name: [version, location]} for the
# distribution that import machinery resolves first (sys.path order), as `importlib.metadata.version` does.
_LIST_DISTRIBUTIONS = r"""
import importlib.metadata as m, json, os, sys
out = {}
for d in m.distributions():
    name = (d.metadata["Name"] or "").lower().replace("_", "-")
    if name and name not in out:
        out[name] = [d.version, os.path.realpath(str(d.locate_file("")))]
print(json.dumps(out))
"""


def venv_python(venv_dir: str) -> str:
    return os.path.join(venv_dir, "Scripts" if os.name == "nt" else "bin", "python")


def parent_site_dirs() -> list[str]:
    """The running interpreter's site directories (user site included when active), in `sys.path` order."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    on_path = [p for p in sys.path if p in dirs]
    return on_path + [d for d in dirs if d not in on_path and os.path.isdir(d)]


def pth_text(dirs: list[str]) -> str:
    """One line of Python for `site` to run at start-up: add each directory, processing its `.pth` files."""
    return "import site; " + "; ".join(f"site.addsitedir({d!r})" for d in dirs) + "\n"


def _run(python: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([python, *args], capture_output=True, text=True)


def venv_site_packages(venv_dir: str) -> str:
    out = _run(venv_python(venv_dir), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    if out.returncode != 0:
        raise RuntimeError(f"the benchmark venv {venv_dir} does not run: {out.stderr.strip()}")
    return out.stdout.strip()


def _same_interpreter(venv_dir: str) -> bool:
    """The venv exists and was made from this interpreter's Python (same version and base installation)."""
    out = _run(venv_python(venv_dir), "-c", "import sys; print(sys.version); print(sys.base_prefix)")
    return out.returncode == 0 and out.stdout.splitlines() == [sys.version.splitlines()[0], sys.base_prefix]


def installed_version(venv_dir: str, package: str) -> str | None:
    """The version of `package` that the venv's interpreter resolves (`None`: not importable metadata)."""
    out = _run(venv_python(venv_dir), "-c", f"import importlib.metadata as m; print(m.version({package!r}))")
    return out.stdout.strip() if out.returncode == 0 else None


def link_parent_site(venv_dir: str, log=print) -> None:
    """Create `venv_dir` (no pip, no system site-packages) if needed and make it see this interpreter's packages.

    Recreated when it was made from another Python; the `.pth` is rewritten on every call (the running interpreter
    may be another venv than last time).
    """
    if os.path.exists(venv_dir) and not _same_interpreter(venv_dir):
        log(f"recreating {venv_dir}: it was made from another Python than {sys.executable}")
        shutil.rmtree(venv_dir)
    if not os.path.exists(venv_python(venv_dir)):
        log(f"creating {venv_dir} (once) ...")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv_dir], check=True)
    with open(os.path.join(venv_site_packages(venv_dir), PTH_FILE), "w") as f:
        f.write(pth_text(parent_site_dirs()))


def ensure_baseline_venv(venv_dir: str, package: str, version: str, log=print) -> str:
    """Create or update `venv_dir` so it sees this interpreter's packages with `package==version` in front.

    `link_parent_site`, then `pip install --no-deps --ignore-installed package==version` into the venv when it does
    not hold that version itself (`--ignore-installed`: never touches this interpreter's copy). Returns the version
    the venv resolves; raises if it is not `version`.
    """
    link_parent_site(venv_dir, log)
    found = installed_version(venv_dir, package)
    if found != version or not _installed_in_venv(venv_dir, package):
        log(f"installing {package}=={version} into {venv_dir} (found {found}) ...")
        pip = [venv_python(venv_dir), "-m", "pip"]
        if subprocess.run([*pip, "--version"], capture_output=True).returncode != 0:  # this interpreter has no pip
            subprocess.run([venv_python(venv_dir), "-m", "ensurepip", "--default-pip"], check=True)
        subprocess.run(
            [*pip, "install", "--quiet", "--no-deps", "--ignore-installed", f"{package}=={version}"], check=True
        )
        found = installed_version(venv_dir, package)
    if found != version:
        raise RuntimeError(f"the benchmark venv {venv_dir} resolves {package} {found}, expected {version}")
    return found


def _installed_in_venv(venv_dir: str, package: str) -> bool:
    location = list_distributions(venv_python(venv_dir)).get(package, [None, ""])[1]
    return os.path.realpath(location).startswith(os.path.realpath(venv_dir))


def list_distributions(python: str) -> dict[str, list[str]]:
    """What `python` resolves: {distribution name: [version, site directory]}."""
    out = _run(python, "-c", _LIST_DISTRIBUTIONS)
    if out.returncode != 0:
        raise RuntimeError(f"{python} could not list its packages: {out.stderr.strip()}")
    return json.loads(out.stdout)


def check_same_packages(venv_dir: str, package: str | None) -> None:
    """Raise unless the venv resolves every distribution of this interpreter to the same version and place, except
    `package` (its own copy) and the installers; it must not see any distribution this interpreter lacks."""
    mine = list_distributions(sys.executable)
    theirs = list_distributions(venv_python(venv_dir))
    skip = INSTALLERS | ({package} if package else set())
    missing = sorted(n for n in mine if n not in theirs and n not in skip)
    extra = sorted(n for n in theirs if n not in mine and n not in skip)
    moved = sorted(n for n in mine if n in theirs and n not in skip and mine[n] != theirs[n])
    if missing or extra or moved:
        raise RuntimeError(
            f"the benchmark venv {venv_dir} does not see the packages of {sys.executable}: missing {missing}, "
            f"extra {extra}, other version or place {[(n, mine[n], theirs[n]) for n in moved]}; delete the venv "
            "and rerun"
        )
