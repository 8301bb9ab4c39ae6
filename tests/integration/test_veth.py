"""veth / ptp: routes as the reference sets them, connectivity through the host, masquerade to
a namespace beyond the host, every spec version, rollback, DEL without a namespace, GC."""

from __future__ import annotations

import io
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.spec.version import SUPPORTED_VERSIONS
from tests.integration.conftest import Runner
from tests.integration.nsutil import (
    Namespaces,
    addrs,
    links,
    path,
    ping,
    poll,
    run_plugin,
    sh,
)

REFERENCE = Path("/usr/lib/cni")
SUBNET, SUBNET6 = "10.94.0.0/24", "fd00:94::/64"
WAN_HOST, WAN_PEER = "192.0.2.1", "192.0.2.2"


def vconf(
    tmp_path: Path, version: str = "1.0.0", *, six: bool = False, routes: Any = None, **opts: Any
) -> dict[str, Any]:
    ranges = [[{"subnet": SUBNET}]] + ([[{"subnet": SUBNET6}]] if six else [])
    ipam = {
        "type": "host-local",
        "dataDir": str(tmp_path / "ipam"),
        "ranges": ranges,
        "routes": routes if routes is not None else [{"dst": "0.0.0.0/0"}],
    }
    return {"cniVersion": version, "name": "ptpnet", "type": "ptp", "ipam": ipam, **opts}


def reserved(tmp_path: Path) -> set[str]:
    d = tmp_path / "ipam" / "ptpnet"
    out = set()
    for name in os.listdir(d) if d.is_dir() else []:
        try:
            out.add(str(ipaddress.ip_address(name)))
        except ValueError:
            pass
    return out


def host_veths(ns: str) -> list[str]:
    return [
        n
        for n, link in links(ns).items()
        if link.get("linkinfo", {}).get("info_kind") == "veth" and not n.startswith("wan")
    ]


def masq_elements(ns: str) -> list[Any]:
    ruleset = json.loads(sh("nft", "-j", "list", "ruleset", ns=ns).stdout)["nftables"]
    return [e for item in ruleset if (m := item.get("map")) and m["table"] == "cni_py_masq" for e in m.get("elem", [])]


def routes(ns: str, six: bool = False) -> list[str]:
    """``ip route`` lines without the kernel's fe80/multicast noise."""
    lines = sh("ip", *(["-6"] if six else []), "route", ns=ns).stdout.splitlines()
    return sorted(line.strip() for line in lines if not line.startswith(("fe80", "multicast", "ff00")))


def with_prev(c: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    return {**c, "prevResult": result}


def assert_clean(host_ns: str, tmp_path: Path) -> None:
    # A veth whose peer's namespace was just deleted goes when the kernel frees that namespace,
    # a few milliseconds later and on its own schedule: wait for it, not for the plugin.
    assert poll(lambda: host_veths(host_ns) == [], timeout=2), host_veths(host_ns)
    assert reserved(tmp_path) == set() and masq_elements(host_ns) == []


def make_wan(namespaces: Namespaces, host_ns: str) -> str:
    """A namespace beyond the host: reachable from host_ns, with no route back to SUBNET."""
    wan = namespaces.make("wan")
    sh("ip", "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", wan, ns=host_ns)
    for ns, dev, addr in ((host_ns, "wan0", WAN_HOST), (wan, "eth0", WAN_PEER)):
        sh("ip", "addr", "add", f"{addr}/24", "dev", dev, ns=ns)
        sh("ip", "link", "set", dev, "up", ns=ns)
    return wan


def source_seen_by(wan: str, ctr: str) -> str:
    """Connect from ``ctr`` to a TCP server in ``wan``; the source address the server saw."""
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            wan,
            sys.executable,
            "-c",
            "import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, "
            "socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 7777)); "
            "s.listen(); print('ready', flush=True); s.settimeout(10); "
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
            f"import socket; s = socket.create_connection(('{WAN_PEER}', "
            "7777), timeout=3); print(s.recv(100).decode())",
            ns=ctr,
            check=False,
        )
        return client.stdout.strip() or "(no answer)"
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_check_del(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path, version: str) -> None:
    c = vconf(tmp_path, version)
    out = plugin("ptp", "ADD", c, netns=container_ns).ok()
    [veth] = host_veths(host_ns)
    ctr_mac, host_mac = links(container_ns)["eth0"]["address"], links(host_ns)[veth]["address"]
    assert out["cniVersion"] == version
    if version < "0.3.0":
        assert out["ip4"] == {"ip": "10.94.0.2/24", "gateway": "10.94.0.1", "routes": [{"dst": "0.0.0.0/0"}]}
    else:
        assert out["interfaces"] == [
            {"name": veth, "mac": host_mac},
            {"name": "eth0", "mac": ctr_mac, "sandbox": path(container_ns)},
        ]
        ip = {"interface": 1, "address": "10.94.0.2/24", "gateway": "10.94.0.1"}
        assert out["ips"] == [ip if version >= "1.0.0" else {"version": "4", **ip}]
    assert routes(container_ns) == sorted(
        [
            "default via 10.94.0.1 dev eth0",
            "10.94.0.0/24 via 10.94.0.1 dev eth0 src 10.94.0.2",
            "10.94.0.1 dev eth0 scope link src 10.94.0.2",
        ]
    )
    assert "10.94.0.2/24" in addrs(container_ns, "eth0") and "10.94.0.1/32" in addrs(host_ns, veth)
    assert routes(host_ns) == [f"10.94.0.2 dev {veth} scope host"]
    assert sh("cat", "/proc/sys/net/ipv4/ip_forward", ns=host_ns).stdout.strip() == "1"
    assert ping(container_ns, "10.94.0.1")
    if version >= "0.4.0":
        plugin("ptp", "CHECK", with_prev(c, out), netns=container_ns).ok()
    plugin("ptp", "DEL", with_prev(c, out) if version >= "0.4.0" else c, netns=container_ns).ok()
    assert "eth0" not in links(container_ns)
    assert_clean(host_ns, tmp_path)
    plugin("ptp", "DEL", c, netns=container_ns).ok()


