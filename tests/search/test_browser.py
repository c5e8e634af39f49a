"""`regsearch dashboard` in a real headless browser: the page shows the study and its trials."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import regsearch, serving

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Flags that keep Chromium quiet on a machine with no network (and as root in CI).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=15000",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian package `chromium`; .ci/run installs it)",
)


@pytest.mark.slow
def test_dashboard_page_lists_the_study_and_its_trials(tmp_path: Path) -> None:
    proc = regsearch(
        "run",
        "--study",
        "browse",
        "--n-trials",
        "3",
        "--set",
        "train.epochs=2",
        "--set",
        "search.pruner=none",
        "--set",
        "tracking.enabled=false",
        "--quiet",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    with serving(
        lambda port: [sys.executable, "-m", "search", "dashboard", "--port", str(port)],
        cwd=tmp_path,
        ready="/api/studies",
        what="the dashboard",
        timeout=60,
    ) as (base, _):
        profile = tmp_path / "chromium-profile"
        common = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}"]
        dom = subprocess.run(
            [*common, "--dump-dom", f"{base}/dashboard/studies/1/trials"],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        assert "browse" in dom, dom[:2000]
        assert "Trial 0" in dom or "trial 0" in dom.lower(), dom[:2000]
        shot = tmp_path / "dashboard.png"
        subprocess.run(
            [
                *common,
                f"--screenshot={shot}",
                "--window-size=1280,900",
                f"{base}/dashboard/studies/1",
            ],
            capture_output=True,
            timeout=120,
        )
        assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("REGSEARCH_KEEP_SCREENSHOT"):
            shutil.copy(shot, os.environ["REGSEARCH_KEEP_SCREENSHOT"])
