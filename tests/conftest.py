"""Shared test setup: a clean environment, and integration tests marked by directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

INTEGRATION_DIR = Path(__file__).parent / "integration"


def _netns_usable() -> str:
    """'' when this process can make network namespaces, else why not."""
    if os.geteuid() != 0:
        return "integration tests need root"
    if shutil.which("ip") is None:
        return "iproute2 (ip) is not installed"
    name = f"cnitest-probe-{os.getpid()}"
    add = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if add.returncode != 0:
        return f"ip netns add failed: {add.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = None
    for item in items:
        if INTEGRATION_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
            if reason is None:
                reason = _netns_usable()
            if reason:
                # Fail loudly in CI (CNI_PY_REQUIRE_INTEGRATION=1) rather than pass without running.
                if os.environ.get("CNI_PY_REQUIRE_INTEGRATION") == "1":
                    raise pytest.UsageError(f"integration tests cannot run: {reason}")
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strip variables that change plugin behaviour, so tests see only what they set."""
    for key in list(os.environ):
        if key.startswith(("CNI_", "NETCONFPATH", "CAP_ARGS")) and key != "CNI_PY_REQUIRE_INTEGRATION":
            monkeypatch.delenv(key, raising=False)
