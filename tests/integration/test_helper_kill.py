"""A killed or timed-out call ends, and nothing outlives it: a runtime that kills a plugin
(its timeout) and DELs at once finds the attachment gone and can ADD it again, with the
warm helper and without it; a Go runtime's timeout is kept.

The probe, per plugin of podman's chain (bridge + host-local, portmap, firewall): ADD,
SIGKILL of the process the runtime exec'd after a random 0-80 ms (every fifth round with the
helper's worker stopped mid-call meanwhile: a stalled call), an immediate DEL, then what is
left is counted (veths, container interfaces, IP reservations, the container's nftables
entries) and the same container is ADDed and DELeted again. Rounds: ``CNI_PY_KILL_ROUNDS`` (200) with
the helper, ``CNI_PY_KILL_ROUNDS_NO_HELPER`` (40) without it, where a call takes ~10x
longer."""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.nsutil import links, path, poll, run_plugin
from tests.integration.runtimes import need

ROUNDS = {
    "helper": int(os.environ.get("CNI_PY_KILL_ROUNDS", "200")),
    "no-helper": int(os.environ.get("CNI_PY_KILL_ROUNDS_NO_HELPER", "40")),
}
STALL_EVERY = 5  # with the helper, every fifth round stops the worker serving the ADD mid-call for a while
CID = "killprobe1"
NET = "killnet"


def bridge_conf(data: Path) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": NET,
        "type": "bridge",
        "bridge": "cnikill0",
        "isGateway": True,
        "ipMasq": True,
        "ipam": {"type": "host-local", "subnet": "10.81.0.0/24", "dataDir": str(data)},
    }


