"""bridge: real namespaces, plugins exec'd inside a namespace standing for the host.

Topology of the connectivity tests: ``host_ns`` holds the bridge; containers hang off it;
``wan`` stands for the outside world, joined to host_ns by a veth (192.0.2.0/24,
2001:db8:99::/64) and with *no route back* to the container subnets, so a container
reaches it only when its source address is masqueraded to the host's.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.kernel import netns
from cni_plugins.spec.version import SUPPORTED_VERSIONS
from tests.integration.conftest import Runner
from tests.integration.nsutil import (
    Namespaces,
    addrs,
    ip_json,
    links,
    path,
    ping,
    poll,
    sh,
)

SUBNET, SUBNET6 = "10.91.0.0/24", "fd00:91::/64"
GW, GW6 = "10.91.0.1", "fd00:91::1"
WAN_HOST, WAN_PEER, WAN6_HOST, WAN6_PEER = "192.0.2.1", "192.0.2.2", "2001:db8:99::1", "2001:db8:99::2"


def bconf(tmp_path: Path, version: str = "1.0.0", *, ipam: Any = "v4", **opts: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": version, "name": "brnet", "type": "bridge", "bridge": "cnitbr0", **opts}
    ranges = {
        "v4": [[{"subnet": SUBNET}]],
        "v6": [[{"subnet": SUBNET6}]],
        "dual": [[{"subnet": SUBNET}], [{"subnet": SUBNET6}]],
    }
    if isinstance(ipam, str):
        out["ipam"] = {"type": "host-local", "dataDir": str(tmp_path / "ipam"), "ranges": ranges[ipam]}
    elif ipam is not None:
        out["ipam"] = ipam
    return out


def reserved(tmp_path: Path, network: str = "brnet") -> set[str]:
    d = tmp_path / "ipam" / network
    names = os.listdir(d) if d.is_dir() else []
    return {n for n in names if _is_ip(n)}


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def nft_elements(ns: str) -> dict[str, list[Any]]:
    """Elements of our masquerade and spoof-check tables (empty when the tables are absent)."""
    ruleset = json.loads(sh("nft", "-j", "list", "ruleset", ns=ns).stdout)["nftables"]
    out: dict[str, list[Any]] = {}
    for item in ruleset:
        for kind in ("map", "set"):
            obj = item.get(kind)
            if obj and obj["table"] in ("cni_py_masq", "cni_py_macspoof"):
                out[f"{obj['table']}/{obj['name']}"] = obj.get("elem", [])
    return out


def host_veths(ns: str) -> list[str]:
    return [
        name
        for name, link in links(ns).items()
        if link.get("linkinfo", {}).get("info_kind") == "veth" and not name.startswith("wan")
    ]


def with_prev(conf: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    return {**conf, "prevResult": result}


def assert_clean(host_ns: str, tmp_path: Path) -> None:
    assert host_veths(host_ns) == []
    assert reserved(tmp_path) == set()
    assert all(not elems for elems in nft_elements(host_ns).values()), nft_elements(host_ns)


def make_wan(namespaces: Namespaces, host_ns: str) -> str:
    """The outside world: reachable from host_ns, no route back to the container subnets."""
    wan = namespaces.make("wan")
    sh("ip", "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", wan, ns=host_ns)
    for ns, dev, v4, v6 in ((host_ns, "wan0", WAN_HOST, WAN6_HOST), (wan, "eth0", WAN_PEER, WAN6_PEER)):
        sh("sysctl", "-qw", f"net.ipv6.conf.{dev}.accept_dad=0", ns=ns)
        sh("ip", "addr", "add", f"{v4}/24", "dev", dev, ns=ns)
        sh("ip", "addr", "add", f"{v6}/64", "dev", dev, "nodad", ns=ns)
        sh("ip", "link", "set", dev, "up", ns=ns)
    return wan


def peer_seen_by_outside(wan: str, ctr: str, target: str) -> str:
    """Connect from ``ctr`` to a TCP server in ``wan``; the source address the server saw."""
    family = "AF_INET6" if ":" in target else "AF_INET"
    any_addr = "::" if ":" in target else "0.0.0.0"
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            wan,
            sys.executable,
            "-c",
            f"import socket; s = socket.socket(socket.{family}); "
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
            f"s.bind(('{any_addr}', 7777)); s.listen(); print('ready', flush=True); s.settimeout(10); "
            "c, a = s.accept(); c.sendall(a[0].encode()); c.close()",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        client = sh(
            sys.executable,
            "-c",
            f"import socket; s = socket.create_connection(('{target}', 7777), timeout=5); print(s.recv(100).decode())",
            ns=ctr,
            check=False,
        )
        return client.stdout.strip() or f"(no answer: {client.stderr.strip().splitlines()[-1:]})"
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


# ---------------------------------------------------------------- every spec version


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_two_containers_gateway_and_masquerade(
    plugin: Runner, namespaces: Namespaces, host_ns: str, tmp_path: Path, version: str
) -> None:
    """ADD two containers -> they ping each other and the gateway, reach the outside world with
    the host's address as source; CHECK; DEL, DEL again; nothing is left."""
    wan = make_wan(namespaces, host_ns)
    conf = bconf(tmp_path, version, isDefaultGateway=True, ipMasq=True, macspoofchk=True)
    ctrs = [namespaces.make("c1"), namespaces.make("c2")]
    results = [plugin("bridge", "ADD", conf, netns=c, container_id=f"id{i}").ok() for i, c in enumerate(ctrs)]
    ip1, ip2 = (addrs(c, "eth0")[0].split("/")[0] for c in ctrs)
    for r in results:
        assert r["cniVersion"] == version
    if version < "0.3.0":
        assert results[0]["ip4"] == {"ip": f"{ip1}/24", "gateway": GW, "routes": [{"dst": "0.0.0.0/0", "gw": GW}]}
    else:
        br, veth = links(host_ns)["cnitbr0"], links(host_ns)[results[0]["interfaces"][1]["name"]]
        assert results[0]["interfaces"] == [
            {"name": "cnitbr0", "mac": br["address"]},
            {"name": veth["ifname"], "mac": veth["address"]},
            {"name": "eth0", "mac": links(ctrs[0])["eth0"]["address"], "sandbox": path(ctrs[0])},
        ]
        ip = {"interface": 2, "address": f"{ip1}/24", "gateway": GW}
        assert results[0]["ips"] == [{"version": "4", **ip} if version < "1.0.0" else ip]
        assert results[0]["routes"] == [{"dst": "0.0.0.0/0", "gw": GW}]
        assert veth["master"] == "cnitbr0"
    assert ping(ctrs[0], ip2) and ping(ctrs[1], ip1) and ping(ctrs[0], GW)
    assert peer_seen_by_outside(wan, ctrs[0], WAN_PEER) == WAN_HOST
    if version >= "0.4.0":
        for i, (c, r) in enumerate(zip(ctrs, results, strict=True)):
            plugin("bridge", "CHECK", with_prev(conf, r), netns=c, container_id=f"id{i}").ok()
    for _ in range(2):  # DEL, then DEL again
        for i, (c, r) in enumerate(zip(ctrs, results, strict=True)):
            del_conf = with_prev(conf, r) if version >= "0.4.0" else conf
            plugin("bridge", "DEL", del_conf, netns=c, container_id=f"id{i}").ok()
    assert "eth0" not in links(ctrs[0]) and "eth0" not in links(ctrs[1])
    assert_clean(host_ns, tmp_path)
    assert "cnitbr0" in links(host_ns)  # the bridge stays, as in the reference


