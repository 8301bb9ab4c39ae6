"""The result model of CNI spec 1.1.0, the one every plugin builds.

Older result versions (0.1.0 ... 0.4.0) are produced and read by ``cni_plugins.spec.version``;
no other module knows their shapes. Addresses are parsed once, here, into ``ipaddress``
values (stdlib: it imports in ~2 ms where netaddr costs ~30 ms on every plugin exec).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, replace
from typing import Any

from cni_plugins.spec.errors import DecodingFailure, shown

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(value: object, where: str) -> IPAddress:
    if not isinstance(value, str):
        raise DecodingFailure(f"{where}: expected an IP address string, got {shown(value)}")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise DecodingFailure(f"{where}: {shown(value)} is not an IP address") from None


def parse_cidr(value: object, where: str) -> IPInterface:
    """An address with its prefix length (``10.1.2.3/24``); host bits are kept."""
    if not isinstance(value, str) or "/" not in value:
        raise DecodingFailure(f"{where}: expected an address in CIDR form like 10.1.2.3/24, got {shown(value)}")
    try:
        return ipaddress.ip_interface(value)
    except ValueError:
        raise DecodingFailure(f"{where}: {shown(value)} is not a valid CIDR") from None


def parse_net(value: object, where: str) -> IPNetwork:
    """A destination network; host bits are masked as the kernel would."""
    if not isinstance(value, str):
        raise DecodingFailure(f"{where}: expected a network in CIDR form, got {shown(value)}")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise DecodingFailure(f"{where}: {shown(value)} is not a valid network in CIDR form") from None


def _opt_int(obj: dict[str, Any], key: str, where: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodingFailure(f"{where}.{key}: expected an integer, got {shown(value)}")
    return int(value)


def _opt_str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DecodingFailure(f"{where}.{key}: expected a string, got {shown(value)}")
    return value


def _str_list(obj: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = obj.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DecodingFailure(f"{where}.{key}: expected a list of strings, got {shown(value)}")
    return tuple(value)


def expect_dict(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DecodingFailure(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def expect_list(value: object, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise DecodingFailure(f"{where}: expected a JSON list, got {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Interface:
    name: str
    mac: str = ""
    mtu: int | None = None
    sandbox: str = ""
    socket_path: str = ""
    pci_id: str = ""

    @classmethod
    def from_json(cls, obj: object, where: str) -> Interface:
        d = expect_dict(obj, where)
        name = d.get("name")
        if not isinstance(name, str):
            raise DecodingFailure(f"{where}.name: expected a string, got {shown(name)}")
        return cls(
            name=name,
            mac=_opt_str(d, "mac", where),
            mtu=_opt_int(d, "mtu", where),
            sandbox=_opt_str(d, "sandbox", where),
            socket_path=_opt_str(d, "socketPath", where),
            pci_id=_opt_str(d, "pciID", where),
        )

    def to_json(self, *, v1_1_fields: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name}
        if self.mac:
            out["mac"] = self.mac
        if v1_1_fields and self.mtu:
            out["mtu"] = self.mtu
        if self.sandbox:
            out["sandbox"] = self.sandbox
        if v1_1_fields and self.socket_path:
            out["socketPath"] = self.socket_path
        if v1_1_fields and self.pci_id:
            out["pciID"] = self.pci_id
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class IPConfig:
    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None

    @property
    def version(self) -> int:
        return self.address.version

    @classmethod
    def from_json(cls, obj: object, where: str) -> IPConfig:
        d = expect_dict(obj, where)
        gw = d.get("gateway")
        return cls(
            address=parse_cidr(d.get("address"), f"{where}.address"),
            gateway=parse_ip(gw, f"{where}.gateway") if gw else None,
            interface=_opt_int(d, "interface", where),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.interface is not None:
            out["interface"] = self.interface
        out["address"] = str(self.address)
        if self.gateway is not None:
            out["gateway"] = str(self.gateway)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    dst: IPNetwork
    gw: IPAddress | None = None
    mtu: int | None = None
    advmss: int | None = None
    priority: int | None = None
    table: int | None = None
    scope: int | None = None

    @property
    def is_default(self) -> bool:
        return self.dst.prefixlen == 0

    @classmethod
    def from_json(cls, obj: object, where: str) -> Route:
        d = expect_dict(obj, where)
        gw = d.get("gw")
        return cls(
            dst=parse_net(d.get("dst"), f"{where}.dst"),
            gw=parse_ip(gw, f"{where}.gw") if gw else None,
            mtu=_opt_int(d, "mtu", where),
            advmss=_opt_int(d, "advmss", where),
            priority=_opt_int(d, "priority", where),
            table=_opt_int(d, "table", where),
            scope=_opt_int(d, "scope", where),
        )

    def to_json(self, *, v1_1_fields: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"dst": str(self.dst)}
        if self.gw is not None:
            out["gw"] = str(self.gw)
        if v1_1_fields:
            for key, value in (("mtu", self.mtu), ("advmss", self.advmss), ("priority", self.priority)):
                if value:
                    out[key] = value
            for key, value in (("table", self.table), ("scope", self.scope)):
                if value is not None:
                    out[key] = value
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class DNS:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: object, where: str) -> DNS:
        if obj is None:
            return cls()
        d = expect_dict(obj, where)
        return cls(
            nameservers=_str_list(d, "nameservers", where),
            domain=_opt_str(d, "domain", where),
            search=_str_list(d, "search", where),
            options=_str_list(d, "options", where),
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """A 1.x result. ``cni_version`` records the version it was read in (informational)."""

    cni_version: str = "1.1.0"
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = field(default_factory=DNS)

    def replace(self, **changes: Any) -> Result:
        return replace(self, **changes)

    def interface(self, name: str, *, sandbox: str | bool | None = None) -> Interface | None:
        """The first interface named ``name``; ``sandbox``: a path (in that sandbox), True (in
        any sandbox), False (on the host) or None (anywhere)."""
        for iface in self.interfaces:
            if iface.name != name:
                continue
            if sandbox is None or (
                bool(iface.sandbox) == sandbox if isinstance(sandbox, bool) else iface.sandbox == sandbox
            ):
                return iface
        return None
