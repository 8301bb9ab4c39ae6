"""tuning: each option on a real container interface, restore on DEL, and the reference's
backup format in both directions. The interface is a veth end the test puts in the container."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.spec.version import (
    SUPPORTED_VERSIONS,
    result_from_json,
    result_to_json,
)
from tests.integration.conftest import Runner
from tests.integration.nsutil import Namespaces, links, path, sh

REFERENCE = Path("/usr/lib/cni/tuning")


@pytest.fixture
def ctr(host_ns: str, container_ns: str) -> str:
    """container_ns with eth0 (a veth whose peer sits in host_ns), up, 10.1.0.2/24."""
    sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "tunpeer0", "netns", host_ns, ns=container_ns)
    sh("ip", "link", "set", "eth0", "up", ns=container_ns)
    sh("ip", "addr", "add", "10.1.0.2/24", "dev", "eth0", ns=container_ns)
    return container_ns


def prev_result(ns: str, version: str = "1.0.0") -> dict[str, Any]:
    """What a bridge plugin hands on: host bridge, host veth, container eth0."""
    mac = links(ns)["eth0"]["address"]
    full = {
        "cniVersion": "1.1.0",
        "interfaces": [
            {"name": "cni-podman0", "mac": "aa:00:00:00:00:01"},
            {"name": "veth1234", "mac": "aa:00:00:00:00:02"},
            {"name": "eth0", "mac": mac, "sandbox": path(ns)},
        ],
        "ips": [{"interface": 2, "address": "10.1.0.2/24", "gateway": "10.1.0.1"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
        "dns": {"nameservers": ["10.1.0.1"]},
    }
    return result_to_json(result_from_json(full), version)


def conf(tmp_path: Path, ns: str, version: str = "1.0.0", **opts: Any) -> dict[str, Any]:
    return {
        "cniVersion": version,
        "name": "tunnet",
        "type": "tuning",
        "dataDir": str(tmp_path / "tuning"),
        "prevResult": prev_result(ns, version),
        **opts,
    }


def link(ns: str) -> dict[str, Any]:
    eth0: dict[str, Any] = links(ns)["eth0"]
    return eth0


def sysctl(ns: str, key: str) -> str:
    return sh("cat", "/proc/sys/" + key.replace(".", "/"), ns=ns).stdout.strip()


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_no_options_passes_prev_result_through(plugin: Runner, ctr: str, tmp_path: Path, version: str) -> None:
    c = {k: v for k, v in conf(tmp_path, ctr, version).items() if k != "dataDir"}  # podman's bare {"type": "tuning"}
    assert plugin("tuning", "ADD", c, netns=ctr).ok() == c["prevResult"]
    if version >= "0.4.0":
        plugin("tuning", "CHECK", c, netns=ctr).ok()
    plugin("tuning", "DEL", c, netns=ctr).ok()


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference tuning not installed")
@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
@pytest.mark.parametrize("opts", [{}, {"mac": "c2:00:00:00:00:07"}], ids=["bare", "mac"])
def test_result_matches_reference(
    plugin: Runner, host_ns: str, ctr: str, tmp_path: Path, version: str, opts: dict[str, Any]
) -> None:
    from tests.integration.nsutil import run_plugin

    c = conf(tmp_path, ctr, version, **opts)
    ref = run_plugin(REFERENCE.parent, "tuning", "ADD", c, netns=path(ctr), host_ns=host_ns).ok()
    run_plugin(REFERENCE.parent, "tuning", "DEL", c, netns=path(ctr), host_ns=host_ns).ok()
    assert plugin("tuning", "ADD", c, netns=ctr).ok() == ref


def test_missing_prev_result(plugin: Runner, ctr: str, tmp_path: Path) -> None:
    c = conf(tmp_path, ctr)
    del c["prevResult"]
    bad = plugin("tuning", "ADD", c, netns=ctr)
    assert bad.rc == 1 and bad.json["code"] == 7 and "prevResult" in bad.json["msg"]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_attributes_add_check_del(plugin: Runner, ctr: str, tmp_path: Path, version: str) -> None:
    before = link(ctr)
    c = conf(tmp_path, ctr, version, mac="c2:00:00:00:00:01", mtu=1400, promisc=True, allmulti=True, txQLen=77)
    out = plugin("tuning", "ADD", c, netns=ctr).ok()
    now = link(ctr)
    assert now["address"] == "c2:00:00:00:00:01" and now["mtu"] == 1400 and now["txqlen"] == 77
    assert "PROMISC" in now["flags"] and "ALLMULTI" in now["flags"]
    if version >= "0.3.0":
        assert out["interfaces"][2]["mac"] == "c2:00:00:00:00:01"
        assert out["interfaces"][:2] == c["prevResult"]["interfaces"][:2]
    assert {k: v for k, v in out.items() if k != "interfaces"} == {
        k: v for k, v in c["prevResult"].items() if k != "interfaces"
    }
    backup = tmp_path / "tuning" / "ctr1_eth0.json"
    assert json.loads(backup.read_text()) == {
        "mac": before["address"],
        "promisc": False,
        "mtu": before["mtu"],
        "allmulti": False,
        "txQLen": before["txqlen"],
    }
    assert oct(backup.stat().st_mode & 0o777) == "0o600"
    if version >= "0.4.0":
        plugin("tuning", "CHECK", {**c, "prevResult": out}, netns=ctr).ok()
    plugin("tuning", "DEL", c, netns=ctr).ok()
    after = link(ctr)
    assert (
        after["address"] == before["address"] and after["mtu"] == before["mtu"] and after["txqlen"] == before["txqlen"]
    )
    assert "PROMISC" not in after["flags"] and "ALLMULTI" not in after["flags"]
    assert not backup.exists()
    plugin("tuning", "DEL", c, netns=ctr).ok()


def test_allmulti_false_turns_it_off_and_back(plugin: Runner, ctr: str, tmp_path: Path) -> None:
    sh("ip", "link", "set", "eth0", "allmulticast", "on", ns=ctr)
    c = conf(tmp_path, ctr, allmulti=False)
    plugin("tuning", "ADD", c, netns=ctr).ok()
    assert "ALLMULTI" not in link(ctr)["flags"]
    plugin("tuning", "DEL", c, netns=ctr).ok()
    assert "ALLMULTI" in link(ctr)["flags"]


@pytest.mark.parametrize("source", ["conf", "CNI_ARGS", "runtimeConfig", "args"])
def test_mac_sources_and_precedence(plugin: Runner, ctr: str, tmp_path: Path, source: str) -> None:
    c = conf(tmp_path, ctr, mac="c2:00:00:00:00:01")
    cni_args, want = "", "c2:00:00:00:00:01"
    if source != "conf":
        cni_args, want = "IgnoreUnknown=1;MAC=c2:00:00:00:00:02", "c2:00:00:00:00:02"
    if source in ("runtimeConfig", "args"):
        c["runtimeConfig"], want = {"mac": "c2:00:00:00:00:03"}, "c2:00:00:00:00:03"
    if source == "args":
        c["args"], want = {"cni": {"mac": "c2:00:00:00:00:04"}}, "c2:00:00:00:00:04"
    out = plugin("tuning", "ADD", c, netns=ctr, cni_args=cni_args).ok()
    assert link(ctr)["address"] == want and out["interfaces"][2]["mac"] == want


def test_args_cni_overrides_every_option(plugin: Runner, ctr: str, tmp_path: Path) -> None:
    cni = {
        "mtu": 1300,
        "promisc": True,
        "allmulti": True,
        "txQLen": 55,
        "sysctl": {"net.ipv4.conf.IFNAME.arp_filter": "1"},
    }
    c = conf(
        tmp_path,
        ctr,
        mtu=1400,
        promisc=False,
        allmulti=False,
        txQLen=66,
        sysctl={"net.ipv4.conf.IFNAME.arp_filter": "0"},
        args={"cni": cni},
    )
    out = plugin("tuning", "ADD", c, netns=ctr).ok()
    now = link(ctr)
    assert now["mtu"] == 1300 and now["txqlen"] == 55 and "PROMISC" in now["flags"] and "ALLMULTI" in now["flags"]
    assert sysctl(ctr, "net.ipv4.conf.eth0.arp_filter") == "1"
    plugin("tuning", "CHECK", {**c, "prevResult": out}, netns=ctr).ok()


def test_sysctls_in_the_container_only(plugin: Runner, host_ns: str, ctr: str, tmp_path: Path) -> None:
    host_before = sysctl(host_ns, "net.core.somaxconn")
    c = conf(
        tmp_path,
        ctr,
        sysctl={
            "net.core.somaxconn": "1234",
            "net.ipv4.conf.IFNAME.arp_filter": "1",
            "net.ipv4.conf.all.arp_ignore": "1",
        },
    )
    out = plugin("tuning", "ADD", c, netns=ctr).ok()
    assert sysctl(ctr, "net.core.somaxconn") == "1234" and sysctl(host_ns, "net.core.somaxconn") == host_before
    assert sysctl(ctr, "net.ipv4.conf.eth0.arp_filter") == "1" and sysctl(ctr, "net.ipv4.conf.all.arp_ignore") == "1"
    assert out == c["prevResult"]
    assert not (tmp_path / "tuning").exists()  # nothing to restore: no backup file
    plugin("tuning", "CHECK", c, netns=ctr).ok()
    sh("sysctl", "-qw", "net.core.somaxconn=99", ns=ctr)
    drift = plugin("tuning", "CHECK", c, netns=ctr)
    assert drift.rc == 1 and "net.core.somaxconn" in drift.json["msg"]


def test_sysctl_on_dotted_interface_name(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    sh("ip", "link", "add", "eth0.5", "type", "veth", "peer", "name", "tunpeer5", "netns", host_ns, ns=container_ns)
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0.5", "sandbox": path(container_ns)}]}
    c = {
        "cniVersion": "1.0.0",
        "name": "tunnet",
        "type": "tuning",
        "prevResult": prev,
        "sysctl": {"net.ipv4.conf.IFNAME.arp_filter": "1", "net.ipv6.conf.eth0.5.accept_ra": "0"},
    }
    plugin("tuning", "ADD", c, netns=container_ns, ifname="eth0.5").ok()
    assert sh("cat", "/proc/sys/net/ipv4/conf/eth0.5/arp_filter", ns=container_ns).stdout.strip() == "1"
    assert sh("cat", "/proc/sys/net/ipv6/conf/eth0.5/accept_ra", ns=container_ns).stdout.strip() == "0"


@pytest.mark.parametrize(
    "key, words",
    [
        ("kernel.hostname", "net.*"),
        ("net/ipv4/ip_forward", "path separator"),
        ("net.ipv4..ip_forward", "net.*"),
        ("net.ipv4.conf.lo.arp_filter", "another interface"),
        ("net.ipv4.conf.IFNAME", "another interface"),
        ("fs.file-max", "net.*"),
    ],
)
def test_sysctl_key_refused(plugin: Runner, ctr: str, tmp_path: Path, key: str, words: str) -> None:
    bad = plugin("tuning", "ADD", conf(tmp_path, ctr, sysctl={key: "1"}), netns=ctr)
    assert bad.rc == 1 and bad.json["code"] == 7 and words in bad.json["msg"] and key in bad.json["msg"]


def test_duplicate_sysctl_keys_refused(plugin: Runner, ctr: str, tmp_path: Path) -> None:
    body = json.dumps(conf(tmp_path, ctr))[:-1] + ', "sysctl": {"net.core.somaxconn": "1", "net.core.somaxconn": "2"}}'
    bad = plugin("tuning", "ADD", body.encode(), netns=ctr)
    assert bad.rc == 1 and bad.json["code"] == 7 and "duplicated" in bad.json["msg"]
    same = plugin(
        "tuning",
        "ADD",
        conf(tmp_path, ctr, sysctl={"net.ipv4.conf.IFNAME.arp_filter": "1", "net.ipv4.conf.eth0.arp_filter": "0"}),
        netns=ctr,
    )
    assert same.rc == 1 and same.json["code"] == 7 and "same sysctl" in same.json["msg"]


def test_failed_add_leaves_nothing(plugin: Runner, ctr: str, tmp_path: Path) -> None:
    before = link(ctr)
    c = conf(
        tmp_path, ctr, sysctl={"net.ipv4.conf.IFNAME.arp_filter": "1"}, mac="c2:00:00:00:00:01", promisc=True, mtu=70000
    )
    bad = plugin("tuning", "ADD", c, netns=ctr)
    assert bad.rc == 1 and "MTU" in bad.json["msg"]
    after = link(ctr)
    assert after["address"] == before["address"] and "PROMISC" not in after["flags"] and after["mtu"] == before["mtu"]
    assert sysctl(ctr, "net.ipv4.conf.eth0.arp_filter") == "0"
    assert not (tmp_path / "tuning" / "ctr1_eth0.json").exists()
    unknown = plugin(
        "tuning",
        "ADD",
        conf(tmp_path, ctr, sysctl={"net.core.somaxconn": "777", "net.ipv4.no_such_knob": "1"}),
        netns=ctr,
    )
    assert unknown.rc == 1 and "no_such_knob" in unknown.json["msg"]
    assert sysctl(ctr, "net.core.somaxconn") != "777"


@pytest.mark.parametrize("data_dir, words", [("relative/dir", "absolute"), ("/run/../etc", "'..'")])
def test_data_dir_validated(plugin: Runner, ctr: str, tmp_path: Path, data_dir: str, words: str) -> None:
    bad = plugin("tuning", "ADD", {**conf(tmp_path, ctr, mtu=1400), "dataDir": data_dir}, netns=ctr)
    assert bad.rc == 1 and bad.json["code"] == 7 and "dataDir" in bad.json["msg"] and words in bad.json["msg"]


def test_bad_container_id_refused(plugin: Runner, ctr: str, tmp_path: Path) -> None:
    bad = plugin("tuning", "ADD", conf(tmp_path, ctr, mtu=1400), netns=ctr, container_id="../x")
    assert bad.rc == 1 and bad.json["code"] == 4


def test_del_with_netns_gone_or_empty_drops_backup(
    plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path
) -> None:
    for netns_on_del in ("gone", ""):
        ns = namespaces.make("tun")
        sh(
            "ip",
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            f"tp{netns_on_del or 'e'}",
            "netns",
            host_ns,
            ns=ns,
        )
        c = conf(tmp_path, ns, mtu=1400)
        plugin("tuning", "ADD", c, netns=ns).ok()
        backup = tmp_path / "tuning" / "ctr1_eth0.json"
        assert backup.exists()
        if netns_on_del == "gone":
            sh("ip", "netns", "del", ns)
            plugin("tuning", "DEL", c, netns=path(ns)).ok()
        else:
            plugin("tuning", "DEL", c, netns="").ok()
        assert not backup.exists()


def test_second_add_keeps_the_first_originals(plugin: Runner, ctr: str, tmp_path: Path) -> None:
    mtu = link(ctr)["mtu"]
    plugin("tuning", "ADD", conf(tmp_path, ctr, mtu=1400), netns=ctr).ok()
    plugin("tuning", "ADD", conf(tmp_path, ctr, mtu=1300), netns=ctr).ok()
    plugin("tuning", "DEL", conf(tmp_path, ctr, mtu=1300), netns=ctr).ok()
    assert link(ctr)["mtu"] == mtu


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference tuning not installed")
@pytest.mark.parametrize("adder, deleter", [("ours", "reference"), ("reference", "ours")])
def test_backup_interoperates_with_reference(
    plugin: Runner, host_ns: str, ctr: str, tmp_path: Path, adder: str, deleter: str
) -> None:
    from tests.integration.nsutil import run_plugin

    def run(who: str, cmd: str, c: dict[str, Any]) -> Any:
        if who == "ours":
            return plugin("tuning", cmd, c, netns=ctr).ok()
        return run_plugin(REFERENCE.parent, "tuning", cmd, c, netns=path(ctr), host_ns=host_ns).ok()

    before = link(ctr)
    c = conf(tmp_path, ctr, mac="c2:00:00:00:00:05", mtu=1450, promisc=True, allmulti=True)
    run(adder, "ADD", c)
    assert link(ctr)["address"] == "c2:00:00:00:00:05"
    run(deleter, "DEL", c)
    after = link(ctr)
    assert (
        (after["address"], after["mtu"]) == (before["address"], before["mtu"])
        and "PROMISC" not in after["flags"]
        and "ALLMULTI" not in after["flags"]
    )
    assert os.listdir(tmp_path / "tuning") == []


def test_chained_after_ptp(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    """A conflist as a runtime runs it: ptp, then tuning with prevResult; DEL in reverse."""
    ptp = {
        "cniVersion": "1.0.0",
        "name": "chain",
        "type": "ptp",
        "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"), "subnet": "10.95.0.0/24"},
    }
    first = plugin("ptp", "ADD", ptp, netns=container_ns).ok()
    original = link(container_ns)
    tuning = {
        "cniVersion": "1.0.0",
        "name": "chain",
        "type": "tuning",
        "dataDir": str(tmp_path / "tuning"),
        "mac": "c2:00:00:00:00:0b",
        "mtu": 1300,
        "prevResult": first,
    }
    final = plugin("tuning", "ADD", tuning, netns=container_ns).ok()
    assert final["interfaces"][1]["mac"] == "c2:00:00:00:00:0b" and final["interfaces"][0] == first["interfaces"][0]
    assert final["ips"] == first["ips"] and link(container_ns)["mtu"] == 1300
    plugin("ptp", "CHECK", {**ptp, "prevResult": final}, netns=container_ns).ok()
    plugin("tuning", "CHECK", {**tuning, "prevResult": final}, netns=container_ns).ok()
    plugin("tuning", "DEL", {**tuning, "prevResult": final}, netns=container_ns).ok()
    assert (link(container_ns)["address"], link(container_ns)["mtu"]) == (original["address"], original["mtu"])
    plugin("ptp", "DEL", {**ptp, "prevResult": final}, netns=container_ns).ok()
    assert "eth0" not in links(container_ns)
