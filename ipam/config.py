"""host-local's config: every input form folded into one canonical list of range sets.

Sources, in the reference's order (``allocator/config.go`` ``LoadIPAMConfig``): the
``ipRanges`` capability (``runtimeConfig.ipRanges``) first, then the legacy single range at
the top of ``ipam`` (``subnet``/``rangeStart``/``rangeEnd``/``gateway``), then ``ipam.ranges``.
Requested addresses come from ``CNI_ARGS IP=`` (comma-separated), ``args.cni.ips`` and the
``ips`` capability, all together, and are matched to a range set here, so that a bad request
is refused before anything is written.

Every error is code 7 and names the key path (``ipam.ranges[1][0].rangeStart``).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

from cni_plugins.spec.errors import DecodingFailure, InvalidNetworkConfig, shown
from cni_plugins.spec.types import DNS, IPAddress, IPNetwork, Route
from cni_plugins.spec.version import at_least
from conf.cni_args import CniArgs
from conf.fields import list_field, str_field
from conf.netconf import NetConf, validate_network_name
from ipam.ranges import Range, RangeSet

DEFAULT_DATA_DIR = "/var/lib/cni/networks"


@dataclass(frozen=True, slots=True, kw_only=True)
class IPAMConf:
    name: str
    range_sets: tuple[RangeSet, ...]
    requested: tuple[IPAddress | None, ...]  # one per range set
    routes: tuple[Route, ...] = ()
    data_dir: str = DEFAULT_DATA_DIR
    resolv_conf: str = ""

    @classmethod
    def from_netconf(cls, conf: NetConf, cni_args: CniArgs) -> IPAMConf:
        ipam = conf.ipam
        if not ipam:
            raise InvalidNetworkConfig(
                "IPAM config missing 'ipam' key", 'add an "ipam" object with "type": "host-local"'
            )
        validate_network_name(conf.name)
        sources: list[tuple[str, object]] = [
            (f"runtimeConfig.ipRanges[{i}]", rs) for i, rs in enumerate(conf.runtime_config.ip_ranges)
        ]
        if ipam.get("subnet"):
            sources.append(("ipam", [{k: ipam.get(k) for k in ("subnet", "rangeStart", "rangeEnd", "gateway")}]))
        sources += [(f"ipam.ranges[{i}]", rs) for i, rs in enumerate(list_field(ipam, "ranges", "ipam"))]
        if not sources:
            raise InvalidNetworkConfig("ipam: no IP ranges specified", 'set "ipam.subnet" or "ipam.ranges"')
        range_sets = [parse_range_set(raw, where) for where, raw in sources]
        wheres = [where for where, _ in sources]
        _check_sets(range_sets, wheres, conf.cni_version)
        requested = _requested_ips(conf, cni_args)
        return cls(
            name=conf.name,
            range_sets=tuple(range_sets),
            requested=_match_requested(requested, range_sets, wheres),
            routes=parse_routes(ipam, "ipam"),
            data_dir=parse_data_dir(ipam),
            resolv_conf=str_field(ipam, "resolvConf", "", "ipam"),
        )


def parse_range_set(raw: object, where: str) -> RangeSet:
    if not isinstance(raw, list):
        raise InvalidNetworkConfig(
            f"{where}: expected a list of ranges, got {shown(raw)}", 'a range set is [{"subnet": "10.1.0.0/24"}, ...]'
        )
    if not raw:
        raise InvalidNetworkConfig(f"{where}: empty range set", "give at least one range with a subnet")
    ranges: list[Range] = []
    for j, item in enumerate(raw):
        item_where = where if where == "ipam" else f"{where}[{j}]"
        r = parse_range(item, item_where)
        if ranges and r.version != ranges[0].version:
            raise InvalidNetworkConfig(
                f"{item_where}: mixed address families in one range set",
                "put IPv4 and IPv6 ranges in separate range sets",
            )
        for k, other in enumerate(ranges):
            if r.overlaps(other):
                raise InvalidNetworkConfig(
                    f"{item_where}: subnet {r.subnet} ({r}) overlaps {where}[{k}] ({other.subnet} {other})"
                )
        ranges.append(r)
    return RangeSet(ranges=tuple(ranges))


def parse_range(raw: object, where: str) -> Range:
    if not isinstance(raw, dict):
        raise InvalidNetworkConfig(f"{where}: expected a JSON object, got {shown(raw)}")
    text = str_field(raw, "subnet", "", where)
    if not text:
        raise InvalidNetworkConfig(f"{where}.subnet: missing", 'each range needs a "subnet" like "10.1.0.0/24"')
    try:
        iface = ipaddress.ip_interface(text)
    except ValueError:
        raise InvalidNetworkConfig(
            f"{where}.subnet: {shown(text)} is not a valid CIDR", 'use a network in CIDR form like "10.1.0.0/24"'
        ) from None
    if "/" not in text:
        raise InvalidNetworkConfig(
            f"{where}.subnet: {shown(text)} has no prefix length", 'use CIDR form like "10.1.0.0/24"'
        )
    subnet: IPNetwork = iface.network
    if iface.ip != subnet.network_address:
        raise InvalidNetworkConfig(
            f"{where}.subnet: {text} has host bits set",
            f"for a prefix length of {subnet.prefixlen} the network address is {subnet.network_address}: use {subnet}",
        )
    if subnet.prefixlen > subnet.max_prefixlen - 2:
        raise InvalidNetworkConfig(
            f"{where}.subnet: network {subnet} too small to allocate from", "use a /30 (IPv4) or /126 (IPv6) or larger"
        )
    gateway = _ip_in(raw, "gateway", subnet, where) or subnet.network_address + 1
    start = _ip_in(raw, "rangeStart", subnet, where) or subnet.network_address + 1
    end = _ip_in(raw, "rangeEnd", subnet, where) or (
        subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address
    )
    if start > end:  # type: ignore[operator]
        raise InvalidNetworkConfig(
            f"{where}.rangeStart: {start} is after rangeEnd {end}", "rangeStart must not be after rangeEnd"
        )
    return Range(subnet=subnet, range_start=start, range_end=end, gateway=gateway)


def _ip_in(raw: dict[str, object], key: str, subnet: IPNetwork, where: str) -> IPAddress | None:
    text = str_field(raw, key, "", where)
    if not text:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidNetworkConfig(f"{where}.{key}: {shown(text)} is not an IP address") from None
    if ip.version != subnet.version or ip not in subnet:
        raise InvalidNetworkConfig(
            f"{where}.{key}: {ip} is not in subnet {subnet}", f"give an address inside {subnet}, or leave {key} out"
        )
    return ip


def _check_sets(range_sets: list[RangeSet], wheres: list[str], cni_version: str) -> None:
    for i, rs in enumerate(range_sets):
        for j in range(i):
            if rs.overlaps(range_sets[j]):
                raise InvalidNetworkConfig(
                    f"{wheres[i]}: range set {i} overlaps with range set {j} ({wheres[j]})",
                    "range sets must not share addresses",
                )
    if not at_least(cni_version, "0.3.0"):
        for family in (4, 6):
            if sum(1 for rs in range_sets if rs.version == family) > 1:
                raise InvalidNetworkConfig(
                    f"CNI version {cni_version} does not support more than 1 address per family",
                    f"give at most one IPv{family} range set, or use cniVersion 0.3.0 or later",
                )


def _requested_ips(conf: NetConf, cni_args: CniArgs) -> list[tuple[IPAddress, str]]:
    """(address, where it came from); a CIDR is accepted and its prefix ignored, as ip.ParseIP does."""
    raw: list[tuple[str, str]] = []
    env_ip = cni_args.get("IP")
    if env_ip:
        raw += [(item.strip(), "CNI_ARGS IP") for item in env_ip.split(",") if item.strip()]
    raw += [(item, f"args.cni.ips[{i}]") for i, item in enumerate(conf.args.ips)]
    raw += [(item, f"runtimeConfig.ips[{i}]") for i, item in enumerate(conf.runtime_config.ips)]
    out: list[tuple[IPAddress, str]] = []
    for text, where in raw:
        try:
            ip = ipaddress.ip_interface(text.strip()).ip
        except ValueError:
            raise InvalidNetworkConfig(
                f"{where}: cannot understand ip {shown(text)}",
                "give an IP address like 10.1.0.5 (a CIDR like 10.1.0.5/24 is accepted)",
            ) from None
        if all(ip != seen for seen, _ in out):
            out.append((ip, where))
    return out


def _match_requested(
    requested: list[tuple[IPAddress, str]], range_sets: list[RangeSet], wheres: list[str]
) -> tuple[IPAddress | None, ...]:
    chosen: list[tuple[IPAddress, str] | None] = [None] * len(range_sets)
    for ip, where in requested:
        idx = next((i for i, rs in enumerate(range_sets) if rs.contains(ip)), None)
        if idx is None:
            sets = "; ".join(f"{w}: {rs}" for w, rs in zip(wheres, range_sets, strict=True))
            raise InvalidNetworkConfig(f"{where}: requested IP {ip} is not in any range set", f"range sets: {sets}")
        taken = chosen[idx]
        if taken is not None:
            raise InvalidNetworkConfig(
                f"{where}: requested IP {ip} and {taken[0]} ({taken[1]}) "
                f"are both in range set {idx} ({range_sets[idx]})",
                "one address is allocated per range set: request at most one address in each",
            )
        r = range_sets[idx].range_for(ip)
        assert r is not None
        if ip == r.gateway:
            raise InvalidNetworkConfig(
                f"{where}: requested ip {ip} is subnet's gateway", "request an address other than the gateway"
            )
        if r.reserved(ip):
            raise InvalidNetworkConfig(f"{where}: requested ip {ip} is the network or broadcast address of {r.subnet}")
        chosen[idx] = (ip, where)
    return tuple(c[0] if c else None for c in chosen)


def parse_routes(ipam: dict[str, object], where: str) -> tuple[Route, ...]:
    out = []
    for i, raw in enumerate(list_field(ipam, "routes", where)):
        try:
            out.append(Route.from_json(raw, f"{where}.routes[{i}]"))
        except DecodingFailure as exc:
            raise InvalidNetworkConfig(
                exc.msg, 'a route is {"dst": "10.2.0.0/16", "gw": "10.1.0.1"} (gw optional)'
            ) from None
    return tuple(out)


def parse_dns(ipam: dict[str, object], where: str) -> DNS:
    try:
        return DNS.from_json(ipam.get("dns"), f"{where}.dns")
    except DecodingFailure as exc:
        raise InvalidNetworkConfig(exc.msg) from None


def parse_data_dir(ipam: dict[str, object]) -> str:
    """``ipam.dataDir``: absolute, no NUL, no ``..``; returned normalised."""
    text = str_field(ipam, "dataDir", "", "ipam")
    if not text:
        return DEFAULT_DATA_DIR
    if "\0" in text:
        raise InvalidNetworkConfig("ipam.dataDir: contains a NUL character", "give an absolute directory path")
    if not text.startswith("/"):
        raise InvalidNetworkConfig(
            f"ipam.dataDir: {shown(text)} is not an absolute path",
            f"give an absolute directory path such as {DEFAULT_DATA_DIR}",
        )
    if ".." in text.split("/"):
        raise InvalidNetworkConfig(
            f"ipam.dataDir: {shown(text)} has a '..' component", "give the directory without '..' components"
        )
    normal = os.path.normpath(text)
    return "/" + normal.lstrip("/")  # POSIX keeps a leading "//"; we do not
