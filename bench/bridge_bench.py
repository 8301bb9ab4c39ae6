"""bridge + host-local: median ADD and DEL time, ours next to the reference, in one run.

Each operation goes through the libcni-like runner (``cni_plugins.runtime.runner``), which
execs the plugins as processes as a runtime does (bridge, which execs host-local), and
writes/reads the result cache. Everything runs inside a throwaway namespace standing for
the host (this process enters it; the plugins inherit it), with one container namespace
reused by every iteration. The implementations take turns within each iteration, each on
its own bridge, subnet and IPAM dataDir, so drift on the machine hits them alike:

* ``reference``: /usr/lib/cni/bridge + host-local (Go, v1.1.1 in Debian 12);
* ``ours``: our executables, every call a fresh Python process (``--helper off``);
* ``ours+helper``: our executables handing calls to a warm helper (the default install
  mode), started here on a private socket and stopped at the end.

    .venv/bin/python bench/bridge_bench.py [--runs 30] [--warmup 3] [--ipmasq] [--reference /usr/lib/cni]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import our_plugins

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cni_plugins.kernel import netns  # noqa: E402  (needs the sys.path insert above)
from cni_plugins.runtime.runner import CNIRunner, RuntimeConf  # noqa: E402  (needs the sys.path insert above)
from conf.loader import NetworkConfigList, conflist_from_object  # noqa: E402  (needs the sys.path insert above)


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def netlist(name: str, bridge: str, subnet: str, data_dir: Path, ipmasq: bool) -> NetworkConfigList:
    obj: dict[str, Any] = {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "ipMasq": ipmasq,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": str(data_dir)},
            }
        ],
    }
    return conflist_from_object(obj, json.dumps(obj).encode(), name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--ipmasq", action="store_true", help="also masquerade (reference: iptables; ours: nftables)")
    parser.add_argument("--reference", default="/usr/lib/cni")
    parser.add_argument("--no-helper", action="store_true", help="skip the warm-helper variant")
    opts = parser.parse_args(argv)
    tag = f"brbench{os.getpid()}"
    host, ctr = f"{tag}-host", f"{tag}-ctr"
    work = Path(tempfile.mkdtemp(prefix="cni-py-bridge-bench-"))
    helper: subprocess.Popen[bytes] | None = None
    made: list[str] = []
    try:
        for ns in (host, ctr):
            sh("ip", "netns", "add", ns)
            made.append(ns)
        impls: dict[str, str] = {"reference": opts.reference}
        our_plugins.install(work / "cold", "bridge", "host-local")
        impls["ours"] = str(work / "cold")
        if not opts.no_helper:
            sock = str(work / "helper" / "helper.sock")
            helper = our_plugins.start_helper(sock)
            our_plugins.install(work / "warm", "bridge", "host-local", helper="on", helper_socket=sock)
            impls["ours+helper"] = str(work / "warm")
        nets = {
            name: netlist(f"bench-{i}", f"bbr{i}", f"10.{210 + i}.0.0/16", work / "ipam", opts.ipmasq)
            for i, name in enumerate(impls)
        }
        runners = {
            name: CNIRunner([path], str(work / "cache"), environ={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
            for name, path in impls.items()
        }
        times: dict[str, dict[str, list[float]]] = {name: {"ADD": [], "DEL": []} for name in impls}
        with netns.entered(f"/var/run/netns/{host}"):
            sh("ip", "link", "set", "lo", "up")
            for i in range(opts.warmup + opts.runs):
                for name in impls:
                    rt = RuntimeConf(container_id=f"{tag}-{i}", netns=f"/var/run/netns/{ctr}", ifname="eth0")
                    t0 = time.perf_counter()
                    runners[name].add(nets[name], rt)
                    t1 = time.perf_counter()
                    runners[name].delete(nets[name], rt)
                    t2 = time.perf_counter()
                    if i >= opts.warmup:
                        times[name]["ADD"].append(t1 - t0)
                        times[name]["DEL"].append(t2 - t1)
        kernel = os.uname().release
        print(
            f"bridge + host-local via the libcni-like runner, {opts.runs} runs "
            f"each (+{opts.warmup} warm-up), ipMasq={opts.ipmasq}, kernel {kernel}"
        )
        print(f"{'implementation':<14} {'ADD median':>11} {'ADD p90':>9} {'DEL median':>11} {'DEL p90':>9}")
        for name, t in times.items():
            row = [statistics.median(t["ADD"]), _p90(t["ADD"]), statistics.median(t["DEL"]), _p90(t["DEL"])]
            print(
                f"{name:<14} "
                + " ".join(f"{v * 1e3:>{w}.1f}" for v, w in zip(row, (9, 7, 9, 7), strict=True))
                + "   (ms)"
            )
        return 0
    finally:
        our_plugins.stop_helper(helper)
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def _p90(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.9) - 1)]


if __name__ == "__main__":
    sys.exit(main())
