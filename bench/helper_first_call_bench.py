"""What the first container costs, by how the warm helper came to run.

Each trial makes a fresh host namespace and container namespace and a fresh install (its own
run dir, so its own helper), then times the first container's bridge + host-local ADD and
its DEL, exec'd as a runtime execs them, in one of these situations (interleaved, trial by
trial):

  warm         a helper that has already served calls (one loopback ADD elsewhere)
  boot         the units' socket under systemd-socket-activate, the service started before
               the first call and ready (READY=1), as WantedBy=multi-user.target starts it
  activation   the same socket, the service started by the first call's connection
  auto         no helper: the first call starts one (no systemd)
  no helper    --helper off: the plugins run in their own process

    sudo .venv/bin/python bench/helper_first_call_bench.py [--trials 10]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("warm", "boot", "activation", "auto", "no helper")


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def call(
    bin_dir: Path, plugin: str, command: str, conf: dict[str, object], host: str, ctr: str, ifname: str = "eth0"
) -> float:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "first1",
        "CNI_NETNS": f"/var/run/netns/{ctr}",
        "CNI_IFNAME": ifname,
        "CNI_PATH": str(bin_dir),
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    started = time.perf_counter()
    proc = subprocess.run(
        ["ip", "netns", "exec", host, str(bin_dir / plugin)],
        input=json.dumps(conf).encode(),
        env=env,
        capture_output=True,
    )
    elapsed = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(f"{plugin} {command} failed: {proc.stdout.decode()} {proc.stderr.decode()}")
    return elapsed


def exec_start(unit: Path) -> list[str]:
    line = next(text for text in unit.read_text().splitlines() if text.startswith("ExecStart="))
    return [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(line.split("=", 1)[1])]


def trial(mode: str, n: int) -> tuple[float, float]:
    work = Path(tempfile.mkdtemp(prefix="cnipy-firstcall-"))
    host, ctr, other = f"cnipyfc-h{os.getpid()}-{n}", f"cnipyfc-c{os.getpid()}-{n}", f"cnipyfc-o{os.getpid()}-{n}"
    bin_dir, run_dir, units = work / "bin", work / "run", work / "units"
    args = ["--helper", "off"] if mode == "no helper" else ["--systemd", "--unit-dir", str(units)]
    sh(sys.executable, "-m", "cni_plugins.install", "install", "--dir", str(bin_dir), "--run-dir", str(run_dir), *args)
    from cni_plugins.install import default_socket

    sock = default_socket(str(run_dir))
    for ns in (host, ctr, other):
        sh("ip", "netns", "add", ns)
    activator = None
    notify = None
    conf = {
        "cniVersion": "1.0.0",
        "name": "firstnet",
        "type": "bridge",
        "bridge": "cnifirst0",
        "isGateway": True,
        "ipMasq": True,
        "ipam": {"type": "host-local", "subnet": "10.82.0.0/24", "dataDir": str(work / "ipam")},
    }
    try:
        if mode in ("boot", "activation"):
            run_dir.mkdir(mode=0o700)
            notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            notify.bind(str(work / "notify"))
            notify.settimeout(30)
            activator = subprocess.Popen(
                [
                    "systemd-socket-activate",
                    "--seqpacket",
                    "-l",
                    sock,
                    "-E",
                    f"NOTIFY_SOCKET={work / 'notify'}",
                    "--",
                    *exec_start(units / "cni-py-helper.service"),
                ],
                stderr=subprocess.DEVNULL,
            )
            while not os.path.exists(sock):
                time.sleep(0.01)
            if mode == "boot":
                with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
                    probe.connect(sock)  # systemd would have started the service at boot
                assert b"READY=1" in notify.recv(4096)
        if mode == "warm":
            call(
                bin_dir, "loopback", "ADD", {"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}, host, other, "lo"
            )
        add = call(bin_dir, "bridge", "ADD", conf, host, ctr)
        delete = call(bin_dir, "bridge", "DEL", conf, host, ctr)
        return add, delete
    finally:
        if activator is not None:
            activator.terminate()
            activator.wait()
        if notify is not None:
            notify.close()
        subprocess.run(
            [sys.executable, "-m", "cni_plugins.install", "helper", "stop", "--socket", sock], capture_output=True
        )
        for ns in (host, ctr, other):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    opts = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    results: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
    for n in range(opts.trials):
        for i, mode in enumerate(MODES):
            results[mode].append(trial(mode, n * len(MODES) + i))
    print(f"first container, bridge + host-local, median of {opts.trials} (ms):")
    print(f"{'':12} {'ADD':>8} {'DEL':>8} {'ADD+DEL':>8}")
    for mode, rows in results.items():
        adds, dels = [r[0] * 1000 for r in rows], [r[1] * 1000 for r in rows]
        print(
            f"{mode:12} {statistics.median(adds):8.1f} {statistics.median(dels):8.1f} "
            f"{statistics.median([a + d for a, d in zip(adds, dels, strict=True)]):8.1f}"
        )


if __name__ == "__main__":
    main()
