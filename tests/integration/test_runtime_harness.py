"""The runtime-test harness itself: a missing runtime fails the run in CI instead of passing
unseen, and the sandbox keeps its mounts and namespaces away from the machine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration import runtimes
from tests.integration.runtimes import SHADOWED, Sandbox, host_snapshot


def test_missing_runtime_fails_when_integration_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes, "REQUIRED", True)
    with pytest.raises(pytest.fail.Exception, match="not installed: no-such-runtime"):
        runtimes.need("no-such-runtime")
    monkeypatch.setattr(runtimes, "REQUIRED", False)
    with pytest.raises(pytest.skip.Exception, match="not installed: no-such-runtime"):
        runtimes.need("no-such-runtime")


def test_sandbox_is_private_and_leaves_nothing(tmp_path: Path) -> None:
    before = host_snapshot()
    sb = Sandbox("harness")
    try:
        sb.start()
        for path in SHADOWED:  # empty, and the sandbox's own
            assert sb.run("ls", "-A", path).stdout == "", path
        sb.run("touch", "/var/lib/cni/mark", "/run/netns/mark")
        assert (sb.shadow("/var/lib/cni") / "mark").exists() and not Path("/var/lib/cni/mark").exists()
        assert not Path("/run/netns/mark").exists()
        assert sb.run("ip", "link", "show", "uplink0", check=False).returncode == 0  # the sandbox host's own link
        assert subprocess.run(["ip", "link", "show", "uplink0"], capture_output=True).returncode != 0
        assert sb.run("sh", "-c", "echo $$").stdout.strip() != ""  # a shell in the sandbox's PID namespace
        sleeper = sb.popen("sleep", "600")
        assert sleeper.poll() is None
    finally:
        sb.close()
    assert sleeper.poll() is not None  # killed with the sandbox's init
    assert not sb.work.exists()
    assert host_snapshot() == before
