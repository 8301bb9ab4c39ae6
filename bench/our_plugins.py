"""Our plugins as the benchmarks run them: installed by the real installer, and the warm
helper started and stopped around a run. Shared by the scripts in this directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def install(
    target: Path | str,
    *types: str,
    helper: str = "off",
    helper_socket: str = "",
    launcher: str = "",
    extra: tuple[str, ...] = (),
) -> None:
    """``cni-plugins install`` of this checkout into ``target`` (all types when none given);
    ``launcher`` is ``--launcher`` (native, python; default: the installer's), ``extra`` more
    options (``--systemd --unit-dir DIR``)."""
    args = ["--helper", helper] + (["--helper-socket", helper_socket] if helper_socket else [])
    args += (["--launcher", launcher] if launcher else []) + list(extra)
    subprocess.run(
        [sys.executable, "-m", "cni_plugins.install", "install", "--dir", str(target), *args, *types],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )


def start_helper(sock: str, timeout: float = 30.0) -> subprocess.Popen[bytes]:
    """A warm helper on ``sock`` that never idles out; returns once it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "cni_plugins.install", "helper", "--socket", sock, "--idle", "0"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    while not os.path.exists(sock):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit("our warm helper did not start")
        time.sleep(0.05)
    return proc


def stop_helper(proc: subprocess.Popen[bytes] | None, sock: str = "") -> None:
    """Stop the helper we started, and (by its pid file) one that a launcher restarted on ``sock``."""
    if proc is not None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if sock:
        subprocess.run(
            [sys.executable, "-m", "cni_plugins.install", "helper", "--stop", "--socket", sock],
            cwd=ROOT,
            capture_output=True,
        )
