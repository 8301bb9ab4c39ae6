"""Pod networks across nodes on the multi-node bed (tests/integration/clusterbed.py): each node
runs its agent (``cni-plugins node run``, foreground), leases a subnet from the cluster CIDR
in etcd, and pods attached through the node's conflist reach pods on other nodes, in
``routed`` and ``vxlan`` mode; two pod networks stay apart; a stopped node's subnet goes to
another node after its lease runs out; an agent restarts without breaking pods; the agent
as a systemd service."""

from __future__ import annotations

import ipaddress
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cni_plugins.etcd.client import Client, prefix_end
from tests.integration.clusterbed import ETCD_URL, PYTHON, Bed, Node, etcd_available
from tests.integration.nsutil import Namespaces, ip_json, ping, poll, sh

pytestmark = pytest.mark.skipif(bool(etcd_available()), reason=etcd_available() or "etcd available")

TCP_SERVER = """
import hashlib, socket, sys
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
conn, _ = srv.accept()
digest, total = hashlib.sha256(), 0
while data := conn.recv(65536):
    digest.update(data); total += len(data)
conn.sendall(f"{total} {digest.hexdigest()}".encode())
conn.close()
"""

TCP_CLIENT = """
import hashlib, os, socket, sys
data = os.urandom(int(sys.argv[3]))
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[4]))
conn.sendall(data)
conn.shutdown(socket.SHUT_WR)
print(conn.recv(200).decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}")
"""


@pytest.fixture
def bed(namespaces: Namespaces, tmp_path: Path, cni_bin: Path) -> Iterator[Bed]:
    b = Bed(namespaces, tmp_path, cni_bin)
    try:
        b.start_etcd()
        for _ in range(3):
            b.add_node()
        yield b
    finally:
        b.close()


def tcp_ok(server_ns: str, server_ip: str, client_ns: str, size: int = 1 << 20, timeout: float = 10) -> bool:
    """``size`` random bytes from a pod to another over TCP, checked by length and SHA-256."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, PYTHON, "-c", TCP_SERVER, server_ip, "7777"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        out = sh(PYTHON, "-c", TCP_CLIENT, server_ip, "7777", str(size), str(timeout), ns=client_ns, check=False)
        return out.stdout.strip() == "True"
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


def remote_routes(node: Node, network: str = "10.244.0.0/16") -> dict[str, str]:
    """dst -> gateway of the node's routes into the cluster CIDR via a gateway."""
    net = ipaddress.IPv4Network(network)
    return {
        r["dst"]: r["gateway"]
        for r in ip_json("route", "show", ns=node.ns)
        if "gateway" in r and "/" in r["dst"] and ipaddress.IPv4Network(r["dst"]).subnet_of(net)
    }


def wait_routes(nodes: list[Node], count: int, network: str = "10.244.0.0/16") -> None:
    assert poll(lambda: all(len(remote_routes(n, network)) == count for n in nodes), timeout=15), {
        n.name: remote_routes(n, network) for n in nodes
    }


def lease_ids(bed: Bed, prefix: str = "/cni-py") -> dict[str, int]:
    """subnet key -> the etcd lease it is bound to."""
    start = f"{prefix}/network/subnets/".encode()

    def read(client: Client) -> dict[str, int]:
        kvs, _ = client.range(start, prefix_end(start))
        return {kv.key.decode(): kv.lease for kv in kvs}

    return bed.in_etcd(read)


def mtu(ns: str, ifname: str = "eth0") -> int:
    return int(ip_json("link", "show", "dev", ifname, ns=ns)[0]["mtu"])


