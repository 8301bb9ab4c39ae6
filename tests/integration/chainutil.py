"""Helpers for the chained-plugin tests (portmap, firewall): a host with an outside world,
containers attached by our bridge + host-local with chained plugins after them, and small
TCP/UDP servers and clients run inside namespaces (plain Python, no socat).

Topology: ``host`` (the test's host_ns) holds the bridges; ``wan`` stands for the outside
world, joined to the host by a veth (192.0.2.0/24, 2001:db8:2::/64) and, unless asked
otherwise, with routes back to the container subnets (10.0.0.0/8, fd00::/8) via the host.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.nsutil import Namespaces, PluginRun, path, poll, run_plugin, sh

WAN_HOST, WAN_PEER = "192.0.2.1", "192.0.2.2"
WAN6_HOST, WAN6_PEER = "2001:db8:2::1", "2001:db8:2::2"

SERVER = r"""
import socket, sys
proto, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", port))
if proto == "tcp":
    s.listen(64)
print("ready", flush=True)
def text(peer):
    return f"{name} {peer[0].removeprefix('::ffff:')}".encode()
while True:
    if proto == "tcp":
        c, peer = s.accept()
        c.sendall(text(peer))
        c.close()
    else:
        data, peer = s.recvfrom(2048)
        s.sendto(text(peer), peer)
"""

CLIENT = r"""
import socket, sys
proto, host, port, timeout, sport = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
try:
    s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(timeout)
    if sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("", sport))
    if proto == "tcp":
        s.connect((host, port))
        print(s.recv(200).decode())
    else:
        for _ in range(3):
            s.sendto(b"hi", (host, port))
            try:
                print(s.recvfrom(200)[0].decode())
                break
            except socket.timeout:
                continue
        else:
            print("FAIL timeout")
except OSError as exc:
    print(f"FAIL {exc}")