# ---------------------------------------------------------------- options that change behaviour


def test_dual_stack_connectivity_and_ipv6_masquerade(
    plugin: Runner, namespaces: Namespaces, host_ns: str, tmp_path: Path
) -> None:
    wan = make_wan(namespaces, host_ns)
    conf = bconf(tmp_path, "1.1.0", ipam="dual", isDefaultGateway=True, ipMasq=True)
    ctrs = [namespaces.make("c1"), namespaces.make("c2")]
    results = [plugin("bridge", "ADD", conf, netns=c, container_id=f"id{i}").ok() for i, c in enumerate(ctrs)]
    assert [ip["address"].split("/")[1] for ip in results[0]["ips"]] == ["24", "64"]
    assert {r["dst"] for r in results[0]["routes"]} == {"0.0.0.0/0", "::/0"}
    v6 = [ip["address"].split("/")[0] for r in results for ip in r["ips"] if ":" in ip["address"]]
    assert f"{GW6}/64" in addrs(host_ns, "cnitbr0")
    assert ping(ctrs[0], v6[1]) and ping(ctrs[1], v6[0])
    assert poll(lambda: ping(ctrs[0], GW6), timeout=10)  # the bridge's own address goes through DAD first
    assert sh("sysctl", "-n", "net.ipv6.conf.all.forwarding", ns=host_ns).stdout.strip() == "1"
    ports = [v for v in host_veths(host_ns) if links(host_ns)[v].get("master") == "cnitbr0"]
    assert len(ports) == 2 and all(addrs(host_ns, v) == [] for v in ports)  # bridge ports do no IP
    assert not any(f"dev {v} " in sh("ip", "-6", "route", "show", "table", "all", ns=host_ns).stdout for v in ports)
    assert peer_seen_by_outside(wan, ctrs[0], WAN6_PEER) == WAN6_HOST
    assert peer_seen_by_outside(wan, ctrs[1], WAN_PEER) == WAN_HOST
    for i, (c, r) in enumerate(zip(ctrs, results, strict=True)):
        plugin("bridge", "CHECK", with_prev(conf, r), netns=c, container_id=f"id{i}").ok()
        plugin("bridge", "DEL", with_prev(conf, r), netns=c, container_id=f"id{i}").ok()
    assert_clean(host_ns, tmp_path)


