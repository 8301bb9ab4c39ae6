"""Where a warm worker's time goes, plugin by plugin: each chain's ADD and DEL run in this
one process (as in a helper worker: imports done, sockets freed after the call, untimed),
in throwaway namespaces, N containers one after another; the table gives each plugin's
median call. ``--profile`` adds a cProfile of every call, its top functions by own time
and by cumulative time. ``--ab raw`` is an A/B of the hot-path requests over the plain
socket against pyroute2's request machinery (``netlink.RAW_REQUESTS``), ``--ab batch`` of
``Netlink.batch`` against one write per request (``netlink.BATCHES``): every container is
added and deleted twice, once each way, in alternating order, and the table gives both
sides' medians and the median of the paired differences.

Chains: ``ptp`` (ptp + host-local), ``macvlan`` (macvlan + host-local on a veth standing
for the host's uplink), ``bridge`` (podman's chain: bridge with ipMasq + portmap +
firewall, one port each), ``tuning`` (ptp + tuning with a sysctl and a MAC),
``loopback``.

    sudo .venv/bin/python bench/worker_profile.py [-n 50] [--chains ptp,bridge] [--profile] [--ab raw|batch]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
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

from cni_plugins.kernel import netlink, netns  # noqa: E402  (needs the sys.path insert above)
from cni_plugins.protocol import registry, skel  # noqa: E402  (needs the sys.path insert above)
from firewall import nft  # noqa: E402  (needs the sys.path insert above)

CHAINS = ("ptp", "macvlan", "bridge", "tuning", "loopback")


def chain_confs(chain: str, tag: str, work: Path) -> tuple[str, list[dict[str, Any]]]:
    ipam = {
        "type": "host-local",
        "subnet": "10.87.0.0/16",
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": str(work / "ipam"),
    }
    if chain == "ptp":
        return "eth0", [{"type": "ptp", "ipam": ipam}]
    if chain == "macvlan":
        return "eth0", [{"type": "macvlan", "master": f"up{tag}", "mode": "bridge", "ipam": ipam}]
    if chain == "bridge":
        return "eth0", [
            {
                "type": "bridge",
                "bridge": f"br{tag}",
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": ipam,
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall", "backend": "nftables"},
        ]
    if chain == "tuning":
        return "eth0", [
            {"type": "ptp", "ipam": ipam},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}, "mac": "c2:11:22:33:44:55"},
        ]
    return "lo", [{"type": "loopback"}]


def call(
    plugin: str, command: str, conf: dict[str, Any], env: dict[str, str], prof: cProfile.Profile | None
) -> tuple[float, str]:
    module = registry.load(plugin)
    out = io.StringIO()
    environ = {**env, "CNI_COMMAND": command}
    stdin = json.dumps(conf).encode()
    start = time.perf_counter()
    if prof is not None:
        prof.enable()
    code = skel.run(module.PLUGIN, environ=environ, stdin=stdin, stdout=out, stderr=sys.stderr)
    if prof is not None:
        prof.disable()
    took = time.perf_counter() - start
    netlink.release_kept()  # a worker does this after its reply
    gc.collect()
    if code != 0:
        raise RuntimeError(f"{plugin} {command}: {out.getvalue()}")
    return took, out.getvalue()


AB_TOGGLES = {"raw": (netlink, "RAW_REQUESTS"), "batch": (netlink, "BATCHES")}


def run_chain(
    chain: str, n: int, work: Path, bin_dir: Path, profiles: dict[str, cProfile.Profile] | None, ab: str = ""
) -> dict[str, list[float]]:
    tag = f"{os.getpid() % 100000}"
    host = f"cnipyprof-h{tag}"
    subprocess.run(["ip", "netns", "add", host], check=True)
    times: dict[str, list[float]] = {}
    ctrs: list[str] = []
    try:
        hostpath = f"/var/run/netns/{host}"
        subprocess.run(["ip", "-n", host, "link", "set", "lo", "up"], check=True)
        if chain == "macvlan":
            subprocess.run(
                ["ip", "-n", host, "link", "add", f"up{tag}", "type", "veth", "peer", "name", f"upp{tag}"], check=True
            )
            subprocess.run(["ip", "-n", host, "link", "set", f"up{tag}", "up"], check=True)
        ifname, plugins = chain_confs(chain, tag, work)
        with netns.entered(hostpath):
            rounds = [(i, "") for i in range(n + 3)]
            if ab:
                rounds = [(i, side) for i in range(n + 3) for side in (("A", "B") if i % 2 else ("B", "A"))]
            for i, side in rounds:
                if ab:
                    module, flag = AB_TOGGLES[ab]
                    setattr(module, flag, side == "B")
                ctr = f"cnipyprof-c{tag}-{i}{side}"
                subprocess.run(["ip", "netns", "add", ctr], check=True)
                ctrs.append(ctr)
                env = {
                    "CNI_CONTAINERID": f"prof{i}{side}",
                    "CNI_NETNS": f"/var/run/netns/{ctr}",
                    "CNI_IFNAME": ifname,
                    "CNI_PATH": str(bin_dir),
                    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                }
                counted = i >= 3
                prev: dict[str, Any] | None = None
                confs = []
                for p in plugins:
                    conf = {"cniVersion": "1.0.0", "name": f"prof{tag}", **p}
                    if p["type"] == "portmap":
                        port = 20000 + 2 * i + (side == "B")
                        conf["runtimeConfig"] = {
                            "portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]
                        }
                    if prev is not None:
                        conf["prevResult"] = prev
                    prof = (
                        profiles.setdefault(f"{p['type']} ADD", cProfile.Profile())
                        if profiles is not None and counted
                        else None
                    )
                    took, out = call(p["type"], "ADD", conf, env, prof)
                    if counted:
                        times.setdefault(f"{p['type']} ADD{side}", []).append(took)
                    prev = json.loads(out)
                    confs.append(conf)
                for conf in reversed(confs):
                    conf = {**conf, "prevResult": prev}
                    prof = (
                        profiles.setdefault(f"{conf['type']} DEL", cProfile.Profile())
                        if profiles is not None and counted
                        else None
                    )
                    took, _ = call(conf["type"], "DEL", conf, env, prof)
                    if counted:
                        times.setdefault(f"{conf['type']} DEL{side}", []).append(took)
                subprocess.run(["ip", "netns", "del", ctr], check=True)
                ctrs.remove(ctr)
    finally:
        nft.close_shared()  # the host's context, as an idle worker frees it
        for ctr in ctrs:
            subprocess.run(["ip", "netns", "del", ctr], capture_output=True)
        subprocess.run(["ip", "netns", "del", host], capture_output=True)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50)
    parser.add_argument("--chains", default=",".join(CHAINS))
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--ab", choices=sorted(AB_TOGGLES), default="", help="A: the toggle off, B: on")
    opts = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cnipy-prof-"))
    bin_dir = work / "bin"
    try:
        our_plugins.install(bin_dir)
        netlink.preload_pyroute2()
        netlink.keep_open_until_exit()
        nft.share_per_namespace()
        for chain in opts.chains.split(","):
            profiles: dict[str, cProfile.Profile] | None = {} if opts.profile else None
            times = run_chain(chain, opts.n, work, bin_dir, profiles, opts.ab)
            print(f"\n== {chain}: {opts.n} containers, in-process, median ms (p25-p75)")
            if opts.ab:
                print(f"  {'call':14} {'A: ' + opts.ab + ' off':>12} {'B: on':>8} {'median B-A':>11} (paired)")
                for key in [k[:-1] for k in times if k.endswith("A")]:
                    a, b = times[key + "A"], times[key + "B"]
                    diff = statistics.median(y - x for x, y in zip(a, b, strict=True))
                    print(
                        f"  {key:14} {statistics.median(a) * 1000:12.2f} {statistics.median(b) * 1000:8.2f} "
                        f"{diff * 1000:+11.2f}"
                    )
                continue
            for key, values in times.items():
                q = statistics.quantiles(values, n=4)
                print(f"  {key:14} {statistics.median(values) * 1000:7.2f}  ({q[0] * 1000:.2f}-{q[2] * 1000:.2f})")
            for key, prof in (profiles or {}).items():
                for order in ("tottime", "cumulative"):
                    print(f"\n---- {chain}: {key}, by {order} (totals over {opts.n} calls)")
                    stream = io.StringIO()
                    pstats.Stats(prof, stream=stream).sort_stats(order).print_stats(opts.top)
                    print("\n".join(line for line in stream.getvalue().splitlines() if line.strip())[:6000])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
