"""The test bed cleans up after runs that were killed before their fixtures could."""

from __future__ import annotations

import os
import subprocess

from tests.integration.nsutil import NETNS_DIR, sh, sweep_dead_runs


def test_namespaces_of_killed_runs_are_swept() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale, ours = f"cnitest-{dead.pid}-0-stale", f"cnitest-{os.getpid()}-999999-live"
    sh("ip", "netns", "add", stale)
    sh("ip", "netns", "add", ours)
    try:
        removed = sweep_dead_runs()
        assert stale in removed and not os.path.exists(f"{NETNS_DIR}/{stale}")
        assert os.path.exists(f"{NETNS_DIR}/{ours}")  # a live run's namespaces stay
    finally:
        sh("ip", "netns", "del", stale, check=False)
        sh("ip", "netns", "del", ours, check=False)
