"""Helpers for integration tests: throwaway namespaces and plugins run as a runtime runs them.

Every namespace is named ``cnitest-<pid>-<n>-<label>`` so parallel runs never collide, and
is deleted (with any process still inside it) when the test ends, even when it fails.
Work that touches bridges, routes, sysctls or nftables runs in a namespace standing for
the host (``host_ns``), never on the machine itself.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_counter = itertools.count()
NETNS_DIR = "/var/run/netns"


def unique(label: str) -> str:
    return f"{label}{os.getpid() % 100000}x{next(_counter)}"


def sh(
    *argv: str, ns: str | None = None, check: bool = True, input: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    cmd = list(argv)
    if ns is not None:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    return proc


def sweep_dead_runs() -> list[str]:
    """Delete ``cnitest-<pid>-...`` namespaces left by test processes that were killed
    (a SIGKILLed pytest cannot run its fixtures' cleanup). Returns what was removed."""
    removed: list[str] = []
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return removed
    for name in names:
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != "cnitest" or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
            continue  # its test process still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        sh("ip", "netns", "del", name, check=False)
        removed.append(name)
    return removed


class Namespaces:
    """Creates named netns and removes them (killing what runs inside) on cleanup."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def make(self, label: str = "ns") -> str:
        name = f"cnitest-{os.getpid()}-{next(_counter)}-{label}"
        sh("ip", "netns", "add", name)
        self.names.append(name)
        sh("ip", "link", "set", "lo", "up", ns=name)
        return name

    def cleanup(self) -> None:
        for name in reversed(self.names):
            pids = sh("ip", "netns", "pids", name, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", name, check=False)
        self.names.clear()


def path(ns: str) -> str:
    return f"{NETNS_DIR}/{ns}"


@dataclass
class PluginRun:
    rc: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout) if self.stdout.strip() else None

    def ok(self) -> Any:
        assert self.rc == 0, f"plugin failed rc={self.rc}: {self.stdout} {self.stderr}"
        return self.json


def run_plugin(
    bin_dir: Path,
    plugin: str,
    command: str,
    conf: dict[str, Any] | bytes,
    *,
    netns: str = "",
    container_id: str = "ctr1",
    ifname: str = "eth0",
    host_ns: str | None = None,
    cni_args: str = "",
    env: dict[str, str] | None = None,
    cni_path: str | None = None,
) -> PluginRun:
    """Exec an installed plugin as a runtime does (inside ``host_ns`` if given)."""
    environ = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": cni_path or str(bin_dir),
    }
    if cni_args:
        environ["CNI_ARGS"] = cni_args
    environ.update(env or {})
    environ = {k: v for k, v in environ.items() if v is not None}
    cmd = [str(bin_dir / plugin)]
    if host_ns is not None:
        cmd = ["ip", "netns", "exec", host_ns, *cmd]
        environ["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"  # for `ip` itself; the plugin needs none
    stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    proc = subprocess.run(cmd, input=stdin, env=environ, capture_output=True, timeout=60)
    return PluginRun(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


def ip_json(*argv: str, ns: str | None = None) -> Any:
    return json.loads(sh("ip", "-j", *argv, ns=ns).stdout or "[]")


def links(ns: str | None) -> dict[str, Any]:
    return {link["ifname"]: link for link in ip_json("-d", "link", "show", ns=ns)}


def addrs(ns: str | None, ifname: str) -> list[str]:
    out = ip_json("addr", "show", "dev", ifname, ns=ns)
    return [f"{a['local']}/{a['prefixlen']}" for i in out for a in i.get("addr_info", [])]


def poll(fn: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(interval)
    return fn()


def ping(ns: str, target: str, count: int = 1, timeout: int = 2) -> bool:
    flag = ["-6"] if ":" in target else []
    return sh("ping", *flag, "-c", str(count), "-W", str(timeout), target, ns=ns, check=False).returncode == 0
