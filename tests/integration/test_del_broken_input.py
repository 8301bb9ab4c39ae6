"""DEL never gets stuck on its own input: each plugin, ADDed with a good config, is DELeted
with a config whose options, ``runtimeConfig``, ``args``, ``prevResult`` and ``ipam`` ranges
cannot be read; it exits 0 and leaves nothing of that attachment behind: no link, no
reservation, no nftables element, no tuning backup. Both DELs a runtime sends are covered:
at stop (netns present, prevResult) and at removal (netns gone, empty CNI_NETNS, no
prevResult). A first container stays attached throughout, so shared tables and per-bridge
entries exist and only what belongs to the second one may go."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.chainutil import Host
from tests.integration.nsutil import Namespaces, PluginRun, ip_json, path, poll, sh

# What each plugin gets at DEL instead of its good options.
BROKEN: dict[str, dict[str, Any]] = {
    "bridge": {"isGateway": "maybe", "ipMasq": "sure", "macspoofchk": "yes", "mtu": "big", "vlanTrunk": 5, "dns": 5},
    "ptp": {"ipMasq": "sure", "mtu": "big", "ipMasqBackend": "bogus"},
    "macvlan": {"mode": "bogus", "mtu": "big", "master": 5, "bcqueuelen": -1},
    "portmap": {"snat": "x", "backend": "bogus", "conditionsV4": 5, "markMasqBit": 3},
    "firewall": {"ingressPolicy": "bogus", "iptablesAcceptMark": "x", "iptablesAdminChainName": "-bad"},
    "tuning": {"mtu": "x", "sysctl": 5, "promisc": "x", "mac": 5},
    "loopback": {"whatever": {"x": 1}},
}
SHARED_BROKEN = {
    "runtimeConfig": {"portMappings": [{"HostPort": "x"}], "mac": 7, "ips": "x"},
    "args": {"cni": {"ips": "x", "mac": 5}},
}
BROKEN_RANGES = {"ranges": "bogus", "routes": 7, "resolvConf": 5}
BROKEN_PREV = {"ips": "x", "interfaces": 5}


def broken(conf: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
    out = {**conf, **BROKEN.get(conf["type"], {}), **SHARED_BROKEN}
    if "ipam" in conf:
        out["ipam"] = {**conf["ipam"], **BROKEN_RANGES}
    if prev is not None:
        out["prevResult"] = BROKEN_PREV
    return out


def state(h: Host, tuning_dir: Path) -> dict[str, Any]:
    """What a container may own in the host: its links, reservations, nft elements, backups."""
    links = sorted(link["ifname"] for link in ip_json("link", "show", ns=h.ns))
    reserved = sorted(
        str(p.relative_to(h.tmp_path))
        for p in (h.tmp_path / "ipam").glob("*/*")
        if p.name[0].isdigit() or ":" in p.name
    )
    ruleset = json.loads(sh("nft", "-j", "list", "ruleset", ns=h.ns).stdout)["nftables"]
    elements = sorted(
        f"{obj['family']} {obj['table']} {obj['name']}: {json.dumps(e, sort_keys=True)}"
        for item in ruleset
        for obj in [item.get("set") or item.get("map") or {}]
        for e in obj.get("elem") or []
    )
    backups = sorted(p.name for p in tuning_dir.glob("*")) if tuning_dir.exists() else []
    return {"links": links, "reserved": reserved, "nft": elements, "backups": backups}


def assert_same(now: dict[str, Any], before: dict[str, Any]) -> None:
    left = {k: sorted(set(now[k]) - set(before[k])) for k in now if set(now[k]) - set(before[k])}
    gone = {k: sorted(set(before[k]) - set(now[k])) for k in now if set(before[k]) - set(now[k])}
    assert not left and not gone, f"left behind: {left}; removed although not its own: {gone}"


def chain_for(kind: str, h: Host, tuning_dir: Path, host_port: int = 18081) -> list[dict[str, Any]]:
    ipam = {
        "type": "host-local",
        "dataDir": str(h.tmp_path / "ipam"),
        "ranges": [[{"subnet": "10.77.0.0/24"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
    }
    base = {"cniVersion": "1.0.0", "name": f"del-{kind}"}
    if kind == "bridge-chain":
        return [
            {
                **base,
                "type": "bridge",
                "bridge": "cnidel0",
                "isGateway": True,
                "ipMasq": True,
                "macspoofchk": True,
                "hairpinMode": True,
                "ipam": ipam,
            },
            {
                **base,
                "type": "portmap",
                "capabilities": {"portMappings": True},
                "runtimeConfig": {"portMappings": [{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]},
            },
            {**base, "type": "firewall"},
            {
                **base,
                "type": "tuning",
                "mtu": 1400,
                "promisc": True,
                "sysctl": {"net.ipv4.conf.IFNAME.arp_notify": "1"},
                "dataDir": str(tuning_dir),
            },
        ]
    if kind == "ptp":
        return [{**base, "type": "ptp", "ipMasq": True, "ipam": ipam}]
    if kind == "macvlan":
        return [
            {**base, "type": "macvlan", "master": "wan0", "mode": "bridge", "ipam": ipam},
            {**base, "type": "loopback"},
        ]
    raise AssertionError(kind)


def del_all(h: Host, chain: list[dict[str, Any]], prev: dict[str, Any] | None, ctr: str, cid: str) -> list[PluginRun]:
    netns = path(ctr) if ctr else ""
    runs = []
    for conf in reversed(chain):
        c = broken(conf, prev)
        runs.append(h.run(conf["type"], "DEL", c, ctr, cid) if netns else h.run(conf["type"], "DEL", c, "", cid))
    return runs


@pytest.fixture
def host(namespaces: Namespaces, host_ns: str, cni_bin: Path, tmp_path: Path) -> Host:
    return Host(namespaces=namespaces, ns=host_ns, cni_bin=cni_bin, tmp_path=tmp_path).setup()


@pytest.mark.parametrize("when", ["stop", "remove"])
@pytest.mark.parametrize("kind", ["bridge-chain", "ptp", "macvlan"])
def test_del_with_unreadable_input_removes_everything(
    host: Host, namespaces: Namespaces, tmp_path: Path, kind: str, when: str
) -> None:
    tuning_dir = tmp_path / "tuning"
    chain = chain_for(kind, host, tuning_dir)
    first = namespaces.make("first")
    first_result = host.must_add(chain_for(kind, host, tuning_dir, 18082), first, "first-ctr")
    before = state(host, tuning_dir)

    ctr = namespaces.make("ctr")
    result = host.must_add(chain, ctr, "second-ctr")
    assert state(host, tuning_dir) != before, "the ADD owns nothing the test could see"
    if when == "remove":  # the runtime's second DEL: the netns is gone, and there is no prevResult
        sh("ip", "netns", "del", ctr)
        runs = del_all(host, chain, None, "", "second-ctr")
    else:
        runs = del_all(host, chain, result, ctr, "second-ctr")
        assert "eth0" not in {link["ifname"] for link in ip_json("link", "show", ns=ctr)}
    for run in runs:
        assert run.rc == 0, f"DEL failed: {run.stdout} {run.stderr}"
        assert "Traceback" not in run.stderr
    assert any("DEL: ignoring" in run.stderr for run in runs), "the DELs did not say what they ignored"
    if when == "remove":  # the kernel takes the veth pair down with the netns, asynchronously
        poll(lambda: state(host, tuning_dir)["links"] == before["links"], timeout=10)
    assert_same(state(host, tuning_dir), before)
    host.attached = [a for a in host.attached if a[2] != "second-ctr"]

    host.delete(chain_for(kind, host, tuning_dir, 18082), first_result, first, "first-ctr")
    again = host.must_add(
        chain, ctr if when == "stop" else namespaces.make("ctr2"), "second-ctr"
    )  # the container can come back
    assert again["ips"]


def test_loopback_and_static_del_with_unreadable_input(host: Host, container_ns: str) -> None:
    confs: tuple[dict[str, Any], ...] = (
        {"cniVersion": "1.0.0", "name": "lo", "type": "loopback", **BROKEN["loopback"], **SHARED_BROKEN},
        {
            "cniVersion": "1.0.0",
            "name": "st",
            "type": "macvlan",
            "master": "wan0",
            "ipam": {"type": "static", "addresses": "bogus"},
            **SHARED_BROKEN,
        },
    )
    for conf in confs:
        run = host.run(conf["type"], "DEL", conf, container_ns, "c1")
        assert run.rc == 0, f"{conf['type']} DEL failed: {run.stdout} {run.stderr}"


def test_add_and_check_still_refuse_unreadable_input(host: Host, container_ns: str, tmp_path: Path) -> None:
    chain = chain_for("bridge-chain", host, tmp_path / "tuning")
    bad = broken(chain[0], None)
    run = host.run("bridge", "ADD", bad, container_ns, "c1")
    assert run.rc == 1 and run.json["code"] in (6, 7), run.stdout
    assert state(host, tmp_path / "tuning")["reserved"] == []
