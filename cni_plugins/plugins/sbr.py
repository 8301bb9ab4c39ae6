"""``sbr`` (chained): source-based routing for a container interface.

As the reference (``plugins/meta/sbr``): for each of prevResult's addresses on CNI_IFNAME (an
address without an interface index counts as on it), in order, a rule ``from <addr>/32``
(``/128``) ``lookup <table>`` with the priority the kernel picks, and into that table a default
route via the address's gateway plus a copy of each main-table route of the interface that
is generic (no source, no gateway) or whose source or gateway lies in the address's subnet;
tables are numbered from 100, one per address, each the first id no rule and no route uses.
Then the interface's routes leave the main table. With ``table``, only the rules are added,
into that table, and no route is touched. The namespace is locked (flock on the netns file,
as the reference locks it) while rules and tables are chosen. The result is prevResult.
DEL deletes every rule (of ``table``, when given) whose source is an address of the
interface; CHECK looks for the rules and default routes.

Differences, each a fix:
* a free table is one no rule and no route of *any* table uses (the reference looks at the
  main table's routes only, so it could pick a table that holds routes already), and a
  generic route is copied only into the table of an address of its family (the reference
  copied IPv6 ``fe80::/64`` into the IPv4 table);
* the netns is locked without creating anything (the reference's lock creates an empty file
  at a missing CNI_NETNS path);
* an ADD that fails leaves nothing: rules and copied routes go, the main-table routes come
  back; prevResult without an address on the interface is an error (the reference then
  emptied the main table of the interface's routes and routed nothing);
* DEL with the netns or the interface gone succeeds; the addresses are also taken from
  prevResult, so rules are not left behind when the interface went first, and the routes
  of the tables whose last rule it deleted go too (not in ``table`` mode: that table is the
  user's).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cni_plugins.kernel import netns
from cni_plugins.kernel.netns import NetNSGone
from cni_plugins.protocol import skel
from cni_plugins.protocol.skel import CmdArgs, Plugin
from cni_plugins.protocol.steps import options_for_del, quietly, step
from cni_plugins.spec.errors import CNIError, ErrorList, InvalidNetworkConfig
from cni_plugins.spec.types import IPConfig, IPNetwork, Result
from conf.fields import int_field

if TYPE_CHECKING:
    from cni_plugins.kernel.netlink import Netlink, RouteEntry, RuleEntry

FIRST_TABLE = 100
RESERVED_TABLES = frozenset({0, 253, 254, 255})  # unspec, default, main, local
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
U32_MAX = 2**32 - 1
CHAINED = "sbr is a chained plugin: put it after the plugin that creates the interface and assigns its addresses"


@dataclass(frozen=True, slots=True, kw_only=True)
class SbrConf:
    table: int | None  # None: a table per address, chosen here

    @classmethod
    def from_json(cls, args: CmdArgs) -> SbrConf:
        raw = args.conf.raw
        if raw.get("table") is None:
            return cls(table=None)
        return cls(table=int_field(raw, "table", 0, minimum=1, maximum=U32_MAX))


def require_prev(args: CmdArgs) -> Result:
    prev = args.conf.prev_result
    if prev is None:
        raise InvalidNetworkConfig("sbr: this plugin must be called as chained plugin: prevResult missing", CHAINED)
    return prev


def ips_on(prev: Result, ifname: str) -> list[IPConfig]:
    """prevResult's addresses on ``ifname``: without an index, or with one naming it (an index
    out of range counts as on it, as the reference reads it)."""
    if not prev.ips:
        raise InvalidNetworkConfig(f"No IP addresses supplied on interface: {ifname}", CHAINED)
    out = []
    for ip in prev.ips:
        i = ip.interface
        if i is not None and 0 <= i < len(prev.interfaces) and prev.interfaces[i].name != ifname:
            continue
        out.append(ip)
    if not out:
        raise InvalidNetworkConfig(
            f"prevResult has no IP address on interface {ifname}",
            "sbr routes by the addresses of CNI_IFNAME; check that the chain assigns it one",
        )
    return out


def host_prefix(ip: IPConfig) -> IPNetwork:
    return ipaddress.ip_network(ip.address.ip)  # /32 or /128


@contextlib.contextmanager
def locked_netns(path: str) -> Iterator[int]:
    """An fd of the namespace at ``path``, flock'ed for the block (the same lock the reference
    takes, on the same file: concurrent sbr calls in one namespace choose tables in turn)."""
    fd = netns.open_netns(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


# ------------------------------------------------------------ ADD


def cmd_add(args: CmdArgs) -> Result:
    from cni_plugins.kernel.netlink import Netlink

    conf = SbrConf.from_json(args)
    prev = require_prev(args)
    ips = ips_on(prev, args.ifname)
    with (
        locked_netns(args.netns) as fd,
        Netlink.open(fd, label=args.netns) as nl,
        contextlib.ExitStack() as undo,
    ):
        if conf.table is not None:
            for ip in ips:
                add_rule(nl, host_prefix(ip), conf.table, undo)
        else:
            route_by_source(nl, args.ifname, ips, undo)
        undo.pop_all()
    return prev


def add_rule(nl: Netlink, src: IPNetwork, table: int, undo: contextlib.ExitStack) -> None:
    with step(f"add rule from {src} lookup {table}"):
        nl.add_rule(src, table)
    undo.callback(quietly, f"delete rule from {src} lookup {table}", delete_rules, nl, src, table)


def delete_rules(nl: Netlink, src: IPNetwork, table: int) -> None:
    for rule in nl.rules():
        if rule.src == src and rule.table == table:
            nl.del_rule(rule)


def route_by_source(nl: Netlink, ifname: str, ips: list[IPConfig], undo: contextlib.ExitStack) -> None:
    """A table per address (rule, default route, copied routes), then the interface's routes
    leave the main table."""
    used = {r.table for r in nl.rules()} | {r.table for r in nl.routes(table=None)}
    link = nl.link(ifname)
    if link is None:
        raise CNIError(f"Cannot find network interface {ifname} in {nl.label}", CHAINED)
    main = [r for r in nl.routes() if r.oif == link.index and r.type == RTN_UNICAST]
    table = next_free(used, FIRST_TABLE)
    for ip in ips:
        add_rule(nl, host_prefix(ip), table, undo)
        made: set[tuple[IPNetwork, int | None]] = set()
        if ip.gateway is not None:
            default = ipaddress.ip_network("0.0.0.0/0" if ip.version == 4 else "::/0")
            with step(f"add default route via {ip.gateway} to table {table}"):
                nl.add_route(default, gw=ip.gateway, oif=link.index, table=table)
            made.add((default, None))
            undo.callback(quietly, f"delete default route of table {table}", nl.del_route, default, table=table)
        for route in main:
            if not copies_to(route, ip):
                continue
            with step(f"copy route {route.dst} to table {table}"):
                nl.add_route(
                    route.dst,
                    gw=route.gw,
                    oif=route.oif,
                    scope=route.scope,
                    src=route.src,
                    table=table,
                    priority=route.priority,
                    mtu=route.mtu,
                    advmss=route.advmss,
                    proto=route.proto,
                    replace=True,  # the default route added above may be among them
                )
            key = (route.dst, None if route.dst.prefixlen == 0 else route.priority)
            if key not in made:
                made.add(key)
                undo.callback(
                    quietly,
                    f"delete route {route.dst} of table {table}",
                    nl.del_route,
                    route.dst,
                    table=table,
                    priority=route.priority,
                )
        used.add(table)
        table = next_free(used, table + 1)
    deleted: list[RouteEntry] = []
    undo.callback(restore_routes, nl, deleted)
    for route in main:
        with step(f"move route {route.dst} out of the main table"):
            nl.del_route(route.dst, gw=route.gw, oif=route.oif, table=RT_TABLE_MAIN, priority=route.priority)
        deleted.append(route)


def copies_to(route: RouteEntry, ip: IPConfig) -> bool:
    """The reference's test, per family: the route's source or gateway lies in the address's
    subnet, or it has neither (a generic route of the interface)."""
    if route.dst.version != ip.version:
        return False
    subnet = ip.address.network
    return (
        (route.src is not None and route.src in subnet)
        or (route.gw is not None and route.gw in subnet)
        or (route.src is None and route.gw is None)
    )


def next_free(used: set[int], start: int) -> int:
    table = start
    while table in used or table in RESERVED_TABLES:
        table += 1
    return table


def restore_routes(nl: Netlink, routes: list[RouteEntry]) -> None:
    """Put routes back into the main table, those a gateway needs (link and host scope) first."""
    for route in sorted(routes, key=lambda r: -r.scope):
        quietly(
            f"restore route {route.dst}",
            nl.add_route,
            route.dst,
            gw=route.gw,
            oif=route.oif,
            scope=route.scope,
            src=route.src,
            table=RT_TABLE_MAIN,
            priority=route.priority,
            mtu=route.mtu,
            advmss=route.advmss,
            proto=route.proto,
            replace=True,
        )


# ------------------------------------------------------------ DEL


def cmd_del(args: CmdArgs) -> None:
    """Delete the rules whose source is an address of the interface (now, or in prevResult);
    a gone or empty netns, or a gone interface, is fine."""
    from cni_plugins.kernel.netlink import Netlink

    conf = options_for_del("sbr", lambda: SbrConf.from_json(args), lambda: SbrConf(table=None))
    if not args.netns:
        return
    errors = ErrorList("sbr DEL")
    try:
        with locked_netns(args.netns) as fd, Netlink.open(fd, label=args.netns) as nl:
            tidy(nl, args, conf, errors)
    except NetNSGone:
        return
    errors.raise_if_any()


def tidy(nl: Netlink, args: CmdArgs, conf: SbrConf, errors: ErrorList) -> None:
    link = nl.link(args.ifname)
    addresses = {a.address.ip for a in nl.addresses(link.index)} if link is not None else set()
    prev = args.conf.prev_result
    if prev is not None and prev.ips:
        with contextlib.suppress(CNIError):
            addresses |= {ip.address.ip for ip in ips_on(prev, args.ifname)}
    rules = [r for r in nl.rules() if conf.table is None or r.table == conf.table]
    doomed = [r for r in rules if r.src is not None and r.src.network_address in addresses]
    for rule in doomed:
        with errors.step(f"delete rule {rule.priority}: from {rule.src} lookup {rule.table}"):
            nl.del_rule(rule)
    if conf.table is not None or link is None:
        return  # the user's table; or the interface and its routes are gone
    orphaned = {r.table for r in doomed} - {r.table for r in nl.rules()} - RESERVED_TABLES
    for route in nl.routes(table=None):
        if route.table in orphaned and route.oif == link.index:
            with errors.step(f"delete route {route.dst} of table {route.table}"):
                nl.del_route(route.dst, gw=route.gw, oif=route.oif, table=route.table, priority=route.priority)


# ------------------------------------------------------------ CHECK


def cmd_check(args: CmdArgs) -> None:
    """Every address has its rule (into ``table`` when given) and, without ``table``, the rule's
    table routes the address's default traffic via its gateway."""
    from cni_plugins.kernel.netlink import Netlink

    conf = SbrConf.from_json(args)
    prev = require_prev(args)
    ips = ips_on(prev, args.ifname)
    with Netlink.open(args.netns) as nl:
        rules = nl.rules()
        routes = nl.routes(table=None) if conf.table is None else []
        for ip in ips:
            check_address(ip, conf, rules, routes)


def check_address(ip: IPConfig, conf: SbrConf, rules: list[RuleEntry], routes: list[RouteEntry]) -> None:
    src = host_prefix(ip)
    tables = {r.table for r in rules if r.src == src}
    if not tables:
        raise CNIError(f"no rule routes traffic from {src.network_address} by its source")
    if conf.table is not None:
        if conf.table not in tables:
            raise CNIError(f"the rule for {src.network_address} looks up table {sorted(tables)}, not {conf.table}")
        return
    if ip.gateway is None:
        return
    if not any(r.table in tables and r.dst.prefixlen == 0 and r.gw == ip.gateway for r in routes):
        raise CNIError(f"table {min(tables)} has no default route via {ip.gateway} for {src.network_address}")


PLUGIN = Plugin(
    name="sbr",
    add=cmd_add,
    delete=cmd_del,
    check=cmd_check,
    about="CNI source-based routing plugin (cni-py)",
)


def main() -> None:
    skel.main(PLUGIN)
