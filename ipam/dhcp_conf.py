"""The ``dhcp`` IPAM options, read the same way by the plugin (to refuse a bad config before
anything is asked of the daemon) and by the daemon (which also serves the reference's
plugin, and so must not trust what it is sent).

As the reference (``plugins/ipam/dhcp``): ``daemonSocketPath`` (default
``/run/cni/dhcp.sock``); ``provide``: options sent to the server, each a literal ``value``
or the value of a CNI_ARGS key named by ``fromArg`` (which wins); ``request``: option codes
for the Parameter Request List, after which routers (3) and subnet-mask (1) are asked for
unless an entry says ``skipDefault``; ``priority``: the metric of every route returned.
An option is a decimal code 0-255 or one of the names in ``OPTION_NAMES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cni_plugins.spec.errors import InvalidNetworkConfig
from conf.fields import bool_field, int_field, list_field, str_field

DEFAULT_SOCKET = "/run/cni/dhcp.sock"
OPTION_NAMES = {
    "dhcp-client-identifier": 61,
    "subnet-mask": 1,
    "routers": 3,
    "host-name": 12,
    "user-class": 77,
    "vendor-class-identifier": 60,
}
DEFAULT_REQUEST = (3, 1)  # routers, subnet-mask: an address is useless without them
MAX_CLIENT_ID = 254  # option 61 holds at most 255 bytes: a type byte and this many


@dataclass(frozen=True, slots=True, kw_only=True)
class DhcpConf:
    socket_path: str = DEFAULT_SOCKET
    provide: tuple[tuple[int, bytes], ...] = ()  # (option code, value) in config order, one per code
    request: tuple[int, ...] = DEFAULT_REQUEST
    priority: int = 0


def client_id(container_id: str, network: str, ifname: str) -> str:
    """What identifies an attachment to the DHCP server (option 61 after a 0 type byte), as
    the reference makes it; cut to what the option can hold."""
    raw = f"{container_id}/{network}/{ifname}".encode()
    return raw[:MAX_CLIENT_ID].decode("utf-8", "ignore")


def socket_path(ipam: dict[str, Any]) -> str:
    return str_field(ipam, "daemonSocketPath", "", "ipam") or DEFAULT_SOCKET


def option_code(value: object, where: str) -> int:
    if isinstance(value, str):
        if value in OPTION_NAMES:
            return OPTION_NAMES[value]
        if value.isdecimal() and int(value) <= 255:
            return int(value)
    names = ", ".join(OPTION_NAMES)
    raise InvalidNetworkConfig(
        f"{where}: {value!r} is not a DHCP option",
        f"give the option's decimal code (0-255) as a string, or one of {names}",
    )


def cni_args_map(text: str) -> dict[str, str]:
    """CNI_ARGS as the reference's daemon reads it: ``;``-separated, split at the first ``=``,
    nothing refused (a pair without ``=`` is skipped)."""
    out = {}
    for pair in text.split(";"):
        key, sep, value = pair.partition("=")
        if sep:
            out[key] = value
    return out


def parse(ipam: dict[str, Any], cni_args: str) -> DhcpConf:
    """The options of an ``ipam`` object, with ``fromArg`` values looked up in ``cni_args``."""
    args = cni_args_map(cni_args)
    provide: dict[int, bytes] = {}
    for i, entry in enumerate(list_field(ipam, "provide", "ipam")):
        where = f"ipam.provide[{i}]"
        if not isinstance(entry, dict):
            raise InvalidNetworkConfig(f"{where}: expected a JSON object, got {entry!r}")
        code = option_code(entry.get("option"), f"{where}.option")
        value = str_field(entry, "value", "", where)
        if value:
            if len(value.encode()) > 255:
                raise InvalidNetworkConfig(
                    f"{where}.value: {len(value.encode())} bytes is too long", "a DHCP option holds at most 255 bytes"
                )
            provide[code] = value.encode()
        from_arg = str_field(entry, "fromArg", "", where)
        if from_arg in args:
            if len(args[from_arg].encode()) > 255:
                raise InvalidNetworkConfig(
                    f"{where}.fromArg: the value of CNI_ARGS {from_arg} is too long",
                    "a DHCP option holds at most 255 bytes",
                )
            provide[code] = args[from_arg].encode()
    request: list[int] = []
    skip_default = False
    for i, entry in enumerate(list_field(ipam, "request", "ipam")):
        where = f"ipam.request[{i}]"
        if not isinstance(entry, dict):
            raise InvalidNetworkConfig(f"{where}: expected a JSON object, got {entry!r}")
        skip_default = bool_field(entry, "skipDefault", False, where) or skip_default
        if entry.get("option") in (None, ""):
            continue  # as upstream: an entry may only say skipDefault
        code = option_code(entry.get("option"), f"{where}.option")
        if code not in request:
            request.append(code)
    if not skip_default:
        request += [code for code in DEFAULT_REQUEST if code not in request]
    return DhcpConf(
        socket_path=socket_path(ipam),
        provide=tuple(provide.items()),
        request=tuple(request),
        priority=int_field(ipam, "priority", 0, "ipam", minimum=0),
    )