@pytest.mark.skipif(not (REFERENCE / "ptp").exists(), reason="reference ptp not installed")
def test_same_routes_and_addresses_as_the_reference(plugin: Runner, namespaces: Namespaces, tmp_path: Path) -> None:
    """Reference ptp in one host/container pair, ours in another: same kernel state."""
    state = {}
    for who in ("reference", "ours"):
        host, ctr = namespaces.make("h"), namespaces.make("c")
        c = vconf(
            tmp_path / who,
            six=True,
            mtu=1400,
            routes=[{"dst": "0.0.0.0/0"}, {"dst": "10.99.0.0/16", "gw": "10.94.0.1"}],
        )
        bin_dir = REFERENCE if who == "reference" else plugin.cni_bin
        run_plugin(bin_dir, "ptp", "ADD", c, netns=path(ctr), host_ns=host).ok()
        [veth] = host_veths(host)
        state[who] = {
            "ctr4": routes(ctr),
            "ctr6": routes(ctr, six=True),
            "host4": [r.replace(veth, "VETH") for r in routes(host)],
            "host6": [r.replace(veth, "VETH") for r in routes(host, six=True) if not r.startswith("fd00:94::1 ")],
            "ctr_addrs": sorted(a for a in addrs(ctr, "eth0") if not a.startswith("fe80")),
            "host_addrs": sorted(a for a in addrs(host, veth) if not a.startswith("fe80")),
            "mtu": (links(ctr)["eth0"]["mtu"], links(host)[veth]["mtu"]),
        }
    assert state["ours"] == state["reference"]


def test_two_containers_reach_each_other_through_the_host(
    plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path
) -> None:
    a, b = namespaces.make("pa"), namespaces.make("pb")
    c = vconf(tmp_path)
    plugin("ptp", "ADD", c, netns=a, container_id="a").ok()
    plugin("ptp", "ADD", c, netns=b, container_id="b").ok()
    assert ping(a, "10.94.0.3") and ping(b, "10.94.0.2")
    neighbours = sh("ip", "neigh", ns=a).stdout
    assert "10.94.0.3" not in neighbours  # same subnet, yet routed through the gateway


def test_dual_stack(plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path) -> None:
    a, b = namespaces.make("pa"), namespaces.make("pb")
    c = vconf(tmp_path, six=True)
    out = plugin("ptp", "ADD", c, netns=a, container_id="a").ok()
    plugin("ptp", "ADD", c, netns=b, container_id="b").ok()
    assert [ip["address"] for ip in out["ips"]] == ["10.94.0.2/24", "fd00:94::2/64"] and all(
        ip["interface"] == 1 for ip in out["ips"]
    )
    assert "fd00:94::/64 via fd00:94::1 dev eth0 src fd00:94::2 metric 1024 pref medium" in routes(a, six=True)
    assert sh("cat", "/proc/sys/net/ipv6/conf/all/forwarding", ns=host_ns).stdout.strip() == "1"
    assert ping(a, "fd00:94::3", timeout=3) and ping(b, "10.94.0.2")
    plugin("ptp", "CHECK", with_prev(c, out), netns=a, container_id="a").ok()


