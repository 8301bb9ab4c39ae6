"""tap: a persistent tap device in the container, against real namespaces.

A tap is only useful once something attaches to it, so the tests attach the way a VM
monitor does: a process in the container's namespace opens /dev/net/tun and asks for the
tap by name (TUNSETIFF), as the tap's owner or as someone else, and writes a frame into it.
/dev/net/tun is root's alone on this machine (0600), so the process opens it as root and
then drops to the uid and gid under test before asking: the kernel checks owner and group
at TUNSETIFF, with the credentials of that moment.

There is no reference tap to compare with (Debian's 1.1.1 predates it); its behaviour was
read from upstream's source.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.kernel import tuntap
from cni_plugins.spec.version import SUPPORTED_VERSIONS
from tests.integration.conftest import Runner
from tests.integration.nsutil import Namespaces, addrs, links, path, sh

SUBNET = "10.79.0.0/24"

# Attach to tap argv[1] as uid argv[2], gid argv[3], with TUNSETIFF flags argv[4], on argv[5]
# queues; then write one Ethernet frame. Prints the errno of the first failure, 0 if none.
ATTACH = """
import errno, fcntl, os, struct, sys
name, uid, gid, flags, queues = sys.argv[1], *map(int, sys.argv[2:6])
fds = [os.open("/dev/net/tun", os.O_RDWR) for _ in range(queues)]
os.setgroups([])
os.setresgid(gid, gid, gid)
os.setresuid(uid, uid, uid)
try:
    for fd in fds:
        fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH22x", name.encode(), flags))
    frame = b"\\xff" * 6 + bytes.fromhex("020000000099") + b"\\x88\\xb5" + b"cni-py tap test".ljust(46, b".")
    os.write(fds[0], frame)
except OSError as exc:
    print(exc.errno)
else:
    print(0)
