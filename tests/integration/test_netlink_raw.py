"""The hot-path requests ``Netlink`` writes to its plain socket are the bytes pyroute2's
request machinery sends for the same calls, and they do the same to the kernel.

The same sequence of calls runs twice, each time in two fresh namespaces (so ifindexes
match): once as the plugins run it, once with ``RAW_REQUESTS`` off (through pyroute2's
IPRoute). Every request written is recorded on both paths; sequence numbers and port ids
aside, they must be equal byte for byte, and so must the links, addresses and routes left.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import struct
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.kernel import linkget, netlink
from cni_plugins.kernel.netlink import (
    RT_SCOPE_HOST,
    RT_SCOPE_LINK,
    LinkExists,
    LinkNotFound,
    Netlink,
)
from cni_plugins.spec.errors import CNIError
from tests.integration.nsutil import Namespaces, ip_json, path, sh

NS_FD = 200  # the container's namespace at one fd number on both runs, as the bytes carry it

IP = ipaddress.ip_interface
NET = ipaddress.ip_network
ADDR = ipaddress.ip_address


def _calls(host: Netlink, ctr: Netlink) -> Iterator[tuple[str, Callable[[], object]]]:
    """(what, call): every request kind the plugins' hot paths make, with their variants."""
    yield "veth", lambda: ctr.create_link("eth0", "veth", peer={"ifname": "vethaa", "net_ns_fd": NS_FD})
    yield (
        "veth mtu mac",
        lambda: ctr.create_link(
            "eth1",
            "veth",
            peer={"ifname": "vethbb", "net_ns_fd": NS_FD, "mtu": 1400},
            mtu=1400,
            address="c2:00:00:00:00:01",
        ),
    )
    yield "veth again", lambda: ctr.create_link("eth0", "veth", peer={"ifname": "vethcc", "net_ns_fd": NS_FD})
    yield "bridge", lambda: host.create_link("br9", "bridge")
    yield "up", lambda: host.set_link(host.require_link("vethaa").index, state="up")
    yield "down", lambda: host.set_link(host.require_link("vethaa").index, state="down")
    yield "master", lambda: host.set_link(host.require_link("vethaa").index, master=host.require_link("br9").index)
    yield "hairpin", lambda: host.set_bridge_port(host.require_link("vethaa").index, mode=1)
    yield "no hairpin, isolated", lambda: host.set_bridge_port(host.require_link("vethaa").index, mode=0, isolated=1)
    yield "nomaster", lambda: host.set_link(host.require_link("vethaa").index, master=0)
    yield "mtu", lambda: host.set_link(host.require_link("vethbb").index, mtu=1300)
    yield "mac", lambda: host.set_link(host.require_link("vethbb").index, address="c2:00:00:00:00:03")
    yield "txqlen", lambda: host.set_link(host.require_link("vethbb").index, txqlen=77)
    yield "promisc", lambda: host.set_flags(host.require_link("vethbb").index, promisc=True)
    yield (
        "allmulti, no promisc",
        lambda: host.set_flags(host.require_link("vethbb").index, promisc=False, allmulti=True),
    )
    yield "rename", lambda: host.set_link(host.require_link("vethbb").index, ifname="vethdd")
    yield "up eth0", lambda: ctr.set_link(ctr.require_link("eth0").index, state="up")
    yield "up br9", lambda: host.set_link(host.require_link("br9").index, state="up")
    yield (
        "macvlan",
        lambda: host.create_link(
            "mvtmp", "macvlan", link=host.require_link("vethaa").index, macvlan_mode=4, net_ns_fd=NS_FD, mtu=1300
        ),
    )
    yield (
        "macvlan mac",
        lambda: host.create_link(
            "mvtmp2", "macvlan", link=host.require_link("vethaa").index, macvlan_mode=1, address="c2:00:00:00:00:02"
        ),
    )

    def eth0() -> int:  # read when called
        return ctr.require_link("eth0").index

    def br9() -> int:
        return host.require_link("br9").index

    yield "addr4", lambda: ctr.add_address(eth0(), IP("10.9.0.2/24"))
    yield "addr4 again", lambda: ctr.add_address(eth0(), IP("10.9.0.2/24"))
    yield "addr4 again, fine", lambda: ctr.add_address(eth0(), IP("10.9.0.2/24"), exists_ok=True)
    yield "addr4/31", lambda: ctr.add_address(eth0(), IP("10.9.1.2/31"))
    yield "addr4 host nodad", lambda: host.add_address(br9(), IP("10.9.0.1/32"), nodad=True)
    yield "addr4 scope", lambda: host.add_address(br9(), IP("10.9.2.1/24"), scope=RT_SCOPE_LINK)
    yield "addr6", lambda: ctr.add_address(eth0(), IP("fd09::2/64"))
    yield "addr6 nodad", lambda: host.add_address(br9(), IP("fd09::1/128"), nodad=True)
    yield "route link", lambda: ctr.add_route(NET("10.9.0.1/32"), oif=eth0(), scope=RT_SCOPE_LINK, src=ADDR("10.9.0.2"))
    yield "route gw", lambda: ctr.add_route(NET("10.9.8.0/24"), gw=ADDR("10.9.0.1"), oif=eth0(), src=ADDR("10.9.0.2"))
    yield "route gw again", lambda: ctr.add_route(NET("10.9.8.0/24"), gw=ADDR("10.9.0.1"), oif=eth0())
    yield "route default", lambda: ctr.add_route(NET("0.0.0.0/0"), gw=ADDR("10.9.0.1"), oif=eth0())
    yield "route prio table", lambda: ctr.add_route(NET("10.9.7.0/24"), gw=ADDR("10.9.0.1"), table=100, priority=20)
    yield "route replace", lambda: ctr.add_route(NET("10.9.7.0/24"), gw=ADDR("10.9.0.1"), table=100, replace=True)
    yield "route oif only", lambda: ctr.add_route(NET("10.9.6.0/24"), oif=eth0())
    yield "route oif only, table", lambda: ctr.add_route(NET("10.9.6.0/24"), oif=eth0(), table=101, priority=5)
    yield "route src, no scope", lambda: ctr.add_route(NET("10.9.5.0/24"), oif=eth0(), src=ADDR("10.9.0.2"))
    yield "route host", lambda: host.add_route(NET("10.9.0.2/32"), oif=br9(), scope=RT_SCOPE_HOST)
    yield "route6 gw", lambda: ctr.add_route(NET("fd09:8::/64"), gw=ADDR("fd09::1"), oif=eth0())
    yield "route6 host", lambda: host.add_route(NET("fd09::2/128"), oif=br9())
    yield "del route", lambda: ctr.del_route(NET("10.9.0.0/24"), oif=eth0())
    yield "del route gone", lambda: ctr.del_route(NET("10.9.0.0/24"), oif=eth0())
    yield "del route gw", lambda: ctr.del_route(NET("10.9.8.0/24"), gw=ADDR("10.9.0.1"))
    yield "del route table", lambda: ctr.del_route(NET("10.9.7.0/24"), table=100, priority=20)
    yield "del route default", lambda: ctr.del_route(NET("0.0.0.0/0"), gw=ADDR("10.9.0.1"))
    yield "del route6", lambda: ctr.del_route(NET("fd09:8::/64"), oif=eth0())
    yield "del addr4", lambda: ctr.del_address(eth0(), IP("10.9.1.2/31"))
    yield "del addr6", lambda: ctr.del_address(eth0(), IP("fd09::2/64"))
    yield "addresses", lambda: [(a.index, str(a.address), a.scope) for a in ctr.addresses()]
    yield "addresses of eth0 v4", lambda: [str(a.address) for a in ctr.addresses(index=eth0(), family=2)]
    yield "del link", lambda: host.delete_link_if_exists("vethdd")
    yield "del link gone", lambda: host.delete_link_if_exists("vethdd")