@pytest.mark.parametrize("mode", ["routed", "vxlan"])
def test_pods_reach_each_other_across_nodes_and_survive_an_agent_restart(bed: Bed, mode: str) -> None:
    bed.init_network(mode)
    nodes = bed.nodes
    for node in nodes:
        node.start_agent()
    subnets = [node.subnet() for node in nodes]
    cluster = ipaddress.IPv4Network("10.244.0.0/16")
    assert len(set(subnets)) == 3 and all(ipaddress.IPv4Network(s).subnet_of(cluster) for s in subnets)
    wait_routes(nodes, 2)
    n1 = nodes[0]
    if mode == "routed":
        assert remote_routes(n1) == {subnets[1]: nodes[1].ip, subnets[2]: nodes[2].ip}
    else:
        dev = ip_json("-d", "link", "show", "dev", "cnipy.1", ns=n1.ns)[0]
        vx = dev["linkinfo"]["info_data"]
        assert (vx["id"], vx["port"], vx["local"], vx.get("learning")) == (1, 8472, n1.ip, False)
        assert dev["mtu"] == 1450
        fdb = sh("bridge", "fdb", "show", "dev", "cnipy.1", ns=n1.ns).stdout
        assert all(f"dst {n.ip} self permanent" in fdb for n in nodes[1:]), fdb
        assert remote_routes(n1) == {s: s.split("/")[0] for s in subnets[1:]}
    pods = [node.pod("p") for node in nodes]
    same_node = n1.pod("q")
    for ns, ip in pods:
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(subnets[pods.index((ns, ip))])
        assert mtu(ns) == (1450 if mode == "vxlan" else 1500)
    for a_ns, _ in [*pods, same_node]:
        for b_ns, b_ip in [*pods, same_node]:
            if a_ns != b_ns:
                assert ping(a_ns, b_ip), f"{a_ns} -> {b_ip} ({mode})"
    assert tcp_ok(pods[2][0], pods[2][1], pods[0][0]), f"TCP n1 -> n3 ({mode})"
    if mode == "vxlan":  # the overlay's MTU holds end to end, not a byte more
        assert (
            sh(
                "ping", "-M", "do", "-s", "1422", "-c", "1", "-W", "2", pods[1][1], ns=pods[0][0], check=False
            ).returncode
            == 0
        )
        too_big = sh("ping", "-M", "do", "-s", "1423", "-c", "1", "-W", "2", pods[1][1], ns=pods[0][0], check=False)
        assert too_big.returncode != 0 and "mtu=1450" in too_big.stdout + too_big.stderr

    # The agent of n2 stops and starts again: pods keep working throughout, nothing moves.
    n2 = nodes[1]
    before = {n.name: remote_routes(n) for n in nodes}
    assert n2.stop_agent(signal.SIGTERM) == 0
    assert ping(pods[0][0], pods[1][1]) and ping(pods[1][0], pods[2][1])
    assert {n.name: remote_routes(n) for n in nodes} == before
    n1_log = n1.log_text()
    n2.start_agent()
    assert n2.subnet() == subnets[1] and "kept subnet" in n2.log_text()
    time.sleep(0.5)
    assert {n.name: remote_routes(n) for n in nodes} == before
    assert n1.log_text() == n1_log, "the other nodes saw a change"
    assert ping(pods[0][0], pods[1][1]) and tcp_ok(pods[1][0], pods[1][1], pods[2][0])
    for node, (ns, _) in zip(nodes, pods, strict=True):
        out = node.cnitool("del", ns)
        assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("mode", ["routed", "vxlan"])
def test_two_pod_networks_stay_apart_across_nodes(bed: Bed, mode: str) -> None:
    bed.init_network(mode, "10.244.0.0/16", "/cni-py/a")
    bed.init_network(mode, "10.245.0.0/16", "/cni-py/b", "--vni", "2")
    n1, n2 = bed.nodes[0], bed.nodes[1]
    for node in (n1, n2):
        node.start_agent("--bridge", "cnia", net="a", prefix="/cni-py/a")
        node.start_agent("--bridge", "cnib", net="b", prefix="/cni-py/b")
    wait_routes([n1, n2], 1, "10.244.0.0/16")
    wait_routes([n1, n2], 1, "10.245.0.0/16")
    a1, a2 = n1.pod("a", net="a"), n2.pod("a", net="a")
    b1, b2 = n1.pod("b", net="b"), n2.pod("b", net="b")
    assert ping(a1[0], a2[1]) and ping(a2[0], a1[1]), "network a across nodes"
    assert ping(b1[0], b2[1]) and ping(b2[0], b1[1]), "network b across nodes"
    for src, dst in ((a1, b2), (b2, a1), (a2, b1), (b1, a2), (a1, b1)):
        assert not ping(src[0], dst[1], timeout=1), f"{src[1]} reached {dst[1]} in another pod network"
    assert not tcp_ok(b2[0], b2[1], a1[0], 1024, timeout=1)
    assert ping(n1.ns, b2[1]), "the node itself is not a pod network: it reaches every pod"
    table = sh("nft", "list", "table", "inet", "cni_py_node", ns=n1.ns).stdout
    assert "10.244.0.0/16 : jump net-a" in table and "10.245.0.0/16 : jump net-b" in table


