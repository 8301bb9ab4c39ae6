"""firewall in real namespaces, chained after our bridge + host-local (and portmap), on a host
whose iptables FORWARD policy is drop (set inside the host namespace, never on the machine),
and the ingress policies between and within bridges."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.chainutil import (
    WAN_HOST,
    WAN_PEER,
    Host,
    Servers,
    answers,
    elements,
    fetch,
    nft_table,
)
from tests.integration.nsutil import Namespaces, ping, poll, sh

VERSIONS = ("0.4.0", "1.0.0", "1.1.0")


@pytest.fixture
def host(namespaces: Namespaces, host_ns: str, cni_bin: Path, tmp_path: Path) -> Iterator[Host]:
    h = Host(namespaces=namespaces, ns=host_ns, cni_bin=cni_bin, tmp_path=tmp_path).setup()
    yield h
    for chain, ctr, cid, ifname in reversed(h.attached):
        h.each("DEL", chain, None, ctr, cid, ifname)


@pytest.fixture
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    s.stop()


def drop_forward(h: Host) -> None:
    sh("iptables", "-P", "FORWARD", "DROP", ns=h.ns)
    sh("ip6tables", "-P", "FORWARD", "DROP", ns=h.ns)


def fw(net: str, version: str = "1.0.0", **opts: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": net, "type": "firewall", **opts}


def addr(result: dict[str, Any], v: int = 4) -> str:
    found: str = next(ip["address"].split("/")[0] for ip in result["ips"] if (":" in ip["address"]) == (v == 6))
    return found


@pytest.mark.parametrize("version", VERSIONS)
def test_containers_work_when_iptables_forward_drops(host: Host, namespaces: Namespaces, version: str) -> None:
    drop_forward(host)
    ctr = namespaces.make("ctr")
    bridge = host.bridge("fwnet", "cnifw0", "10.67.0.0/24", "fd00:67::/64", version=version)
    chain = [bridge, fw("fwnet", version, backend="iptables")]
    result = host.must_add(chain, ctr, "ctr-a")
    c4, c6 = addr(result), addr(result, 6)
    assert ping(ctr, WAN_PEER) and poll(lambda: ping(ctr, "2001:db8:2::2"), timeout=10)
    assert not ping(host.wan, c4)  # new connections from outside stay refused, as the reference's
    rules = sh("iptables", "-S", ns=host.ns).stdout  # iptables-nft reads everything we put there
    assert '-A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD' in rules
    assert '-A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN' in rules
    assert "-A CNI-FORWARD -m mark --mark 0x10000000/0x10000000" in rules and "-j ACCEPT" in rules
    assert "CNI-FORWARD" in sh("ip6tables", "-S", ns=host.ns).stdout
    assert sh("iptables-save", ns=host.ns).returncode == 0
    assert all(r.rc == 0 for r in host.each("CHECK", chain, result, ctr, "ctr-a"))
    assert host.must_add(chain, namespaces.make("ctr2"), "ctr-b")
    assert (
        sh("iptables", "-S", "CNI-FORWARD", ns=host.ns).stdout.count("-A CNI-FORWARD") == 2
    )  # constant, whatever the containers
    host.delete(chain, result, ctr, "ctr-a")
    assert c4 not in str(nft_table(host.ns, "inet", "cni_py_firewall")["accept4"]) and c6 not in str(
        nft_table(host.ns, "inet", "cni_py_firewall")["accept6"]
    )
    assert all(r.rc == 0 for r in host.each("DEL", chain, result, ctr, "ctr-a"))


def test_removed_accept_blocks_again(host: Host, namespaces: Namespaces) -> None:
    drop_forward(host)
    ctr = namespaces.make("ctr")
    bridge = host.bridge("fwnet", "cnifw0", "10.67.0.0/24")
    result = host.must_add([bridge, fw("fwnet")], ctr, "ctr-a")
    assert ping(ctr, WAN_PEER)
    assert host.run("firewall", "DEL", fw("fwnet") | {"prevResult": result}, ctr, "ctr-a").rc == 0
    assert not ping(ctr, WAN_PEER)  # only our accept let it through
    assert elements(host.ns, "inet", "cni_py_firewall") == 0


def test_published_port_on_a_drop_host(host: Host, namespaces: Namespaces, servers: Servers) -> None:
    drop_forward(host)
    ctr = namespaces.make("ctr")
    bridge = host.bridge("fwnet", "cnifw0", "10.67.0.0/24")
    portmap = {
        "cniVersion": "1.0.0",
        "name": "fwnet",
        "type": "portmap",
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
    }
    host.must_add([bridge, portmap, fw("fwnet")], ctr, "ctr-a")
    servers.start(ctr, 80, "A")
    assert answers(host.wan, WAN_HOST, 8080, "A"), fetch(host.wan, WAN_HOST, 8080)


def two_bridges(host: Host, namespaces: Namespaces, policy: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """a1, a2 on bridge A; b1 on bridge B; both networks with ``policy``."""
    out = {}
    for name, net, br, subnet in (
        ("a1", "neta", "cnifwa", "10.68.0.0/24"),
        ("a2", "neta", "cnifwa", "10.68.0.0/24"),
        ("b1", "netb", "cnifwb", "10.69.0.0/24"),
    ):
        ctr = namespaces.make(name)
        out[name] = (
            ctr,
            host.must_add([host.bridge(net, br, subnet), fw(net, ingressPolicy=policy)], ctr, f"ctr-{name}"),
        )
    return out


def test_same_bridge_policy(host: Host, namespaces: Namespaces, servers: Servers) -> None:
    c = two_bridges(host, namespaces, "same-bridge")
    (a1, ra1), (_a2, ra2), (b1, rb1) = c["a1"], c["a2"], c["b1"]
    assert ping(a1, addr(ra2))  # same bridge: allowed
    assert not ping(a1, addr(rb1)) and not ping(b1, addr(ra1))  # across bridges: dropped both ways
    assert ping(a1, WAN_PEER) and ping(host.wan, addr(rb1))  # the rest of the world is not affected
    # a published port stays reachable from the other bridge (as Docker's)
    portmap = {
        "cniVersion": "1.0.0",
        "name": "netb",
        "type": "portmap",
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
    }
    b2 = namespaces.make("b2")
    host.must_add(
        [host.bridge("netb", "cnifwb", "10.69.0.0/24"), portmap, fw("netb", ingressPolicy="same-bridge")], b2, "ctr-b2"
    )
    servers.start(b2, 80, "B2")
    assert answers(a1, WAN_HOST, 8080, "B2")
    assert all(
        r.rc == 0
        for r in host.each(
            "CHECK",
            [host.bridge("neta", "cnifwa", "10.68.0.0/24"), fw("neta", ingressPolicy="same-bridge")],
            ra1,
            a1,
            "ctr-a1",
        )
    )


def test_isolated_policy(host: Host, namespaces: Namespaces, servers: Servers) -> None:
    assert sh("sysctl", "-n", "net.bridge.bridge-nf-call-iptables", ns=host.ns).stdout.strip() == "1"
    c = two_bridges(host, namespaces, "isolated")
    (a1, ra1), (a2, ra2), (_b1, rb1) = c["a1"], c["a2"], c["b1"]
    assert not ping(a1, addr(ra2)) and not ping(a2, addr(ra1))  # within the bridge: dropped (icc=false)
    assert not ping(a1, addr(rb1))
    assert ping(a1, WAN_PEER) and ping(a1, "10.68.0.1")  # the outside and the gateway stay reachable
    portmap = {
        "cniVersion": "1.0.0",
        "name": "neta",
        "type": "portmap",
        "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]},
    }
    a3 = namespaces.make("a3")
    host.must_add(
        [host.bridge("neta", "cnifwa", "10.68.0.0/24"), portmap, fw("neta", ingressPolicy="isolated")], a3, "ctr-a3"
    )
    servers.start(a3, 80, "A3")
    assert answers(a1, WAN_HOST, 8080, "A3")  # published ports stay reachable from the same bridge


def test_admin_chain_is_consulted_first(host: Host, namespaces: Namespaces) -> None:
    drop_forward(host)
    ctr = namespaces.make("ctr")
    chain = [host.bridge("fwnet", "cnifw0", "10.67.0.0/24"), fw("fwnet", iptablesAdminChainName="MY-ADMIN")]
    result = host.must_add(chain, ctr, "ctr-a")
    assert ping(ctr, WAN_PEER)
    assert (
        '-A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j MY-ADMIN'
        in sh("iptables", "-S", ns=host.ns).stdout
    )
    sh("nft", "add", "rule", "inet", "cni_py_firewall", "MY-ADMIN", "ip", "saddr", addr(result), "drop", ns=host.ns)
    assert not ping(ctr, WAN_PEER)
    host.must_add(chain, namespaces.make("ctr2"), "ctr-b")  # ADD re-asserts our chains, never the admin's
    assert "drop" in sh("nft", "list", "chain", "inet", "cni_py_firewall", "MY-ADMIN", ns=host.ns).stdout


def test_gc_and_del_without_prev_result(host: Host, namespaces: Namespaces) -> None:
    a, b, c = namespaces.make("a"), namespaces.make("b"), namespaces.make("c")
    chain = [host.bridge("fwnet", "cnifw0", "10.67.0.0/24", version="1.1.0"), fw("fwnet", "1.1.0")]
    ra, rb, rc = host.must_add(chain, a, "ctr-a"), host.must_add(chain, b, "ctr-b"), host.must_add(chain, c, "ctr-c")
    gc = fw("fwnet", "1.1.0") | {
        "cni.dev/valid-attachments": [
            {"containerID": "ctr-b", "ifname": "eth0"},
            {"containerID": "ctr-c", "ifname": "eth0"},
        ]
    }
    assert host.run("firewall", "GC", gc, "", "").rc == 0
    accepted = str(nft_table(host.ns, "inet", "cni_py_firewall")["accept4"])
    assert addr(ra) not in accepted and addr(rb) in accepted
    assert host.run("firewall", "DEL", fw("fwnet", "1.1.0"), b, "ctr-b").rc == 0  # no prevResult: found by owner
    accepted = str(nft_table(host.ns, "inet", "cni_py_firewall")["accept4"])
    assert addr(rb) not in accepted and addr(rc) in accepted


def test_versions_before_0_4_0_are_refused(host: Host, namespaces: Namespaces) -> None:
    run = host.run(
        "firewall",
        "ADD",
        fw("fwnet", "0.3.1") | {"prevResult": {"cniVersion": "0.3.1", "ips": []}},
        namespaces.make("c"),
        "c",
    )
    assert run.rc == 1 and run.json["code"] == 1