def chained_conf(plugin: str, prev: dict[str, Any]) -> dict[str, Any]:
    conf: dict[str, Any] = {"cniVersion": "1.0.0", "name": NET, "type": plugin, "prevResult": prev}
    if plugin == "portmap":
        conf["capabilities"] = {"portMappings": True}
        conf["runtimeConfig"] = {"portMappings": [{"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}]}
    return conf


class Host:
    """The probe's host: a bin dir, a namespace standing for the host, one container."""

    def __init__(self, bin_dir: Path, run_dir: Path, host_ns: str, ctr: str, data: Path) -> None:
        self.bin_dir, self.run_dir, self.host_ns, self.ctr, self.data = bin_dir, run_dir, host_ns, ctr, data

    def env(self, command: str) -> dict[str, str]:
        return {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": CID,
            "CNI_NETNS": path(self.ctr),
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(self.bin_dir),
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        }

    def start(self, plugin: str, command: str, conf: dict[str, Any]) -> subprocess.Popen[bytes]:
        """Exec the plugin as a runtime does (``ip netns exec`` execs it: the pid is the plugin's)."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.host_ns, str(self.bin_dir / plugin)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=self.env(command),
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(conf).encode())
        proc.stdin.close()
        proc.stdin = None
        return proc

    def call(self, plugin: str, command: str, conf: dict[str, Any]) -> tuple[int, Any]:
        res = run_plugin(
            self.bin_dir, plugin, command, conf, netns=path(self.ctr), container_id=CID, host_ns=self.host_ns
        )
        return res.rc, res.json

    def leaks(self, plugin: str) -> dict[str, Any]:
        """What of this container is still there after its DEL (for portmap and firewall: in
        their own tables; the bridge attachment under them stays)."""
        found: dict[str, Any] = {}
        if plugin == "bridge":
            found["host veths"] = [
                n for n, link in links(self.host_ns).items() if (link.get("linkinfo") or {}).get("info_kind") == "veth"
            ]
            found["container links"] = [n for n in links(self.ctr) if n != "lo"]
            found["reservations"] = [
                p.name for p in (self.data / NET).glob("*") if p.is_file() and p.read_bytes().startswith(CID.encode())
            ]
        tables = {"bridge": ("cni_py_masq",), "portmap": ("cni_py_portmap",), "firewall": ("cni_py_firewall",)}[plugin]
        ruleset = json.loads(
            subprocess.run(
                ["ip", "netns", "exec", self.host_ns, "nft", "-j", "list", "ruleset"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )["nftables"]
        elements = []
        for item in ruleset:
            for kind in ("set", "map"):
                obj = item.get(kind) or {}
                if obj.get("table") in tables:
                    elements += [
                        f"{obj['table']}/{obj['name']}"
                        for e in obj.get("elem") or []
                        if f"id:{CID[:12]}" in json.dumps(e)
                    ]
        found["nft elements"] = elements
        return {k: v for k, v in found.items() if v}


def helper_status(run_dir: Path) -> dict[str, Any]:
    from cni_plugins.helper.server import status
    from cni_plugins.install import default_socket

    return status(default_socket(str(run_dir))) or {}


def finish(proc: subprocess.Popen[bytes]) -> int:
    """Wait for a process started by ``Host.start``; its exit status."""
    out, _ = proc.communicate(timeout=60)
    if proc.returncode:
        print(out.decode(errors="replace"))
    return proc.returncode


def workers_in(netns: str, run_dir: Path) -> list[int]:
    """The workers of ``run_dir``'s helper that stand in ``netns`` (busy with a call there)."""
    from cni_plugins.helper.server import running
    from cni_plugins.install import default_socket

    helper = running(default_socket(str(run_dir)))
    if not helper:
        return []
    want = os.stat(path(netns)).st_ino
    found = []
    for child in Path(f"/proc/{helper}/task/{helper}/children").read_text().split():
        try:
            if os.stat(f"/proc/{child}/ns/net").st_ino == want:
                found.append(int(child))
        except OSError:
            pass
    return found


def is_stopped(pid: int) -> bool:
    """Whether ``pid`` is stopped (state T), or gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t", "Z", "X")


def holds_flock(pid: int, file: Path) -> bool:
    """Whether ``pid`` holds an flock on ``file``, as /proc/locks says."""
    try:
        inode = file.stat().st_ino
    except FileNotFoundError:
        return False
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if (
            len(fields) >= 6
            and fields[1] == "FLOCK"
            and fields[4] == str(pid)
            and fields[5].rsplit(":", 1)[-1] == str(inode)
        ):
            return True
    return False


def kill_mid_call(host: Host, plugin: str, conf: dict[str, Any], delay: float, stall: str) -> dict[str, Any]:
    """Start an ADD, SIGKILL its process after ``delay``. With ``stall`` ("joined": as soon
    as the helper worker serving it has joined the host's namespace; "locked": once the
    attachment's lock file is there) that worker is stopped first, and let go once the DEL has
    started; the round says "locked" if the worker was stopped holding the lock (/proc/locks).
    The DEL follows the kill at once. Returns what happened."""
    proc = host.start(plugin, "ADD", conf)
    stopped: list[int] = []
    lock = host.run_dir / "attachments" / f"{NET}:{CID}:eth0"
    if stall:  # stop the worker once it stands in the host (or holds the attachment's lock), then kill
        deadline = time.monotonic() + 2
        while not stopped and proc.poll() is None and time.monotonic() < deadline:
            if stall == "joined" or lock.exists():
                stopped = workers_in(host.host_ns, host.run_dir)
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)
        # SIGSTOP takes effect a moment later: until the worker is stopped it may still unlock.
        assert poll(lambda: all(is_stopped(pid) for pid in stopped), timeout=2, interval=0.001), "a worker did not stop"
        stall = "locked" if any(holds_flock(pid, lock) for pid in stopped) else "joined"  # or before it, or after
    else:
        time.sleep(delay)
    killed_at = time.monotonic()
    proc.kill()
    proc.wait()
    assert proc.stdout is not None
    released = -1.0
    delete = None
    waited = False
    try:
        if not stopped:
            proc.stdout.read()  # what a Go runtime's Wait does: until EOF on the pipes
            released = time.monotonic() - killed_at
        delete = host.start(plugin, "DEL", conf)
        if stopped:
            time.sleep(0.1)
            waited = delete.poll() is None
    finally:
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass  # a worker that had served its last call was leaving (it exits where it stands)
        proc.stdout.close()
        rc = finish(delete) if delete is not None else -1
    assert rc == 0, "DEL after a killed ADD failed"
    return {"released": released, "stalled": stall if stopped else "", "del waited": waited}


@pytest.fixture
def probe_host(
    request: pytest.FixtureRequest,
    cni_bin: Path,
    cni_bin_no_helper: Path,
    cni_run_dir: Path,
    host_ns: str,
    container_ns: str,
    tmp_path: Path,
) -> Host:
    mode = request.param
    return Host(
        cni_bin if mode == "helper" else cni_bin_no_helper, cni_run_dir, host_ns, container_ns, tmp_path / "ipam"
    )


@pytest.mark.parametrize("probe_host", ["helper", "no-helper"], indirect=True)
@pytest.mark.parametrize("plugin", ["bridge", "portmap", "firewall"])
def test_a_killed_add_leaves_nothing_behind(probe_host: Host, plugin: str, request: pytest.FixtureRequest) -> None:
    host = probe_host
    mode = request.node.callspec.params["probe_host"]
    rounds = ROUNDS[mode]
    rng = random.Random(f"{plugin}-{mode}")
    bridge = bridge_conf(host.data)
    conf = bridge
    if plugin != "bridge":
        rc, prev = host.call("bridge", "ADD", bridge)
        assert rc == 0, prev
        conf = chained_conf(plugin, prev)
    started = time.monotonic()
    rc, out = host.call(plugin, "ADD", conf)
    add_time = time.monotonic() - started
    assert rc == 0, out
    assert host.call(plugin, "DEL", conf)[0] == 0
    max_delay = 0.080 if mode == "helper" else 1.2 * add_time  # from before the call is taken to after it is done
    gone_before = helper_status(host.run_dir).get("caller gone", 0)
    outcomes = []
    try:
        for i in range(rounds):
            stall = (
                ("joined", "locked")[i // STALL_EVERY % 2]
                if mode == "helper" and i % STALL_EVERY == STALL_EVERY - 1
                else ""
            )
            outcome = kill_mid_call(host, plugin, conf, rng.uniform(0, max_delay), stall)
            outcomes.append(outcome)
            leaks = host.leaks(plugin)
            assert not leaks, f"round {i}: {outcome}: left behind after the DEL: {leaks}"
            rc, out = host.call(plugin, "ADD", conf)
            assert rc == 0, f"round {i}: the next ADD of the same container failed: {out}"
            assert host.call(plugin, "DEL", conf)[0] == 0
    finally:
        if plugin != "bridge":
            host.call("bridge", "DEL", bridge)
    gone = helper_status(host.run_dir).get("caller gone", 0) - gone_before
    if mode == "helper":
        assert gone > 0  # some killed calls were under way in a worker (and were stopped and undone there)
        # A DEL of an attachment whose ADD was stopped holding its lock waited for that ADD.
        assert all(o["del waited"] for o in outcomes if o["stalled"] == "locked"), [
            (i, o) for i, o in enumerate(outcomes) if o["stalled"] == "locked"
        ]
    unstalled = [o["released"] for o in outcomes if not o["stalled"]]
    # The runtime's wait ends when the killed process's pipes close: at once, whoever held them.
    assert max(unstalled) < 0.5, sorted(unstalled)[-5:]
    stalls = {kind: sum(o["stalled"] == kind for o in outcomes) for kind in ("joined", "locked")}
    in_helper = (
        f"{gone} calls whose caller went away mid-call, stalled {stalls} "
        f"({sum(o['del waited'] for o in outcomes)} DELs waited for the stalled ADD); "
        if mode == "helper"
        else ""
    )
    print(
        f"{plugin} {mode}: {rounds} rounds, {in_helper}pipes closed after the kill: median "
        f"{sorted(unstalled)[len(unstalled) // 2] * 1000:.1f} ms, max {max(unstalled) * 1000:.1f} ms"
    )


# ------------------------------------------------------------ a Go runtime's timeout

GO_RUNTIME = r"""
// How libcni execs a plugin (pkg/invoke RawExec): exec.CommandContext, stdin from memory,
// stdout and stderr into buffers, the context's deadline as the runtime's timeout.
package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"time"
)

func main() {
	timeout, err := time.ParseDuration(os.Args[1])
	if err != nil {
		panic(err)
	}
	conf, err := os.ReadFile(os.Args[3])
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[2])
	cmd.Env = os.Environ()
	cmd.Stdin = bytes.NewReader(conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	start := time.Now()
	err = cmd.Run()
	fmt.Printf("%d %v %s\n", time.Since(start).Milliseconds(), err, stdout.String())
}
"""


@pytest.fixture(scope="module")
def go_runtime(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("go")
    work = tmp_path_factory.mktemp("goruntime")
    src = work / "src" / "goruntime"
    src.mkdir(parents=True)
    (src / "main.go").write_text(GO_RUNTIME)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "GO111MODULE": "off",
        "GOPATH": str(work),
        "GOPROXY": "off",
        "GOFLAGS": "",
        "GOCACHE": str(work / "cache"),
        "CGO_ENABLED": "0",
    }
    out = work / "goruntime"
    proc = subprocess.run(
        ["go", "build", "-o", str(out), "goruntime"], cwd=src, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("mode", ["helper", "no-helper"])
def test_a_go_runtimes_timeout_is_kept(
    go_runtime: Path,
    cni_bin: Path,
    cni_bin_no_helper: Path,
    cni_run_dir: Path,
    host_ns: str,
    container_ns: str,
    tmp_path: Path,
    mode: str,
) -> None:
    """A bridge ADD stuck in its IPAM step; the runtime's 500 ms timeout kills it: its Run
    returns within 10% of the deadline, and once the call is let go a DEL leaves nothing."""
    data = tmp_path / "ipam"
    (data / NET).mkdir(parents=True)
    lock = os.open(data / NET / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)
    host = Host(cni_bin if mode == "helper" else cni_bin_no_helper, cni_run_dir, host_ns, container_ns, data)
    conf = bridge_conf(data)
    conf_file = tmp_path / "conf.json"
    conf_file.write_text(json.dumps(conf))
    if mode == "helper":
        assert (
            run_plugin(
                host.bin_dir,
                "loopback",
                "ADD",
                {"cniVersion": "1.0.0", "name": "warm", "type": "loopback"},
                netns=path(container_ns),
                ifname="lo",
            ).rc
            == 0
        )  # the helper runs
    try:
        times = []
        for _ in range(3):
            res = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    host_ns,
                    str(go_runtime),
                    "500ms",
                    str(host.bin_dir / "bridge"),
                    str(conf_file),
                ],
                env=host.env("ADD"),
                capture_output=True,
                text=True,
                timeout=30,
            )
            elapsed, err = res.stdout.split(" ", 1)
            assert err.startswith("signal: killed"), res.stdout
            times.append(int(elapsed))
            delete = host.start("bridge", "DEL", conf)  # as a runtime does after a failed ADD: at once
            time.sleep(0.2)
            assert delete.poll() is None  # it waits for the stalled ADD (and for IPAM's lock)
            os.close(lock)
            lock = -1
            assert finish(delete) == 0
            assert not host.leaks("bridge")
            lock = os.open(data / NET / "lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(lock, fcntl.LOCK_EX)
        assert max(times) <= 550, times
        print(f"{mode}: Go runtime, 500 ms timeout, Run returned after {times} ms")
    finally:
        if lock >= 0:
            os.close(lock)
    assert host.call("bridge", "DEL", conf)[0] == 0
    assert not host.leaks("bridge")
    rc, out = host.call("bridge", "ADD", conf)
    assert rc == 0, out
    assert host.call("bridge", "DEL", conf)[0] == 0
