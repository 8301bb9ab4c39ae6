"""The warm helper: same results as a direct exec, the caller's namespaces and streams,
root-only access, auto-start and idle exit."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.nsutil import path, poll, run_plugin, sh

LO = {"cniVersion": "1.0.0", "name": "helpernet", "type": "loopback"}


def install(target: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "cni_plugins.install", "install", "--dir", str(target), *args], check=True, capture_output=True)


def helper_pid(sock: Path) -> int | None:
    try:
        pid = int((sock.parent / (sock.name + ".lock")).read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


@pytest.fixture
def helper_bin(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Launchers that use a helper on a private socket, and that helper, started and stopped here."""
    sock = tmp_path / "run" / "helper.sock"
    bin_dir = tmp_path / "bin"
    install(bin_dir, "--helper", "on", "--helper-socket", str(sock))
    proc = subprocess.Popen([sys.executable, "-m", "cni_plugins.install", "helper", "--socket", str(sock), "--idle", "0"])
    assert poll(lambda: sock.exists(), timeout=20), "helper did not start"
    try:
        yield bin_dir, sock
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_same_answers_as_direct_exec(helper_bin, cni_bin, host_ns, container_ns) -> None:  # type: ignore[no-untyped-def]
    bin_dir, sock = helper_bin
    pid = helper_pid(sock)
    via = run_plugin(bin_dir, "loopback", "ADD", LO, netns=path(container_ns), ifname="lo", host_ns=host_ns)
    direct = run_plugin(cni_bin, "loopback", "ADD", LO, netns=path(container_ns), ifname="lo", host_ns=host_ns)
    assert via.rc == direct.rc == 0 and via.json == direct.json
    for conf in (b"{nope", json.dumps({**LO, "cniVersion": "7.0.0"}).encode()):
        a = run_plugin(bin_dir, "loopback", "ADD", conf, netns=path(container_ns), ifname="lo", host_ns=host_ns)
        b = run_plugin(cni_bin, "loopback", "ADD", conf, netns=path(container_ns), ifname="lo", host_ns=host_ns)
        assert (a.rc, a.json) == (b.rc, b.json) and a.rc == 1
    assert helper_pid(sock) == pid  # the same helper served every call (it did not die)


def test_child_runs_in_the_callers_namespace(helper_bin, host_ns) -> None:  # type: ignore[no-untyped-def]
    bin_dir, _ = helper_bin
    # Called from inside host_ns with host_ns itself as the target: only a child that joined the
    # caller's namespace can see that they are the same and refuse with code 8.
    res = run_plugin(bin_dir, "loopback", "ADD", LO, netns=path(host_ns), ifname="lo", host_ns=host_ns)
    assert res.rc == 1 and res.json["code"] == 8 and "own network namespace" in res.json["msg"]


def test_callers_environment_and_stderr_are_used(helper_bin, container_ns, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bin_dir, _ = helper_bin
    res = run_plugin(bin_dir, "loopback", "FROB", LO, netns=path(container_ns), ifname="lo")
    assert res.rc == 1 and "FROB" in res.json["msg"]  # CNI_COMMAND came from this caller's env
    res = run_plugin(bin_dir, "loopback", "ADD", LO, netns=path(container_ns), ifname="lo", env={"CNI_COMMAND": ""})
    assert res.rc == 0 and "CNI loopback plugin" in res.stderr  # the about text reached our stderr


def test_many_concurrent_calls(helper_bin, namespaces) -> None:  # type: ignore[no-untyped-def]
    bin_dir, sock = helper_bin
    ctrs = [namespaces.make(f"h{i}") for i in range(12)]
    for c in ctrs:
        sh("ip", "link", "set", "lo", "down", ns=c)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda c: run_plugin(bin_dir, "loopback", "ADD", LO, netns=path(c), ifname="lo"), ctrs))
    assert all(r.rc == 0 for r in results), [r.stdout for r in results if r.rc]
    assert all("UP" in json.loads(sh("ip", "-j", "link", "show", "lo", ns=c).stdout)[0]["flags"] for c in ctrs)