def test_without_ipmasq_the_outside_cannot_answer(
    plugin: Runner, namespaces: Namespaces, host_ns: str, tmp_path: Path
) -> None:
    """The control for the masquerade tests: same topology, ipMasq off, no reply comes back."""
    wan = make_wan(namespaces, host_ns)
    ctr = namespaces.make("c1")
    plugin("bridge", "ADD", bconf(tmp_path, isDefaultGateway=True), netns=ctr).ok()
    assert peer_seen_by_outside(wan, ctr, WAN_PEER).startswith("(no answer")


def test_is_default_gateway_adds_the_default_route(plugin: Runner, namespaces: Namespaces, tmp_path: Path) -> None:
    plain, default = namespaces.make("c1"), namespaces.make("c2")
    out = plugin("bridge", "ADD", bconf(tmp_path, isGateway=True), netns=plain, container_id="a").ok()
    assert "routes" not in out and "default" not in sh("ip", "route", ns=plain).stdout
    out = plugin("bridge", "ADD", bconf(tmp_path, isDefaultGateway=True), netns=default, container_id="b").ok()
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": GW}]
    assert f"default via {GW} dev eth0" in sh("ip", "route", ns=default).stdout


def test_is_gateway_puts_the_gateway_on_the_bridge_and_forwards(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path
) -> None:
    out = plugin("bridge", "ADD", bconf(tmp_path, isGateway=True), netns=container_ns).ok()
    assert out["ips"][0]["gateway"] == GW and f"{GW}/24" in addrs(host_ns, "cnitbr0")
    assert sh("sysctl", "-n", "net.ipv4.ip_forward", ns=host_ns).stdout.strip() == "1"
    assert ping(container_ns, GW)


def test_mtu_applies_to_the_veth_pair_and_a_new_bridge(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path
) -> None:
    out = plugin("bridge", "ADD", bconf(tmp_path, mtu=1380), netns=container_ns).ok()
    host = links(host_ns)
    assert links(container_ns)["eth0"]["mtu"] == 1380
    assert host[out["interfaces"][1]["name"]]["mtu"] == 1380 and host["cnitbr0"]["mtu"] == 1380


def test_hairpin_mode_sets_the_port_flag_and_excludes_promisc(
    plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path
) -> None:
    on, off = namespaces.make("c1"), namespaces.make("c2")
    veth_on = plugin("bridge", "ADD", bconf(tmp_path, hairpinMode=True), netns=on, container_id="a").ok()["interfaces"][
        1
    ]["name"]
    veth_off = plugin("bridge", "ADD", bconf(tmp_path), netns=off, container_id="b").ok()["interfaces"][1]["name"]
    ports = {p["ifname"]: p for p in json.loads(sh("bridge", "-j", "-d", "link", "show", ns=host_ns).stdout)}
    assert ports[veth_on]["hairpin"] is True and ports[veth_off]["hairpin"] is False
    bad = plugin(
        "bridge",
        "ADD",
        bconf(tmp_path, hairpinMode=True, promiscMode=True),
        netns=namespaces.make("c3"),
        container_id="c",
    )
    assert bad.rc == 1 and bad.json["code"] == 7 and "hairpin" in bad.json["msg"] and "promisc" in bad.json["msg"]


