"""sbr: a container with two interfaces made by our ptp (eth0, the default route's, and net1,
dual-stack), sbr chained on net1; the rules and tables checked with ``ip``, traffic checked
to leave by the interface of its source address, and the reference binary (Debian's v1.1.1)
acting on the same namespace."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.spec.version import SUPPORTED_VERSIONS
from tests.integration.conftest import Runner
from tests.integration.nsutil import Namespaces, path, ping, run_plugin, sh

REFERENCE = Path("/usr/lib/cni/sbr")
FAR_V4, FAR_V6 = "198.51.100.1", "2001:db8:100::1"  # addresses of host_ns only a default route reaches
NET1_RULES = {4: "32765:\tfrom 10.97.0.2 lookup 100", 6: "32765:\tfrom fd97::2 lookup 101"}
TABLE_100 = [
    "default via 10.97.0.1 dev net1",
    "10.97.0.0/24 via 10.97.0.1 dev net1 src 10.97.0.2",
    "10.97.0.1 dev net1 scope link src 10.97.0.2",
    "192.0.2.0/24 via 10.97.0.1 dev net1",
]
TABLE_101 = [
    "fd97::1 dev net1 src fd97::2 metric 1024 pref medium",
    "fd97::/64 via fd97::1 dev net1 src fd97::2 metric 1024 pref medium",
    "fe80::/64 dev net1 proto kernel metric 256 pref medium",
    "default via fd97::1 dev net1 metric 1024 pref medium",
]


def ptp(
    plugin: Runner, ctr: str, tmp_path: Path, version: str, ifname: str, ranges: list[str], routes: list[str]
) -> dict[str, Any]:
    conf = {
        "cniVersion": version,
        "name": f"sbr-{ifname}",
        "type": "ptp",
        "ipam": {
            "type": "host-local",
            "dataDir": str(tmp_path / "ipam"),
            "ranges": [[{"subnet": r}] for r in ranges],
            "routes": [{"dst": d} for d in routes],
        },
    }
    out: dict[str, Any] = plugin("ptp", "ADD", conf, netns=ctr, ifname=ifname).ok()
    return out


def two_interfaces(plugin: Runner, ctr: str, tmp_path: Path, version: str = "1.0.0", v6: bool = True) -> dict[str, Any]:
    """eth0 (10.98.0.2, the main table's default route) and net1 (10.97.0.2 and fd97::2, with
    its own default routes); returns net1's ptp result, sbr's prevResult. The container's new
    interfaces skip IPv6 duplicate address detection, which ptp would otherwise wait for."""
    for key in ("all", "default"):
        sh("sysctl", "-qw", f"net.ipv6.conf.{key}.accept_dad=0", ns=ctr)
    ptp(plugin, ctr, tmp_path, version, "eth0", ["10.98.0.0/24"], ["0.0.0.0/0"])
    ranges = ["10.97.0.0/24", "fd97::/64"] if v6 else ["10.97.0.0/24"]
    routes = ["0.0.0.0/0", "192.0.2.0/24", "::/0"] if v6 else ["0.0.0.0/0", "192.0.2.0/24"]
    return ptp(plugin, ctr, tmp_path, version, "net1", ranges, routes)


def conf(prev: dict[str, Any] | None, version: str = "1.0.0", **opts: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": version, "name": "sbr-net1", "type": "sbr", **opts}
    if prev is not None:
        out["prevResult"] = prev
    return out


def rules(ns: str) -> list[str]:
    return [line for fam in ("-4", "-6") for line in sh("ip", fam, "rule", ns=ns).stdout.splitlines()]


def table(ns: str, tid: int | str) -> list[str]:
    """The routes of table ``tid`` (none when the kernel has no such table)."""
    out = sh("ip", "-4", "route", "show", "table", str(tid), ns=ns, check=False).stdout.splitlines()
    out += sh("ip", "-6", "route", "show", "table", str(tid), ns=ns, check=False).stdout.splitlines()
    return [line.strip() for line in out]


def kernel_state(ns: str) -> tuple[list[str], list[str]]:
    """Rules and every route outside the local table."""
    routes = [
        line.strip()
        for fam in ("-4", "-6")
        for line in sh("ip", fam, "route", "show", "table", "all", ns=ns).stdout.splitlines()
        if "table local" not in line and not line.startswith(("local ", "broadcast ", "multicast "))
    ]
    return rules(ns), sorted(routes)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_check_del(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path, version: str) -> None:
    prev = two_interfaces(plugin, container_ns, tmp_path, version)
    before = kernel_state(container_ns)
    c = conf(prev, version)
    assert plugin("sbr", "ADD", c, netns=container_ns, ifname="net1").ok() == prev
    assert NET1_RULES[4] in rules(container_ns) and NET1_RULES[6] in rules(container_ns)
    assert table(container_ns, 100) == TABLE_100
    assert table(container_ns, 101) == TABLE_101
    assert "net1" not in sh("ip", "route", ns=container_ns).stdout + sh("ip", "-6", "route", ns=container_ns).stdout
    if version >= "0.4.0":
        plugin("sbr", "CHECK", c, netns=container_ns, ifname="net1").ok()
    plugin("sbr", "DEL", c, netns=container_ns, ifname="net1").ok()
    after_rules, after_routes = kernel_state(container_ns)
    assert after_rules == before[0] and table(container_ns, 100) == [] and table(container_ns, 101) == []
    assert set(after_routes) <= set(before[1])  # net1's main-table routes stay gone, as the reference's
    plugin("sbr", "DEL", c, netns=container_ns, ifname="net1").ok()


def test_traffic_leaves_by_the_interface_of_its_source(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path
) -> None:
    """An nftables counter per host veth in host_ns counts the echo requests from each source:
    with sbr, those from net1's addresses arrive over net1 although the main table's default
    route is eth0's; those from eth0's address still over eth0."""
    prev = two_interfaces(plugin, container_ns, tmp_path)
    sh("ip", "addr", "add", f"{FAR_V4}/32", "dev", "lo", ns=host_ns)
    sh("ip", "-6", "addr", "add", f"{FAR_V6}/128", "dev", "lo", ns=host_ns)
    peers = _host_peers(host_ns, container_ns)
    counters = "\n".join(
        f"add rule inet sbrtest pre iifname {veth} {fam} saddr {src} counter"
        for veth in peers.values()
        for fam, src in (("ip", "10.98.0.2"), ("ip", "10.97.0.2"), ("ip6", "fd97::2"))
    )
    sh(
        "nft",
        "-f",
        "-",
        ns=host_ns,
        input=f"add table inet sbrtest\n"
        f"add chain inet sbrtest pre {{ type filter hook prerouting priority 0; }}\n{counters}\n",
    )
    plugin("sbr", "ADD", conf(prev), netns=container_ns, ifname="net1").ok()
    for src, dst in (("10.97.0.2", FAR_V4), ("fd97::2", FAR_V6), ("10.98.0.2", FAR_V4)):
        assert (
            sh("ping", "-c", "3", "-i", "0.2", "-W", "2", "-I", src, dst, ns=container_ns, check=False).returncode == 0
        )
    seen = _counted(host_ns)
    assert seen[(peers["net1"], "10.97.0.2")] >= 3 and seen[(peers["eth0"], "10.97.0.2")] == 0, seen
    assert seen[(peers["net1"], "fd97::2")] >= 3 and seen[(peers["eth0"], "fd97::2")] == 0, seen
    assert seen[(peers["eth0"], "10.98.0.2")] >= 3 and seen[(peers["net1"], "10.98.0.2")] == 0, seen


def _host_peers(host_ns: str, ctr: str) -> dict[str, str]:
    """Container interface -> its veth peer's name in host_ns."""
    host = {link["ifindex"]: link["ifname"] for link in json.loads(sh("ip", "-j", "link", ns=host_ns).stdout)}
    out = {}
    for link in json.loads(sh("ip", "-j", "link", ns=ctr).stdout):
        if link["ifname"] in ("eth0", "net1"):
            out[link["ifname"]] = host[link["link_index"]]
    return out


