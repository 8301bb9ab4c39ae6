"""Spec versions, and conversion of results between them.

Every plugin builds a 1.x ``Result``; this module reads a result of any version into that
model and writes it out in the version the config asks for, with the reference's rules
(containernetworking/cni ``pkg/types/{020,040,100}``):

* 0.1.0 / 0.2.0: ``{ip4: {ip, gateway, routes}, ip6: {...}, dns}``; going down keeps the
  first IPv4 and first IPv6 address, moves routes (dst, gw) into their family, loses
  interfaces, and fails when there is no address at all.
* 0.3.0 / 0.3.1 / 0.4.0: ``ips[]`` carry ``version: "4"|"6"``; interfaces and routes lack the
  1.1 fields (mtu, socketPath, pciID; route mtu/advmss/priority/table/scope).
* 1.0.0 / 1.1.0: the current model.
"""

from __future__ import annotations

from typing import Any

from cni_plugins.spec.errors import DecodingFailure, IncompatibleCNIVersion, shown
from cni_plugins.spec.types import (
    DNS,
    Interface,
    IPConfig,
    Result,
    Route,
    expect_dict,
    expect_list,
    parse_cidr,
    parse_ip,
)

SUPPORTED_VERSIONS: tuple[str, ...] = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"
DEFAULT_CONFIG_VERSION = "0.1.0"  # what a config without cniVersion means (libcni)

Version = tuple[int, int, int]


def parse_version(text: object) -> Version:
    """``"1.0.0"`` -> (1, 0, 0); "0.4" is read as 0.4.0 as the Go library does."""
    if not isinstance(text, str) or not text:
        raise DecodingFailure(f'cniVersion: expected a version string like "1.0.0", got {shown(text)}')
    parts = text.split(".")
    if len(parts) > 3 or not all(p.isdigit() for p in parts):
        raise DecodingFailure(f'cniVersion: {shown(text)} is not a version like "1.0.0"')
    nums = [int(p) for p in parts] + [0] * (3 - len(parts))
    return (nums[0], nums[1], nums[2])


def at_least(version: str, minimum: str) -> bool:
    return parse_version(version) >= parse_version(minimum)


def check_supported(version: str, supported: tuple[str, ...] = SUPPORTED_VERSIONS) -> None:
    if version not in supported:
        quoted = " ".join(f'"{v}"' for v in supported)
        raise IncompatibleCNIVersion(
            "incompatible CNI versions",
            f'config is "{version}", plugin supports [{quoted}]; set "cniVersion" to one of them',
        )


def _is_legacy(version: str) -> bool:
    return parse_version(version) < (0, 3, 0)


def _is_1x(version: str) -> bool:
    return parse_version(version) >= (1, 0, 0)


# ---------------------------------------------------------------- reading


def result_from_json(obj: object, where: str = "prevResult") -> Result:
    """Read a result of any supported version.

    The shape decides how it is read (``ip4``/``ip6`` vs ``ips``), not only its
    ``cniVersion``: runtimes pass results on that were written by other plugins.
    """
    d = expect_dict(obj, where)
    version = d.get("cniVersion") or DEFAULT_CONFIG_VERSION
    if not isinstance(version, str):
        raise DecodingFailure(f"{where}.cniVersion: expected a string, got {shown(version)}")
    if ("ip4" in d or "ip6" in d) and "ips" not in d:
        return _from_020(d, version, where)
    interfaces = tuple(
        Interface.from_json(x, f"{where}.interfaces[{i}]")
        for i, x in enumerate(expect_list(d.get("interfaces"), f"{where}.interfaces"))
    )
    ips = tuple(
        IPConfig.from_json(x, f"{where}.ips[{i}]") for i, x in enumerate(expect_list(d.get("ips"), f"{where}.ips"))
    )
    routes = tuple(
        Route.from_json(x, f"{where}.routes[{i}]")
        for i, x in enumerate(expect_list(d.get("routes"), f"{where}.routes"))
    )
    for i, ip in enumerate(ips):
        if ip.interface is not None and not 0 <= ip.interface < len(interfaces):
            raise DecodingFailure(
                f"{where}.ips[{i}].interface: index {ip.interface} "
                f"does not name one of the {len(interfaces)} interfaces"
            )
    return Result(
        cni_version=version,
        interfaces=interfaces,
        ips=ips,
        routes=routes,
        dns=DNS.from_json(d.get("dns"), f"{where}.dns"),
    )


def _from_020(d: dict[str, Any], version: str, where: str) -> Result:
    ips: list[IPConfig] = []
    routes: list[Route] = []
    for family in ("ip4", "ip6"):
        if d.get(family) is None:
            continue
        block = expect_dict(d[family], f"{where}.{family}")
        gw = block.get("gateway")
        ips.append(
            IPConfig(
                address=parse_cidr(block.get("ip"), f"{where}.{family}.ip"),
                gateway=parse_ip(gw, f"{where}.{family}.gateway") if gw else None,
            )
        )
        routes.extend(
            Route.from_json(r, f"{where}.{family}.routes[{i}]")
            for i, r in enumerate(expect_list(block.get("routes"), f"{where}.{family}.routes"))
        )
    return Result(
        cni_version=version, ips=tuple(ips), routes=tuple(routes), dns=DNS.from_json(d.get("dns"), f"{where}.dns")
    )


# ---------------------------------------------------------------- writing


def result_to_json(result: Result, version: str) -> dict[str, Any]:
    """The result in the wire format of ``version`` (key order as the reference prints it)."""
    if _is_legacy(version):
        return _to_020(result, version)
    v1 = _is_1x(version)
    out: dict[str, Any] = {"cniVersion": version}
    if result.interfaces:
        out["interfaces"] = [i.to_json(v1_1_fields=v1) for i in result.interfaces]
    if result.ips:
        ips = []
        for ip in result.ips:
            entry = ip.to_json()
            if not v1:
                entry = {"version": str(ip.version), **entry}
            ips.append(entry)
        out["ips"] = ips
    if result.routes:
        out["routes"] = [r.to_json(v1_1_fields=v1) for r in result.routes]
    out["dns"] = result.dns.to_json()
    return out


def _to_020(result: Result, version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": version}
    for family, fam_version in (("ip4", 4), ("ip6", 6)):
        first = next((ip for ip in result.ips if ip.version == fam_version), None)
        if first is None:
            continue
        block: dict[str, Any] = {"ip": str(first.address)}
        if first.gateway is not None:
            block["gateway"] = str(first.gateway)
        routes = [r.to_json(v1_1_fields=False) for r in result.routes if r.dst.version == fam_version]
        if routes:
            block["routes"] = routes
        out[family] = block
    if "ip4" not in out and "ip6" not in out:
        raise IncompatibleCNIVersion(
            f"cannot convert the result to version {version}: it has no IP address",
            "results before 0.3.0 must carry an ip4 or ip6 address; use cniVersion 0.3.0 or later",
        )
    out["dns"] = result.dns.to_json()
    return out


def convert(obj: object, to_version: str) -> dict[str, Any]:
    """Re-encode a result JSON object in another version (libcni's cache uses this)."""
    return result_to_json(result_from_json(obj, "result"), to_version)
