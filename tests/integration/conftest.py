"""Fixtures for integration tests: our plugins installed into a temporary CNI bin dir,
namespaces that are removed even when a test fails, and a runner for the executables."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.nsutil import (
    Namespaces,
    PluginRun,
    path,
    poll,
    run_plugin,
    sweep_dead_runs,
)
from tests.integration.runtimes import host_snapshot

# Directories outside pytest's basetemp that tests of this session give helpers (a socket
# there must be reachable by a non-root user): tests/integration/test_helper.py.
OUTSIDE_PREFIX = f"/tmp/cnitest-helper-{os.getpid()}-"


def helper_processes(*marks: str) -> list[int]:
    """Helpers (and their workers) whose command line names one of ``marks`` (their sockets'
    directories): a helper's workers are forks of it, with the same command line."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if "cni_plugins" in cmdline and "helper" in cmdline and any(m in cmdline for m in marks):
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="session", autouse=True)
def _no_stray_helpers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every helper a test started (on a socket of this session) is stopped by the end of the
    session; one that is not fails the run (and is killed, so that none is left behind)."""
    yield
    marks = (str(tmp_path_factory.getbasetemp()), OUTSIDE_PREFIX)
    poll(lambda: not helper_processes(*marks), timeout=10)  # workers of a stopped helper finish their exit
    strays = helper_processes(*marks)
    for pid in strays:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not strays, f"helper processes left running by the tests: {strays}"


@pytest.fixture(scope="session", autouse=True)
def _sweep_namespaces_of_killed_runs() -> None:
    sweep_dead_runs()


def install_cmd(target: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cni_plugins.install", "install", "--dir", str(target), *args]


@pytest.fixture(scope="session")
def cni_run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run dir of ``cni_bin``'s install (its helper's socket, the attachment locks):
    private to this session, never the machine's /run/cni-py."""
    return tmp_path_factory.mktemp("cnirun")


@pytest.fixture(scope="session")
def cni_bin(tmp_path_factory: pytest.TempPathFactory, cni_run_dir: Path) -> Iterator[Path]:
    """Our plugins, installed by the real installer as it installs by default: the first
    call starts a warm helper that serves this and every later call. The helper is stopped
    at the end of the session. ``cni_bin_no_helper`` is the same install without it."""
    target = tmp_path_factory.mktemp("cnibin")
    subprocess.run(install_cmd(target, "--run-dir", str(cni_run_dir)), check=True, capture_output=True)
    try:
        yield target
    finally:
        subprocess.run(
            [sys.executable, "-m", "cni_plugins.install", "helper", "stop", "--run-dir", str(cni_run_dir)],
            check=True,
            capture_output=True,
        )


@pytest.fixture(scope="session")
def cni_bin_python(tmp_path_factory: pytest.TempPathFactory, cni_run_dir: Path, cni_bin: Path) -> Path:
    """``cni_bin`` with the Python launchers under the types' names (``--launcher python``,
    the reference implementation of the native launcher): the same install, so the same
    helper serves both."""
    target = tmp_path_factory.mktemp("cnibin-python")
    subprocess.run(
        install_cmd(target, "--launcher", "python", "--run-dir", str(cni_run_dir)), check=True, capture_output=True
    )
    return target


@pytest.fixture(params=["native", "python"])
def launcher_bin(request: pytest.FixtureRequest, cni_bin: Path, cni_bin_python: Path) -> Path:
    """The default install under each launcher: tests of the launcher's contract run with both."""
    if request.param == "native" and not (cni_bin / ".cni-py").is_dir():
        pytest.fail("the default install wrote no native launchers (is a C compiler installed?)")
    return cni_bin if request.param == "native" else cni_bin_python


@pytest.fixture(scope="session")
def cni_bin_no_helper(tmp_path_factory: pytest.TempPathFactory, cni_run_dir: Path) -> Path:
    """Our plugins with ``--helper off``: every call runs in its own process, as the
    reference's do (same run dir, so both take the same attachment locks)."""
    target = tmp_path_factory.mktemp("cnibin-nohelper")
    subprocess.run(
        install_cmd(target, "--helper", "off", "--run-dir", str(cni_run_dir)), check=True, capture_output=True
    )
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

    def __call__(
        self, plugin: str, command: str, conf: dict[str, Any] | bytes, *, netns: str = "", **kw: Any
    ) -> PluginRun:
        return run_plugin(
            self.cni_bin,
            plugin,
            command,
            conf,
            netns=path(netns) if netns and not netns.startswith("/") else netns,
            host_ns=self.host_ns,
            **kw,
        )


@pytest.fixture
def plugin(cni_bin: Path, host_ns: str) -> Runner:
    """``plugin("bridge", "ADD", conf, netns=ctr)``: exec an installed plugin inside host_ns."""
    return Runner(cni_bin, host_ns)


@pytest.fixture
def host_untouched() -> Iterator[None]:
    """Fails the test if the machine's runtime paths, links, nftables ruleset or cgroups changed."""
    before = host_snapshot()
    yield
    after = host_snapshot()
    for key in before:
        assert after[key] == before[key], (
            f"the test changed the machine's {key}: before {before[key]!r}, after {after[key]!r}"
        )