def _counted(host_ns: str) -> dict[tuple[str, str], int]:
    out = {}
    for item in json.loads(sh("nft", "-j", "list", "table", "inet", "sbrtest", ns=host_ns).stdout)["nftables"]:
        rule = item.get("rule")
        if not rule:
            continue
        veth = src = ""
        packets = 0
        for expr in rule["expr"]:
            if "match" in expr:
                left, right = expr["match"]["left"], expr["match"]["right"]
                if "meta" in left:
                    veth = right
                else:
                    src = right
            elif "counter" in expr:
                packets = expr["counter"]["packets"]
        out[(veth, src)] = packets
    return out


def test_table_option_adds_only_rules(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    prev = two_interfaces(plugin, container_ns, tmp_path)
    main_before = table(container_ns, "main")
    sh("ip", "rule", "add", "from", "10.97.0.2", "lookup", "600", ns=container_ns)  # not sbr's: DEL keeps it
    c = conf(prev, table=500)
    plugin("sbr", "ADD", c, netns=container_ns, ifname="net1").ok()
    assert "32764:\tfrom 10.97.0.2 lookup 500" in rules(container_ns)
    assert "32765:\tfrom fd97::2 lookup 500" in rules(container_ns)
    assert table(container_ns, "main") == main_before and table(container_ns, 500) == []
    plugin("sbr", "CHECK", c, netns=container_ns, ifname="net1").ok()
    bad = plugin("sbr", "CHECK", conf(prev, table=501), netns=container_ns, ifname="net1")
    assert bad.rc == 1 and "501" in bad.json["msg"]
    plugin("sbr", "DEL", c, netns=container_ns, ifname="net1").ok()
    assert [r for r in rules(container_ns) if "lookup 5" in r] == []
    assert "from 10.97.0.2 lookup 600" in "\n".join(rules(container_ns))


def test_bad_input_is_refused_and_changes_nothing(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path
) -> None:
    prev = two_interfaces(plugin, container_ns, tmp_path)
    on_eth0 = {**prev, "interfaces": [{"name": "veth0"}, {"name": "eth0", "sandbox": path(container_ns)}]}
    unbound = {
        **prev,
        "interfaces": [],
        "ips": [{k: v for k, v in ip.items() if k != "interface"} for ip in prev["ips"]],
    }
    missing_ns = "/var/run/netns/cnitest-sbr-nonexistent"
    cases: list[tuple[dict[str, Any], int, list[str], dict[str, str]]] = [
        (conf(None), 7, ["chained", "prevResult"], {}),
        (conf({**prev, "ips": []}), 7, ["No IP addresses", "net1"], {}),
        (conf(on_eth0), 7, ["no IP address on interface net1"], {}),
        (conf(prev, table="main"), 7, ["table", "integer"], {}),
        (conf(prev, table=0), 7, ["table", "0"], {}),
        (conf(prev, table=-1), 7, ["table", "-1"], {}),
        (conf(unbound), 999, ["Cannot find network interface eth9"], {"CNI_IFNAME": "eth9"}),
        (conf(prev), 8, ["does not exist"], {"CNI_NETNS": missing_ns}),
        (conf(prev, "9.9.9"), 1, ["9.9.9"], {}),
    ]
    before = kernel_state(container_ns)
    for c, code, words, env in cases:
        bad = plugin("sbr", "ADD", c, netns=container_ns, ifname="net1", env=env)
        assert bad.rc == 1 and bad.json["code"] == code, (c, bad.stdout, bad.stderr)
        assert all(w in bad.json["msg"] + bad.json.get("details", "") for w in words), (words, bad.json)
        assert "Traceback" not in bad.stderr
        assert kernel_state(container_ns) == before, c
    assert not os.path.exists(missing_ns)  # the lock creates nothing (the reference's made a file here)


def test_failed_add_leaves_nothing(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    """The IPv6 gateway is unreachable: its default route fails after the IPv4 address's rule
    and table were made and before the main table was touched; all of it goes."""
    prev = two_interfaces(plugin, container_ns, tmp_path)
    ips = [dict(ip, gateway="2001:db8:ffff::1") if ":" in ip["address"] else ip for ip in prev["ips"]]
    before = kernel_state(container_ns)
    bad = plugin("sbr", "ADD", conf({**prev, "ips": ips}), netns=container_ns, ifname="net1")
    assert bad.rc == 1 and "2001:db8:ffff::1" in bad.json["msg"] and "table 101" in bad.json["msg"], bad.json
    assert kernel_state(container_ns) == before


def test_a_table_holding_routes_is_not_free(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    """Free means no rule and no route of any table uses it (the reference looks at the main
    table's routes only and would have mixed its routes into table 100); DEL leaves that table."""
    prev = two_interfaces(plugin, container_ns, tmp_path, v6=False)
    sh("ip", "route", "add", "10.200.0.0/16", "dev", "net1", "table", "100", ns=container_ns)
    c = conf(prev)
    plugin("sbr", "ADD", c, netns=container_ns, ifname="net1").ok()
    assert "32765:\tfrom 10.97.0.2 lookup 101" in rules(container_ns)
    assert table(container_ns, 100) == ["10.200.0.0/16 dev net1 scope link"]
    plugin("sbr", "CHECK", c, netns=container_ns, ifname="net1").ok()
    plugin("sbr", "DEL", c, netns=container_ns, ifname="net1").ok()
    assert table(container_ns, 100) == ["10.200.0.0/16 dev net1 scope link"] and table(container_ns, 101) == []


def test_del_when_netns_or_interface_is_gone_or_input_unreadable(
    plugin: Runner, host_ns: str, namespaces: Namespaces, tmp_path: Path
) -> None:
    ctr = namespaces.make("gone")
    prev = two_interfaces(plugin, ctr, tmp_path, v6=False)
    plugin("sbr", "ADD", conf(prev), netns=ctr, ifname="net1").ok()
    sh("ip", "netns", "del", ctr)
    plugin("sbr", "DEL", conf(prev), netns=path(ctr), ifname="net1").ok()
    assert not os.path.exists(path(ctr))
    plugin("sbr", "DEL", conf(prev), netns="", ifname="net1").ok()
    # the interface went first: the rules are found by prevResult's addresses
    ctr = namespaces.make("noif")
    prev = two_interfaces(plugin, ctr, tmp_path / "2", v6=False)
    plugin("sbr", "ADD", conf(prev), netns=ctr, ifname="net1").ok()
    sh("ip", "link", "del", "net1", ns=ctr)
    plugin("sbr", "DEL", conf(prev, table="bad"), netns=ctr, ifname="net1").ok()
    assert not [r for r in rules(ctr) if "lookup 100" in r]


def test_status_and_gc_answer_and_change_nothing(
    plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path
) -> None:
    """sbr owns no state outside the container's namespace, which DEL clears: at 1.1.0 STATUS
    and GC succeed, as the reference's skel answers them, and leave the rules and tables."""
    prev = two_interfaces(plugin, container_ns, tmp_path, "1.1.0", v6=False)
    c = conf(prev, "1.1.0")
    plugin("sbr", "ADD", c, netns=container_ns, ifname="net1").ok()
    before = kernel_state(container_ns)
    plugin("sbr", "STATUS", conf(None, "1.1.0")).ok()
    plugin("sbr", "GC", {**conf(None, "1.1.0"), "cni.dev/valid-attachments": []}).ok()
    assert kernel_state(container_ns) == before
    old = plugin("sbr", "STATUS", conf(None, "1.0.0"))
    assert old.rc == 1 and old.json["code"] == 1 and "1.1.0" in old.json["details"], old.stdout


def test_waits_for_the_namespace_lock(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    """The lock is an flock on the netns file (the reference's): an ADD waits while it is held."""
    prev = two_interfaces(plugin, container_ns, tmp_path, v6=False)
    fd = os.open(path(container_ns), os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        env = {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "ctr1",
            "CNI_NETNS": path(container_ns),
            "CNI_IFNAME": "net1",
            "CNI_PATH": str(plugin.cni_bin),
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        }
        stdin = tmp_path / "sbr.json"
        stdin.write_text(json.dumps(conf(prev)))
        with stdin.open("rb") as fh:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", host_ns, str(plugin.cni_bin / "sbr")],
                stdin=fh,
                stdout=subprocess.DEVNULL,
                env=env,
            )
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=0.5)
        assert not [r for r in rules(container_ns) if "lookup 100" in r]
    finally:
        os.close(fd)
    assert proc.wait(timeout=20) == 0
    assert "32765:\tfrom 10.97.0.2 lookup 100" in rules(container_ns)


# ---------------------------------------------------------------- the reference binary


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference sbr not installed")
def test_same_rules_and_tables_as_the_reference(plugin: Runner, namespaces: Namespaces, tmp_path: Path) -> None:
    """The same rules and routes, but for the one fix: a route goes only to a table of its family."""
    seen = {}
    for who in ("reference", "ours"):
        host, ctr = namespaces.make("h"), namespaces.make("c")
        runner = Runner(plugin.cni_bin, host)
        prev = two_interfaces(runner, ctr, tmp_path / who, v6=False)
        bin_dir = REFERENCE.parent if who == "reference" else plugin.cni_bin
        out = run_plugin(bin_dir, "sbr", "ADD", conf(prev), netns=path(ctr), ifname="net1", host_ns=host).ok()
        assert out == prev
        seen[who] = kernel_state(ctr)
    ref_rules, ref_routes = seen["reference"]
    # the reference also copies net1's IPv6 link-local route into the IPv4 table (where no rule reaches it)
    assert "fe80::/64 dev net1 table 100 proto kernel metric 256 pref medium" in ref_routes
    assert seen["ours"] == (ref_rules, [r for r in ref_routes if not r.startswith("fe80::/64 dev net1 table 100")])


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference sbr not installed")
def test_reference_add_then_our_check_and_del(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    prev = two_interfaces(plugin, container_ns, tmp_path)
    before_rules = rules(container_ns)
    c = conf(prev)
    run_plugin(REFERENCE.parent, "sbr", "ADD", c, netns=path(container_ns), ifname="net1", host_ns=host_ns).ok()
    assert NET1_RULES[4] in rules(container_ns) and NET1_RULES[6] in rules(container_ns)
    plugin("sbr", "CHECK", c, netns=container_ns, ifname="net1").ok()
    plugin("sbr", "DEL", c, netns=container_ns, ifname="net1").ok()
    assert rules(container_ns) == before_rules
    assert table(container_ns, 100) == [] and table(container_ns, 101) == []  # the reference's DEL leaves these


@pytest.mark.skipif(not REFERENCE.exists(), reason="reference sbr not installed")
def test_our_add_then_reference_del(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    prev = two_interfaces(plugin, container_ns, tmp_path)
    before_rules = rules(container_ns)
    c = conf(prev)
    plugin("sbr", "ADD", c, netns=container_ns, ifname="net1").ok()
    run_plugin(REFERENCE.parent, "sbr", "DEL", c, netns=path(container_ns), ifname="net1", host_ns=host_ns).ok()
    assert rules(container_ns) == before_rules  # its tables stay, as after its own ADD and DEL
    plugin("sbr", "DEL", c, netns=container_ns, ifname="net1").ok()
    assert ping(container_ns, "10.98.0.1")
