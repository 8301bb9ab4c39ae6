"""A plugin's ADD and DEL through the warm helper: this checkout against another one (A/B).
``--plugin`` bridge (the default), ptp or macvlan, each with host-local.

Each checkout gets its own install (``--helper on``, a private socket) and its own helper;
each has a host namespace and a container namespace of its own. The calls are interleaved
(A ADD, B ADD, A DEL, B DEL, then B first in the next round), so both sides see the same
machine; every call is exec'd as a runtime execs it and timed from exec to exit.

    git archive <commit> | tar -x -C /tmp/base
    sudo .venv/bin/python bench/helper_ab_bench.py --other /tmp/base [--rounds 40] [--plugin ptp]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def installer(code: Path) -> list[str]:
    return [
        sys.executable,
        "-I",
        "-c",
        f"import sys; sys.path.insert(0, {str(code)!r}); from "
        "cni_plugins.install import main; sys.exit(main(sys.argv[1:]))",
    ]


class Side:
    def __init__(self, name: str, code: Path, work: Path, plugin: str = "bridge") -> None:
        self.plugin = plugin
        self.name, self.code = name, code
        self.bin, self.sock = work / name / "bin", work / name / "run" / "helper.sock"
        self.host, self.ctr = f"cnipyab-h-{name}", f"cnipyab-c-{name}"
        subprocess.run(
            [
                *installer(code),
                "install",
                "--dir",
                str(self.bin),
                "--helper",
                "on",
                "--helper-socket",
                str(self.sock),
                "bridge",
                "ptp",
                "macvlan",
                "host-local",
                "loopback",
            ],
            check=True,
            capture_output=True,
        )
        self.helper = subprocess.Popen([*installer(code), "helper", "--socket", str(self.sock), "--idle", "0"])
        deadline = time.monotonic() + 30
        while not self.sock.exists():
            if time.monotonic() > deadline:
                raise SystemExit(f"{name}: the helper did not start")
            time.sleep(0.05)
        for ns in (self.host, self.ctr):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        ipam = {"type": "host-local", "subnet": "10.83.0.0/24", "dataDir": str(work / name / "ipam")}
        self.conf: dict[str, object] = {
            "cniVersion": "1.0.0",
            "name": "abnet",
            "type": "bridge",
            "bridge": "cniab0",
            "isGateway": True,
            "ipMasq": True,
            "ipam": ipam,
        }
        if plugin == "ptp":
            self.conf = {"cniVersion": "1.0.0", "name": "abnet", "type": "ptp", "ipam": ipam}
        if plugin == "macvlan":
            subprocess.run(
                ["ip", "-n", self.host, "link", "add", "cniabup", "type", "veth", "peer", "name", "cniabup1"],
                check=True,
            )
            subprocess.run(["ip", "-n", self.host, "link", "set", "cniabup", "up"], check=True)
            self.conf = {"cniVersion": "1.0.0", "name": "abnet", "type": "macvlan", "master": "cniabup", "ipam": ipam}
        self.adds: list[float] = []
        self.dels: list[float] = []

    def call(self, command: str) -> float:
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": "ab1",
            "CNI_NETNS": f"/var/run/netns/{self.ctr}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(self.bin),
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        }
        started = time.perf_counter()
        proc = subprocess.run(
            ["ip", "netns", "exec", self.host, str(self.bin / self.plugin)],
            input=json.dumps(self.conf).encode(),
            env=env,
            capture_output=True,
        )
        elapsed = time.perf_counter() - started
        if proc.returncode:
            raise SystemExit(f"{self.name} {command}: {proc.stdout.decode()} {proc.stderr.decode()}")
        return elapsed

    def close(self) -> None:
        self.helper.terminate()
        self.helper.wait()
        for ns in (self.host, self.ctr):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--other", required=True, help="the other checkout (its package root)")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--plugin", choices=("bridge", "ptp", "macvlan"), default="bridge")
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnipy-ab-"))
    sides = [Side("this", ROOT, work, opts.plugin), Side("other", Path(opts.other).resolve(), work, opts.plugin)]
    try:
        for i in range(opts.warmup + opts.rounds):
            order = sides if i % 2 == 0 else sides[::-1]
            adds = [s.call("ADD") for s in order]
            dels = [s.call("DEL") for s in order]
            if i >= opts.warmup:
                for s, a, d in zip(order, adds, dels, strict=True):
                    s.adds.append(a)
                    s.dels.append(d)
        print(
            f"{opts.plugin} + host-local through the helper, {opts.rounds} interleaved rounds (ms): "
            "median ADD, DEL; mean ADD; median of the paired differences this - other: ADD, DEL"
        )
        this, other = sides
        paired = [
            statistics.median(a - b for a, b in zip(x, y, strict=True))
            for x, y in ((this.adds, other.adds), (this.dels, other.dels))
        ]
        for s in sides:
            print(
                f"{s.name:6} {s.code}: {statistics.median(s.adds) * 1000:6.1f} "
                f"{statistics.median(s.dels) * 1000:6.1f} {statistics.mean(s.adds) * 1000:6.1f}"
            )
        print(f"paired this - other: ADD {paired[0] * 1000:+.1f}, DEL {paired[1] * 1000:+.1f}")
    finally:
        for s in sides:
            s.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
