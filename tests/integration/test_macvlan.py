"""macvlan: every option against real namespaces, plugins exec'd inside host_ns.

The master is always a link the test makes in host_ns (one end of a veth pair whose other
end is up, so the master has carrier), never one of the machine's interfaces.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.spec.version import SUPPORTED_VERSIONS
from tests.integration.conftest import Runner
from tests.integration.nsutil import Namespaces, addrs, links, path, ping, sh

SUBNET = "10.93.0.0/24"


def make_master(ns: str, name: str = "mvm0", *, default_route: bool = False, mtu: int = 1500) -> int:
    """A veth end ``name`` (peer up) in ``ns``; returns its ifindex."""
    sh("ip", "link", "add", name, "mtu", str(mtu), "type", "veth", "peer", "name", f"{name}p", "mtu", str(mtu), ns=ns)
    sh("ip", "link", "set", f"{name}p", "up", ns=ns)
    sh("ip", "link", "set", name, "up", ns=ns)
    if default_route:
        sh("ip", "route", "add", "default", "dev", name, ns=ns)
    return int(links(ns)[name]["ifindex"])


def conf(tmp_path: Path, version: str = "1.0.0", *, ipam: Any = "host-local", **opts: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": version, "name": "mvnet", "type": "macvlan", "master": "mvm0", **opts}
    if ipam == "host-local":
        out["ipam"] = {
            "type": "host-local",
            "dataDir": str(tmp_path / "ipam"),
            "ranges": [[{"subnet": SUBNET}]],
            "routes": [{"dst": "10.250.0.0/16"}],
        }
    elif ipam is not None:
        out["ipam"] = ipam
    return {k: v for k, v in out.items() if v is not None}


def reserved(tmp_path: Path, network: str = "mvnet") -> set[str]:
    d = tmp_path / "ipam" / network
    out = set()
    for name in os.listdir(d) if d.is_dir() else []:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            continue
        out.add(name)
    return out


def macvlan_info(ns: str, ifname: str = "eth0") -> dict[str, Any]:
    link = links(ns)[ifname]
    assert link["linkinfo"]["info_kind"] == "macvlan"
    return dict(
        link["linkinfo"]["info_data"],
        link_index=link.get("link_index"),
        link=link.get("link"),
        mtu=link["mtu"],
        mac=link["address"],
        flags=link["flags"],
    )


def with_prev(c: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    return {**c, "prevResult": result}


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_check_del(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path, version: str) -> None:
    master = make_master(host_ns)
    c = conf(tmp_path, version, dns={"nameservers": ["192.0.2.53"]})
    out = plugin("macvlan", "ADD", c, netns=container_ns).ok()
    info = macvlan_info(container_ns)
    assert info["mode"] == "bridge" and info["link_index"] == master and "UP" in info["flags"]
    assert "10.93.0.2/24" in addrs(container_ns, "eth0")
    assert "10.250.0.0/16 via 10.93.0.1 dev eth0" in sh("ip", "route", ns=container_ns).stdout
    assert sh("cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify", ns=container_ns).stdout.strip() == "1"
    assert sh("cat", "/proc/sys/net/ipv6/conf/eth0/ndisc_notify", ns=container_ns).stdout.strip() == "1"
    assert out["cniVersion"] == version
    if version < "0.3.0":
        assert out["ip4"] == {"ip": "10.93.0.2/24", "gateway": "10.93.0.1", "routes": [{"dst": "10.250.0.0/16"}]}
    else:
        assert out["interfaces"] == [{"name": "eth0", "mac": info["mac"], "sandbox": path(container_ns)}]
        ip = {"interface": 0, "address": "10.93.0.2/24", "gateway": "10.93.0.1"}
        assert out["ips"] == [ip if version >= "1.0.0" else {"version": "4", **ip}]
        assert out["routes"] == [{"dst": "10.250.0.0/16"}]
    assert out["dns"] == {"nameservers": ["192.0.2.53"]}
    assert reserved(tmp_path) == {"10.93.0.2"}
    if version >= "0.4.0":
        plugin("macvlan", "CHECK", with_prev(c, out), netns=container_ns).ok()
    plugin("macvlan", "DEL", with_prev(c, out) if version >= "0.4.0" else c, netns=container_ns).ok()
    assert "eth0" not in links(container_ns)
    assert reserved(tmp_path) == set()
    plugin("macvlan", "DEL", c, netns=container_ns).ok()  # again: still fine


def test_bridge_mode_containers_reach_each_other(
    plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path
) -> None:
    make_master(host_ns)
    a, b = namespaces.make("mva"), namespaces.make("mvb")
    c = conf(tmp_path, mode="bridge")
    plugin("macvlan", "ADD", c, netns=a, container_id="a").ok()
    plugin("macvlan", "ADD", c, netns=b, container_id="b").ok()
    assert ping(a, "10.93.0.3") and ping(b, "10.93.0.2")


def test_private_mode_isolates(plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path) -> None:
    make_master(host_ns)
    a, b = namespaces.make("mva"), namespaces.make("mvb")
    c = conf(tmp_path, mode="private")
    plugin("macvlan", "ADD", c, netns=a, container_id="a").ok()
    plugin("macvlan", "ADD", c, netns=b, container_id="b").ok()
    assert macvlan_info(a)["mode"] == "private"
    assert not ping(a, "10.93.0.3", timeout=1)


@pytest.mark.parametrize("mode", ["vepa", "passthru"])
def test_other_modes(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path, mode: str) -> None:
    make_master(host_ns)
    c = conf(tmp_path, mode=mode)
    out = plugin("macvlan", "ADD", c, netns=container_ns).ok()
    assert macvlan_info(container_ns)["mode"] == mode
    plugin("macvlan", "CHECK", with_prev(c, out), netns=container_ns).ok()


def test_unknown_mode_is_a_config_error(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    make_master(host_ns)
    bad = plugin("macvlan", "ADD", conf(tmp_path, mode="source"), netns=container_ns)
    assert bad.rc == 1 and bad.json["code"] == 7 and "mode" in bad.json["msg"]


def test_master_defaults_to_default_route_interface(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path
) -> None:
    make_master(host_ns, "mvm0")
    second = make_master(host_ns, "mvm1", default_route=True)
    c = conf(tmp_path, master=None)
    out = plugin("macvlan", "ADD", c, netns=container_ns).ok()
    assert macvlan_info(container_ns)["link_index"] == second
    plugin("macvlan", "CHECK", with_prev(c, out), netns=container_ns).ok()


def test_no_master_and_no_default_route_is_clear(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path
) -> None:
    bad = plugin("macvlan", "ADD", conf(tmp_path, master=None), netns=container_ns)
    assert bad.rc == 1 and bad.json["code"] == 7 and "master" in bad.json["msg"] and "default route" in bad.json["msg"]


def test_missing_master_is_named_and_nothing_left(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path
) -> None:
    bad = plugin("macvlan", "ADD", conf(tmp_path, master="nosuchmaster"), netns=container_ns)
    assert bad.rc == 1 and bad.json["code"] == 7 and "'nosuchmaster'" in bad.json["msg"]
    assert reserved(tmp_path) == set() and set(links(container_ns)) == {"lo"}


def test_loopback_master_is_refused(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    bad = plugin("macvlan", "ADD", conf(tmp_path, master="lo"), netns=container_ns)
    assert bad.rc == 1 and "'lo'" in bad.json["msg"] and "loopback" in bad.json["msg"]
    assert set(links(container_ns)) == {"lo"}


def test_mtu(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    make_master(host_ns, mtu=1500)
    plugin("macvlan", "ADD", conf(tmp_path, mtu=1280), netns=container_ns).ok()
    assert macvlan_info(container_ns)["mtu"] == 1280


def test_mtu_above_master_is_refused(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    make_master(host_ns, mtu=1500)
    bad = plugin("macvlan", "ADD", conf(tmp_path, mtu=9000), netns=container_ns)
    assert bad.rc == 1 and bad.json["code"] == 7 and "mtu" in bad.json["msg"] and "1500" in bad.json["msg"]
    assert set(links(container_ns)) == {"lo"} and reserved(tmp_path) == set()


@pytest.mark.parametrize(
    "source",
    ["conf", "CNI_ARGS", "args", "runtimeConfig"],
)
def test_mac_sources_and_precedence(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path, source: str
) -> None:
    make_master(host_ns)
    c = conf(tmp_path, mac="c2:00:00:00:00:01")
    cni_args = ""
    want = "c2:00:00:00:00:01"
    if source in ("CNI_ARGS", "args", "runtimeConfig"):
        cni_args, want = "IgnoreUnknown=1;MAC=c2:00:00:00:00:02", "c2:00:00:00:00:02"
    if source in ("args", "runtimeConfig"):
        c["args"], want = {"cni": {"mac": "c2:00:00:00:00:03"}}, "c2:00:00:00:00:03"
    if source == "runtimeConfig":
        c["runtimeConfig"], want = {"mac": "C2-00-00-00-00-04"}, "c2:00:00:00:00:04"
    out = plugin("macvlan", "ADD", c, netns=container_ns, cni_args=cni_args).ok()
    assert macvlan_info(container_ns)["mac"] == want
    assert out["interfaces"][0]["mac"] == want
    plugin("macvlan", "CHECK", with_prev(c, out), netns=container_ns, cni_args=cni_args).ok()


def test_invalid_mac_names_its_source(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    make_master(host_ns)
    bad = plugin("macvlan", "ADD", conf(tmp_path, runtimeConfig={"mac": "zz:00"}), netns=container_ns)
    assert bad.rc == 1 and bad.json["code"] == 7 and "runtimeConfig.mac" in bad.json["msg"]
    bad = plugin("macvlan", "ADD", conf(tmp_path), netns=container_ns, cni_args="FOO=1")
    assert bad.rc == 1 and bad.json["code"] == 4 and "FOO" in bad.json["msg"]


def test_link_in_container(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    make_master(container_ns, "cmaster")
    c = conf(tmp_path, master="cmaster", linkInContainer=True)
    out = plugin("macvlan", "ADD", c, netns=container_ns).ok()
    assert macvlan_info(container_ns)["link"] == "cmaster"  # same namespace: ip names the master
    plugin("macvlan", "CHECK", with_prev(c, out), netns=container_ns).ok()
    # without linkInContainer the master is looked up in the host, where it does not exist
    bad = plugin(
        "macvlan", "ADD", conf(tmp_path, master="cmaster"), netns=container_ns, container_id="other", ifname="eth1"
    )
    assert bad.rc == 1 and "'cmaster'" in bad.json["msg"]
    plugin("macvlan", "DEL", c, netns=container_ns).ok()
    assert "eth0" not in links(container_ns) and "cmaster" in links(container_ns)


def test_bcqueuelen(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    make_master(host_ns)
    plugin("macvlan", "ADD", conf(tmp_path, bcqueuelen=123), netns=container_ns).ok()
    assert macvlan_info(container_ns)["bcqueuelen"] == 123


@pytest.mark.parametrize("ipam", [None, {}], ids=["no-ipam", "empty-ipam"])
def test_l2_only(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path, ipam: dict[str, Any] | None) -> None:
    make_master(host_ns)
    c = conf(tmp_path, ipam=ipam)
    out = plugin("macvlan", "ADD", c, netns=container_ns).ok()
    assert "UP" in macvlan_info(container_ns)["flags"]
    assert not [a for a in addrs(container_ns, "eth0") if not a.startswith("fe80:")]
    assert "ips" not in out and out["interfaces"][0]["name"] == "eth0"
    plugin("macvlan", "CHECK", with_prev(c, out), netns=container_ns).ok()
    plugin("macvlan", "DEL", c, netns=container_ns).ok()
    assert "eth0" not in links(container_ns)


def test_add_failure_after_ipam_leaves_nothing(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    make_master(host_ns)
    c = conf(tmp_path)
    c["ipam"]["routes"] = [{"dst": "10.251.0.0/16", "gw": "192.0.2.1"}]  # gateway off-link: the route add fails
    bad = plugin("macvlan", "ADD", c, netns=container_ns)
    assert bad.rc == 1 and "10.251.0.0/16" in bad.json["msg"] and "configure eth0" in bad.json["msg"]
    assert set(links(container_ns)) == {"lo"} and reserved(tmp_path) == set()


def test_existing_ifname_is_refused_and_kept(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    make_master(host_ns)
    sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p", ns=container_ns)
    bad = plugin("macvlan", "ADD", conf(tmp_path), netns=container_ns)
    assert bad.rc == 1 and "already exists" in bad.json["msg"]
    assert links(container_ns)["eth0"]["linkinfo"]["info_kind"] == "veth" and reserved(tmp_path) == set()
    assert not [n for n in links(container_ns) if n.startswith("mv")]


def test_del_without_netns(plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path) -> None:
    make_master(host_ns)
    ctr = namespaces.make("gone")
    c = conf(tmp_path)
    plugin("macvlan", "ADD", c, netns=ctr).ok()
    sh("ip", "netns", "del", ctr)
    plugin("macvlan", "DEL", c, netns=path(ctr)).ok()  # the path no longer exists
    assert reserved(tmp_path) == set()
    assert plugin("macvlan", "ADD", c, netns="", container_id="x").rc == 1
    plugin("macvlan", "DEL", c, netns="").ok()  # containerd: no CNI_NETNS on DEL


def test_del_releases_ip_when_netns_empty(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    make_master(host_ns)
    c = conf(tmp_path)
    plugin("macvlan", "ADD", c, netns=container_ns).ok()
    plugin("macvlan", "DEL", c, netns="").ok()
    assert reserved(tmp_path) == set()


def test_check_detects_drift(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    make_master(host_ns)
    c = conf(tmp_path)
    out = plugin("macvlan", "ADD", c, netns=container_ns).ok()
    prev = with_prev(c, out)
    wrong_mode = plugin("macvlan", "CHECK", {**prev, "mode": "private"}, netns=container_ns)
    assert wrong_mode.rc == 1 and "mode" in wrong_mode.json["msg"]
    sh("ip", "addr", "del", "10.93.0.2/24", "dev", "eth0", ns=container_ns)
    gone = plugin("macvlan", "CHECK", prev, netns=container_ns)
    assert gone.rc == 1 and "10.93.0.2/24" in gone.json["msg"]
    sh("ip", "link", "set", "eth0", "address", "c2:00:00:00:00:09", ns=container_ns)
    mac = plugin("macvlan", "CHECK", prev, netns=container_ns)
    assert mac.rc == 1 and "MAC" in mac.json["msg"]
    missing = plugin("macvlan", "CHECK", c, netns=container_ns)
    assert missing.rc == 1 and "prevResult" in missing.json["msg"]


def test_status_and_gc_delegate_to_ipam(plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path) -> None:
    make_master(host_ns)
    a, b = namespaces.make("mva"), namespaces.make("mvb")
    c = conf(tmp_path, "1.1.0")
    plugin("macvlan", "STATUS", c).ok()
    plugin("macvlan", "ADD", c, netns=a, container_id="a").ok()
    plugin("macvlan", "ADD", c, netns=b, container_id="b").ok()
    assert reserved(tmp_path) == {"10.93.0.2", "10.93.0.3"}
    gc = {**c, "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}
    plugin("macvlan", "GC", gc).ok()
    assert reserved(tmp_path) == {"10.93.0.2"}
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")
    c["ipam"]["dataDir"] = str(blocked)
    bad = plugin("macvlan", "STATUS", c)
    assert bad.rc == 1 and bad.json["code"] == 50


def test_l2_only_with_a_pre_0_3_version_is_refused_before_anything_is_made(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path
) -> None:
    make_master(host_ns)
    bad = plugin("macvlan", "ADD", conf(tmp_path, "0.2.0", ipam=None), netns=container_ns)
    assert bad.rc == 1 and bad.json["code"] == 1 and "0.3.0" in bad.json["details"]
    assert set(links(container_ns)) == {"lo"}


@pytest.mark.skipif(not Path("/usr/lib/cni/macvlan").exists(), reason="reference macvlan not installed")
@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_result_and_link_match_the_reference(
    plugin: Runner, namespaces: Namespaces, tmp_path: Path, version: str
) -> None:
    from tests.integration.nsutil import run_plugin

    seen = {}
    for who in ("reference", "ours"):
        host, ctr = namespaces.make("h"), namespaces.make("c")
        make_master(host)
        c = conf(tmp_path / who, version, mode="vepa", mtu=1400, mac="c2:00:00:00:00:0a", dns={"search": ["example"]})
        bin_dir = Path("/usr/lib/cni") if who == "reference" else plugin.cni_bin
        out = run_plugin(bin_dir, "macvlan", "ADD", c, netns=path(ctr), host_ns=host).ok()
        out["interfaces"][0]["sandbox"] = "SANDBOX"
        info = macvlan_info(ctr)
        seen[who] = (
            out,
            info["mode"],
            info["mtu"],
            info["mac"],
            sorted(a for a in addrs(ctr, "eth0") if not a.startswith("fe80")),
            sh("ip", "route", ns=ctr).stdout,
        )
    assert seen["ours"] == seen["reference"]


def test_host_link_with_the_container_name_does_not_collide(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path
) -> None:
    """The link is born under a temporary name in the container and renamed there, so a host
    link already called eth0 is no obstacle and is left alone."""
    make_master(host_ns)
    sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer", ns=host_ns)
    plugin("macvlan", "ADD", conf(tmp_path), netns=container_ns).ok()
    assert macvlan_info(container_ns)["mode"] == "bridge"
    assert links(host_ns)["eth0"]["linkinfo"]["info_kind"] == "veth"
    assert not [n for n, link in links(host_ns).items() if link.get("linkinfo", {}).get("info_kind") == "macvlan"]
