"""``static`` IPAM: the addresses, routes and DNS written in the config (or passed by the runtime).

Address sources, as the reference (``plugins/ipam/static/main.go``) resolves them:

1. the ``ips`` capability (``runtimeConfig.ips``) replaces every other source;
2. else ``args.cni.ips`` replaces ``ipam.addresses``;
3. else ``CNI_ARGS IP=`` (comma-separated CIDRs) is added after ``ipam.addresses``, and
   ``GATEWAY=`` (comma-separated) sets the gateway of those CNI_ARGS addresses that contain it;
4. else ``ipam.addresses`` alone.

Nothing is allocated, so DEL is a no-op; CHECK compares the addresses with prevResult.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, replace

from cni_plugins.protocol import skel
from cni_plugins.protocol.skel import CmdArgs, Plugin
from cni_plugins.spec.errors import CNIError, DecodingFailure, InvalidNetworkConfig, shown
from cni_plugins.spec.types import DNS, IPAddress, IPConfig, Result, Route, parse_cidr
from cni_plugins.spec.version import at_least
from conf.fields import list_field
from ipam.config import parse_dns, parse_routes


@dataclass(frozen=True, slots=True, kw_only=True)
class StaticConf:
    addresses: tuple[IPConfig, ...]
    routes: tuple[Route, ...] = ()
    dns: DNS = DNS()

    @classmethod
    def from_args(cls, args: CmdArgs) -> StaticConf:
        conf = args.conf
        ipam = conf.ipam
        if not ipam:
            raise InvalidNetworkConfig("IPAM config missing 'ipam' key", 'add an "ipam" object with "type": "static"')
        if conf.runtime_config.ips:
            addresses = [_cidr(text, f"runtimeConfig.ips[{i}]") for i, text in enumerate(conf.runtime_config.ips)]
        elif conf.args.ips:
            addresses = [_cidr(text, f"args.cni.ips[{i}]") for i, text in enumerate(conf.args.ips)]
        else:
            addresses = [
                _address(raw, f"ipam.addresses[{i}]") for i, raw in enumerate(list_field(ipam, "addresses", "ipam"))
            ]
            addresses += _from_cni_args(args)
        for family in (4, 6):
            if not at_least(conf.cni_version, "0.3.0") and sum(1 for a in addresses if a.version == family) > 1:
                raise InvalidNetworkConfig(
                    f"CNI version {conf.cni_version} does not support more than 1 address per family",
                    f"give at most one IPv{family} address, or use cniVersion 0.3.0 or later",
                )
        return cls(addresses=tuple(addresses), routes=parse_routes(ipam, "ipam"), dns=parse_dns(ipam, "ipam"))


def _cidr(text: str, where: str) -> IPConfig:
    try:
        return IPConfig(address=parse_cidr(text.strip(), where))
    except DecodingFailure as exc:
        raise InvalidNetworkConfig(exc.msg, "an address is expected in CIDR form, like 10.10.0.1/24") from None


def _ip(text: str, where: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise InvalidNetworkConfig(f"{where}: {shown(text)} is not an IP address") from None


def _address(raw: object, where: str) -> IPConfig:
    if not isinstance(raw, dict):
        raise InvalidNetworkConfig(
            f"{where}: expected a JSON object, got {shown(raw)}",
            'an address is {"address": "10.10.0.1/24", "gateway": "10.10.0.254"}',
        )
    text = raw.get("address")
    if not isinstance(text, str):
        raise InvalidNetworkConfig(f"{where}.address: expected a CIDR string, got {shown(text)}")
    ipc = _cidr(text, f"{where}.address")
    gw = raw.get("gateway")
    if gw is None or gw == "":
        return ipc
    if not isinstance(gw, str):
        raise InvalidNetworkConfig(f"{where}.gateway: expected an IP address string, got {shown(gw)}")
    return replace(ipc, gateway=_ip(gw, f"{where}.gateway"))


def _from_cni_args(args: CmdArgs) -> list[IPConfig]:
    env_ip = args.cni_args.get("IP") or ""
    out = [_cidr(item, "CNI_ARGS IP") for item in env_ip.split(",") if item.strip()]
    for item in (args.cni_args.get("GATEWAY") or "").split(","):
        if not item.strip():
            continue
        gw = _ip(item, "CNI_ARGS GATEWAY")
        out = [replace(a, gateway=gw) if a.version == gw.version and gw in a.address.network else a for a in out]
    return out


def cmd_add(args: CmdArgs) -> Result:
    conf = StaticConf.from_args(args)
    return Result(ips=conf.addresses, routes=conf.routes, dns=conf.dns)


def cmd_del(args: CmdArgs) -> None:
    """Nothing was allocated, so nothing is released."""


def cmd_check(args: CmdArgs) -> None:
    conf = StaticConf.from_args(args)
    prev = args.conf.prev_result
    if prev is None:
        raise InvalidNetworkConfig(
            "static: required prevResult missing", "CHECK needs the cached ADD result as prevResult"
        )
    for want in conf.addresses:
        got = next((ip for ip in prev.ips if ip.address.ip == want.address.ip), None)
        if got is None:
            raise CNIError(
                f"static: address {want.address} is not in prevResult for interface {args.ifname}",
                "ADD the attachment again",
            )
        if want.gateway is not None and got.gateway != want.gateway:
            raise CNIError(
                f"static: Failed to match addr {want.address.ip} on interface {args.ifname}",
                f"gateway is {got.gateway}, config says {want.gateway}",
            )


PLUGIN = Plugin(
    name="static",
    add=cmd_add,
    delete=cmd_del,
    check=cmd_check,
    cni_args=frozenset({"IP", "GATEWAY"}),
    about="CNI static IPAM plugin (cni-py)",
)


def main() -> None:
    skel.main(PLUGIN)
