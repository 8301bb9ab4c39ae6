"""What a sysctl access costs with many network namespaces around, through /proc/sys and
through a private procfs instance (``cni_plugins.kernel.sysctl``).

Every namespace that touched its net.* sysctls leaves dentries named "ipv4"/"ipv6" under one
shared parent in /proc's dcache, and a lookup compares against all of them. A bridge ADD
makes five accesses: two in the container's namespace (new: its first lookups miss) and
three in the host's (old: its dentries sit behind every newer namespace's). This measures
those two cases with 0 and N other namespaces, each access in a fresh process as a plugin
call makes it (median of the trials, µs):

    sudo .venv/bin/python bench/sysctl_bench.py [-n 2000] [--trials 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# One plugin call's accesses, timed in a fresh interpreter inside the namespace.
PROBE = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from cni_plugins.kernel import netns, sysctl
netns.libc()  # loaded before any sysctl access in a plugin (setns on Python 3.11)
if sys.argv[2] == "proc":
    sysctl._Instance.unavailable = True
start = time.perf_counter()
if sys.argv[3] == "container":
    sysctl.write("net/ipv6/conf/lo/accept_dad", "0")
    sysctl.write("net/ipv4/conf/lo/arp_notify", "1")
else:
    sysctl.write("net/ipv6/conf/lo/accept_ra", "0")
    sysctl.write("net/ipv6/conf/lo/disable_ipv6", "0")
    sysctl.read("net/ipv4/ip_forward")
print((time.perf_counter() - start) * 1e6)
"""


def ip_batch(lines: list[str]) -> None:
    subprocess.run(["ip", "-force", "-batch", "-"], input="".join(lines), text=True, check=True, capture_output=True)


def probe(ns: str, how: str, where: str) -> float:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-I", "-c", PROBE, str(ROOT), how, where],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout)


def measure(tag: str, trials: int) -> dict[tuple[str, str], float]:
    """Median µs of the three host accesses in an old namespace and of the two container
    accesses in a new one, each way."""
    out: dict[tuple[str, str], list[float]] = {}
    host = f"{tag}-host"
    for t in range(trials):
        for how in ("proc", "private"):
            ctr = f"{tag}-ctr{t}{how}"
            ip_batch([f"netns add {ctr}\n"])
            try:
                out.setdefault((how, "container"), []).append(probe(ctr, how, "container"))
            finally:
                ip_batch([f"netns del {ctr}\n"])
            out.setdefault((how, "host"), []).append(probe(host, how, "host"))
    return {k: statistics.median(v) for k, v in out.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-n",
        type=int,
        default=2000,
        help="other namespaces that touched their sysctls (2,000: chain_bench's two full hosts)",
    )
    parser.add_argument("--trials", type=int, default=15)
    opts = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: network namespaces")
    tag = f"scb{os.getpid()}"
    others = [f"{tag}-o{i}" for i in range(opts.n)]
    ip_batch([f"netns add {tag}-host\n"])
    try:
        probe(
            f"{tag}-host", "proc", "host"
        )  # the host namespace's dentries exist before the others', as on a real host
        empty = measure(tag, opts.trials)
        ip_batch([f"netns add {n}\n" for n in others])
        ip_batch(
            [f"netns exec {n} sysctl -qw net.ipv4.conf.lo.arp_notify=1 net.ipv6.conf.lo.accept_dad=0\n" for n in others]
        )
        full = measure(tag, opts.trials)
    finally:
        ip_batch([f"netns del {n}\n" for n in [*others, f"{tag}-host"]])
    print(f"a bridge ADD's sysctl accesses, median of {opts.trials} fresh processes, µs")
    print(f"{'':<58}{'0 others':>10}{f'{opts.n} others':>13}")
    for where, what in (
        ("container", "new container namespace (accept_dad, arp_notify)"),
        ("host", "old host namespace (accept_ra, disable_ipv6, ip_forward)"),
    ):
        print(what)
        for how, label in (("proc", "through /proc/sys"), ("private", "through a private procfs")):
            print(f"  {label:<56}{empty[how, where]:>10.0f}{full[how, where]:>13.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
