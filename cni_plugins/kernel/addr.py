"""Addresses and routes of a container interface, from a result (the reference's
``ipam.ConfigureIface``): sysctls for IPv6, every address whose ``interface`` index names
this interface, link up, wait for IPv6 DAD when needed, then the routes.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

from cni_plugins.kernel import netns, sysctl
from cni_plugins.kernel.netlink import (
    RT_TABLE_MAIN,
    Link,
    LinkExists,
    Netlink,
    RouteEntry,
)
from cni_plugins.spec.errors import CNIError, InvalidNetworkConfig
from cni_plugins.spec.types import IPAddress, IPConfig, IPInterface, Result, Route

DAD_TIMEOUT_S = 10.0


def ips_for(result: Result, ifname: str) -> list[int]:
    """Indices of ``result.ips`` that belong on ``ifname`` (an IP without an index belongs to it)."""
    out = []
    for i, ip in enumerate(result.ips):
        if ip.interface is None:
            out.append(i)
            continue
        if not 0 <= ip.interface < len(result.interfaces):
            raise InvalidNetworkConfig(f"ips[{i}].interface: index {ip.interface} out of range")
        if result.interfaces[ip.interface].name == ifname:
            out.append(i)
    return out


def given_addresses(result: Result | None, ifname: str) -> list[IPInterface]:
    """The addresses ``result`` (a prevResult) puts on ``ifname``: none without a result, or
    with an interface index out of range (what a DEL then reads from the kernel instead)."""
    if result is None:
        return []
    try:
        return [result.ips[i].address for i in ips_for(result, ifname)]
    except InvalidNetworkConfig:
        return []


def first_gateway(result: Result, version: int) -> IPAddress | None:
    return next((ip.gateway for ip in result.ips if ip.version == version and ip.gateway is not None), None)


def configure_iface(
    nl: Netlink, ns: str | int, ifname: str, result: Result, *, up: bool = True, routes: bool = True
) -> Link:
    """Configure ``ifname`` inside the namespace ``ns`` (``nl`` is bound to that namespace).
    With ``routes=False`` the caller adds them later with ``add_routes``."""
    link = nl.require_link(ifname)
    mine = [result.ips[i] for i in ips_for(result, ifname)]
    if any(ip.version == 6 for ip in mine):
        with netns.entered(ns):
            for dev in ("lo", ifname):
                try:
                    sysctl.ensure(sysctl.iface_key(6, dev, "disable_ipv6"), "0")
                except CNIError:
                    pass  # IPv6 compiled out or disabled globally: adding the address will say so
            try:
                sysctl.ensure(sysctl.iface_key(6, ifname, "keep_addr_on_down"), "1")
            except CNIError:
                pass
    with nl.batch():  # one write, unless IPv6 routes wait for DAD (``add_routes``)
        for ip in mine:
            nl.add_address(link.index, ip.address, exists_ok=True)  # already there: a retried ADD
        if up:
            nl.set_link(link.index, state="up")
        if routes:
            add_routes(nl, link, result)
    return link


def add_routes(nl: Netlink, link: Link, result: Result) -> None:
    """The result's routes through ``link``, once its IPv6 addresses with a gateway are past DAD."""
    if any(result.ips[i].version == 6 and result.ips[i].gateway is not None for i in ips_for(result, link.name)):
        nl.flush()  # the addresses of a batch this is part of
        settle_addresses(nl, link.index)
    for route in result.routes:
        gw = route.gw or first_gateway(result, route.dst.version)
        nl.add_route(
            route.dst,
            gw=gw,
            oif=link.index,
            table=route.table,
            priority=route.priority or None,
            mtu=route.mtu,
            advmss=route.advmss,
            scope=route.scope,
            exists_ok=True,
        )


def settle_addresses(nl: Netlink, index: int, timeout: float = DAD_TIMEOUT_S) -> None:
    """Wait until no IPv6 address on the link is tentative (DAD done)."""
    deadline = time.monotonic() + timeout
    while True:
        pending = [a for a in nl.addresses(index=index) if a.address.version == 6 and a.tentative]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise CNIError(
                f"IPv6 duplicate address detection did not finish for {pending[0].address} in {timeout:.0f}s"
            )
        time.sleep(0.05)


def validate_ips(nl: Netlink, ifname: str, ips: Sequence[IPConfig]) -> None:
    """CHECK: every address of ``ips`` is on ``ifname`` (same prefix), and a route to its subnet exists."""
    link = nl.link(ifname)
    if link is None:
        raise CNIError(
            f"interface {ifname} not found in {nl.label}", "the interface from prevResult is gone; DEL and ADD again"
        )
    present = {a.address for a in nl.addresses(index=link.index)}
    routes = {r.dst for r in nl.routes()}
    for ip in ips:
        if ip.address not in present:
            raise CNIError(
                f"address {ip.address} is missing on {ifname} in {nl.label}",
                "it was in prevResult; something removed it",
            )
        if ip.address.network not in routes:
            raise CNIError(
                f"no route to {ip.address.network} for {ifname} in {nl.label}", "the subnet route from ADD is gone"
            )


def validate_routes(nl: Netlink, routes: Sequence[Route]) -> None:
    """CHECK: every route of a result is in the routing table (same destination, and gateway if given)."""
    tables: dict[int, list[RouteEntry]] = {}
    for route in routes:
        table = route.table or RT_TABLE_MAIN
        if table not in tables:
            tables[table] = nl.routes(table=table)
        found = [r for r in tables[table] if r.dst == route.dst and (route.gw is None or r.gw == route.gw)]
        if not found:
            via = f" via {route.gw}" if route.gw else ""
            raise CNIError(
                f"expected route {route.dst}{via} not found in {nl.label}", "it was in prevResult; something removed it"
            )


def ensure_gateway_addr(nl: Netlink, link: Link, address: IPInterface, *, force: bool = False) -> None:
    """Put ``address`` (a gateway with the containers' prefix length) on ``link``, as the
    reference's ensureAddr: already there, nothing to do. A different IPv4 address, or an
    IPv6 one whose subnet overlaps, is replaced when ``force`` and is an error otherwise
    (non-overlapping IPv6 addresses coexist). After adding, the link's MAC is set to itself so
    that a bridge keeps it as ports come and go."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    for have in nl.addresses(index=link.index, family=family):
        if have.address == address:
            return
        if address.version == 4 or address.ip in have.address.network or have.address.ip in address.network:
            if not force:
                raise InvalidNetworkConfig(
                    f"{link.name!r} already has an IP address different from {address} ({have.address})",
                    'set "forceAddress": true to replace it, or use another bridge',
                )
            nl.del_address(link.index, have.address)
    try:
        nl.add_address(link.index, address)
    except LinkExists:
        pass  # added concurrently by another ADD on the same bridge
    current = nl.link_by_index(link.index)  # a bridge's MAC follows its ports until pinned
    if current is not None and current.mac and current.mac != "00:00:00:00:00:00":
        nl.set_link(link.index, address=current.mac)
