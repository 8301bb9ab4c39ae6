"""Plugins run as a runtime runs them, and killed where a part says.

A ``Column`` is one set of plugins: ours with the warm helper, ours without it, the
reference's. ``Runtime`` runs a conflist as libcni does: ADD in order with ``prevResult``
threaded and the first error ending it, DEL in reverse with the cached result (none after a
failed ADD, as libcni caches only a successful one), GC with the valid attachments. Every
plugin is exec'd with the runtime's environment, from this process, which stands in the
host namespace.

``Runtime.exec`` takes a ``Kill``: SIGKILL the exec'd process (the launcher, or the plugin
itself without a helper) or the helper's worker serving the call, after a delay or as soon
as the plugin logs a named step (``CNI_PY_DEBUG=1`` lines ``<plugin>: debug: step <name>:``).
Before the kill, the process doing the work is stopped for a moment and what it was doing
is read from ``/proc`` (``in_flight``): a system call on an nftables or rtnetlink socket, a
lock, a pipe.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REFERENCE_BIN = "/usr/lib/cni"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # iptables, for the reference's plugins
CALL_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Column:
    """One set of plugins the suite runs on."""

    name: str  # "ours", "ours-no-helper", "reference"
    bin_dir: str
    version: str  # the cniVersion of the suite's configs: the newest the plugins speak
    run_dir: str = ""  # ours with the helper: its run dir (its socket, status, workers)

    @property
    def ours(self) -> bool:
        return self.name != "reference"

    @property
    def helper(self) -> bool:
        return bool(self.run_dir)

    @property
    def gc(self) -> bool:
        return self.version == "1.1.0"

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "bin_dir": self.bin_dir, "version": self.version, "run_dir": self.run_dir}

    @classmethod
    def from_json(cls, obj: dict[str, str]) -> Column:
        return cls(name=obj["name"], bin_dir=obj["bin_dir"], version=obj["version"], run_dir=obj.get("run_dir", ""))

    def has(self, plugin_type: str) -> bool:
        return os.access(os.path.join(self.bin_dir, plugin_type), os.X_OK)


@dataclass
class Run:
    """One exec: exit status (negative: killed by that signal), stdout, stderr, seconds."""

    rc: int
    stdout: bytes
    stderr: bytes
    seconds: float
    killed: str = ""  # what a Kill killed ("launcher", "worker", "process"), "" if it did not
    where: str = ""  # what the worker or process was doing when killed
    last_step: str = ""  # the last step it had logged

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.stdout) if self.stdout.strip() else None
        except ValueError:
            return None

    def text(self) -> str:
        return (self.stdout.decode("utf-8", "replace") + self.stderr.decode("utf-8", "replace")).strip()[-2000:]


@dataclass
class Kill:
    """Where to kill one call: ``target`` "process" (what the runtime exec'd) or "worker" (the
    helper's worker serving it); ``after_step`` a step name to wait for, else ``delay`` seconds."""

    target: str
    delay: float = 0.0
    after_step: str = ""


# ---------------------------------------------------------------- the helper's workers


def helper_pid(run_dir: str) -> int:
    from cni_plugins.helper.server import running
    from cni_plugins.install import default_socket

    return running(default_socket(run_dir))


def helper_status(run_dir: str) -> dict[str, Any]:
    from cni_plugins.helper.server import status
    from cni_plugins.install import default_socket

    return status(default_socket(run_dir)) or {}


def worker_here(run_dir: str, netns_inode: int) -> int:
    """The helper's worker that stands in this namespace (busy with our call), or 0."""
    helper = helper_pid(run_dir)
    if not helper:
        return 0
    try:
        children = Path(f"/proc/{helper}/task/{helper}/children").read_text().split()
    except OSError:
        return 0
    for child in children:
        try:
            if os.stat(f"/proc/{child}/ns/net").st_ino == netns_inode:
                return int(child)
        except OSError:
            pass
    return 0


SYSCALLS = {
    0: "read",
    1: "write",
    3: "close",
    7: "poll",
    23: "select",
    35: "nanosleep",
    42: "connect",
    44: "sendto",
    45: "recvfrom",
    46: "sendmsg",
    47: "recvmsg",
    56: "clone",
    61: "wait4",
    73: "flock",
    202: "futex",
    230: "clock_nanosleep",
    232: "epoll_wait",
    247: "waitid",
    257: "openat",
    270: "pselect6",
    271: "ppoll",
    308: "setns",
}
NETLINK = {0: "rtnetlink", 12: "nftables"}


def in_flight(pid: int) -> str:
    """What a stopped process is doing: 'user code', or a system call and the kind of its
    file descriptor (an nftables or rtnetlink socket, a pipe, a file)."""
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
    except OSError:
        return "gone"
    if not fields or fields[0] in ("running", "-1"):
        return "user code"
    nr = int(fields[0])
    name = SYSCALLS.get(nr, f"syscall {nr}")
    if name in ("read", "write", "sendto", "recvfrom", "sendmsg", "recvmsg", "flock", "connect") and len(fields) > 1:
        return f"{name} on {_fd_kind(pid, int(fields[1], 16))}"
    return name


def _fd_kind(pid: int, fd: int) -> str:
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return "?"
    if target.startswith("socket:["):
        inode = target[len("socket:[") : -1]
        try:
            for line in Path(f"/proc/{pid}/net/netlink").read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 2 and cols[-1] == inode:  # sk Eth(protocol) Pid Groups ... Inode
                    return NETLINK.get(int(cols[1]), f"netlink {cols[1]}")
        except OSError:
            pass
        return "socket"
    if target.startswith("pipe:"):
        return "pipe"
    return "file " + os.path.basename(target)


def _stopped(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("T", "t", "Z", "X")


def stop_look_kill(pid: int) -> str:
    """SIGSTOP, read what it was doing, SIGKILL."""
    try:
        os.kill(pid, signal.SIGSTOP)
    except ProcessLookupError:
        return "gone"
    deadline = time.monotonic() + 0.5
    while not _stopped(pid) and time.monotonic() < deadline:
        time.sleep(0.0002)
    where = in_flight(pid)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return where


# ---------------------------------------------------------------- exec


class Exec:
    """One plugin process; stderr is read line by line (for a Kill waiting for a step)."""

    def __init__(self, argv: list[str], env: dict[str, str], stdin: bytes) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.steps: list[str] = []
        self.step_seen = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read_out, daemon=True),
            threading.Thread(target=self._read_err, daemon=True),
        ]
        for t in self._readers:
            t.start()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(stdin)
        except (BrokenPipeError, OSError):
            pass
        try:
            self.proc.stdin.close()
        except OSError:
            pass

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        self.out.append(self.proc.stdout.read())

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)
            if b": debug: step " in line:
                name = line.split(b": debug: step ", 1)[1].rsplit(b":", 1)[0].decode("utf-8", "replace")
                with self.step_seen:
                    self.steps.append(name)
                    self.step_seen.notify_all()
        with self.step_seen:
            self.step_seen.notify_all()

    def wait_for_step(self, name: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.step_seen:
            while name not in self.steps:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._readers[1].is_alive()):
                    return name in self.steps
                self.step_seen.wait(min(left, 0.05))
            return True

    def finish(self, timeout: float = CALL_TIMEOUT) -> Run:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for t in self._readers:
            t.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return Run(
            self.proc.returncode,
            b"".join(self.out),
            b"".join(self.err),
            time.monotonic() - self.started,
            last_step=self.steps[-1] if self.steps else "",
        )