def test_promisc_mode_on_the_bridge(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    plugin("bridge", "ADD", bconf(tmp_path, promiscMode=True), netns=container_ns).ok()
    assert links(host_ns)["cnitbr0"]["promiscuity"] >= 1


def test_port_isolation_keeps_containers_apart_but_not_from_the_gateway(
    plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path
) -> None:
    conf = bconf(tmp_path, isGateway=True, portIsolation=True)
    ctrs = [namespaces.make("c1"), namespaces.make("c2")]
    results = [plugin("bridge", "ADD", conf, netns=c, container_id=f"id{i}").ok() for i, c in enumerate(ctrs)]
    ports = {p["ifname"]: p for p in json.loads(sh("bridge", "-j", "-d", "link", "show", ns=host_ns).stdout)}
    assert all(ports[r["interfaces"][1]["name"]]["isolated"] is True for r in results)
    assert ping(ctrs[0], GW)
    assert not ping(ctrs[0], addrs(ctrs[1], "eth0")[0].split("/")[0])


def test_macspoofchk_drops_frames_from_another_mac(
    plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path
) -> None:
    guarded, neighbour, unguarded = namespaces.make("c1"), namespaces.make("c2"), namespaces.make("c3")
    plugin("bridge", "ADD", bconf(tmp_path, macspoofchk=True), netns=guarded, container_id="a").ok()
    plugin("bridge", "ADD", bconf(tmp_path), netns=neighbour, container_id="b").ok()
    plugin("bridge", "ADD", bconf(tmp_path), netns=unguarded, container_id="c").ok()
    target = addrs(neighbour, "eth0")[0].split("/")[0]
    assert ping(guarded, target) and ping(unguarded, target)
    for ns in (guarded, unguarded):  # both change their MAC
        sh("ip", "link", "set", "eth0", "address", "02:00:00:00:de:ad" if ns == guarded else "02:00:00:00:be:ef", ns=ns)
    sh("ip", "neigh", "flush", "all", ns=neighbour)
    assert ping(unguarded, target)  # without the check a new MAC just works
    assert not ping(guarded, target)  # with it the frames are dropped at the bridge port


def test_enabledad_and_arp_notify(plugin: Runner, namespaces: Namespaces, tmp_path: Path) -> None:
    default, dad = namespaces.make("c1"), namespaces.make("c2")
    plugin("bridge", "ADD", bconf(tmp_path, ipam="dual"), netns=default, container_id="a").ok()
    plugin("bridge", "ADD", bconf(tmp_path, ipam="dual", enabledad=True), netns=dad, container_id="b").ok()

    def read(ns: str, key: str) -> str:
        return sh("cat", f"/proc/sys/net/{key}", ns=ns).stdout.strip()

    assert read(default, "ipv6/conf/eth0/accept_dad") == "0" and read(default, "ipv4/conf/eth0/arp_notify") == "1"
    assert read(dad, "ipv6/conf/eth0/accept_dad") == "1" and read(dad, "ipv6/conf/eth0/enhanced_dad") == "1"


def test_disable_ipv6_on_an_ipv4_only_network(
    plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path
) -> None:
    """``disableIPv6`` (ours): on an IPv4-only network the container's interface has IPv6 off,
    so it sends no MLD report or router solicitation (flooded to every bridge port) when it
    comes up; a network with IPv6 addresses keeps it on."""
    v4, dual, default = namespaces.make("c1"), namespaces.make("c2"), namespaces.make("c3")
    plugin("bridge", "ADD", bconf(tmp_path, disableIPv6=True, isGateway=True), netns=v4, container_id="a").ok()
    plugin("bridge", "ADD", bconf(tmp_path, ipam="dual", disableIPv6=True), netns=dual, container_id="b").ok()
    plugin("bridge", "ADD", bconf(tmp_path), netns=default, container_id="c").ok()

    def ipv6(ns: str) -> tuple[str, list[str]]:
        off = sh("cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6", ns=ns).stdout.strip()
        return off, [a for a in addrs(ns, "eth0") if ":" in a]

    assert ipv6(v4) == ("1", [])
    off, dual_addrs = ipv6(dual)
    assert off == "0" and any(a.startswith("fd00:91::") for a in dual_addrs)
    assert any(a.startswith("fe80::") for a in ipv6(default)[1])  # without the option: the kernel's default
    assert ping(v4, "10.91.0.1")


def icmp6_types_from(sock: socket.socket, mac: str, seconds: float) -> set[int]:
    """The ICMPv6 types of the frames from ``mac`` that ``sock`` (AF_PACKET) receives in ``seconds``."""
    want, seen, deadline = bytes.fromhex(mac.replace(":", "")), set(), time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            frame = sock.recv(2048)
        except TimeoutError:
            break
        ip6 = frame[14:]
        if frame[6:12] != want or len(ip6) < 48:
            continue
        nh, off = ip6[6], 40
        if nh == 0:  # hop-by-hop options (MLD reports carry router alert)
            nh, off = ip6[40], 40 + (ip6[41] + 1) * 8
        if nh == 58 and len(ip6) > off:
            seen.add(ip6[off])
    return seen


def test_a_new_containers_first_ipv6_announcements_stay_off_the_bridge(
    plugin: Runner, namespaces: Namespaces, tmp_path: Path
) -> None:
    """With DAD off (the default) the port joins the bridge once the container's link is up:
    the router solicitation (133) the kernel sends at that moment ends at the host end, not in
    every other container; MLD's repeated report (143) still comes through. With ``enabledad``
    the port joins first, and the solicitation that follows DAD reaches the others."""
    watcher, quiet, dad = namespaces.make("w"), namespaces.make("q"), namespaces.make("d")
    plugin("bridge", "ADD", bconf(tmp_path), netns=watcher, container_id="w").ok()
    with netns.entered(path(watcher)):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD))
    with sock:
        sock.bind(("eth0", 0x86DD))
        res = plugin("bridge", "ADD", bconf(tmp_path), netns=quiet, container_id="q").ok()
        seen = icmp6_types_from(sock, res["interfaces"][2]["mac"], 2.5)
        assert 133 not in seen and 143 in seen, seen
        res = plugin("bridge", "ADD", bconf(tmp_path, enabledad=True), netns=dad, container_id="d").ok()
        assert 133 in icmp6_types_from(sock, res["interfaces"][2]["mac"], 5.0)


