"""The GPU check suite's switches and its JSON report.

Every test here carries the `gpu` marker (never part of `make test`) and is skipped when `torch.cuda.is_available()`
is false, unless `HF_RLHF_GPU_SUITE_CPU=1` asks for the CPU smoke mode: the same code at the smallest sizes, on the
process's device (`hf_rlhf.placement.process_device()`) instead of CUDA, memory figures left empty.

Each check's outcome and figures (the `figures` fixture) go to one JSON report, written at the end of the session
to `outputs/gpu_report.json` or `$HF_RLHF_GPU_REPORT`, when any check of the suite ran or was skipped.
"""

from __future__ import annotations

import datetime
import json
import os
import time
from typing import Any

import pytest
import torch

from ..conftest import REPO
from .suite import KL_TOLERANCE, MEMORY_TOLERANCE, Mode, run_mode

SMOKE_ENV = "HF_RLHF_GPU_SUITE_CPU"
REPORT_ENV = "HF_RLHF_GPU_REPORT"
HERE = os.path.dirname(os.path.abspath(__file__))
FIGURES = pytest.StashKey[dict]()
ENTRIES: dict[str, dict[str, Any]] = {}
STARTED = time.time()


def smoke_mode() -> bool:
    return os.environ.get(SMOKE_ENV, "").strip().lower() in ("1", "true", "yes")


def in_suite(item: pytest.Item) -> bool:
    return str(item.path).startswith(HERE + os.sep)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available() or smoke_mode():
        return
    skip = pytest.mark.skip(
        reason=f"needs a CUDA GPU (torch.cuda.is_available() is False); {SMOKE_ENV}=1 runs the CPU smoke mode"
    )
    for item in items:
        if in_suite(item):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mode() -> Mode:
    from hf_rlhf.placement import process_device

    return Mode(device=process_device(), smoke=smoke_mode())


@pytest.fixture(scope="session")
def expected_device(mode: Mode) -> torch.device:
    """Where every model and tensor must be: CUDA, or in the smoke mode the process's device."""
    if not mode.smoke:
        assert mode.cuda, f"hf_rlhf.placement.process_device() is {mode.device} on a machine with CUDA"
    return mode.device


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> dict[str, Any]:
    """This check's figures, written to the report with its outcome."""
    return request.node.stash.setdefault(FIGURES, {})


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if not in_suite(item):
        return report
    entry = ENTRIES.setdefault(item.nodeid, {"check": item.name, "outcome": "passed", "seconds": 0.0})
    entry["seconds"] = round(entry["seconds"] + report.duration, 2)
    if report.failed:
        entry["outcome"] = "failed" if report.when == "call" else "error"
        entry["message"] = call.excinfo.exconly()[-2000:] if call.excinfo else str(report.longrepr)[-2000:]
    elif report.skipped and entry["outcome"] == "passed":
        entry["outcome"] = "skipped"
        entry["message"] = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    entry["figures"] = item.stash.get(FIGURES, {})
    return report


def environment() -> dict[str, Any]:
    import accelerate
    import peft
    import transformers
    import trl

    try:
        import bitsandbytes

        bnb = bitsandbytes.__version__
    except Exception as e:  # no CUDA build, or not installed: say so
        bnb = f"unavailable ({type(e).__name__})"
    cuda = torch.cuda.is_available()
    return {
        "mode": run_mode(cuda, smoke_mode()),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "device_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "peft": peft.__version__,
        "trl": trl.__version__,
        "bitsandbytes": bnb,
    }


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not ENTRIES:  # the suite was deselected (make test) or not collected
        return
    checks = list(ENTRIES.values())
    outcomes = [c["outcome"] for c in checks]
    report = {
        **environment(),
        "finished_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.time() - STARTED, 1),
        "memory_tolerance": MEMORY_TOLERANCE,
        "kl_tolerance": KL_TOLERANCE,
        "summary": {o: outcomes.count(o) for o in ("passed", "failed", "error", "skipped") if o in outcomes},
        "checks": checks,
    }
    path = os.environ.get(REPORT_ENV) or os.path.join(REPO, "outputs", "gpu_report.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(f"\n[hf-rlhf] GPU check suite report: {path}")