@contextmanager
def _recording(sent: list[bytes]) -> Iterator[None]:
    """Record every request written, on both paths."""
    from pyroute2.netlink import core

    send, transact = core.AsyncCoreSocket.send, linkget.LinkReader.transact
    patch = pytest.MonkeyPatch()

    def core_send(self: Any, data: bytes, flags: int = 0) -> Any:
        sent.append(bytes(data))
        return send(self, data, flags)

    def raw_transact(self: linkget.LinkReader, requests: Any) -> list[int]:
        sent.extend(bytes(r) for r in requests)
        return transact(self, requests)

    patch.setattr(core.AsyncCoreSocket, "send", core_send)
    patch.setattr(linkget.LinkReader, "transact", raw_transact)
    try:
        yield
    finally:
        patch.undo()


def _normal(message: bytes) -> bytes:
    out = bytearray(message)
    struct.pack_into("=II", out, 8, 0, 0)  # sequence number, port id
    return bytes(out)


def _run(namespaces: Namespaces, raw: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per call: the requests written and the outcome; and the state left in both namespaces."""
    host_ns, ctr_ns = namespaces.make("rawh"), namespaces.make("rawc")
    monkeypatch.setattr(netlink, "RAW_REQUESTS", raw)
    fd = os.open(path(host_ns), os.O_RDONLY)
    os.dup2(fd, NS_FD)
    os.close(fd)
    seen: dict[str, Any] = {}
    try:
        with Netlink.open(path(host_ns)) as host, Netlink.open(path(ctr_ns)) as ctr:
            for what, call in _calls(host, ctr):
                sent: list[bytes] = []
                with _recording(sent):
                    try:
                        outcome: object = call()
                    except (LinkExists, LinkNotFound, CNIError) as err:
                        text = str(err).replace(host_ns, "HOST").replace(ctr_ns, "CTR")
                        outcome = f"{type(err).__name__}: {text}"
                outcome = outcome if isinstance(outcome, list | str | None) else "link"
                seen[what] = ([_normal(m) for m in sent], outcome)
    finally:
        os.close(NS_FD)
    state = {
        ns: {
            "links": [(x["ifname"], x.get("mtu"), x.get("master"), x.get("flags")) for x in ip_json("link", ns=ns)],
            "addrs": ip_json("addr", ns=ns),
            "routes": [
                ip_json("route", "show", "table", "all", ns=ns),
                ip_json("-6", "route", "show", "table", "all", ns=ns),
            ],
        }
        for ns in (host_ns, ctr_ns)
    }
    return seen, {"host": state[host_ns], "ctr": state[ctr_ns]}


def test_raw_requests_are_pyroute2s_bytes(namespaces: Namespaces, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, raw_state = _run(namespaces, True, monkeypatch)
    ref, ref_state = _run(namespaces, False, monkeypatch)
    assert list(raw) == list(ref)
    writes = [what for what, (sent, _) in ref.items() if any(m[4:6] != b"\x12\x00" for m in sent)]  # not RTM_GETLINK
    assert len(writes) > 30  # the calls did make requests
    for what in ref:
        raw_sent, raw_outcome = raw[what]
        ref_sent, ref_outcome = ref[what]
        # pyroute2 reads links by dump or get around some requests; compare the writes
        ref_writes = [m for m in ref_sent if m[4:6] not in (b"\x12\x00", b"\x16\x00")]
        raw_writes = [m for m in raw_sent if m[4:6] not in (b"\x12\x00", b"\x16\x00")]
        assert raw_writes == ref_writes, what
        assert raw_outcome == ref_outcome, what
    for key in ("host", "ctr"):
        for part in ("links", "routes"):
            assert raw_state[key][part] == ref_state[key][part], (key, part)
        strip = [{k: v for k, v in a.items() if k not in ("ifindex",)} for a in raw_state[key]["addrs"]]
        assert [sorted((i["local"], i["prefixlen"]) for i in a["addr_info"]) for a in raw_state[key]["addrs"]] == [
            sorted((i["local"], i["prefixlen"]) for i in a["addr_info"]) for a in ref_state[key]["addrs"]
        ], strip


def test_batch_sends_once_and_raises_the_first_error(namespaces: Namespaces, monkeypatch: pytest.MonkeyPatch) -> None:
    """One write for the whole block; the requests after a failed one still ran, and the error
    names the failed one."""
    ns = namespaces.make("rawb")
    with Netlink.open(path(ns)) as nl:
        lo = nl.require_link("lo").index
        writes: list[int] = []
        transact = linkget.LinkReader.transact

        def counted(self: linkget.LinkReader, requests: Any) -> list[int]:
            writes.append(len(requests))
            return transact(self, requests)

        monkeypatch.setattr(linkget.LinkReader, "transact", counted)
        with nl.batch():
            nl.add_address(lo, IP("10.9.9.1/32"))
            nl.add_address(lo, IP("10.9.9.2/32"))
        assert writes == [2]
        with pytest.raises(LinkExists, match="add address 10.9.9.1/32"), nl.batch():
            nl.add_address(lo, IP("10.9.9.1/32"))
            nl.add_address(lo, IP("10.9.9.3/32"))
        with nl.batch():
            nl.add_address(lo, IP("10.9.9.1/32"), exists_ok=True)
            nl.add_route(NET("10.9.10.0/24"), oif=lo)
        with pytest.raises(RuntimeError), nl.batch():
            nl.add_address(lo, IP("10.9.9.4/32"))
            raise RuntimeError("sends nothing")
        with nl.batch():
            nl.add_address(lo, IP("10.9.9.5/32"))
            nl.flush()  # sent now: readable inside the block
            assert "10.9.9.5/32" in {str(a.address) for a in nl.addresses(index=lo)}
            nl.add_address(lo, IP("10.9.9.6/32"))
        monkeypatch.undo()
        assert writes == [2, 2, 2, 1, 1]
        have = {str(a.address) for a in nl.addresses(index=lo, family=2)}
        assert {"10.9.9.1/32", "10.9.9.2/32", "10.9.9.3/32", "10.9.9.6/32"} <= have and "10.9.9.4/32" not in have
        assert any(str(r.dst) == "10.9.10.0/24" for r in nl.routes())


def test_addresses_of_one_link_are_filtered_by_the_kernel(
    namespaces: Namespaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``addresses(index=...)`` asks the kernel for that link's only (a strictly checked dump):
    the same answer as a full dump filtered here, and none for a link that does not exist."""
    ns = namespaces.make("af")
    for name, v4, v6 in (("afa", "10.9.1.1/24", "fd00:9:1::1/64"), ("afb", "10.9.2.1/24", "fd00:9:2::1/64")):
        sh("ip", "link", "add", name, "type", "bridge", ns=ns)
        sh("ip", "addr", "add", v4, "dev", name, ns=ns)
        sh("ip", "addr", "add", v6, "dev", name, "nodad", ns=ns)
    stricts: list[bool] = []
    dump = linkget.LinkReader.dump_messages

    def spy(self: linkget.LinkReader, kind: int, body: bytes, *, strict: bool = False) -> list[bytes]:
        stricts.append(strict)
        return dump(self, kind, body, strict=strict)

    with netlink.Netlink.open(path(ns)) as nl:
        index = nl.require_link("afa").index
        every = nl.addresses()
        monkeypatch.setattr(linkget.LinkReader, "dump_messages", spy)
        for family, version in ((None, None), (2, 4), (10, 6)):
            want = [a.address for a in every if a.index == index and version in (None, a.address.version)]
            assert [a.address for a in nl.addresses(index=index, family=family)] == want
            assert want and all(a.index == index for a in nl.addresses(index=index, family=family))
        assert nl.addresses(index=999999) == [] and nl.addresses(index=999999, family=2) == []
    assert len(stricts) == 8 and all(stricts)


def test_hot_paths_open_no_iproute(
    namespaces: Namespaces, cni_bin_no_helper: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADD and DEL of ptp, macvlan, bridge (with ipMasq), tuning and loopback, as a worker runs
    them (in-process), never open pyroute2's IPRoute: every request they make goes over the
    plain socket. (The bridge exists already: creating one is left to pyroute2.)"""
    from pyroute2.iproute import linux

    from cni_plugins.kernel import netns
    from cni_plugins.protocol import registry, skel

    host = namespaces.make("rawh")
    sh("ip", "link", "add", "rawup0", "type", "veth", "peer", "name", "rawup1", ns=host)
    sh("ip", "link", "set", "rawup0", "up", ns=host)
    sh("ip", "link", "add", "rawbr0", "type", "bridge", ns=host)
    sh("ip", "link", "set", "rawbr0", "up", ns=host)
    opened: list[str] = []

    def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
        opened.append("IPRoute")
        raise AssertionError("IPRoute opened on a hot path")

    monkeypatch.setattr(linux.IPRoute, "__init__", refuse)

    def ipam(subnet: str) -> dict[str, Any]:
        return {
            "type": "host-local",
            "subnet": subnet,
            "dataDir": str(tmp_path / "ipam"),
            "routes": [{"dst": "0.0.0.0/0"}],
        }

    chains: list[tuple[str, list[dict[str, Any]]]] = [
        ("eth0", [{"type": "ptp", "ipam": ipam("10.9.20.0/24")}, {"type": "tuning", "mac": "c2:00:00:00:00:09"}]),
        ("eth0", [{"type": "macvlan", "master": "rawup0", "ipam": ipam("10.9.21.0/24")}]),
        (
            "eth0",
            [{"type": "bridge", "bridge": "rawbr0", "isGateway": True, "ipMasq": True, "ipam": ipam("10.9.22.0/24")}],
        ),
        ("lo", [{"type": "loopback"}]),
    ]
    ran = 0
    with netns.entered(path(host)):
        for n, (ifname, plugins) in enumerate(chains):
            ctr = namespaces.make(f"rawc{n}")
            env = {
                "CNI_CONTAINERID": f"raw{n}",
                "CNI_NETNS": path(ctr),
                "CNI_IFNAME": ifname,
                "CNI_PATH": str(cni_bin_no_helper),
            }
            prev: dict[str, Any] | None = None
            confs = []
            for p in plugins:
                conf = {"cniVersion": "1.0.0", "name": f"raw{n}", **p} | ({"prevResult": prev} if prev else {})
                out = io.StringIO()
                code = skel.run(
                    registry.load(p["type"]).PLUGIN,
                    environ={**env, "CNI_COMMAND": "ADD"},
                    stdin=json.dumps(conf).encode(),
                    stdout=out,
                    stderr=sys.stderr,
                )
                assert code == 0, out.getvalue()
                prev = json.loads(out.getvalue())
                confs.append(conf)
            for conf in reversed(confs):
                out = io.StringIO()
                code = skel.run(
                    registry.load(conf["type"]).PLUGIN,
                    environ={**env, "CNI_COMMAND": "DEL"},
                    stdin=json.dumps({**conf, "prevResult": prev}).encode(),
                    stdout=out,
                    stderr=sys.stderr,
                )
                assert code == 0, out.getvalue()
                ran += 1
    assert ran == 5 and not opened