@pytest.mark.parametrize("backend", [None, "nftables", "iptables"])
def test_masquerade_reaches_beyond_the_host(
    plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path, backend: str | None
) -> None:
    wan, ctr = make_wan(namespaces, host_ns), namespaces.make("pc")
    extra: dict[str, Any] = {"ipMasqBackend": backend} if backend else {}
    c = vconf(tmp_path, ipMasq=True, **extra)
    run = plugin("ptp", "ADD", c, netns=ctr)
    out = run.ok()
    assert ("served by nftables" in run.stderr) == (backend == "iptables")
    assert source_seen_by(wan, ctr) == WAN_HOST
    assert len(masq_elements(host_ns)) == 2  # the address in the verdict map and in its owners map
    plugin("ptp", "CHECK", with_prev(c, out), netns=ctr).ok()
    plugin("ptp", "DEL", with_prev(c, out), netns=ctr).ok()
    assert_clean(host_ns, tmp_path)


def test_without_ipmasq_the_outside_cannot_answer(
    plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path
) -> None:
    wan, ctr = make_wan(namespaces, host_ns), namespaces.make("pc")
    plugin("ptp", "ADD", vconf(tmp_path), netns=ctr).ok()
    assert source_seen_by(wan, ctr) == "(no answer)"


def test_veth_name_is_the_same_plugin(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    c = vconf(tmp_path) | {"type": "veth"}
    out = plugin("veth", "ADD", c, netns=container_ns).ok()
    assert out["ips"][0]["address"] == "10.94.0.2/24"
    plugin("veth", "DEL", c, netns=container_ns).ok()
    assert_clean(host_ns, tmp_path)


def test_mtu(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    plugin("ptp", "ADD", vconf(tmp_path, mtu=1280), netns=container_ns).ok()
    [veth] = host_veths(host_ns)
    assert links(container_ns)["eth0"]["mtu"] == 1280 and links(host_ns)[veth]["mtu"] == 1280


@pytest.mark.parametrize(
    "dns, want",
    [
        (None, {"nameservers": ["192.0.2.53"], "search": ["ipam.example"]}),
        ({}, {"nameservers": ["192.0.2.53"], "search": ["ipam.example"]}),
        ({"nameservers": ["198.51.100.1"]}, {"nameservers": ["198.51.100.1"]}),
        ({"search": []}, {}),
    ],
    ids=["none", "empty", "set", "empty-list"],
)
def test_dns_overrides_ipam_only_when_set(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path, dns: dict[str, Any] | None, want: dict[str, Any]
) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 192.0.2.53\nsearch ipam.example\n")
    extra: dict[str, Any] = {"dns": dns} if dns is not None else {}
    c = vconf(tmp_path, **extra)
    c["ipam"]["resolvConf"] = str(resolv)
    assert plugin("ptp", "ADD", c, netns=container_ns).ok()["dns"] == want


def test_ipam_is_required(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    c = {k: v for k, v in vconf(tmp_path).items() if k != "ipam"}
    bad = plugin("ptp", "ADD", c, netns=container_ns)
    assert bad.rc == 1 and bad.json["code"] == 7 and "ipam" in bad.json["msg"]
    plugin("ptp", "DEL", c, netns=container_ns).ok()


def test_bad_options_are_named(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    for opts, word in (({"ipMasqBackend": "pf"}, "ipMasqBackend"), ({"mtu": -1}, "mtu"), ({"ipMasq": "yes"}, "ipMasq")):
        bad = plugin("ptp", "ADD", vconf(tmp_path, **opts), netns=container_ns)
        assert bad.rc == 1 and bad.json["code"] == 7 and word in bad.json["msg"]
    assert_clean(host_ns, tmp_path)


def test_failed_route_rolls_everything_back(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    c = vconf(tmp_path, ipMasq=True, routes=[{"dst": "10.251.0.0/16", "gw": "198.51.100.1"}])  # gateway off-link
    bad = plugin("ptp", "ADD", c, netns=container_ns)
    assert bad.rc == 1 and "configure eth0" in bad.json["msg"] and "10.251.0.0/16" in bad.json["msg"]
    assert set(links(container_ns)) == {"lo"}
    assert_clean(host_ns, tmp_path)


def test_failure_in_masquerade_rolls_back_every_step(
    cni_bin: Path, host_ns: str, container_ns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process (inside host_ns): masquerade is set up, then fails; all of ADD is undone."""
    from cni_plugins.kernel import netns
    from cni_plugins.plugins import ptp as veth
    from cni_plugins.protocol import skel
    from cni_plugins.spec.errors import CNIError
    from firewall.rules import masq

    real = masq.setup_masq

    def half_done(*a: Any) -> None:
        real(*a)
        raise CNIError("injected failure")

    monkeypatch.setattr(masq, "setup_masq", half_done)
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "ctr1",
        "CNI_NETNS": path(container_ns),
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(cni_bin),
    }
    out = io.StringIO()
    with netns.entered(path(host_ns)):
        rc = skel.run(
            veth.PLUGIN,
            environ=env,
            stdin=json.dumps(vconf(tmp_path, ipMasq=True)).encode(),
            stdout=out,
            stderr=io.StringIO(),
        )
    assert rc == 1 and json.loads(out.getvalue())["msg"] == "ipMasq: injected failure"
    assert set(links(container_ns)) == {"lo"}
    assert_clean(host_ns, tmp_path)


def test_existing_ifname_is_refused_and_kept(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other0", ns=container_ns)
    bad = plugin("ptp", "ADD", vconf(tmp_path), netns=container_ns)
    assert bad.rc == 1 and "already exists" in bad.json["msg"]
    assert "eth0" in links(container_ns)
    assert_clean(host_ns, tmp_path)


@pytest.mark.parametrize("how", ["netns-gone", "netns-empty", "no-prev-result"])
def test_del_without_netns_or_prev_result(
    plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path, how: str
) -> None:
    ctr = namespaces.make("pg")
    c = vconf(tmp_path, ipMasq=True)
    out = plugin("ptp", "ADD", c, netns=ctr).ok()
    if how == "netns-gone":
        sh("ip", "netns", "del", ctr)
        plugin("ptp", "DEL", with_prev(c, out), netns=path(ctr)).ok()
    elif how == "netns-empty":
        plugin("ptp", "DEL", c, netns="").ok()  # masquerade found by owner, the veth goes with the netns
        sh("ip", "netns", "del", ctr)
    else:
        plugin("ptp", "DEL", c, netns=path(ctr)).ok()  # addresses read from the live interface
    assert_clean(host_ns, tmp_path)
    plugin("ptp", "DEL", c, netns="").ok()


def test_check_names_what_differs(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    c = vconf(tmp_path, ipMasq=True)
    prev = with_prev(c, plugin("ptp", "ADD", c, netns=container_ns).ok())
    [veth] = host_veths(host_ns)
    sh("nft", "flush", "map", "inet", "cni_py_masq", "masq4", ns=host_ns)
    bad = plugin("ptp", "CHECK", prev, netns=container_ns)
    assert bad.rc == 1 and "ipMasq" in bad.json["msg"] and "10.94.0.2" in bad.json["msg"]
    sh("ip", "route", "del", "10.94.0.2", "dev", veth, ns=host_ns)
    bad = plugin("ptp", "CHECK", prev, netns=container_ns)
    assert bad.rc == 1 and "host route to 10.94.0.2" in bad.json["msg"]
    sh("ip", "route", "del", "default", ns=container_ns)
    bad = plugin("ptp", "CHECK", prev, netns=container_ns)
    assert bad.rc == 1 and "0.0.0.0/0" in bad.json["msg"]
    no_prev = plugin("ptp", "CHECK", c, netns=container_ns)
    assert no_prev.rc == 1 and "prevResult" in no_prev.json["msg"]


def test_status_and_gc(plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path) -> None:
    a, b = namespaces.make("pa"), namespaces.make("pb")
    c = vconf(tmp_path, "1.1.0", ipMasq=True)
    plugin("ptp", "STATUS", c).ok()
    plugin("ptp", "ADD", c, netns=a, container_id="a").ok()
    plugin("ptp", "ADD", c, netns=b, container_id="b").ok()
    assert reserved(tmp_path) == {"10.94.0.2", "10.94.0.3"} and len(masq_elements(host_ns)) == 4
    plugin("ptp", "GC", {**c, "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}).ok()
    assert reserved(tmp_path) == {"10.94.0.2"}
    assert len(masq_elements(host_ns)) == 2 and "10.94.0.2" in json.dumps(masq_elements(host_ns))
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a directory")
    c["ipam"]["dataDir"] = str(blocked)
    bad = plugin("ptp", "STATUS", c)
    assert bad.rc == 1 and bad.json["code"] == 50
