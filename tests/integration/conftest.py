"""Fixtures for integration tests: our plugins installed into a temporary CNI bin dir,
namespaces that are removed even when a test fails, and a runner for the executables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.integration.nsutil import Namespaces, PluginRun, path, run_plugin, sweep_dead_runs


@pytest.fixture(scope="session", autouse=True)
def _sweep_namespaces_of_killed_runs() -> None:
    sweep_dead_runs()


@pytest.fixture(scope="session")
def cni_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our plugins, installed by the real installer into a fresh CNI bin dir (no warm helper:
    every call runs in its own process; tests/integration/test_helper.py covers the helper)."""
    target = tmp_path_factory.mktemp("cnibin")
    subprocess.run([sys.executable, "-m", "cni_plugins.install", "install", "--dir", str(target), "--helper", "off"], check=True, capture_output=True)
    return target


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    ns = Namespaces()
    try:
        yield ns
    finally:
        ns.cleanup()


@pytest.fixture
def host_ns(namespaces: Namespaces) -> str:
    """A namespace that stands for the host: plugins run in it, never in the real host."""
    return namespaces.make("host")


@pytest.fixture
def container_ns(namespaces: Namespaces) -> str:
    return namespaces.make("ctr")


class Runner:
    def __init__(self, cni_bin: Path, host_ns: str | None) -> None:
        self.cni_bin = cni_bin
        self.host_ns = host_ns

    def __call__(self, plugin: str, command: str, conf: dict[str, Any] | bytes, *, netns: str = "", **kw: Any) -> PluginRun:
        return run_plugin(self.cni_bin, plugin, command, conf, netns=path(netns) if netns and not netns.startswith("/") else netns, host_ns=self.host_ns, **kw)


@pytest.fixture
def plugin(cni_bin: Path, host_ns: str) -> Runner:
    """``plugin("bridge", "ADD", conf, netns=ctr)``: exec an installed plugin inside host_ns."""
    return Runner(cni_bin, host_ns)
