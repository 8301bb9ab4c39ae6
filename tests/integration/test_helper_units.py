"""The helper as a system service: ``cni-plugins install --systemd`` writes a .socket and a
.service that systemd accepts, and the helper serves on a socket systemd hands it (socket
activation, with systemd's own ``systemd-socket-activate``: LISTEN_FDS, LISTEN_PID, fd 3, as
systemd passes them), says READY=1 on NOTIFY_SOCKET, and leaves the socket to its owner.

systemd is not PID 1 on every machine that runs these tests: the units are verified with
``systemd-analyze verify`` and their ExecStart= is run under systemd-socket-activate; nothing
is installed into the machine's unit directories."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.nsutil import path, poll, run_plugin
from tests.integration.runtimes import need

LO = {"cniVersion": "1.0.0", "name": "unitnet", "type": "loopback"}


@pytest.fixture
def units(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Launchers and units written by the installer: (bin dir, unit dir, socket)."""
    bin_dir, unit_dir, run_dir = tmp_path / "bin", tmp_path / "units", tmp_path / "run"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "cni_plugins.install",
            "install",
            "--dir",
            str(bin_dir),
            "--run-dir",
            str(run_dir),
            "--systemd",
            "--unit-dir",
            str(unit_dir),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "systemctl daemon-reload" in out.stderr
    from cni_plugins.install import default_socket

    return bin_dir, unit_dir, Path(default_socket(str(run_dir)))


def settings(unit: Path) -> dict[str, str]:
    found = {}
    for line in unit.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            found[key] = value
    return found


def exec_start(unit: Path) -> list[str]:
    """ExecStart= as systemd splits it (double quotes, backslash escapes; %% and $$ undone)."""
    return [arg.replace("%%", "%").replace("$$", "$") for arg in shlex.split(settings(unit)["ExecStart"])]


def test_units_are_valid_for_systemd(units: tuple[Path, Path, Path]) -> None:
    need("systemd-analyze")
    bin_dir, unit_dir, sock = units
    res = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            "--man=no",
            str(unit_dir / "cni-py-helper.socket"),
            str(unit_dir / "cni-py-helper.service"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    sock_unit, service = settings(unit_dir / "cni-py-helper.socket"), settings(unit_dir / "cni-py-helper.service")
    assert (
        sock_unit["ListenSequentialPacket"] == str(sock)
        and sock_unit["SocketMode"] == "0600"
        and sock_unit["DirectoryMode"] == "0700"
    )
    assert sock_unit["WantedBy"] == "sockets.target"
    # Started at boot too, not only by the first connection: the first container does not wait for it.
    assert service["WantedBy"] == "multi-user.target" and service["Requires"] == "cni-py-helper.socket"
    assert service["Type"] == "notify" and service["Restart"] == "always"
    assert {"MemoryMax", "TasksMax"} <= set(service)
    argv = exec_start(unit_dir / "cni-py-helper.service")
    assert argv[0] == sys.executable and str(sock) in argv[-1] and "'--idle', '0'" in argv[-1]
    # The launchers use the same socket, and start a helper themselves where there is no systemd.
    python_launcher = (bin_dir / ".cni-py" / "bridge").read_text()
    assert repr(str(sock)) in python_launcher and ", True, " in python_launcher
    if (bin_dir / "bridge").read_bytes().startswith(b"\x7fELF"):  # the native launcher: its config note
        assert f"socket={sock}".encode() in (bin_dir / "bridge").read_bytes()


@pytest.fixture
def activated(
    units: tuple[Path, Path, Path], tmp_path: Path
) -> Iterator[tuple[Path, Path, subprocess.Popen[bytes], socket.socket]]:
    """The service's ExecStart= under systemd-socket-activate (it listens on the unit's socket
    and execs the command with the socket as fd 3 on the first connection), with a notify
    socket standing for systemd's."""
    need("systemd-socket-activate")
    bin_dir, unit_dir, sock = units
    sock.parent.mkdir(mode=0o700, parents=True)
    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(30)
    proc = subprocess.Popen(
        [
            "systemd-socket-activate",
            "--seqpacket",
            "-l",
            str(sock),
            "-E",
            f"NOTIFY_SOCKET={notify_path}",
            "--",
            *exec_start(unit_dir / "cni-py-helper.service"),
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        assert poll(sock.exists, timeout=20)
        yield bin_dir, sock, proc, notify
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        notify.close()


def test_socket_activation(
    activated: tuple[Path, Path, subprocess.Popen[bytes], socket.socket], container_ns: str
) -> None:
    from cni_plugins.helper.server import status

    bin_dir, sock, proc, notify = activated
    inode = sock.stat().st_ino
    res = run_plugin(bin_dir, "loopback", "ADD", LO, netns=path(container_ns), ifname="lo", env={"CNI_PY_DEBUG": "1"})
    assert res.rc == 0 and res.json["interfaces"][0]["name"] == "lo", res.stdout
    ready = notify.recv(4096).decode()
    assert "READY=1" in ready and f"MAINPID={proc.pid}" in ready  # the activator exec'd the helper: same pid
    st = status(str(sock))
    assert st is not None and st["activated"] and st["pid"] == proc.pid and st["calls"] == 1
    assert sock.stat().st_ino == inode  # served on the socket it was handed, not one of its own
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    assert "STOPPING=1" in notify.recv(4096).decode()
    assert sock.exists() and sock.stat().st_ino == inode  # systemd's socket: its owner removes it


def test_activated_helper_takes_over_from_one_a_call_started(
    activated: tuple[Path, Path, subprocess.Popen[bytes], socket.socket], tmp_path: Path, container_ns: str
) -> None:
    """A helper a call started (before the units were enabled) holds the socket's lock when
    systemd starts the service: the service's helper asks it to stop and takes its place."""
    from cni_plugins.helper.server import running, status

    bin_dir, sock, proc, _ = activated
    other_sock = sock.with_name("auto.sock")
    auto = subprocess.Popen(
        [sys.executable, "-m", "cni_plugins.install", "helper", "--socket", str(other_sock), "--idle", "0"]
    )
    try:
        assert poll(other_sock.exists, timeout=20)
        os.link(str(other_sock) + ".lock", str(sock) + ".lock")  # as if it served this socket
        assert running(str(sock)) == auto.pid
        assert run_plugin(bin_dir, "loopback", "ADD", LO, netns=path(container_ns), ifname="lo").rc == 0
        assert auto.wait(timeout=20) == 0
        st = status(str(sock))
        assert st is not None and st["pid"] == proc.pid and st["activated"]
    finally:
        if auto.poll() is None:
            auto.kill()
            auto.wait()