"""


class Servers:
    """Servers started in namespaces; stopped (and reaped) at the end of the test."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, ns: str, port: int, name: str, proto: str = "tcp") -> None:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "python3", "-c", SERVER, proto, str(port), name],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", f"server {name} did not start"

    def stop(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
            if proc.stdout:
                proc.stdout.close()
        self.procs.clear()


def fetch(ns: str, host: str, port: int, proto: str = "tcp", *, timeout: float = 2.0, sport: int = 0) -> str:
    """What the server at host:port answers ('<name> <peer address>'), or 'FAIL ...'."""
    out = sh(
        "python3",
        "-c",
        CLIENT,
        proto,
        host,
        str(port),
        str(timeout),
        str(sport),
        ns=ns,
        check=False,
        timeout=timeout * 4 + 10,
    )
    return out.stdout.strip() or f"FAIL {out.stderr.strip()}"


def answers(ns: str, host: str, port: int, expect: str, proto: str = "tcp", timeout: float = 5.0) -> bool:
    """Poll until the server at host:port answers with a text starting with ``expect``."""
    return poll(lambda: fetch(ns, host, port, proto, timeout=1.0).startswith(expect), timeout=timeout, interval=0.1)


@dataclass
class Host:
    """A host namespace with an outside world, and the plugins installed in ``cni_bin``."""

    namespaces: Namespaces
    ns: str
    cni_bin: Path
    tmp_path: Path
    wan: str = ""
    attached: list[tuple[list[dict[str, Any]], str, str, str]] = field(default_factory=list)

    def setup(self, *, routes_back: bool = True) -> Host:
        self.wan = self.namespaces.make("wan")
        sh("ip", "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", self.wan, ns=self.ns)
        sh("ip", "addr", "add", f"{WAN_HOST}/24", "dev", "wan0", ns=self.ns)
        sh("ip", "addr", "add", f"{WAN6_HOST}/64", "dev", "wan0", "nodad", ns=self.ns)
        sh("ip", "link", "set", "wan0", "up", ns=self.ns)
        sh("ip", "addr", "add", f"{WAN_PEER}/24", "dev", "eth0", ns=self.wan)
        sh("ip", "addr", "add", f"{WAN6_PEER}/64", "dev", "eth0", "nodad", ns=self.wan)
        sh("ip", "link", "set", "eth0", "up", ns=self.wan)
        if routes_back:
            sh("ip", "route", "add", "10.0.0.0/8", "via", WAN_HOST, ns=self.wan)
            sh("ip", "-6", "route", "add", "fd00::/8", "via", WAN6_HOST, ns=self.wan)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", ns=self.ns)
        return self

    def bridge(
        self, name: str, bridge: str, subnet: str, subnet6: str = "", version: str = "1.0.0", **opts: Any
    ) -> dict[str, Any]:
        ranges: list[Any] = [[{"subnet": subnet}]] + ([[{"subnet": subnet6}]] if subnet6 else [])
        routes = [{"dst": "0.0.0.0/0"}] + ([{"dst": "::/0"}] if subnet6 else [])
        ipam = {"type": "host-local", "dataDir": str(self.tmp_path / "ipam"), "ranges": ranges, "routes": routes}
        return {
            "cniVersion": version,
            "name": name,
            "type": "bridge",
            "bridge": bridge,
            "isGateway": True,
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": ipam,
            **opts,
        }

    def run(
        self, plugin: str, command: str, conf: dict[str, Any], ctr: str, cid: str, ifname: str = "eth0"
    ) -> PluginRun:
        return run_plugin(
            self.cni_bin,
            plugin,
            command,
            conf,
            netns=path(ctr) if ctr else "",
            container_id=cid,
            ifname=ifname,
            host_ns=self.ns,
        )

    def add(
        self, chain: list[dict[str, Any]], ctr: str, cid: str, ifname: str = "eth0"
    ) -> tuple[dict[str, Any] | None, PluginRun]:
        """ADD through the chain as libcni does (prevResult threaded); on a failure, DEL what was
        added, in reverse. Returns (final result or None, the last run)."""
        prev: dict[str, Any] | None = None
        done: list[dict[str, Any]] = []
        run = None
        for conf in chain:
            c = dict(conf, prevResult=prev) if prev is not None else dict(conf)
            run = self.run(conf["type"], "ADD", c, ctr, cid, ifname)
            if run.rc != 0:
                for d in reversed(done):
                    self.run(d["type"], "DEL", dict(d, prevResult=prev) if prev else d, ctr, cid, ifname)
                return None, run
            done.append(conf)
            prev = run.json
        assert run is not None
        self.attached.append((chain, ctr, cid, ifname))
        return prev, run

    def must_add(self, chain: list[dict[str, Any]], ctr: str, cid: str, ifname: str = "eth0") -> dict[str, Any]:
        result, run = self.add(chain, ctr, cid, ifname)
        assert result is not None, f"ADD failed: {run.stdout} {run.stderr}"
        return result

    def each(
        self,
        command: str,
        chain: list[dict[str, Any]],
        result: dict[str, Any] | None,
        ctr: str,
        cid: str,
        ifname: str = "eth0",
    ) -> list[PluginRun]:
        """CHECK (in order) or DEL (in reverse) with ``result`` as prevResult (None: without)."""
        confs = chain if command == "CHECK" else list(reversed(chain))
        return [
            self.run(c["type"], command, dict(c, prevResult=result) if result is not None else c, ctr, cid, ifname)
            for c in confs
        ]

    def delete(
        self, chain: list[dict[str, Any]], result: dict[str, Any] | None, ctr: str, cid: str, ifname: str = "eth0"
    ) -> None:
        for run in self.each("DEL", chain, result, ctr, cid, ifname):
            run.ok()
        self.attached = [a for a in self.attached if a[1:] != (ctr, cid, ifname)]


def nft_table(ns: str, family: str, table: str) -> dict[str, Any]:
    """Sets/maps (name -> elements) and chains (name -> rule count) of one table; {} if absent."""
    proc = sh("nft", "-j", "list", "table", family, table, ns=ns, check=False)
    if proc.returncode != 0:
        return {}
    out: dict[str, Any] = {}
    for item in json.loads(proc.stdout)["nftables"]:
        for kind in ("map", "set"):
            if kind in item:
                out[item[kind]["name"]] = item[kind].get("elem", [])
    return out


def elements(ns: str, family: str, table: str) -> int:
    return sum(len(v) for v in nft_table(ns, family, table).values())
