"""A real headless Chromium for the tests that need a browser: the dashboard's page, the site's
feedback posted cross-origin."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1200,1500"]
# Virtual time stands still while a fetch is in flight, so this budget covers a page's first
# requests whatever the machine.
VIRTUAL_TIME_MS = 3000


def chromium(url: str, profile: Path, *action: str) -> subprocess.CompletedProcess:
    """Chromium run headless on `url` with its own profile directory, doing `action` (--dump-dom,
    --screenshot=...) once the page's virtual time budget is spent."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: `make test` installs it (apt-get install chromium chromium-driver)")
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                           f"--virtual-time-budget={VIRTUAL_TIME_MS}", *action, url],
                          capture_output=True, text=True, timeout=60)
