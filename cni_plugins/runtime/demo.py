"""The README's demo: two containers on a bridge, driven by our cnitool on throwaway namespaces.

A namespace stands for the host (the bridge, forwarding and masquerade live there), one for
the outside world (reachable from the host, with no route back to the container subnet),
and one per container. One conflist: ``bridge`` (isDefaultGateway, ipMasq, host-local
IPAM), ``loopback``, then ``portmap`` (the ``portMappings`` capability). The demo checks
that the containers reach each other, their gateway, and the outside world, which sees the
host's address as the source (masquerade); that a port published by container 1 (host
port 8080 -> 80) is reached from the host (127.0.0.1 and its outside address) and from the
outside world; then CHECKs, DELs and shows that nothing is left behind. The machine itself is never
touched, and everything is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

NETWORK, BRIDGE, SUBNET, GATEWAY = "demo-br", "cnidemo0", "10.99.0.0/24", "10.99.0.1"
HOST_OUT, WORLD = "198.51.100.1", "198.51.100.2"  # host's outside address, the outside world
PORT = 7777
HOST_PORT, CTR_PORT = 8080, 80  # published by container 1 (portmap)


def server_code(port: int) -> str:
    return (
        "import socket, sys; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
        f"s.bind(('0.0.0.0', {port})); s.listen(8); print('ready', flush=True)\n"
        "while True:\n c, peer = s.accept(); c.sendall(peer[0].encode()); c.close()"
    )


def client_code(addr: str, port: int) -> str:
    return f"import socket; s = socket.create_connection(('{addr}', {port}), timeout=3); print(s.recv(64).decode())"


SERVER = server_code(PORT)
CLIENT = client_code(WORLD, PORT)
PUBLISH = json.dumps({"portMappings": [{"hostPort": HOST_PORT, "containerPort": CTR_PORT, "protocol": "tcp"}]})


class DemoFailed(Exception):
    pass


def sh(*argv: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise DemoFailed(f"{' '.join(argv)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def inside(ns: str, *argv: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check, env=env)


def say(msg: str) -> None:
    print(f"--- {msg}", flush=True)


def check(label: str, ok: bool, detail: str = "") -> None:
    print(f"    {'ok  ' if ok else 'FAIL'} {label}{f'  ({detail})' if detail else ''}", flush=True)
    if not ok:
        raise DemoFailed(label)


def conflist(work: Path) -> dict[str, Any]:
    ipam = {"type": "host-local", "ranges": [[{"subnet": SUBNET}]], "dataDir": str(work / "ipam")}
    bridge = {"type": "bridge", "bridge": BRIDGE, "isDefaultGateway": True, "ipMasq": True, "ipam": ipam}
    portmap = {"type": "portmap", "capabilities": {"portMappings": True}}
    return {"cniVersion": "1.1.0", "name": NETWORK, "plugins": [bridge, {"type": "loopback"}, portmap]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cni-py demo")
    parser.add_argument("--cni-path", default="/opt/cni/bin")
    opts = parser.parse_args(argv)
    tag = f"cnidemo-{os.getpid()}"
    host, world, ctrs = f"{tag}-host", f"{tag}-world", [f"{tag}-ctr1", f"{tag}-ctr2"]
    work = Path(tempfile.mkdtemp(prefix="cni-py-demo-"))
    cnitool = shutil.which("cnitool", path=str(Path(sys.executable).parent)) or "cnitool"
    made: list[str] = []
    server: subprocess.Popen[str] | None = None
    published: subprocess.Popen[str] | None = None
    try:
        (work / "net.d").mkdir()
        (work / "net.d" / "10-demo-br.conflist").write_text(json.dumps(conflist(work), indent=2))
        for ns in (host, world, *ctrs):
            sh("ip", "netns", "add", ns)
            made.append(ns)
            inside(ns, "ip", "link", "set", "lo", "up")
        say(f"namespaces: {host} (the host), {world} (the outside world, no route back to {SUBNET}), 2 containers")
        inside(host, "ip", "link", "add", "uplink", "type", "veth", "peer", "name", "eth0", "netns", world)
        for ns, dev, addr in ((host, "uplink", HOST_OUT), (world, "eth0", WORLD)):
            inside(ns, "ip", "addr", "add", f"{addr}/24", "dev", dev)
            inside(ns, "ip", "link", "set", dev, "up")
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "NETCONFPATH": str(work / "net.d"),
            "CNI_PATH": opts.cni_path,
            "CNI_CACHE_DIR": str(work / "cache"),
        }
        say(f"conflist {NETWORK}: bridge {BRIDGE} (isDefaultGateway, ipMasq, host-local {SUBNET}) + loopback + portmap")
        ips = []
        for i, ctr in enumerate(ctrs):
            cap = {"CAP_ARGS": PUBLISH} if i == 0 else {}  # container 1 publishes a port
            result = json.loads(inside(host, cnitool, "add", NETWORK, f"/var/run/netns/{ctr}", env=env | cap).stdout)
            ips.append(result["ips"][0]["address"].split("/")[0])
            say(f"cnitool add {NETWORK} {ctr}: eth0 {result['ips'][0]['address']} via {result['ips'][0]['gateway']}")
        for (src, dst), target in (((0, 1), ips[1]), ((1, 0), ips[0])):
            check(f"container {src + 1} pings container {dst + 1} ({target})", inside(ctrs[src], "ping", "-c1", "-W2", target, check=False).returncode == 0)
        check(f"container 1 pings its gateway ({GATEWAY})", inside(ctrs[0], "ping", "-c1", "-W2", GATEWAY, check=False).returncode == 0)
        server = subprocess.Popen(["ip", "netns", "exec", world, sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
        if server.stdout is None or server.stdout.readline().strip() != "ready":
            raise DemoFailed("the outside world's server did not start")
        for i, ctr in enumerate(ctrs):
            seen = inside(ctr, sys.executable, "-c", CLIENT, check=False).stdout.strip()
            check(f"container {i + 1} reaches {WORLD}:{PORT} outside; it sees the source {seen or '-'}", seen == HOST_OUT, f"the host's {HOST_OUT}: masqueraded")
        entries = json.loads(inside(host, "nft", "-j", "list", "map", "inet", "cni_py_masq", "masq4").stdout)["nftables"][1]["map"].get("elem", [])
        check(f"masquerade entries in nft table inet cni_py_masq: {len(entries)}", len(entries) == 2)
        say(f"container 1 publishes port {CTR_PORT} as host port {HOST_PORT} (CAP_ARGS {PUBLISH})")
        published = subprocess.Popen(["ip", "netns", "exec", ctrs[0], sys.executable, "-c", server_code(CTR_PORT)], stdout=subprocess.PIPE, text=True)
        if published.stdout is None or published.stdout.readline().strip() != "ready":
            raise DemoFailed("container 1's server did not start")
        for where, ns, addr in (("the host", host, "127.0.0.1"), ("the host", host, HOST_OUT), ("the outside world", world, HOST_OUT)):
            seen = inside(ns, sys.executable, "-c", client_code(addr, HOST_PORT), check=False).stdout.strip()
            check(f"{where} reaches {addr}:{HOST_PORT} -> container 1 ({ips[0]}:{CTR_PORT}); it sees the source {seen or '-'}", bool(seen))
        for i, ctr in enumerate(ctrs):
            inside(host, cnitool, "check", NETWORK, f"/var/run/netns/{ctr}", env=env | ({"CAP_ARGS": PUBLISH} if i == 0 else {}))
        check("cnitool check, both containers", True)
        for i, ctr in enumerate(ctrs):
            inside(host, cnitool, "del", NETWORK, f"/var/run/netns/{ctr}", env=env | ({"CAP_ARGS": PUBLISH} if i == 0 else {}))
        say(f"cnitool del {NETWORK}, both containers")
        left_veths = [line for line in inside(host, "ip", "-br", "link", "show", "type", "veth").stdout.splitlines() if not line.startswith("uplink")]
        left_ips = [n for n in os.listdir(work / "ipam" / NETWORK) if n[0].isdigit()]
        left_nft = json.loads(inside(host, "nft", "-j", "list", "map", "inet", "cni_py_masq", "masq4").stdout)["nftables"][1]["map"].get("elem", [])
        left_ports = json.loads(inside(host, "nft", "-j", "list", "map", "inet", "cni_py_portmap", "any4_addr").stdout)["nftables"][1]["map"].get("elem", [])
        check(
            f"left behind: {len(left_veths)} veths, {len(left_ips)} IP reservations, {len(left_nft)} masquerade entries, {len(left_ports)} port mappings",
            not (left_veths or left_ips or left_nft or left_ports),
        )
        say("demo finished: all checks passed")
        return 0
    except DemoFailed as exc:
        print(f"demo: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        for proc in (server, published):
            if proc is not None:
                proc.kill()
                proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
        for ns in reversed(made):
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