def test_mac_sources_later_ones_win(plugin: Runner, namespaces: Namespaces, tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({}, "IgnoreUnknown=1;MAC=0a:00:00:00:00:01", "0a:00:00:00:00:01"),
        ({"args": {"cni": {"mac": "0a:00:00:00:00:02"}}}, "IgnoreUnknown=1;MAC=0a:00:00:00:00:01", "0a:00:00:00:00:02"),
        (
            {"args": {"cni": {"mac": "0a:00:00:00:00:02"}}, "runtimeConfig": {"mac": "0a:00:00:00:00:03"}},
            "IgnoreUnknown=1;MAC=0a:00:00:00:00:01",
            "0a:00:00:00:00:03",
        ),
    ]
    for i, (extra, cni_args, want) in enumerate(cases):
        ctr = namespaces.make(f"m{i}")
        out = plugin(
            "bridge", "ADD", {**bconf(tmp_path), **extra}, netns=ctr, container_id=f"id{i}", cni_args=cni_args
        ).ok()
        assert links(ctr)["eth0"]["address"] == want and out["interfaces"][2]["mac"] == want
    bad = plugin(
        "bridge",
        "ADD",
        bconf(tmp_path),
        netns=namespaces.make("bad"),
        container_id="x",
        cni_args="IgnoreUnknown=1;MAC=zz",
    )
    assert bad.rc == 1 and "CNI_ARGS MAC" in bad.json["msg"]


def test_force_address_replaces_a_foreign_bridge_address(
    plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path
) -> None:
    sh("ip", "link", "add", "cnitbr0", "type", "bridge", ns=host_ns)
    sh("ip", "addr", "add", "10.91.0.254/24", "dev", "cnitbr0", ns=host_ns)
    bad = plugin("bridge", "ADD", bconf(tmp_path, isGateway=True), netns=namespaces.make("c1"), container_id="a")
    assert bad.rc == 1 and bad.json["msg"].startswith("gateway: ") and "10.91.0.254/24" in bad.json["msg"]
    assert_clean(host_ns, tmp_path)  # rolled back: veth gone, address released
    plugin(
        "bridge",
        "ADD",
        bconf(tmp_path, isGateway=True, forceAddress=True),
        netns=namespaces.make("c2"),
        container_id="b",
    ).ok()
    assert [a for a in addrs(host_ns, "cnitbr0") if "." in a] == [f"{GW}/24"]


def test_l2_only_and_disable_container_interface(
    plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path
) -> None:
    l2, down = namespaces.make("c1"), namespaces.make("c2")
    out = plugin("bridge", "ADD", bconf(tmp_path, ipam={}), netns=l2, container_id="a").ok()
    assert "ips" not in out and "UP" in links(l2)["eth0"]["flags"]
    out = plugin(
        "bridge", "ADD", bconf(tmp_path, ipam=None, disableContainerInterface=True), netns=down, container_id="b"
    ).ok()
    assert (
        "UP" not in links(down)["eth0"]["flags"] and links(host_ns)[out["interfaces"][1]["name"]]["master"] == "cnitbr0"
    )
    bad = plugin(
        "bridge", "ADD", bconf(tmp_path, disableContainerInterface=True), netns=namespaces.make("c3"), container_id="c"
    )
    assert bad.rc == 1 and "disableContainerInterface" in bad.json["msg"]