def apply_kill(ex: Exec, kill: Kill, column: Column, netns_inode: int) -> tuple[str, str]:
    """Kill what ``kill`` names in a running call; (what was killed, what it was doing), or
    ("", "") when the call ended first."""
    if kill.after_step:
        if not ex.wait_for_step(kill.after_step, timeout=CALL_TIMEOUT):
            return "", ""
    elif kill.delay > 0:
        try:
            ex.proc.wait(timeout=kill.delay)
            return "", ""
        except subprocess.TimeoutExpired:
            pass
    if ex.proc.poll() is not None:
        return "", ""
    if kill.target == "worker":
        deadline = time.monotonic() + 2
        worker = 0
        while not worker and ex.proc.poll() is None and time.monotonic() < deadline:
            worker = worker_here(column.run_dir, netns_inode)
        if not worker:
            return "", ""
        return "worker", stop_look_kill(worker)
    worker = worker_here(column.run_dir, netns_inode) if column.helper else 0
    where = in_flight(worker) if worker else ""
    if worker:
        ex.proc.kill()
        return "launcher", where
    return "process", stop_look_kill(ex.proc.pid)


# ---------------------------------------------------------------- a runtime


@dataclass
class Runtime:
    """A conflist run on containers as libcni runs it (``libcni/api.go``)."""

    column: Column
    conflist: dict[str, Any]
    netns_inode: int = field(default_factory=lambda: os.stat("/proc/self/ns/net").st_ino)
    debug: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def plugins(self) -> list[dict[str, Any]]:
        plugins: list[dict[str, Any]] = self.conflist["plugins"]
        return plugins

    def env(self, command: str, cid: str, netns: str, ifname: str = "eth0") -> dict[str, str]:
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": self.column.bin_dir,
            "PATH": PATH,
            **self.extra_env,
        }
        if self.debug and self.column.ours:
            env["CNI_PY_DEBUG"] = "1"
        return env

    def conf(self, plugin: dict[str, Any], prev: dict[str, Any] | None, caps: dict[str, Any] | None) -> dict[str, Any]:
        """``buildOneConfig`` + ``injectRuntimeConfig``."""
        conf = {k: v for k, v in plugin.items() if k != "capabilities"} | {
            "name": self.conflist["name"],
            "cniVersion": self.conflist["cniVersion"],
        }
        if "capabilities" in plugin:
            conf["capabilities"] = plugin["capabilities"]
            runtime = {k: v for k, v in (caps or {}).items() if plugin["capabilities"].get(k)}
            if runtime:
                conf["runtimeConfig"] = runtime
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def exec(
        self,
        plugin_type: str,
        command: str,
        conf: dict[str, Any] | bytes,
        env: dict[str, str],
        kill: Kill | None = None,
    ) -> Run:
        stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        ex = Exec([os.path.join(self.column.bin_dir, plugin_type)], env, stdin)
        killed, where = apply_kill(ex, kill, self.column, self.netns_inode) if kill else ("", "")
        run = ex.finish()
        run.killed, run.where = killed, where
        return run

    def add(
        self,
        cid: str,
        netns: str,
        caps: dict[str, Any] | None = None,
        kill_at: tuple[int, Kill] | None = None,
        ifname: str = "eth0",
    ) -> tuple[dict[str, Any] | None, list[Run]]:
        """ADD in order; (the final result, or None at the first error; every run)."""
        prev: dict[str, Any] | None = None
        runs = []
        for i, plugin in enumerate(self.plugins):
            kill = kill_at[1] if kill_at and kill_at[0] == i else None
            run = self.exec(
                plugin["type"], "ADD", self.conf(plugin, prev, caps), self.env("ADD", cid, netns, ifname), kill
            )
            runs.append(run)
            if run.rc != 0 or run.json is None:
                return None, runs
            prev = run.json
        return prev, runs

    def delete(
        self,
        cid: str,
        netns: str,
        cached: dict[str, Any] | None = None,
        caps: dict[str, Any] | None = None,
        kill_at: tuple[int, Kill] | None = None,
        ifname: str = "eth0",
    ) -> list[Run]:
        """DEL in reverse with the cached result as prevResult; stops at the first error."""
        runs = []
        for i in reversed(range(len(self.plugins))):
            plugin = self.plugins[i]
            kill = kill_at[1] if kill_at and kill_at[0] == i else None
            run = self.exec(
                plugin["type"], "DEL", self.conf(plugin, cached, caps), self.env("DEL", cid, netns, ifname), kill
            )
            runs.append(run)
            if run.rc != 0:
                break
        return runs

    def gc(self, valid: list[tuple[str, str]]) -> list[Run]:
        """GC (1.1.0) to every plugin with ``cni.dev/valid-attachments``, past errors."""
        attachments = [{"containerID": c, "ifname": i} for c, i in valid]
        env = {"CNI_COMMAND": "GC", "CNI_PATH": self.column.bin_dir, "PATH": PATH}
        runs = []
        for plugin in self.plugins:
            conf = self.conf(plugin, None, None)
            conf.pop("runtimeConfig", None)
            conf["cni.dev/valid-attachments"] = attachments
            conf["cni.dev/attachments"] = attachments
            runs.append(self.exec(plugin["type"], "GC", conf, env))
        return runs


def ok(runs: list[Run]) -> bool:
    return all(r.rc == 0 for r in runs)


def first_failure(runs: list[Run]) -> str:
    for r in runs:
        if r.rc != 0:
            return r.text()
    return ""


def podman_chain(
    version: str, data_dir: Path, *, bridge: str = "relbr0", subnet: str = "10.77.0.0/16", name: str = "relnet"
) -> dict[str, Any]:
    """podman's default chain (bridge + host-local, portmap, firewall), the firewall with the
    same-bridge policy so that per-bridge entries are made too."""
    return {
        "cniVersion": version,
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(data_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall", "ingressPolicy": "same-bridge"},
        ],
    }


def port_caps(port: int) -> dict[str, Any]:
    return {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]}


def timed(fn: Callable[[], Any]) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start
