"""Fixtures for the browser tests: Debian's headless Chromium driven by Playwright, nothing downloaded.

Playwright's own browser builds are never installed (`playwright install` downloads them); the tests launch the
system Chromium from Debian's `chromium` package through `executable_path`. Override its path with
HF_RLHF_CHROMIUM. As root (CI containers) Chromium's sandbox cannot start, so it runs with --no-sandbox.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/lib/chromium/chromium")


def find_chromium() -> str | None:
    """The system Chromium executable, or None."""
    configured = os.environ.get("HF_RLHF_CHROMIUM")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    for path in CHROMIUM_CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


def chromium_args() -> list[str]:
    # --disable-dev-shm-usage: containers often give /dev/shm 64 MB, too little for Chromium's renderer.
    args = ["--disable-dev-shm-usage", "--disable-gpu", "--no-first-run", "--disable-extensions"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    return args


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """A headless Chromium for the whole session; each test opens its own contexts (one per labeler)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install '.[ui]')")
    executable = find_chromium()
    if executable is None:
        pytest.skip("no Chromium found (install Debian's `chromium` package or set HF_RLHF_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=chromium_args())
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def screenshot_dir(tmp_path) -> str:
    """Where a test saves its screenshots: HF_RLHF_UI_SCREENSHOTS if set, else the test's tmp_path."""
    out = os.environ.get("HF_RLHF_UI_SCREENSHOTS") or str(tmp_path / "screenshots")
    os.makedirs(out, exist_ok=True)
    return out
