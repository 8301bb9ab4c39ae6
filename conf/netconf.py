"""The network config a plugin reads on stdin, parsed once into typed values.

``NetConf`` holds the keys every plugin shares (``cniVersion``, ``name``, ``type``, ``ipam``,
``dns``, ``prevResult``, ``runtimeConfig``, ``args``, ``cni.dev/valid-attachments``) and the
raw object, from which each plugin parses its own options. Unknown keys are ignored:
chaining and runtimes add keys we do not know about.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cni_plugins.spec.errors import CNIError, DecodingFailure, InvalidNetworkConfig, shown
from cni_plugins.spec.names import ID_RE
from cni_plugins.spec.types import DNS, Result, expect_dict
from cni_plugins.spec.version import (
    DEFAULT_CONFIG_VERSION,
    parse_version,
    result_from_json,
)
from conf import gojson
from conf.fields import int_field, list_field, str_field, str_list_field

PROTOCOLS = ("tcp", "udp", "sctp")

T = TypeVar("T")


def validate_network_name(name: str, where: str = "name") -> None:
    if not name:
        raise InvalidNetworkConfig("missing network name", f'set "{where}" in the network config')
    if not ID_RE.match(name) or len(name) > 255:
        raise InvalidNetworkConfig(
            f"{where}: invalid network name {shown(name)}",
            "a network name starts with a letter or digit and holds only letters, digits, '_', '.' and '-'",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PortMapping:
    """One entry of the ``portMappings`` capability."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""

    @classmethod
    def from_json(cls, obj: object, where: str) -> PortMapping:
        if not isinstance(obj, dict):
            raise InvalidNetworkConfig(f"{where}: expected a JSON object, got {shown(obj)}")
        protocol = str_field(obj, "protocol", "tcp", where).lower() or "tcp"
        if protocol not in PROTOCOLS:
            raise InvalidNetworkConfig(f"{where}.protocol: {shown(protocol)} is not one of tcp, udp, sctp")
        host_ip = str_field(obj, "hostIP", "", where)
        if host_ip:
            import ipaddress

            try:
                ipaddress.ip_address(host_ip)
            except ValueError:
                raise InvalidNetworkConfig(f"{where}.hostIP: {shown(host_ip)} is not an IP address") from None
        return cls(
            host_port=int_field(obj, "hostPort", 0, where, minimum=1, maximum=65535),
            container_port=int_field(obj, "containerPort", 0, where, minimum=1, maximum=65535),
            protocol=protocol,
            host_ip=host_ip,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol,
        }
        if self.host_ip:
            out["hostIP"] = self.host_ip
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeConfig:
    """``runtimeConfig``: the capability args the runtime injected for this plugin."""

    port_mappings: tuple[PortMapping, ...] = ()
    ips: tuple[str, ...] = ()
    mac: str = ""
    ip_ranges: tuple[Any, ...] = ()  # host-local validates the range sets itself
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: object) -> RuntimeConfig:
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise InvalidNetworkConfig(f"runtimeConfig: expected a JSON object, got {shown(obj)}")
        where = "runtimeConfig"
        return cls(
            port_mappings=tuple(
                PortMapping.from_json(pm, f"{where}.portMappings[{i}]")
                for i, pm in enumerate(list_field(obj, "portMappings", where))
            ),
            ips=str_list_field(obj, "ips", where),
            mac=str_field(obj, "mac", "", where),
            ip_ranges=tuple(list_field(obj, "ipRanges", where)),
            raw=obj,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginArgs:
    """``args.cni``: the structured successor of CNI_ARGS (``ips``, ``mac``, ``labels``)."""

    ips: tuple[str, ...] = ()
    mac: str = ""
    raw: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: object) -> PluginArgs:
        if obj is None:
            return cls()
        if not isinstance(obj, dict):
            raise InvalidNetworkConfig(f"args: expected a JSON object, got {shown(obj)}")
        cni = obj.get("cni") or {}
        if not isinstance(cni, dict):
            raise InvalidNetworkConfig(f"args.cni: expected a JSON object, got {shown(cni)}")
        return cls(ips=str_list_field(cni, "ips", "args.cni"), mac=str_field(cni, "mac", "", "args.cni"), raw=obj)


