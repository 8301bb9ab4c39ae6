"""bandwidth: chained after our ptp in real namespaces (host_ns stands for the host), shaping
checked with tc and with TCP transfers, DEL/GC with what is left checked, and the reference
binary (Debian's v1.1.1, TBF-based) acting on the same state."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.spec.version import SUPPORTED_VERSIONS
from tests.integration.conftest import Runner
from tests.integration.nsutil import Namespaces, links, path, run_plugin, sh
from tests.integration.throughput import tcp_rate

REFERENCE = Path("/usr/lib/cni/bandwidth")
VERSIONS = [v for v in SUPPORTED_VERSIONS if v >= "0.3.0"]
SUBNET = "10.99.0.0/24"
GATEWAY, CONTAINER = "10.99.0.1", "10.99.0.2"
EXEMPT = "10.98.0.1"  # an address of host_ns outside SUBNET, in the unshaped subnet of the traffic test
LIMITS: dict[str, Any] = {
    "ingressRate": 8_000_000,
    "ingressBurst": 800_000,
    "egressRate": 16_000_000,
    "egressBurst": 1_600_000,
}


def ifb_of(network: str, container_id: str) -> str:
    return "bwp" + hashlib.sha512((network + container_id).encode()).hexdigest()[:12]


IFB = ifb_of("bwnet", "ctr1")


def attach(
    plugin: Runner, ctr: str, tmp_path: Path, version: str = "1.0.0", subnet: str = SUBNET, **kw: Any
) -> dict[str, Any]:
    """Our ptp ADD: the veth bandwidth shapes; its result is bandwidth's prevResult."""
    conf = {
        "cniVersion": version,
        "name": "bwnet" if subnet == SUBNET else "bwnet2",
        "type": "ptp",
        "ipam": {
            "type": "host-local",
            "dataDir": str(tmp_path / "ipam"),
            "ranges": [[{"subnet": subnet}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    }
    out: dict[str, Any] = plugin("ptp", "ADD", conf, netns=ctr, **kw).ok()
    return out


def conf(prev: dict[str, Any] | None, version: str = "1.0.0", **opts: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": version, "name": "bwnet", "type": "bandwidth", **opts}
    if prev is not None:
        out["prevResult"] = prev
    return out


def host_veth(prev: dict[str, Any]) -> str:
    name: str = prev["interfaces"][0]["name"]
    assert "sandbox" not in prev["interfaces"][0]
    return name


def tc(ns: str, *argv: str) -> str:
    return sh("tc", *argv, ns=ns).stdout


def qdiscs(ns: str, dev: str) -> list[tuple[str, str]]:
    """(kind, handle) of the qdiscs tc shows on ``dev``, the default noqueue left out."""
    out = json.loads(tc(ns, "-j", "qdisc", "show", "dev", dev))
    return [(q["kind"], q["handle"]) for q in out if q["kind"] != "noqueue"]


def ifbs(ns: str) -> dict[str, dict[str, Any]]:
    return {n: link for n, link in links(ns).items() if link.get("linkinfo", {}).get("info_kind") == "ifb"}


def state(ns: str, veth: str) -> tuple[list[tuple[str, str]], list[str]]:
    return qdiscs(ns, veth), sorted(ifbs(ns))


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path, version: str) -> None:
    prev = attach(plugin, container_ns, tmp_path, version)
    veth = host_veth(prev)
    c = conf(prev, version, **LIMITS)
    out = plugin("bandwidth", "ADD", c, netns=container_ns).ok()
    ifb = links(host_ns)[IFB]
    assert out == {**prev, "interfaces": [*prev["interfaces"], {"name": IFB, "mac": ifb["address"]}]}
    assert ifb["linkinfo"]["info_kind"] == "ifb" and "UP" in ifb["flags"]
    assert ifb["mtu"] == links(host_ns)[veth]["mtu"] and ifb["txqlen"] == 1000
    assert ifb["ifalias"] == "cni-py bandwidth bwnet"
    assert qdiscs(host_ns, veth) == [("htb", "1:"), ("ingress", "ffff:")]
    assert qdiscs(host_ns, IFB) == [("htb", "1:")]
    assert "rate 8Mbit ceil 16Mbit burst 100000b" in tc(host_ns, "class", "show", "dev", veth, "classid", "1:30")
    assert "rate 16Mbit ceil 32Mbit burst 200000b" in tc(host_ns, "class", "show", "dev", IFB, "classid", "1:30")
    assert "rate 800Gbit" in tc(host_ns, "class", "show", "dev", IFB, "classid", "1:1")
    redirect = tc(host_ns, "filter", "show", "dev", veth, "parent", "ffff:")
    assert "match 00000000/00000000 at 0" in redirect
    assert redirect.count(f"mirred (Egress Redirect to device {IFB})") == 2
    if version >= "0.4.0":
        plugin("bandwidth", "CHECK", {**c, "prevResult": out}, netns=container_ns).ok()
    plugin("bandwidth", "DEL", {**c, "prevResult": out} if version >= "0.4.0" else c, netns=container_ns).ok()
    assert state(host_ns, veth) == ([], [])
    plugin("bandwidth", "DEL", c, netns=container_ns).ok()


def test_after_bridge(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    """The chain Kubernetes distributions use: bridge, then bandwidth. prevResult lists the
    bridge too (no sandbox); only the container's veth peer is shaped."""
    bridge = {
        "cniVersion": "1.0.0",
        "name": "bwnet",
        "type": "bridge",
        "bridge": "cnibw0",
        "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"), "ranges": [[{"subnet": SUBNET}]]},
    }
    prev = plugin("bridge", "ADD", bridge, netns=container_ns).ok()
    veth = prev["interfaces"][1]["name"]
    c = conf(prev, **LIMITS)
    plugin("bandwidth", "ADD", c, netns=container_ns).ok()
    assert qdiscs(host_ns, veth) == [("htb", "1:"), ("ingress", "ffff:")] and qdiscs(host_ns, "cnibw0") == []
    plugin("bandwidth", "CHECK", c, netns=container_ns).ok()
    plugin("bandwidth", "DEL", c, netns=container_ns).ok()
    assert state(host_ns, veth) == ([], [])


def test_traffic_is_shaped_both_ways_and_not_for_unshaped_subnets(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path
) -> None:
    """TCP from host_ns to the container is held to ingressRate and from the container to
    egressRate (two different rates, so a swap would show), both within 15%; traffic with an
    address of host_ns in unshapedSubnets at its far end is not shaped either way."""
    prev = attach(plugin, container_ns, tmp_path)
    sh("ip", "addr", "add", f"{EXEMPT}/32", "dev", "lo", ns=host_ns)
    ingress, egress = 30_000_000, 50_000_000
    c = conf(
        prev,
        ingressRate=ingress,
        ingressBurst=ingress // 100,
        egressRate=egress,
        egressBurst=egress // 100,
        unshapedSubnets=["10.98.0.0/16"],
    )
    plugin("bandwidth", "ADD", c, netns=container_ns).ok()
    measured = {
        "ingress": tcp_rate(container_ns, host_ns, CONTAINER, source=GATEWAY),
        "egress": tcp_rate(host_ns, container_ns, GATEWAY),
        "ingress, unshaped": tcp_rate(container_ns, host_ns, CONTAINER, source=EXEMPT, window=0.5),
        "egress, unshaped": tcp_rate(host_ns, container_ns, EXEMPT, window=0.5),
    }
    print({k: f"{v / 1e6:.1f} Mbit/s" for k, v in measured.items()})
    assert abs(measured["ingress"] / ingress - 1) <= 0.15, measured
    assert abs(measured["egress"] / egress - 1) <= 0.15, measured
    assert measured["ingress, unshaped"] > 3 * egress and measured["egress, unshaped"] > 3 * egress, measured


def test_shaped_subnets_filters(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    """shapedSubnets: default class 1:1 (unshaped), one u32 filter per subnet to 1:30, pref 16
    for IPv4 and 15 for IPv6, on the far end's address: source on the veth, destination on the ifb."""
    prev = attach(plugin, container_ns, tmp_path)
    veth = host_veth(prev)
    c = conf(prev, **LIMITS, shapedSubnets=["10.1.2.3/16", "fd00::/8", "::/0"])
    out = plugin("bandwidth", "ADD", c, netns=container_ns).ok()
    for dev, v4, v6 in ((veth, "at 12", "at 8"), (IFB, "at 16", "at 24")):
        assert "default 0x1 " in tc(host_ns, "qdisc", "show", "dev", dev)
        shown = tc(host_ns, "filter", "show", "dev", dev)
        assert "protocol ip pref 16" in shown and "protocol ipv6 pref 15" in shown
        assert f"match 0a010000/ffff0000 {v4}" in shown and f"match fd000000/ff000000 {v6}" in shown
        assert shown.count("*flowid 1:30") == 3  # ::/0 too, with u32's match-all key
    plugin("bandwidth", "CHECK", {**c, "prevResult": out}, netns=container_ns).ok()
    sh("tc", "filter", "del", "dev", IFB, "parent", "1:", "pref", "15", ns=host_ns)
    bad = plugin("bandwidth", "CHECK", {**c, "prevResult": out}, netns=container_ns)
    assert bad.rc == 1 and "subnet filters" in bad.json["msg"] and IFB in bad.json["msg"]


def test_runtime_capability_and_the_configs_precedence(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path
) -> None:
    prev = attach(plugin, container_ns, tmp_path)
    veth = host_veth(prev)
    runtime = {"bandwidth": {"ingressRate": 4_000_000, "ingressBurst": 40_000}}
    plugin("bandwidth", "ADD", conf(prev, runtimeConfig=runtime), netns=container_ns).ok()
    assert "rate 4Mbit ceil 8Mbit burst 5000b" in tc(host_ns, "class", "show", "dev", veth, "classid", "1:30")
    assert ifbs(host_ns) == {}  # no egress limit: no ifb
    plugin("bandwidth", "DEL", conf(prev, runtimeConfig=runtime), netns=container_ns).ok()
    assert qdiscs(host_ns, veth) == []
    both = conf(prev, ingressRate=8_000_000, ingressBurst=80_000, runtimeConfig=runtime)
    plugin("bandwidth", "ADD", both, netns=container_ns).ok()
    assert "rate 8Mbit ceil 16Mbit burst 10000b" in tc(host_ns, "class", "show", "dev", veth, "classid", "1:30")
    plugin("bandwidth", "CHECK", both, netns=container_ns).ok()
    bad = plugin("bandwidth", "CHECK", conf(prev, runtimeConfig=runtime), netns=container_ns)
    assert bad.rc == 1 and "Rate does not match" in bad.json["msg"] and "1000000 != 500000" in bad.json["msg"]


def test_runtime_capability_with_subnets(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    """The capability carries the subnet lists too (the reference's BandwidthEntry): with
    ``unshapedSubnets`` from the runtime, those subnets go to the uncapped class on both devices."""
    prev = attach(plugin, container_ns, tmp_path)
    veth = host_veth(prev)
    runtime = {"bandwidth": {**LIMITS, "unshapedSubnets": ["10.1.0.0/16"]}}
    c = conf(prev, runtimeConfig=runtime)
    plugin("bandwidth", "ADD", c, netns=container_ns).ok()
    for dev in (veth, IFB):
        assert "default 0x30 " in tc(host_ns, "qdisc", "show", "dev", dev)
        shown = tc(host_ns, "filter", "show", "dev", dev)
        assert "*flowid 1:1 " in shown and "match 0a010000/ffff0000" in shown, shown
    plugin("bandwidth", "CHECK", c, netns=container_ns).ok()
    plugin("bandwidth", "DEL", c, netns=container_ns).ok()
    assert state(host_ns, veth) == ([], [])


@pytest.mark.parametrize("version", VERSIONS)
def test_no_limit_passes_prev_result_through(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path, version: str
) -> None:
    prev = attach(plugin, container_ns, tmp_path, version)
    for c in (conf(prev, version), conf(prev, version, runtimeConfig={"bandwidth": {}})):
        assert plugin("bandwidth", "ADD", c, netns=container_ns).ok() == prev
    assert state(host_ns, host_veth(prev)) == ([], [])


def test_bad_input_is_refused_and_changes_nothing(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path
) -> None:
    prev = attach(plugin, container_ns, tmp_path)
    veth = host_veth(prev)
    other = {**prev, "interfaces": [{"name": "nosuchveth"}, *prev["interfaces"][1:]]}
    unbound = [{k: v for k, v in ip.items() if k != "interface"} for ip in prev["ips"]]
    cases: list[tuple[dict[str, Any], int, list[str], dict[str, str]]] = [
        (conf(prev, ingressRate=8000), 7, ["ingressBurst", "burst must also be set"], {}),
        (conf(prev, egressBurst=8000), 7, ["egressRate", "rate must also be set"], {}),
        (conf(prev, ingressRate=8000, ingressBurst=2**35 * 8), 7, ["ingressBurst", "4GB"], {}),
        (conf(prev, ingressRate=-5, ingressBurst=8), 7, ["ingressRate", "-5"], {}),
        (conf(prev, ingressRate="1000", ingressBurst=8), 7, ["ingressRate", "integer"], {}),
        (conf(prev, ingressRate=7, ingressBurst=8000), 7, ["ingressRate", "8 bit/s"], {}),
        (conf(prev, ingressRate=8, ingressBurst=2**31), 7, ["ingressBurst", "longer than the kernel"], {}),
        (conf(prev, runtimeConfig={"bandwidth": {"egressRate": 1000}}), 7, ["runtimeConfig.bandwidth.egressBurst"], {}),
        (conf(prev, **LIMITS, shapedSubnets=["10.0.0.0/8"], unshapedSubnets=["10.1.0.0/16"]), 7, ["both"], {}),
        (conf(prev, **LIMITS, unshapedSubnets=["10.0.0.0/8", "x"]), 7, ["unshapedSubnets[1]", "'x'"], {}),
        (conf(prev, **LIMITS, shapedSubnets=["10.0.0.1"]), 7, ["shapedSubnets[0]", "address/prefix"], {}),
        (conf(None, **LIMITS), 7, ["chained", "prevResult"], {}),
        (conf(None), 7, ["chained", "prevResult"], {}),
        (conf(prev, "0.2.0", **LIMITS), 1, ["0.2.0"], {}),
        (conf({**prev, "interfaces": [], "ips": unbound}, **LIMITS), 7, ["no interfaces"], {}),
        (conf(other, **LIMITS), 999, [veth, "not in prevResult"], {}),
        (conf(prev, **LIMITS), 999, ["eth9", "no veth peer"], {"CNI_IFNAME": "eth9"}),
        (conf(prev, **LIMITS), 999, ["lo", "not a veth"], {"CNI_IFNAME": "lo"}),
        (conf(prev, **LIMITS), 8, ["does not exist"], {"CNI_NETNS": "/var/run/netns/cnitest-nonexistent"}),
    ]
    before = state(host_ns, veth)
    for c, code, words, env in cases:
        bad = plugin("bandwidth", "ADD", c, netns=container_ns, env=env)
        assert bad.rc == 1 and bad.json["code"] == code, (c, bad.stdout, bad.stderr)
        assert all(w in bad.json["msg"] + bad.json.get("details", "") for w in words), (words, bad.json)
        assert "Traceback" not in bad.stderr
        assert state(host_ns, veth) == before, c
    assert not Path("/var/run/netns/cnitest-nonexistent").exists()


def test_failed_add_leaves_nothing_and_keeps_what_was_there(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path
) -> None:
    """An ingress qdisc someone else put on the veth makes the egress step fail after the
    ingress HTB and the ifb were made: both go, the other qdisc stays."""
    prev = attach(plugin, container_ns, tmp_path)
    veth = host_veth(prev)
    sh("tc", "qdisc", "add", "dev", veth, "ingress", ns=host_ns)
    bad = plugin("bandwidth", "ADD", conf(prev, **LIMITS), netns=container_ns)
    assert bad.rc == 1 and "ingress" in bad.json["msg"] and veth in bad.json["msg"], bad.json
    assert state(host_ns, veth) == ([("ingress", "ffff:")], [])


def test_second_interface_of_a_container_on_one_network_is_refused(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path
) -> None:
    """The ifb's name comes from network and container only (the reference's): a second
    shaped interface would need the same ifb. It is refused and the first one is untouched."""
    first = attach(plugin, container_ns, tmp_path)
    second = attach(plugin, container_ns, tmp_path, subnet="10.97.0.0/24", ifname="eth1")
    plugin("bandwidth", "ADD", conf(first, **LIMITS), netns=container_ns).ok()
    bad = plugin("bandwidth", "ADD", conf(second, **LIMITS), netns=container_ns, ifname="eth1")
    assert bad.rc == 1 and f"ifb {IFB} already exists" in bad.json["msg"] and "one interface" in bad.json["details"]
    assert qdiscs(host_ns, host_veth(second)) == []
    plugin("bandwidth", "CHECK", conf(first, **LIMITS), netns=container_ns).ok()


def test_check_sees_drift(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    prev = attach(plugin, container_ns, tmp_path)
    veth = host_veth(prev)
    c = conf(prev, **LIMITS)
    plugin("bandwidth", "ADD", c, netns=container_ns).ok()
    plugin("bandwidth", "CHECK", c, netns=container_ns).ok()
    bad = plugin("bandwidth", "CHECK", conf(prev, **{**LIMITS, "egressBurst": 800_000}), netns=container_ns)
    assert bad.rc == 1 and "Burst buffer size" in bad.json["msg"] and IFB in bad.json["msg"]
    sh("tc", "qdisc", "del", "dev", veth, "ingress", ns=host_ns)
    bad = plugin("bandwidth", "CHECK", c, netns=container_ns)
    assert bad.rc == 1 and "redirect" in bad.json["msg"]
    sh("ip", "link", "del", IFB, ns=host_ns)
    bad = plugin("bandwidth", "CHECK", c, netns=container_ns)
    assert bad.rc == 1 and "get ifb device" in bad.json["msg"]
    sh("tc", "qdisc", "del", "dev", veth, "root", ns=host_ns)
    bad = plugin("bandwidth", "CHECK", c, netns=container_ns)
    assert bad.rc == 1 and "Failed to find qdisc" in bad.json["msg"]
    missing = plugin("bandwidth", "CHECK", conf(None, **LIMITS), netns=container_ns)
    assert missing.rc == 1 and missing.json["code"] == 7 and "prevResult" in missing.json["msg"]


def test_del_when_netns_is_gone_or_not_given_or_input_unreadable(
    plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path
) -> None:
    gone = namespaces.make("gone")
    prev = attach(plugin, gone, tmp_path)
    plugin("bandwidth", "ADD", conf(prev, **LIMITS), netns=gone).ok()
    sh("ip", "netns", "del", gone)
    plugin("bandwidth", "DEL", conf(prev, **LIMITS), netns=path(gone)).ok()
    assert ifbs(host_ns) == {}
    for i, (c, netns) in enumerate(
        (
            (conf(prev, **LIMITS), ""),  # containerd: no CNI_NETNS on DEL
            (conf(prev, ingressRate="fast", egressRate=1, prevResult="garbage"), "same"),
        )
    ):
        ctr = namespaces.make(f"c{i}")
        p = attach(plugin, ctr, tmp_path, container_id=f"c{i}")
        plugin("bandwidth", "ADD", conf(p, **LIMITS), netns=ctr, container_id=f"c{i}").ok()
        assert ifbs(host_ns).keys() == {ifb_of("bwnet", f"c{i}")}
        out = plugin("bandwidth", "DEL", c, netns=ctr if netns else "", container_id=f"c{i}").ok()
        assert out is None and ifbs(host_ns) == {}
        if netns:
            assert qdiscs(host_ns, host_veth(p)) == []


def test_status_and_gc(plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path) -> None:
    """GC deletes this network's ifbs whose container is not valid; an ifb without our alias
    (the reference's, or anyone's) and another network's stay."""
    plugin("bandwidth", "STATUS", conf(None, "1.1.0")).ok()
    for cid in ("a", "b"):
        ctr = namespaces.make(cid)
        prev = attach(plugin, ctr, tmp_path, "1.1.0", container_id=cid)
        plugin("bandwidth", "ADD", conf(prev, "1.1.0", **LIMITS), netns=ctr, container_id=cid).ok()
    foreign = ifb_of("bwnet", "c")
    sh("ip", "link", "add", foreign, "type", "ifb", ns=host_ns)
    other_net = ifb_of("othernet", "d")
    sh("ip", "link", "add", other_net, "type", "ifb", ns=host_ns)
    sh("ip", "link", "set", other_net, "alias", "cni-py bandwidth othernet", ns=host_ns)
    gc = {**conf(None, "1.1.0"), "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}
    plugin("bandwidth", "GC", gc).ok()
    assert set(ifbs(host_ns)) == {ifb_of("bwnet", "a"), foreign, other_net}
    plugin("bandwidth", "GC", conf(None, "1.1.0")).ok()  # no list: nothing deleted
    assert len(ifbs(host_ns)) == 3


# ---------------------------------------------------------------- the reference binary


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference bandwidth not installed")
def test_reference_add_then_our_del_and_check(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    """The reference (TBF) and we name the ifb alike and print the same result; our DEL
    removes everything its ADD made (it leaves its qdiscs on the veth itself)."""
    prev = attach(plugin, container_ns, tmp_path)
    veth = host_veth(prev)
    c = conf(prev, **LIMITS)
    ref = run_plugin(REFERENCE.parent, "bandwidth", "ADD", c, netns=path(container_ns), host_ns=host_ns).ok()
    assert ref["interfaces"][-1]["name"] == IFB
    assert qdiscs(host_ns, veth) == [("tbf", "1:"), ("ingress", "ffff:")]
    bad = plugin("bandwidth", "CHECK", {**c, "prevResult": ref}, netns=container_ns)
    assert bad.rc == 1 and "htb" in bad.json["msg"]  # its TBF is not our HTB: CHECK says so
    plugin("bandwidth", "DEL", c, netns=container_ns).ok()
    assert state(host_ns, veth) == ([], [])
    ours = plugin("bandwidth", "ADD", c, netns=container_ns).ok()
    ours["interfaces"][-1]["mac"] = ref["interfaces"][-1]["mac"]
    assert ours == ref


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference bandwidth not installed")
def test_our_add_then_reference_del(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    prev = attach(plugin, container_ns, tmp_path)
    c = conf(prev, **LIMITS)
    plugin("bandwidth", "ADD", c, netns=container_ns).ok()
    run_plugin(REFERENCE.parent, "bandwidth", "DEL", c, netns=path(container_ns), host_ns=host_ns).ok()
    assert ifbs(host_ns) == {}  # the reference deletes the ifb by the same name
    plugin("bandwidth", "DEL", c, netns=container_ns).ok()  # ours then clears the veth's qdiscs
    assert qdiscs(host_ns, host_veth(prev)) == []