def test_a_stopped_node_loses_its_subnet_which_another_node_takes(bed: Bed) -> None:
    bed.init_network("vxlan", "10.244.0.0/22")  # /24s from the second: three subnets
    n1, n2, n3 = bed.nodes
    started = time.monotonic()
    for node in bed.nodes:
        node.start_agent(ttl=2)
    wait_routes(bed.nodes, 2, "10.244.0.0/22")
    lost = n3.subnet()
    granted = lease_ids(bed)
    pod1 = n1.pod("p")
    n4 = bed.add_node()
    full = subprocess.run(
        ["ip", "netns", "exec", n4.ns, PYTHON, "-m", "cni_plugins.install", "node", "run", *n4.agent_argv()],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert full.returncode == 1 and "every /24 of 10.244.0.0/22 is leased" in full.stderr, full.stderr

    n3.stop_agent(signal.SIGKILL)  # the node dies without a word
    start = time.monotonic()
    key = f"/cni-py/network/subnets/{lost.replace('/', '-')}"
    assert poll(lambda: key not in bed.etcd_keys(key), timeout=10), "n3's lease did not expire"
    expired = time.monotonic() - start
    assert expired > 1.0, f"the lease went after {expired:.1f} s, before its TTL"
    # The live nodes renewed theirs: the same etcd leases, alive after more than twice the TTL.
    time.sleep(max(started + 2 * 2 + 0.5 - time.monotonic(), 0))
    assert lease_ids(bed) == {k: v for k, v in granted.items() if lost.split("/")[0] not in k}
    assert "expired" not in n1.log_text() + n2.log_text()
    assert poll(
        lambda: lost not in remote_routes(n1, "10.244.0.0/22") and lost not in remote_routes(n2, "10.244.0.0/22"),
        timeout=5,
    )
    n4.start_agent(ttl=2)
    assert n4.subnet() == lost
    assert poll(lambda: remote_routes(n1, "10.244.0.0/22").get(lost) == lost.split("/")[0], timeout=5)
    fdb = sh("bridge", "fdb", "show", "dev", "cnipy.1", ns=n1.ns).stdout
    assert f"dst {n4.ip} self permanent" in fdb and f"dst {n3.ip} " not in fdb
    pod4 = n4.pod("p")
    assert ping(pod4[0], pod1[1]) and ping(pod1[0], pod4[1])


def test_the_node_conflist_with_cluster_ipam(bed: Bed) -> None:
    """``--ipam cluster-ipam``: the conflist the agent writes takes addresses of the node's
    subnet from etcd; pods so attached reach each other across nodes, DEL gives them back."""
    bed.init_network("routed")
    n1, n2 = bed.nodes[0], bed.nodes[1]
    for node in (n1, n2):
        node.start_agent("--ipam", "cluster-ipam")
    wait_routes([n1, n2], 1)
    ipam = n1.conflist()["plugins"][0]["ipam"]
    assert ipam["type"] == "cluster-ipam" and ipam["nodeName"] == "n1", ipam
    assert ipam["etcd"] == {"endpoints": [ETCD_URL], "prefix": "/cni-py", "timeout": 1.0}
    assert ipam["ranges"] == [[{"subnet": n1.subnet()}]]
    pods = [n1.pod("p"), n2.pod("p"), n1.pod("q")]
    base = "/cni-py/ipam/cluster/ips/"
    held = {k[len(base) :]: v for k, v in bed.etcd_keys(base).items()}
    assert sorted(held) == sorted(ip for _, ip in pods)
    owners = bed.etcd_keys("/cni-py/ipam/cluster/owners/")
    assert sorted(owners.values()) == ["n1", "n1", "n2"]
    assert ping(pods[0][0], pods[1][1]) and ping(pods[1][0], pods[2][1])
    for node, (ns, _) in zip((n1, n2, n1), pods, strict=True):
        out = node.cnitool("del", ns)
        assert out.returncode == 0, out.stderr
    assert bed.etcd_keys(base) == {} and bed.etcd_keys("/cni-py/ipam/cluster/owners/") == {}


def test_agents_ride_out_an_etcd_outage(bed: Bed) -> None:
    bed.init_network("routed")
    n1, n2, n3 = bed.nodes
    for node in (n1, n2):
        node.start_agent(ttl=2)
    wait_routes([n1, n2], 1)
    before = remote_routes(n1)
    bed.stop_etcd(signal.SIGTERM)
    time.sleep(3)  # longer than the TTL: no node can renew, and none loses anything
    assert remote_routes(n1) == before and n1.agent is not None and n1.agent.poll() is None
    bed.start_etcd(fresh=False)
    n3.start_agent(ttl=2)  # a node that joins after the outage is seen by the others
    wait_routes([n1, n2, n3], 2)
    assert remote_routes(n1) == {**before, n3.subnet(): n3.ip}
    assert "kept subnet" not in n1.log_text() and "expired" not in n1.log_text()


def test_leave_gives_everything_back(bed: Bed) -> None:
    bed.init_network("vxlan")
    n1, n2 = bed.nodes[0], bed.nodes[1]
    for node in (n1, n2):
        node.start_agent(ttl=30)
    wait_routes([n1, n2], 1)
    assert n2.stop_agent() == 0
    sh(PYTHON, "-m", "cni_plugins.install", "node", "leave", *n2.agent_argv(ttl=30), ns=n2.ns)
    assert bed.etcd_keys("/cni-py/network/subnets/").keys() == {
        f"/cni-py/network/subnets/{n1.subnet().replace('/', '-')}"
    }
    assert poll(lambda: remote_routes(n1) == {}, timeout=5)
    assert "cnipy.1" not in sh("ip", "link", ns=n2.ns).stdout
    assert "net-cluster" not in sh("nft", "list", "ruleset", ns=n2.ns).stdout
    assert not (n2.conf_dir / "10-cluster.conflist").exists()


def test_the_agent_as_a_systemd_service(bed: Bed, tmp_path: Path) -> None:
    """``node unit`` writes a service systemd accepts; its ExecStart, run as systemd runs it
    (NOTIFY_SOCKET), says READY=1 once the node is set up, and stops on SIGTERM."""
    bed.init_network("routed")
    n1 = bed.nodes[0]
    unit_dir = tmp_path / "units"
    sh(PYTHON, "-m", "cni_plugins.install", "node", "unit", *n1.agent_argv(), "--unit-dir", str(unit_dir))
    unit = unit_dir / "cni-py-node.service"
    settings = dict(line.split("=", 1) for line in unit.read_text().splitlines() if "=" in line)
    assert settings["Type"] == "notify" and settings["Restart"] == "always" and settings["KillMode"] == "process"
    if subprocess.run(["which", "systemd-analyze"], capture_output=True).returncode == 0:
        verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert "cni-py-node.service" not in verify.stderr or "Failed" not in verify.stderr, verify.stderr
    notify_path = tmp_path / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify_path))
    listener.settimeout(20)
    argv = shlex.split(settings["ExecStart"].replace("$$", "$").replace("%%", "%"))
    proc = subprocess.Popen(
        ["ip", "netns", "exec", n1.ns, *argv],
        env={"NOTIFY_SOCKET": str(notify_path), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    bed.agents.append(proc)
    try:
        message = listener.recv(4096).decode()
        assert "READY=1" in message and "subnet 10.244." in message, message
        assert n1.subnet().startswith("10.244.")
    finally:
        listener.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        with proc.stderr:
            assert "stopped" in proc.stderr.read().decode()
