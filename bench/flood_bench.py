"""What one multicast packet from a new container costs the kernel on a bridge with N ports.

A container whose link comes up announces its IPv6 link-local address (MLD reports, a router
solicitation), and the bridge floods each of those packets to every port; each copy is then
received in that port's container. This builds a host namespace with N containers of
podman's chain (our bridge + host-local, portmap, firewall, in this process), then sends K
IPv6 multicast packets from one more container, one every 10 ms, and reports the CPU time
the whole machine spent per packet (busy time from /proc/stat, minus the same span idle).
It repeats that with bridge-nf-call-ip6tables off in the host namespace, to show how much of
it br_netfilter takes. First it reports how busy the machine is with nothing running: the
containers keep soliciting routers (router_solicitations = -1: again after 4 s, backing off
to once an hour), and the bridge floods each solicitation to every port too.

    sudo .venv/bin/python bench/flood_bench.py [-n 1000] [--packets 1000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import our_plugins
from chain_bench import chain_conf, ip_batch  # podman's chain, as chain_bench runs it

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cni_plugins.kernel import netns  # noqa: E402  (needs the sys.path insert above)
from cni_plugins.plugins import bridge, firewall, portmap  # noqa: E402  (needs the sys.path insert above)
from cni_plugins.protocol import skel  # noqa: E402  (needs the sys.path insert above)

PLUGINS = {plugin.name: plugin for plugin in (bridge.PLUGIN, portmap.PLUGIN, firewall.PLUGIN)}

GROUP = "ff02::1:3"  # a link-local group no container joins, as ff02::16 and ff02::2 are to them


def _busy_ticks() -> int:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4]  # all but idle and iowait


def _chain_add(work: Path, bin_dir: Path, cid: str, ctr: str, port: int) -> None:
    """Podman's chain ADD in this process (each plugin's handler, prevResult threaded)."""
    conflist = chain_conf("podman", "10.88.0.0/16", str(work / "ipam"))
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": f"/var/run/netns/{ctr}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(bin_dir),
    }
    prev: dict[str, Any] | None = None
    for entry in conflist["plugins"]:
        conf: dict[str, Any] = {**entry, "name": conflist["name"], "cniVersion": conflist["cniVersion"]}
        if entry.get("capabilities", {}).get("portMappings"):
            conf["runtimeConfig"] = {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]}
        if prev is not None:
            conf["prevResult"] = prev
        out = io.StringIO()
        if (
            skel.run(
                PLUGINS[entry["type"]], environ=env, stdin=json.dumps(conf).encode(), stdout=out, stderr=sys.stderr
            )
            != 0
        ):
            raise RuntimeError(f"{entry['type']} ADD {cid}: {out.getvalue()}")
        prev = json.loads(out.getvalue())


def _busy_seconds_idle(seconds: float) -> float:
    """The machine's busy CPU time while this process sleeps for ``seconds``."""
    busy = _busy_ticks()
    time.sleep(seconds)
    return (_busy_ticks() - busy) / os.sysconf("SC_CLK_TCK")


def _cpu_ms_per_packet(sender_ns: str, packets: int) -> float:
    with netns.entered(f"/var/run/netns/{sender_ns}"):
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        index = socket.if_nametoindex("eth0")
    with sock:
        start, busy = time.monotonic(), _busy_ticks()
        for _ in range(packets):
            sock.sendto(b"x" * 32, (GROUP, 9, 0, index))
            time.sleep(0.01)
        busy, span = _busy_ticks() - busy, time.monotonic() - start
    return (busy / os.sysconf("SC_CLK_TCK") - _busy_seconds_idle(span)) / packets * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="containers on the bridge (at most 1,022)")
    parser.add_argument("--packets", type=int, default=1000)
    opts = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: network namespaces")
    tag = f"fb{os.getpid()}"
    host, sender = f"{tag}-h", f"{tag}-s"
    ctrs = [f"{tag}-{i}" for i in range(opts.n)]
    work = Path(tempfile.mkdtemp(prefix="cni-flood-"))
    our_plugins.install(work / "bin", "host-local")
    ip_batch([f"netns add {n}" for n in (host, sender, *ctrs)])
    try:
        subprocess.run(["ip", "-n", host, "link", "set", "lo", "up"], check=True)
        with netns.entered(f"/var/run/netns/{host}"):
            for i, ctr in enumerate(ctrs):
                _chain_add(work, work / "bin", f"c{i}", ctr, 20000 + i)
            _chain_add(work, work / "bin", "sender", sender, 30000)
        time.sleep(10)  # the new containers' own announcements die down
        print(
            f"machine busy with {opts.n + 1} idle containers (next 30 "
            f"s): {_busy_seconds_idle(30) / 30 * 100:.1f}% of one CPU"
        )
        in_host = ["ip", "netns", "exec", host, "sysctl", "-qw"]
        print(
            "CPU time per IPv6 multicast packet from one container, "
            f"bridge with {opts.n + 1} ports, {opts.packets} packets:"
        )
        print(f"  as set up:                          {_cpu_ms_per_packet(sender, opts.packets):.3f} ms")
        subprocess.run([*in_host, "net.bridge.bridge-nf-call-ip6tables=0"], check=True)
        print(f"  with bridge-nf-call-ip6tables=0:    {_cpu_ms_per_packet(sender, opts.packets):.3f} ms")
        return 0
    finally:
        ip_batch([f"netns del {n}" for n in (host, sender, *ctrs)], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