@dataclass(frozen=True, slots=True, kw_only=True)
class Attachment:
    container_id: str
    ifname: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NetConf:
    cni_version: str
    name: str
    type: str
    ipam: dict[str, Any]
    dns: DNS
    prev_result: Result | None
    runtime_config: RuntimeConfig
    args: PluginArgs
    valid_attachments: tuple[Attachment, ...] | None
    raw: dict[str, Any]
    data: bytes
    unreadable: tuple[str, ...] = ()  # lenient parse: the shared keys left out, with why

    @property
    def ipam_type(self) -> str:
        return str(self.ipam.get("type", "")) if self.ipam else ""

    def readable(self, key: str) -> bool:
        """False when a lenient parse left ``key`` out because its value could not be read."""
        return not any(u.startswith(f"{key}:") for u in self.unreadable)

    @classmethod
    def from_bytes(cls, data: bytes, *, lenient: bool = False) -> NetConf:
        """Parse stdin. Only decoding and the keys every verb needs are checked here.

        ``lenient`` (DEL): the attachment is named by ``cniVersion``, ``name`` and the
        environment, which stay strict; a shared key whose value cannot be read
        (``runtimeConfig``, ``args``, ``prevResult``, ``dns``, ``ipam``, valid attachments)
        is left out and listed in ``unreadable``, so that a DEL still removes what the
        attachment owns instead of failing on its own input."""
        try:
            raw = gojson.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodingFailure(
                f"decode network config from stdin: {exc}", "stdin must hold one JSON object"
            ) from None
        if not isinstance(raw, dict):
            raise DecodingFailure(f"decode network config from stdin: expected a JSON object, got {type(raw).__name__}")
        version = raw.get("cniVersion")
        if version is not None and not isinstance(version, str):  # Go's decoding refuses it; {} is not "missing"
            raise DecodingFailure(f"cniVersion: expected a string, got {shown(version)}")
        version = version or DEFAULT_CONFIG_VERSION
        parse_version(version)
        name = raw.get("name", "")
        if not isinstance(name, str):
            raise DecodingFailure(f"name: expected a string, got {shown(name)}")
        validate_network_name(name)
        ptype = raw.get("type", "")
        if not isinstance(ptype, str):
            raise DecodingFailure(f"type: expected a string, got {shown(ptype)}")
        unreadable: list[str] = []

        def read(key: str, parse: Callable[[Any], T], default: T) -> T:
            value = raw.get(key)
            if value is None:
                return default
            try:
                return parse(value)
            except CNIError as err:
                if not lenient:
                    raise
                unreadable.append(f"{key}: {err.msg}")
                return default

        prev = read("prevResult", lambda v: result_from_json(v, "prevResult"), None)
        return cls(
            cni_version=version,
            name=name,
            type=ptype,
            ipam=read("ipam", _ipam, {}),
            dns=read("dns", lambda v: DNS.from_json(v, "dns"), DNS()),
            prev_result=prev,
            runtime_config=read("runtimeConfig", RuntimeConfig.from_json, RuntimeConfig()),
            args=read("args", PluginArgs.from_json, PluginArgs()),
            valid_attachments=read("cni.dev/valid-attachments", _attachments, None),
            raw=raw,
            data=data,
            unreadable=tuple(unreadable),
        )


def _ipam(obj: object) -> dict[str, Any]:
    ipam = expect_dict(obj, "ipam")
    if not isinstance(ipam.get("type", ""), str):
        raise DecodingFailure(f"ipam.type: expected a string, got {shown(ipam.get('type'))}")
    return ipam


def _attachments(obj: object) -> tuple[Attachment, ...] | None:
    if obj is None:
        return None
    if not isinstance(obj, list):
        raise InvalidNetworkConfig(f"cni.dev/valid-attachments: expected a list, got {shown(obj)}")
    out = []
    for i, item in enumerate(obj):
        where = f"cni.dev/valid-attachments[{i}]"
        if not isinstance(item, dict):
            raise InvalidNetworkConfig(f"{where}: expected a JSON object, got {shown(item)}")
        out.append(
            Attachment(
                container_id=str_field(item, "containerID", "", where), ifname=str_field(item, "ifname", "", where)
            )
        )
    return tuple(out)