def test_config_dns_replaces_ipam_dns_and_iptables_backend_is_a_note(
    plugin: Runner, container_ns: str, tmp_path: Path
) -> None:
    conf = bconf(
        tmp_path, ipMasq=True, ipMasqBackend="iptables", dns={"nameservers": ["192.0.2.53"], "search": ["example.org"]}
    )
    run = plugin("bridge", "ADD", conf, netns=container_ns)
    assert run.ok()["dns"] == {"nameservers": ["192.0.2.53"], "search": ["example.org"]}
    assert "note: ipMasqBackend: iptables" in run.stderr


def test_vlan_needs_bridge_vlan_filtering(plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path) -> None:
    """vlan/vlanTrunk: an access/trunk port on a VLAN-filtering bridge. This kernel may lack
    VLAN filtering; then ADD must refuse clearly and leave nothing behind."""
    supported = (
        sh("ip", "link", "add", "vfprobe", "type", "bridge", "vlan_filtering", "1", ns=host_ns, check=False).returncode
        == 0
    )
    sh("ip", "link", "del", "vfprobe", ns=host_ns, check=False)
    vlan_opts: tuple[dict[str, Any], ...] = ({"vlan": 100}, {"vlanTrunk": [{"id": 101}, {"minID": 200, "maxID": 210}]})
    for i, opts in enumerate(vlan_opts):
        run = plugin(
            "bridge",
            "ADD",
            bconf(tmp_path, isGateway=True, **opts),
            netns=namespaces.make(f"v{i}"),
            container_id=f"id{i}",
        )
        if supported:
            out = run.ok()
            vlans = {v["ifname"]: v for v in json.loads(sh("bridge", "-j", "vlan", "show", ns=host_ns).stdout)}
            vids = {x["vlan"] for x in vlans[out["interfaces"][1]["name"]]["vlans"]}
            assert vids >= ({100} if "vlan" in opts else {101, 200, 210})
            continue
        assert run.rc == 1 and run.json["code"] == 2, run.stdout
        assert (
            run.json["msg"].startswith("bridge: vlan")
            and "VLAN" in run.json["msg"]
            and "CONFIG_BRIDGE_VLAN_FILTERING" in run.json["details"]
        )
        assert "cnitbr0" not in links(host_ns)  # refused before anything was made
        assert_clean(host_ns, tmp_path)
    bad = plugin(
        "bridge", "ADD", bconf(tmp_path, vlanTrunk=[{"minID": 5}]), netns=namespaces.make("v9"), container_id="x"
    )
    assert bad.rc == 1 and "maxID is missing" in bad.json["msg"]
    bad = plugin("bridge", "ADD", bconf(tmp_path, vlan=4095), netns=namespaces.make("v8"), container_id="y")
    assert bad.rc == 1 and "vlan: 4095 is out of range" in bad.json["msg"]


# ---------------------------------------------------------------- failures, DEL and GC


def test_failing_ipam_leaves_nothing_behind(
    plugin: Runner, cni_bin: Path, host_ns: str, container_ns: str, tmp_path: Path
) -> None:
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "failipam").write_text(
        '#!/bin/sh\necho \'{"cniVersion": "1.0.0", "code": 11, "msg": "pool busy"}\'\nexit 1\n'
    )
    (fake / "failipam").chmod(0o755)
    conf = bconf(tmp_path, ipam={"type": "failipam"}, macspoofchk=True, ipMasq=True)
    run = plugin("bridge", "ADD", conf, netns=container_ns, cni_path=f"{fake}:{cni_bin}")
    assert run.rc == 1 and run.json["code"] == 11 and run.json["msg"].startswith("IPAM failipam ADD: "), run.stdout
    assert "eth0" not in links(container_ns)
    assert_clean(host_ns, tmp_path)


