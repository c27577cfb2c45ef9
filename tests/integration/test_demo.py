"""`flora-watcher demo` as a user runs it: every scripted run reported once, some through FLORA's callback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_the_demo_reports_every_run_some_through_a_callback(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLORA_", "NOTIFY_SOCKET"))}
    proc = subprocess.run([sys.executable, "-m", "watcher", "demo"], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "4 of them are started with a callback_url" in out
    assert "each reported once" in out, out[-2000:]
    callbacks = [line for line in out.splitlines() if line.startswith("⚡ FLORA's signed callback for run_")]
    assert callbacks  # at least one came that way (polling every second may win a race now and then)
    assert f"{len(callbacks)} told by FLORA's callback (⚡)" in out
    # a clean stop: no task crashed or failed on the way out (the ingress's did, its listener closed under it)
    assert '"task.' not in proc.stderr, proc.stderr[-2000:]
