"""Link reads without pyroute2 (``cni_plugins.kernel.linkget``) give what pyroute2 decodes, for
every kind of link the plugins read, in a real namespace."""

from __future__ import annotations

import dataclasses
from typing import Any

from cni_plugins.kernel import linkget, netlink
from cni_plugins.kernel.netlink import Link, Netlink
from tests.integration.nsutil import path, sh


def _as_pyroute2_reads(nl: Netlink, index: int) -> Link:
    """The same link as pyroute2 gets and decodes it (the reference)."""
    msg = nl._ipr.get_links(index)[0]
    info = msg.get_attr("IFLA_LINKINFO")
    data, port = netlink._link_data(msg)
    return Link(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME") or "",
        kind=(info.get_attr("IFLA_INFO_KIND") if info is not None else "") or "",
        mac=msg.get_attr("IFLA_ADDRESS") or "",
        mtu=msg.get_attr("IFLA_MTU") or 0,
        flags=msg["flags"],
        operstate=msg.get_attr("IFLA_OPERSTATE") or "",
        master=msg.get_attr("IFLA_MASTER"),
        link=msg.get_attr("IFLA_LINK"),
        txqlen=msg.get_attr("IFLA_TXQLEN") or 0,
        info=data,
        port=port,
        alias=msg.get_attr("IFLA_IFALIAS") or "",
    )


def _plain(link: Link) -> dict[str, Any]:
    fields = dataclasses.asdict(dataclasses.replace(link, info={}, port={}))
    # running timers (a bridge's GC timer, a port's hold timer) tick between two reads
    fields["info"], fields["port"] = (
        {k: v for k, v in data.items() if not k.endswith("_TIMER")} for data in (link.info, link.port)
    )
    return fields


def test_every_field_matches_pyroute2(container_ns: str) -> None:
    ns = container_ns
    sh("ip", "link", "add", "br7", "type", "bridge", ns=ns)
    sh("ip", "link", "add", "v0", "mtu", "1400", "type", "veth", "peer", "name", "v1", ns=ns)
    sh("ip", "link", "set", "v0", "master", "br7", "up", ns=ns)
    sh("ip", "link", "set", "v0", "type", "bridge_slave", "hairpin", "on", ns=ns)
    sh("ip", "link", "add", "mv0", "link", "v1", "type", "macvlan", "mode", "passthru", ns=ns)
    sh("ip", "link", "set", "br7", "up", ns=ns)
    sh("ip", "link", "set", "v1", "txqueuelen", "77", "alias", "peer of v0", ns=ns)
    with Netlink.open(path(ns)) as nl:
        names = ["lo", "br7", "v0", "v1", "mv0"]
        seen = 0
        for name in names:
            raw = nl.require_link(name)
            assert _plain(raw) == _plain(_as_pyroute2_reads(nl, raw.index)), name
            by_index = nl.link_by_index(raw.index)
            assert by_index is not None, name
            assert _plain(by_index) == _plain(raw)
            seen += 1
        assert seen == len(names)
        v0 = nl.require_link("v0")
        assert (
            v0.port.get("IFLA_BRPORT_MODE") == 1 and v0.master == nl.require_link("br7").index
        )  # hairpin, decoded on demand
        assert nl.require_link("mv0").info.get("IFLA_MACVLAN_MODE") is not None
        assert nl.require_link("v1").txqlen == 77 and v0.mtu == 1400 and v0.kind == "veth"
        assert nl.require_link("v1").alias == "peer of v0" and v0.alias == ""
        dumped = nl.links()  # one dump: every link, in ifindex order, as single reads give them
        assert [link.name for link in dumped] == sorted(names, key=lambda n: nl.require_link(n).index)
        assert [_plain(link) for link in dumped] == [_plain(nl.require_link(link.name)) for link in dumped]
        assert nl.link("nope0") is None and nl.link_by_index(999999) is None
        assert nl.link("x" * 16) is None  # longer than IFNAMSIZ: no such link can exist


def test_parse_stops_at_a_truncated_attribute() -> None:
    """A malformed attribute length ends the parse instead of looping or reading past it."""
    header = linkget._NLMSGHDR.pack(0, linkget.RTM_NEWLINK, 0, 1, 0) + linkget._IFINFOMSG.pack(0, 1, 5, 0x1, 0)
    name = linkget._attr(linkget.IFLA_IFNAME, b"eth9\0")
    broken = linkget._RTATTR.pack(2, linkget.IFLA_MTU)  # length 2 < header size

    def no_kind_data(message: bytes, port: bool) -> dict[str, object]:
        raise AssertionError("the message carries no kind-specific data")

    fields = linkget.parse(header + name + broken + b"\0\0\0\0", no_kind_data)
    assert fields.index == 5 and fields.name == "eth9" and fields.mtu == 0 and fields.kind == ""