def test_socket_is_root_only_and_non_root_peers_are_refused(helper_bin) -> None:  # type: ignore[no-untyped-def]
    _, sock = helper_bin
    assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700 and stat.S_IMODE(sock.stat().st_mode) == 0o600
    # A second helper on a socket whose permissions we open on purpose: it must still refuse a
    # non-root peer by its credentials (SO_PEERCRED), without starting a child.
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="cnitest-helper-", dir="/tmp"))
    open_sock = base / "run" / "helper.sock"
    proc = subprocess.Popen([sys.executable, "-m", "cni_plugins.install", "helper", "--socket", str(open_sock), "--idle", "0"])
    try:
        assert poll(lambda: open_sock.exists(), timeout=20)
        os.chmod(base, 0o755)
        os.chmod(open_sock.parent, 0o755)
        os.chmod(open_sock, 0o666)
        client = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.connect(sys.argv[1])\n"
            "fds = [0, 1, 2, 0, 0, 0]\n"
            "s.sendmsg([b'cni-py-helper/1\\0loopback\\x0018\\0CNI_COMMAND=ADD'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes().join(f.to_bytes(4, 'little') for f in fds))])\n"
            "print(repr(s.recv(16)))\n"
        )
        res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", client, str(open_sock)], capture_output=True, text=True, timeout=20)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == "b''"  # closed without starting a child
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def _parent(pid: int) -> int:
    """The parent's pid; -1 once the process is gone (a plugin that ran in its own process)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return -1
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:"))


def test_auto_start_and_idle_exit(tmp_path, container_ns) -> None:  # type: ignore[no-untyped-def]
    """The first call starts the helper, waits until it listens and is served by one of its
    workers (not in its own process while the helper starts, competing with it)."""
    sock = tmp_path / "auto" / "helper.sock"
    bin_dir = tmp_path / "bin"
    log = tmp_path / "plugin.log"
    install(bin_dir, "--helper", "auto", "--helper-socket", str(sock))
    try:
        first = run_plugin(bin_dir, "loopback", "ADD", LO, netns=path(container_ns), ifname="lo", env={"CNI_PY_DEBUG": "1", "CNI_PY_LOG_FILE": str(log)})
        assert first.rc == 0, first.stdout
        helper = helper_pid(sock)
        assert helper is not None and sock.exists()  # no polling: the first call waited for it
        served_by = {int(pid) for pid in re.findall(r"\[(\d+)\]", log.read_text())}
        assert served_by and all(_parent(pid) == helper for pid in served_by), (served_by, helper)
        second = run_plugin(bin_dir, "loopback", "ADD", LO, netns=path(container_ns), ifname="lo")
        assert second.json == first.json
    finally:
        subprocess.run([sys.executable, "-m", "cni_plugins.install", "helper", "--stop", "--socket", str(sock)], check=True)
    assert helper_pid(sock) is None and not sock.exists()


def test_simultaneous_first_calls_share_one_helper(tmp_path, namespaces) -> None:  # type: ignore[no-untyped-def]
    """Calls that all find no helper each start one; one wins the socket's lock, the others
    wait for it to listen and tell their callers: every call is served by the one helper's
    workers, none in its own process, and the others exit."""
    sock = tmp_path / "auto" / "helper.sock"
    bin_dir = tmp_path / "bin"
    log = tmp_path / "plugin.log"
    install(bin_dir, "--helper", "auto", "--helper-socket", str(sock))
    ctrs = [namespaces.make(f"sim{i}") for i in range(6)]
    env = {"CNI_PY_DEBUG": "1", "CNI_PY_LOG_FILE": str(log)}
    try:
        with ThreadPoolExecutor(len(ctrs)) as pool:
            runs = list(pool.map(lambda ctr: run_plugin(bin_dir, "loopback", "ADD", LO, netns=path(ctr), ifname="lo", env=env), ctrs))
        assert [r.rc for r in runs] == [0] * len(ctrs), [r.stdout for r in runs]
        helper = helper_pid(sock)
        assert helper is not None
        served_by: dict[int, int] = {}
        for line in log.read_text().splitlines():
            if "ADD" in line and (m := re.search(r"\[(\d+)\]", line)):
                served_by[int(m.group(1))] = _parent(int(m.group(1)))
        assert served_by and set(served_by.values()) == {helper}, (served_by, helper)
        ours = [int(pid) for pid in subprocess.run(["pgrep", "-f", str(sock)], capture_output=True, text=True).stdout.split()]
        strays = [pid for pid in ours if pid != helper and _parent(pid) not in (helper, -1)]  # not the helper, its workers or gone
        assert helper in ours and not strays, (ours, helper)
    finally:
        subprocess.run([sys.executable, "-m", "cni_plugins.install", "helper", "--stop", "--socket", str(sock)], check=True)


def test_first_call_takes_over_from_a_helper_that_never_listened(tmp_path, container_ns) -> None:  # type: ignore[no-untyped-def]
    """The socket's lock is held (here by the test: a helper still starting) and released
    without anyone listening (that helper died): the helper this call started takes the
    lock over and serves the call."""
    import fcntl

    sock = tmp_path / "auto" / "helper.sock"
    bin_dir = tmp_path / "bin"
    log = tmp_path / "plugin.log"
    install(bin_dir, "--helper", "auto", "--helper-socket", str(sock))
    sock.parent.mkdir(mode=0o700)
    holder = os.open(str(sock) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        with ThreadPoolExecutor(1) as pool:
            call = pool.submit(run_plugin, bin_dir, "loopback", "ADD", LO, netns=path(container_ns), ifname="lo", env={"CNI_PY_DEBUG": "1", "CNI_PY_LOG_FILE": str(log)})
            time.sleep(0.5)
            assert not call.done()  # waiting for the lock holder to listen
            os.close(holder)
            holder = -1
            res = call.result(timeout=20)
        assert res.rc == 0, res.stdout
        helper = helper_pid(sock)
        served_by = {int(pid) for pid in re.findall(r"\[(\d+)\]", log.read_text())}
        assert helper is not None and served_by and {_parent(pid) for pid in served_by} == {helper}, (served_by, helper)
    finally:
        if holder >= 0:
            os.close(holder)
        subprocess.run([sys.executable, "-m", "cni_plugins.install", "helper", "--stop", "--socket", str(sock)], check=True)


def test_auto_start_that_fails_runs_the_call_itself(tmp_path, container_ns) -> None:  # type: ignore[no-untyped-def]
    """A helper that cannot start (its socket's directory is a file) exits at once: the call
    sees its pipe close and runs in its own process, without waiting out ``READY_WAIT``."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    sock = blocker / "helper.sock"
    bin_dir = tmp_path / "bin"
    install(bin_dir, "--helper", "auto", "--helper-socket", str(sock))
    started = time.monotonic()
    res = run_plugin(bin_dir, "loopback", "ADD", LO, netns=path(container_ns), ifname="lo")
    elapsed = time.monotonic() - started
    assert res.rc == 0, res.stdout
    assert res.json["interfaces"][0]["name"] == "lo"
    from cni_plugins.launch import READY_WAIT

    assert elapsed < READY_WAIT, f"{elapsed:.2f} s: the call waited for a helper that had already failed"


def test_idle_timeout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    sock = tmp_path / "idle" / "helper.sock"
    proc = subprocess.Popen([sys.executable, "-m", "cni_plugins.install", "helper", "--socket", str(sock), "--idle", "1"])
    try:
        assert poll(lambda: sock.exists(), timeout=20)
        assert proc.wait(timeout=15) == 0
        assert not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_reused_workers_go_back_between_calls(helper_bin, namespaces) -> None:  # type: ignore[no-untyped-def]
    """More calls than the pool has workers, from two different namespaces in turn, each with
    its own environment: every call acts in its caller's namespace with its caller's env."""
    bin_dir, sock = helper_bin
    pid = helper_pid(sock)
    hosts = [namespaces.make(f"rh{i}") for i in range(2)]
    ctrs = [namespaces.make(f"rc{i}") for i in range(20)]
    for i, ctr in enumerate(ctrs):
        sh("ip", "link", "set", "lo", "down", ns=ctr)
        host = hosts[i % 2]
        res = run_plugin(bin_dir, "loopback", "ADD", LO, netns=path(ctr), ifname="lo", host_ns=host)
        assert res.rc == 0, res.stdout
        assert "UP" in json.loads(sh("ip", "-j", "link", "show", "lo", ns=ctr).stdout)[0]["flags"]
        own = run_plugin(bin_dir, "loopback", "ADD", LO, netns=path(host), ifname="lo", host_ns=host)
        assert own.rc == 1 and own.json["code"] == 8  # the worker stood in this caller's namespace
        bad = run_plugin(bin_dir, "loopback", "ADD", LO, netns=path(ctr), ifname="lo", env={"CNI_COMMAND": f"NOPE{i}"})
        assert bad.rc == 1 and f"NOPE{i}" in bad.json["msg"]  # this call's environment, not a previous one's
    assert helper_pid(sock) == pid
