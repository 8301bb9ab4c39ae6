"""The README's demo runs green on our plugins and cleans up, also when it fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def demo_namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith("cnidemo-")]


def test_demo_passes_and_leaves_nothing(cni_bin: Path) -> None:
    before = demo_namespaces()
    proc = subprocess.run([sys.executable, "-m", "cni_plugins.runtime.demo", "--cni-path", str(cni_bin)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sees the source 198.51.100.1" in proc.stdout and proc.stdout.rstrip().endswith("demo finished: all checks passed")
    assert "FAIL" not in proc.stdout
    assert demo_namespaces() == before


def test_demo_failure_cleans_up(tmp_path: Path) -> None:
    before = demo_namespaces()
    proc = subprocess.run([sys.executable, "-m", "cni_plugins.runtime.demo", "--cni-path", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "demo: FAILED" in proc.stderr
    assert demo_namespaces() == before
