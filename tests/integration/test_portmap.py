"""portmap in real namespaces, chained after our bridge + host-local, exec'd inside a
namespace standing for the host. Servers run in the containers; clients on the host
(loopback, host addresses), in an outside namespace, and in containers (hairpin)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.spec.version import SUPPORTED_VERSIONS, at_least
from tests.integration.chainutil import (
    WAN6_HOST,
    WAN_HOST,
    WAN_PEER,
    Host,
    Servers,
    answers,
    elements,
    fetch,
    nft_table,
)
from tests.integration.nsutil import Namespaces, path, sh

GW = "10.66.0.1"


@pytest.fixture
def host(namespaces: Namespaces, host_ns: str, cni_bin: Path, tmp_path: Path) -> Iterator[Host]:
    h = Host(namespaces=namespaces, ns=host_ns, cni_bin=cni_bin, tmp_path=tmp_path).setup()
    yield h
    for chain, ctr, cid, ifname in reversed(h.attached):  # tidy even when a test failed half-way
        h.each("DEL", chain, None, ctr, cid, ifname)


@pytest.fixture
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    s.stop()


def pm(host: int, ctr: int, proto: str = "tcp", host_ip: str = "") -> dict[str, Any]:
    return {"hostPort": host, "containerPort": ctr, "protocol": proto, **({"hostIP": host_ip} if host_ip else {})}


def chain(
    h: Host, mappings: list[dict[str, Any]], version: str = "1.0.0", subnet6: str = "", net: str = "pmnet", **opts: Any
) -> list[dict[str, Any]]:
    bridge = h.bridge(net, "cnipm0", "10.66.0.0/24", subnet6, version=version)
    portmap = {
        "cniVersion": version,
        "name": net,
        "type": "portmap",
        "runtimeConfig": {"portMappings": mappings},
        **opts,
    }
    return [bridge, portmap]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_tcp_from_loopback_host_addresses_and_outside(
    host: Host, namespaces: Namespaces, servers: Servers, version: str
) -> None:
    ctr = namespaces.make("ctr")
    c = chain(host, [pm(8080, 80)], version)
    result = host.must_add(c, ctr, "ctr-a")
    servers.start(ctr, 80, "A")
    assert answers(host.ns, "127.0.0.1", 8080, "A"), fetch(host.ns, "127.0.0.1", 8080)
    assert fetch(host.ns, WAN_HOST, 8080).startswith("A ")
    assert fetch(host.ns, GW, 8080).startswith("A ")
    assert fetch(host.wan, WAN_HOST, 8080) == f"A {WAN_PEER}"  # from outside, not masqueraded
    assert sh("sysctl", "-n", "net.ipv4.conf.cnipm0.route_localnet", ns=host.ns).stdout.strip() == "1"
    if at_least(version, "0.4.0"):
        assert all(r.rc == 0 for r in host.each("CHECK", c, result, ctr, "ctr-a"))
    host.delete(c, result, ctr, "ctr-a")
    assert fetch(host.wan, WAN_HOST, 8080, timeout=1).startswith("FAIL")
    assert elements(host.ns, "inet", "cni_py_portmap") == 0
    assert all(r.rc == 0 for r in host.each("DEL", c, result, ctr, "ctr-a"))  # again: nothing left, still fine


def test_udp_and_stale_conntrack_entries(host: Host, namespaces: Namespaces, servers: Servers) -> None:
    ctr, other = namespaces.make("ctr"), namespaces.make("other")
    host.must_add(chain(host, [pm(8080, 80)]), other, "ctr-other")  # conntrack is active on the host
    # a flow to the host port from before the mapping: conntrack would keep it away from the container
    assert fetch(host.wan, WAN_HOST, 5353, "udp", timeout=0.3, sport=40000).startswith("FAIL")
    assert "dport=5353" in sh("conntrack", "-L", "-p", "udp", ns=host.ns, check=False).stdout
    c = chain(host, [pm(5353, 53, "udp")])
    result = host.must_add(c, ctr, "ctr-a")
    servers.start(ctr, 53, "A", "udp")
    assert (
        fetch(host.wan, WAN_HOST, 5353, "udp", sport=40000) == f"A {WAN_PEER}"
    )  # same source port: the stale entry was removed
    assert answers(host.ns, "127.0.0.1", 5353, "A", "udp")
    host.delete(c, result, ctr, "ctr-a")
    assert (
        "dport=5353" not in sh("conntrack", "-L", "-p", "udp", ns=host.ns, check=False).stdout
    )  # DEL removed the flows too


def test_hairpin_to_itself_and_from_a_neighbour(host: Host, namespaces: Namespaces, servers: Servers) -> None:
    a, b = namespaces.make("a"), namespaces.make("b")
    ca = chain(host, [pm(8080, 80)])
    host.must_add(ca, a, "ctr-a")
    host.must_add([ca[0]], b, "ctr-b")  # a neighbour without mappings
    servers.start(a, 80, "A")
    assert answers(a, WAN_HOST, 8080, "A"), fetch(a, WAN_HOST, 8080)
    assert (
        fetch(a, WAN_HOST, 8080) == f"A {GW}"
    )  # masqueraded to the bridge address: replies come back through the host
    assert fetch(b, WAN_HOST, 8080) == f"A {GW}"
    assert fetch(b, GW, 8080) == f"A {GW}"


def test_two_containers_and_del_of_one(host: Host, namespaces: Namespaces, servers: Servers) -> None:
    a, b = namespaces.make("a"), namespaces.make("b")
    ca, cb = chain(host, [pm(8080, 80)]), chain(host, [pm(8081, 80)])
    ra = host.must_add(ca, a, "ctr-a")
    host.must_add(cb, b, "ctr-b")
    servers.start(a, 80, "A")
    servers.start(b, 80, "B")
    assert answers(host.wan, WAN_HOST, 8080, "A") and answers(host.wan, WAN_HOST, 8081, "B")
    host.delete(ca, ra, a, "ctr-a")
    assert fetch(host.wan, WAN_HOST, 8080, timeout=1).startswith("FAIL")
    assert fetch(host.wan, WAN_HOST, 8081) == f"B {WAN_PEER}"


def test_newest_wins_and_the_late_del_leaves_it(host: Host, namespaces: Namespaces, servers: Servers) -> None:
    a, b = namespaces.make("a"), namespaces.make("b")
    c = chain(host, [pm(8080, 80)])
    ra = host.must_add(c, a, "ctr-a")
    servers.start(a, 80, "A")
    servers.start(b, 80, "B")
    assert answers(host.wan, WAN_HOST, 8080, "A")
    rb = host.must_add(c, b, "ctr-b")  # the replacement, before the old one's DEL
    assert answers(host.wan, WAN_HOST, 8080, "B")
    host.delete(c, ra, a, "ctr-a")  # the late DEL of the old container
    assert fetch(host.wan, WAN_HOST, 8080) == f"B {WAN_PEER}"
    assert all(r.rc == 0 for r in host.each("CHECK", c, rb, b, "ctr-b"))
    host.delete(c, rb, b, "ctr-b")
    assert fetch(host.wan, WAN_HOST, 8080, timeout=1).startswith("FAIL")


def test_exclusive_host_ports_refuses_a_taken_port(host: Host, namespaces: Namespaces, servers: Servers) -> None:
    a, b = namespaces.make("a"), namespaces.make("b")
    host.must_add(chain(host, [pm(8080, 80)]), a, "ctr-a")
    servers.start(a, 80, "A")
    result, run = host.add(chain(host, [pm(8081, 80), pm(8080, 80)], exclusiveHostPorts=True), b, "ctr-b")
    assert result is None and run.rc == 1
    assert run.json["msg"] == "host tcp port 8080 on all IPv4 addresses is already mapped by net:pmnet if:eth0 id:ctr-a"
    assert answers(host.wan, WAN_HOST, 8080, "A")
    assert fetch(host.wan, WAN_HOST, 8081, timeout=1).startswith("FAIL")  # nothing of the refused ADD stayed


def test_ipv6_and_host_ip(host: Host, namespaces: Namespaces, servers: Servers) -> None:
    ctr = namespaces.make("ctr")
    c = chain(
        host, [pm(8080, 80), pm(9090, 90, host_ip=WAN_HOST), pm(9191, 91, host_ip=WAN6_HOST)], subnet6="fd00:66::/64"
    )
    result = host.must_add(c, ctr, "ctr-a")
    servers.start(ctr, 80, "A")
    servers.start(ctr, 90, "A90")
    servers.start(ctr, 91, "A91")
    assert answers(host.wan, WAN6_HOST, 8080, "A", timeout=10), fetch(host.wan, WAN6_HOST, 8080)
    assert fetch(host.wan, WAN6_HOST, 8080) == "A 2001:db8:2::2"
    assert fetch(host.wan, WAN_HOST, 9090) == f"A90 {WAN_PEER}"
    assert fetch(host.ns, GW, 9090, timeout=1).startswith("FAIL")  # bound to one host address only
    assert fetch(host.wan, WAN6_HOST, 9191) == "A91 2001:db8:2::2"
    assert fetch(host.wan, WAN_HOST, 9191, timeout=1).startswith("FAIL")
    assert all(r.rc == 0 for r in host.each("CHECK", c, result, ctr, "ctr-a"))
    host.delete(c, result, ctr, "ctr-a")
    assert elements(host.ns, "inet", "cni_py_portmap") == 0


def test_conditions_per_network_and_masq_all(host: Host, namespaces: Namespaces, servers: Servers) -> None:
    a, b = namespaces.make("a"), namespaces.make("b")
    host.must_add(chain(host, [pm(8080, 80)], conditionsV4=["ip", "saddr", "203.0.113.0/24"]), a, "ctr-a")
    servers.start(a, 80, "A")
    servers.start(b, 80, "B")
    assert fetch(host.wan, WAN_HOST, 8080, timeout=1).startswith("FAIL")  # 192.0.2.2 is not in the conditions
    # the network's next ADD rewrites its conditions; masqAll hides the client's address
    host.must_add(chain(host, [pm(8081, 80)], conditionsV4=["ip saddr 192.0.2.0/24"], masqAll=True), b, "ctr-b")
    assert answers(host.wan, WAN_HOST, 8080, "A")
    assert fetch(host.wan, WAN_HOST, 8081) == f"B {GW}"
    bad = host.run(
        "portmap",
        "ADD",
        chain(host, [pm(1, 1)], conditionsV4=["-s", "1.2.3.4"])[1] | {"prevResult": {"cniVersion": "1.0.0"}},
        a,
        "x",
    )
    assert bad.rc == 1 and bad.json["code"] == 2 and "iptables syntax" in bad.json["msg"]


def test_no_mappings_leaves_nftables_alone(
    host: Host, namespaces: Namespaces, cni_bin: Path, cni_bin_python: Path
) -> None:
    ctr = namespaces.make("ctr")
    result = host.must_add(chain(host, []), ctr, "ctr-a")
    assert result["ips"]
    assert nft_table(host.ns, "inet", "cni_py_portmap") == {}
    conf = chain(host, [])[1] | {"prevResult": result}
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c",
        "CNI_NETNS": path(ctr),
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(cni_bin),
    }
    proc = subprocess.run(
        ["ip", "netns", "exec", host.ns, sys.executable, "-IS", "-X", "importtime", str(cni_bin_python / "portmap")],
        input=__import__("json").dumps(conf).encode(),
        env=env,
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.decode().splitlines() if "|" in line}
    assert "nftables" not in imported and "pyroute2" not in imported


def test_gc_removes_mappings_of_attachments_no_longer_valid(
    host: Host, namespaces: Namespaces, servers: Servers
) -> None:
    a, b = namespaces.make("a"), namespaces.make("b")
    c = chain(host, [pm(8080, 80)], version="1.1.0")
    host.must_add(c, a, "ctr-a")
    host.must_add(chain(host, [pm(8081, 80)], version="1.1.0"), b, "ctr-b")
    servers.start(b, 80, "B")
    gc = {k: v for k, v in c[1].items() if k != "runtimeConfig"} | {
        "cni.dev/valid-attachments": [{"containerID": "ctr-b", "ifname": "eth0"}]
    }
    assert host.run("portmap", "GC", gc, "", "").rc == 0
    maps = nft_table(host.ns, "inet", "cni_py_portmap")
    assert [el[0]["elem"]["val"]["concat"][1] for el in maps["any4_port"]] == [8081]
    assert len(maps["masq4"]) == 1
    assert answers(host.wan, WAN_HOST, 8081, "B")


def test_cri_shaped_mapping_forwards_and_is_removed(host: Host, namespaces: Namespaces, servers: Servers) -> None:
    """containerd's CRI plugin marshals go-cni's PortMapping, which has no JSON tags: the keys
    arrive as Go field names, on ADD and on both DELs of a pod, as for the reference."""
    ctr = namespaces.make("ctr")
    cri = {"HostPort": 18190, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}
    c = chain(host, [cri])
    result = host.must_add(c, ctr, "ctr-cri")
    servers.start(ctr, 80, "K")
    assert fetch(host.wan, WAN_HOST, 18190) == f"K {WAN_PEER}"
    assert answers(host.ns, "127.0.0.1", 18190, "K")
    assert all(r.rc == 0 for r in host.each("CHECK", c, result, ctr, "ctr-cri"))
    host.delete(c, result, ctr, "ctr-cri")
    assert fetch(host.wan, WAN_HOST, 18190, timeout=1).startswith("FAIL")
    assert elements(host.ns, "inet", "cni_py_portmap") == 0