def test_interface_name_clash_touches_nothing(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other", ns=container_ns)
    run = plugin("bridge", "ADD", bconf(tmp_path, ipMasq=True), netns=container_ns)
    assert run.rc == 1 and run.json["msg"].startswith("veth: ") and "already exists" in run.json["msg"]
    assert "eth0" in links(container_ns)  # the container's own link is left alone
    assert_clean(host_ns, tmp_path)


def test_a_full_bridge_is_named_and_the_add_rolled_back(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path
) -> None:
    """The kernel caps a bridge at 1,023 ports (EXFULL past it): the error says so, and the
    veth made before that step is removed."""
    fill = ["link add cnitbr0 type bridge"] + [
        f"link add fp{i} type veth peer name fq{i}\nlink set fp{i} master cnitbr0" for i in range(1023)
    ]
    sh("ip", "-force", "-batch", "-", ns=host_ns, input="\n".join(fill) + "\n", timeout=120)
    run = plugin("bridge", "ADD", bconf(tmp_path, ipMasq=True), netns=container_ns)
    assert run.rc == 1 and run.json["code"] == 999, run.stdout
    assert (
        run.json["msg"] == "bridge port: bridge cnitbr0 is full: the kernel allows at most 1023 ports on one bridge"
    ), run.json
    assert "eth0" not in links(container_ns)
    assert [v for v in host_veths(host_ns) if not v.startswith(("fp", "fq"))] == []
    assert reserved(tmp_path) == set() and all(not elems for elems in nft_elements(host_ns).values())


def test_a_route_the_kernel_refuses_rolls_back_masquerade_and_all(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path
) -> None:
    """Routes go in after the gateway and masquerade (they wait for RTNL, which the link-up's
    announcements hold); a gateway that is not on-link fails there and every step is undone."""
    ipam = {
        "type": "host-local",
        "dataDir": str(tmp_path / "ipam"),
        "ranges": [[{"subnet": SUBNET}]],
        "routes": [{"dst": "198.51.100.0/24", "gw": "203.0.113.1"}],
    }
    run = plugin(
        "bridge", "ADD", bconf(tmp_path, ipam=ipam, isGateway=True, ipMasq=True, macspoofchk=True), netns=container_ns
    )
    assert run.rc == 1 and run.json["msg"].startswith("routes in eth0: add route 198.51.100.0/24 via 203.0.113.1"), (
        run.stdout
    )
    assert "eth0" not in links(container_ns)
    assert_clean(host_ns, tmp_path)


def test_failure_after_masquerade_rolls_back_every_step(
    cni_bin: Path, host_ns: str, container_ns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process (inside host_ns) with the last step made to fail: the error names it and
    masquerade, spoof check, address and veth are all undone."""
    import io

    from cni_plugins.kernel import netns
    from cni_plugins.plugins import bridge
    from cni_plugins.protocol import skel
    from cni_plugins.spec.errors import CNIError

    def broken(*_: Any) -> None:
        raise CNIError("injected failure")

    monkeypatch.setattr(bridge, "wait_port_up", broken)
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "ctr1",
        "CNI_NETNS": path(container_ns),
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(cni_bin),
    }
    out = io.StringIO()
    conf = bconf(tmp_path, isGateway=True, ipMasq=True, macspoofchk=True)
    with netns.entered(path(host_ns)):
        rc = skel.run(bridge.PLUGIN, environ=env, stdin=json.dumps(conf).encode(), stdout=out, stderr=io.StringIO())
    assert rc == 1 and json.loads(out.getvalue())["msg"] == "port state: injected failure"
    assert "eth0" not in links(container_ns)
    assert_clean(host_ns, tmp_path)


def test_del_when_netns_is_gone_or_not_given(
    plugin: Runner, namespaces: Namespaces, host_ns: str, tmp_path: Path
) -> None:
    conf = bconf(tmp_path, ipMasq=True, macspoofchk=True)
    gone, blank, bare = namespaces.make("c1"), namespaces.make("c2"), namespaces.make("c3")
    results = {ns: plugin("bridge", "ADD", conf, netns=ns, container_id=ns).ok() for ns in (gone, blank, bare)}
    sh("ip", "netns", "del", gone)
    plugin("bridge", "DEL", with_prev(conf, results[gone]), netns=gone, container_id=gone).ok()
    plugin(
        "bridge", "DEL", with_prev(conf, results[blank]), netns="", container_id=blank
    ).ok()  # containerd: no CNI_NETNS
    plugin("bridge", "DEL", conf, netns="", container_id=bare).ok()  # and no prevResult either: found by owner
    assert reserved(tmp_path) == set()
    assert all(not elems for elems in nft_elements(host_ns).values()), nft_elements(host_ns)


def test_check_names_what_differs(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    conf = bconf(tmp_path, isDefaultGateway=True, ipMasq=True, macspoofchk=True, hairpinMode=True)
    out = plugin("bridge", "ADD", conf, netns=container_ns).ok()
    plugin("bridge", "CHECK", with_prev(conf, out), netns=container_ns).ok()
    ip = out["ips"][0]["address"]
    sh("ip", "addr", "del", ip, "dev", "eth0", ns=container_ns)
    sh("bridge", "link", "set", "dev", out["interfaces"][1]["name"], "hairpin", "off", ns=host_ns)
    sh("nft", "flush", "map", "inet", "cni_py_masq", "masq4", ns=host_ns)
    bad = plugin("bridge", "CHECK", with_prev(conf, out), netns=container_ns)
    msg = bad.json["msg"]
    assert (
        bad.rc == 1 and f"address {ip} is missing" in msg and "hairpin is False" in msg and "masquerade entry" in msg
    ), msg
    assert (
        plugin("bridge", "CHECK", conf, netns=container_ns)
        .json["msg"]
        .startswith("bridge CHECK: required prevResult missing")
    )


def test_gc_drops_firewall_state_of_attachments_not_valid(
    plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path
) -> None:
    conf = bconf(tmp_path, "1.1.0", ipMasq=True, macspoofchk=True)
    keep, stale = namespaces.make("c1"), namespaces.make("c2")
    plugin("bridge", "ADD", conf, netns=keep, container_id="keep").ok()
    plugin("bridge", "ADD", conf, netns=stale, container_id="stale").ok()
    plugin("bridge", "STATUS", conf).ok()
    gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    plugin("bridge", "GC", gc).ok()
    elements = nft_elements(host_ns)
    comments = [json.dumps(e) for elems in elements.values() for e in elems]
    assert comments and all("id:keep" in c for c in comments)
    assert len(elements["cni_py_masq/masq4"]) == 1 and len(elements["cni_py_macspoof/allowed"]) == 1
    assert reserved(tmp_path) == {addrs(keep, "eth0")[0].split("/")[0]}


# ---------------------------------------------------------------- interop with the reference


REFERENCE = Path("/usr/lib/cni")


@pytest.mark.skipif(not (REFERENCE / "bridge").exists(), reason="reference plugins not installed in /usr/lib/cni")
def test_reference_and_ours_on_one_bridge_reach_each_other(
    plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path
) -> None:
    from tests.integration.nsutil import run_plugin

    conf = bconf(tmp_path, "1.0.0", isGateway=True)
    theirs, ours = namespaces.make("ref"), namespaces.make("ours")
    ref = run_plugin(REFERENCE, "bridge", "ADD", conf, netns=path(theirs), container_id="ref", host_ns=host_ns).ok()
    mine = plugin("bridge", "ADD", conf, netns=ours, container_id="ours").ok()
    ref_ip, my_ip = ref["ips"][0]["address"].split("/")[0], mine["ips"][0]["address"].split("/")[0]
    assert ref_ip != my_ip and reserved(tmp_path) == {ref_ip, my_ip}
    assert ping(theirs, my_ip) and ping(ours, ref_ip) and ping(ours, GW)
    plugin(
        "bridge", "CHECK", with_prev(conf, ref), netns=theirs, container_id="ref"
    ).ok()  # our CHECK reads their result
    run_plugin(
        REFERENCE, "bridge", "DEL", with_prev(conf, ref), netns=path(theirs), container_id="ref", host_ns=host_ns
    ).ok()
    plugin("bridge", "DEL", with_prev(conf, mine), netns=ours, container_id="ours").ok()
    assert reserved(tmp_path) == set() and host_veths(host_ns) == []
    assert poll(lambda: "cnitbr0" in links(host_ns))
    assert ip_json("addr", "show", "dev", "cnitbr0", ns=host_ns)[0]["addr_info"]


def test_parallel_adds_on_a_new_bridge(cni_bin: Path, host_ns: str, namespaces: Namespaces, tmp_path: Path) -> None:
    """Eight ADDs racing to create the bridge, its gateway address and the nft tables all succeed."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.integration.nsutil import run_plugin

    conf = bconf(tmp_path, isGateway=True, ipMasq=True, macspoofchk=True)
    ctrs = [namespaces.make(f"p{i}") for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        runs = list(
            pool.map(
                lambda c: run_plugin(cni_bin, "bridge", "ADD", conf, netns=path(c), container_id=c, host_ns=host_ns),
                ctrs,
            )
        )
    results = [r.ok() for r in runs]
    assert len({r["ips"][0]["address"] for r in results}) == 8 and len(host_veths(host_ns)) == 8
    assert (
        len(nft_elements(host_ns)["cni_py_masq/masq4"]) == 8
        and len(nft_elements(host_ns)["cni_py_macspoof/allowed"]) == 8
    )
    assert all(ping(c, GW) for c in ctrs)
    with ThreadPoolExecutor(8) as pool:
        dels = list(
            pool.map(
                lambda cr: run_plugin(
                    cni_bin,
                    "bridge",
                    "DEL",
                    with_prev(conf, cr[1]),
                    netns=path(cr[0]),
                    container_id=cr[0],
                    host_ns=host_ns,
                ),
                zip(ctrs, results, strict=True),
            )
        )
    assert all(d.rc == 0 for d in dels), [d.stdout for d in dels if d.rc]
    assert_clean(host_ns, tmp_path)