"""


def attach(ns: str, uid: int, gid: int, *, multi_queue: bool = False, queues: int = 1, name: str = "eth0") -> int:
    flags = tuntap.IFF_TAP | tuntap.IFF_NO_PI | (tuntap.IFF_MULTI_QUEUE if multi_queue else 0)
    out = sh(sys.executable, "-I", "-c", ATTACH, name, str(uid), str(gid), str(flags), str(queues), ns=ns)
    return int(out.stdout.strip())


def conf(tmp_path: Path, version: str = "1.0.0", *, ipam: bool = True, **opts: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": version, "name": "tapnet", "type": "tap", **opts}
    if ipam:
        out["ipam"] = {
            "type": "host-local",
            "dataDir": str(tmp_path / "ipam"),
            "ranges": [[{"subnet": SUBNET}]],
            "routes": [{"dst": "10.80.0.0/16"}],
        }
    return {k: v for k, v in out.items() if v is not None}


def reserved(tmp_path: Path) -> set[str]:
    d = tmp_path / "ipam" / "tapnet"
    out = set()
    for name in os.listdir(d) if d.is_dir() else []:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            continue
        out.add(name)
    return out


def tun_info(ns: str, ifname: str = "eth0") -> dict[str, Any]:
    link = links(ns)[ifname]
    assert link["linkinfo"]["info_kind"] == "tun"
    return dict(link["linkinfo"]["info_data"], mtu=link["mtu"], mac=link["address"], flags=link["flags"])


def rx_packets(ns: str, ifname: str = "eth0") -> int:
    stats = json.loads(sh("ip", "-s", "-j", "link", "show", ifname, ns=ns).stdout)[0]["stats64"]
    return int(stats["rx"]["packets"])


def with_prev(c: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    return {**c, "prevResult": result}


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_check_del_every_version(plugin: Runner, container_ns: str, tmp_path: Path, version: str) -> None:
    c = conf(tmp_path, version, owner=0, group=0, dns={"nameservers": ["10.79.0.1"]})
    out = plugin("tap", "ADD", c, netns=container_ns).ok()
    info = tun_info(container_ns)
    assert info["type"] == "tap" and info["persist"] and "UP" in info["flags"]
    assert "10.79.0.2/24" in addrs(container_ns, "eth0")
    assert "10.80.0.0/16 via 10.79.0.1 dev eth0" in sh("ip", "route", ns=container_ns).stdout
    assert sh("cat", "/proc/sys/net/ipv4/conf/eth0/arp_notify", ns=container_ns).stdout.strip() == "1"
    assert out["cniVersion"] == version
    if version < "0.3.0":
        assert out["ip4"] == {"ip": "10.79.0.2/24", "gateway": "10.79.0.1", "routes": [{"dst": "10.80.0.0/16"}]}
    else:
        assert out["interfaces"] == [{"name": "eth0", "mac": info["mac"], "sandbox": path(container_ns)}]
        ip = {"interface": 0, "address": "10.79.0.2/24", "gateway": "10.79.0.1"}
        assert out["ips"] == [ip if version >= "1.0.0" else {"version": "4", **ip}]
    assert out["dns"] == {"nameservers": ["10.79.0.1"]}
    assert reserved(tmp_path) == {"10.79.0.2"}
    if version >= "0.4.0":
        plugin("tap", "CHECK", with_prev(c, out), netns=container_ns).ok()
    plugin("tap", "DEL", c, netns=container_ns).ok()
    assert set(links(container_ns)) == {"lo"} and reserved(tmp_path) == set()
    plugin("tap", "DEL", c, netns=container_ns).ok()


@pytest.mark.parametrize(
    "opts, expect",
    [
        (
            {"owner": 1234, "group": 2345, "multiQueue": True, "mtu": 9000, "mac": "02:00:00:00:00:0a"},
            {"vnet_hdr": True, "pi": False, "multi_queue": True, "user": 1234, "group": 2345, "mtu": 9000},
        ),
        ({"owner": 1234, "group": 2345}, {"vnet_hdr": True, "pi": True, "multi_queue": False}),
        ({"owner": 1234, "mtu": 1280}, {"vnet_hdr": False, "pi": False, "user": 1234, "mtu": 1280}),
        ({"multiQueue": True}, {"vnet_hdr": False, "pi": False, "multi_queue": True}),
    ],
    ids=["owner-group-mq", "owner-group", "owner", "nobody-mq"],
)
def test_options_as_the_reference_sets_them(
    plugin: Runner, container_ns: str, tmp_path: Path, opts: dict[str, Any], expect: dict[str, Any]
) -> None:
    """Flags as the reference's two ways of making a tap leave them (module docstring of
    cni_plugins.plugins.tap); ``mac`` and ``mtu`` in both."""
    c = conf(tmp_path, ipam=False, **opts)
    out = plugin("tap", "ADD", c, netns=container_ns).ok()
    info = tun_info(container_ns)
    assert {k: info.get(k) for k in expect} == expect
    assert ("user" in info, "group" in info) == ("owner" in opts, "group" in opts)
    if "mac" in opts:
        assert info["mac"] == out["interfaces"][0]["mac"] == opts["mac"]
    assert out["interfaces"][0]["mac"] == info["mac"] and "ips" not in out
    plugin("tap", "CHECK", with_prev(c, out), netns=container_ns).ok()


def test_mac_from_each_source_the_reference_reads(plugin: Runner, namespaces: Namespaces, tmp_path: Path) -> None:
    """``mac``, then CNI_ARGS ``MAC``, then ``runtimeConfig.mac`` (the ``mac`` capability): the
    later one wins, on the tap and in the result."""
    sources: list[tuple[dict[str, Any], str, str]] = [
        ({"mac": "02:00:00:00:01:01"}, "", "02:00:00:00:01:01"),
        ({"mac": "02:00:00:00:01:01"}, "MAC=02:00:00:00:01:02", "02:00:00:00:01:02"),
        (
            {"mac": "02:00:00:00:01:01", "runtimeConfig": {"mac": "02:00:00:00:01:03"}},
            "MAC=02:00:00:00:01:02",
            "02:00:00:00:01:03",
        ),
    ]
    for i, (opts, cni_args, want) in enumerate(sources):
        ctr = namespaces.make(f"mac{i}")
        out = plugin("tap", "ADD", conf(tmp_path, ipam=False, **opts), netns=ctr, cni_args=cni_args).ok()
        assert tun_info(ctr)["mac"] == out["interfaces"][0]["mac"] == want


def test_the_owner_attaches_from_the_container_and_others_cannot(
    plugin: Runner, container_ns: str, tmp_path: Path
) -> None:
    plugin("tap", "ADD", conf(tmp_path, ipam=False, owner=1234, group=2345), netns=container_ns).ok()
    before = rx_packets(container_ns)
    assert attach(container_ns, 1234, 2345) == 0
    assert rx_packets(container_ns) == before + 1  # the frame written to the fd arrived on the tap
    assert attach(container_ns, 4321, 2345) == 1  # EPERM: not the owner
    assert attach(container_ns, 1234, 9999) == 1  # EPERM: not in the group
    assert attach(container_ns, 1234, 2345, multi_queue=True) == 22  # EINVAL: not a multi-queue tap


def test_multi_queue_takes_several_queues(plugin: Runner, container_ns: str, tmp_path: Path) -> None:
    plugin("tap", "ADD", conf(tmp_path, ipam=False, owner=1234, multiQueue=True), netns=container_ns).ok()
    assert attach(container_ns, 1234, 1234, multi_queue=True, queues=4) == 0
    assert attach(container_ns, 4321, 4321, multi_queue=True) == 1


def test_bridge_in_the_container(plugin: Runner, container_ns: str, tmp_path: Path) -> None:
    sh("ip", "link", "add", "br0", "type", "bridge", ns=container_ns)
    c = conf(tmp_path, ipam=False, bridge="br0")
    out = plugin("tap", "ADD", c, netns=container_ns).ok()
    assert links(container_ns)["eth0"].get("master") == "br0"
    plugin("tap", "CHECK", with_prev(c, out), netns=container_ns).ok()
    sh("ip", "link", "set", "eth0", "nomaster", ns=container_ns)
    bad = plugin("tap", "CHECK", with_prev(c, out), netns=container_ns)
    assert bad.rc == 1 and "not a port of bridge 'br0'" in bad.json["msg"]
    plugin("tap", "DEL", c, netns=container_ns).ok()
    assert set(links(container_ns)) == {"lo", "br0"}


@pytest.mark.skipif(tuntap.selinux_enabled(), reason="SELinux is on: the context would be applied")
def test_selinux_context_is_ignored_when_selinux_is_off(plugin: Runner, container_ns: str, tmp_path: Path) -> None:
    c = conf(tmp_path, ipam=False, selinuxcontext="system_u:system_r:svirt_t:s0")
    run = plugin("tap", "ADD", c, netns=container_ns)
    run.ok()
    assert "selinuxContext ignored: SELinux is not enabled" in run.stderr
    assert tun_info(container_ns)["type"] == "tap"


@pytest.mark.parametrize("multi_queue", [False, True])
def test_the_ip_tuntap_path_makes_the_same_tap(container_ns: str, multi_queue: bool) -> None:
    """With SELinux on, a tap with a context is made by ``ip tuntap`` running in that context;
    without a context that path runs here and makes what the in-process path makes."""
    from cni_plugins.kernel import netns

    flags = tuntap.IFF_NO_PI | (tuntap.IFF_MULTI_QUEUE if multi_queue else 0)
    fd = netns.open_netns(path(container_ns))
    try:
        tuntap.create_with_ip(fd, "viaip0", flags=flags, owner=1234, group=None, label="")
        tuntap.create_tap(fd, "direct0", flags=flags, owner=1234)
    finally:
        os.close(fd)
    via_ip, direct = (tun_info(container_ns, name) for name in ("viaip0", "direct0"))
    for info in (via_ip, direct):
        del info["mac"]
    assert via_ip == direct and via_ip["multi_queue"] is multi_queue and via_ip["user"] == 1234


BAD: list[tuple[str, dict[str, Any], str, int, str]] = [
    ("bad mac", {"mac": "zz"}, "", 7, "mac: 'zz' is not a MAC address"),
    ("bad CNI_ARGS mac", {}, "MAC=1:2", 7, "CNI_ARGS MAC: '1:2' is not a MAC address"),
    ("unknown CNI_ARGS", {}, "FOO=1", 4, "CNI_ARGS: unknown key 'FOO'"),
    ("small mtu", {"mtu": 10}, "", 7, "mtu: 10 is out of range"),
    ("owner -1", {"owner": -1}, "", 7, "owner: -1 is out of range"),
    ("group text", {"group": "wheel"}, "", 7, "group: expected an integer"),
    ("multiQueue", {"multiQueue": "maybe"}, "", 7, "multiQueue: expected true or false"),
    ("no bridge", {"bridge": "nobr0"}, "", 7, "bridge: 'nobr0' is not a bridge"),
    ("not a bridge", {"bridge": "lo"}, "", 7, "bridge: 'lo' is not a bridge"),
    ("pre-0.3.0 without IPAM", {"cniVersion": "0.2.0", "ipam": None}, "", 1, "results must carry an IP address"),
]


@pytest.mark.parametrize("case, changes, cni_args, code, msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input_changes_nothing(
    plugin: Runner,
    container_ns: str,
    tmp_path: Path,
    case: str,
    changes: dict[str, Any],
    cni_args: str,
    code: int,
    msg: str,
) -> None:
    c = {**conf(tmp_path), **changes}
    bad = plugin("tap", "ADD", {k: v for k, v in c.items() if v is not None}, netns=container_ns, cni_args=cni_args)
    assert bad.rc == 1 and bad.json["code"] == code and msg in bad.json["msg"], bad.stdout
    assert "Traceback" not in bad.stderr
    assert set(links(container_ns)) == {"lo"} and reserved(tmp_path) == set()


def test_existing_ifname_is_refused_and_kept(plugin: Runner, container_ns: str, tmp_path: Path) -> None:
    sh("ip", "tuntap", "add", "mode", "tap", "name", "eth0", ns=container_ns)
    bad = plugin("tap", "ADD", conf(tmp_path), netns=container_ns)
    assert bad.rc == 1 and "'eth0' already exists" in bad.json["msg"]
    assert set(links(container_ns)) == {"lo", "eth0"} and reserved(tmp_path) == set()


def test_failed_add_leaves_nothing(plugin: Runner, container_ns: str, tmp_path: Path) -> None:
    """The last step (a route via an off-link gateway) fails: no tap, no reservation."""
    sh("ip", "link", "add", "br0", "type", "bridge", ns=container_ns)
    c = conf(tmp_path, bridge="br0")
    c["ipam"]["routes"] = [{"dst": "10.251.0.0/16", "gw": "192.0.2.1"}]
    bad = plugin("tap", "ADD", c, netns=container_ns)
    assert bad.rc == 1 and "configure eth0" in bad.json["msg"] and "10.251.0.0/16" in bad.json["msg"]
    assert set(links(container_ns)) == {"lo", "br0"} and reserved(tmp_path) == set()


def test_del_is_lenient_and_idempotent(plugin: Runner, namespaces: Namespaces, tmp_path: Path) -> None:
    """DEL with options it cannot read still removes the tap and the reservation; once the
    container is gone (no CNI_NETNS, a path that no longer exists) it succeeds; a link that
    is not a tap is left alone (a failed ADD's DEL must not take another plugin's eth0)."""
    ctr = namespaces.make("ctr")
    c = conf(tmp_path, owner=0, group=0)
    plugin("tap", "ADD", c, netns=ctr).ok()
    broken = {
        **c,
        "mac": 5,
        "mtu": "big",
        "owner": "x",
        "bridge": 7,
        "runtimeConfig": {"mac": 7},
        "ipam": {**c["ipam"], "ranges": "bogus"},
        "prevResult": {"ips": "x"},
    }
    plugin("tap", "DEL", broken, netns=ctr).ok()
    assert set(links(ctr)) == {"lo"} and reserved(tmp_path) == set()
    plugin("tap", "ADD", c, netns=ctr).ok()
    sh("ip", "netns", "del", ctr)
    plugin("tap", "DEL", c, netns=path(ctr)).ok()
    plugin("tap", "DEL", c, netns="").ok()
    assert reserved(tmp_path) == set()
    other = namespaces.make("other")
    sh("ip", "link", "add", "eth0", "type", "bridge", ns=other)
    plugin("tap", "DEL", c, netns=other).ok()
    assert "eth0" in links(other)


def test_status_and_gc_delegate_to_ipam(plugin: Runner, container_ns: str, tmp_path: Path) -> None:
    c = conf(tmp_path, "1.1.0")
    plugin("tap", "STATUS", c).ok()
    plugin("tap", "ADD", c, netns=container_ns).ok()
    plugin("tap", "GC", {**c, "cni.dev/valid-attachments": [{"containerID": "ctr1", "ifname": "eth0"}]}).ok()
    assert reserved(tmp_path) == {"10.79.0.2"}
    plugin("tap", "GC", {**c, "cni.dev/valid-attachments": []}).ok()
    assert reserved(tmp_path) == set()
