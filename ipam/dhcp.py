"""``dhcp`` IPAM: the address comes from a DHCP server on the container's network, through the
dhcp daemon (``cni-plugins dhcp daemon``), which holds the lease and renews it.

The plugin only asks the daemon, over the reference's wire protocol (``ipam.dhcp_rpc``), so
it works with the reference's daemon as well as ours:

- ADD: ``DHCP.Allocate``; the result has the address, the gateway (first router) and the
  routes, no interfaces and no DNS, as the reference's.
- CHECK: ``DHCP.Check`` (ours: the lease held, no DHCP traffic); the lease's address must
  be in prevResult. The reference's daemon has no Check (its plugin calls Allocate, which
  in v1.1.1 starts a second lease): that it answers is all that is checked then.
- DEL: ``DHCP.Release``. No daemon listening means no lease is held (leases live in the
  daemon's memory only), so that is success, as is a DEL with an unreadable config: it
  asks the daemon at the default socket.
- STATUS (1.1.0): the daemon must answer, else code 50. GC (1.1.0): ``DHCP.GC`` releases
  the network's leases that ``cni.dev/valid-attachments`` omits (the reference's daemon
  has no GC: nothing to do then).

The options (``provide``, ``request``, ``priority``) are checked here before the daemon is
asked (code 7); the daemon checks them again for plugins that do not.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from cni_plugins.protocol import cancel, log, skel
from cni_plugins.protocol.skel import CmdArgs, Plugin
from cni_plugins.spec.errors import (
    CNIError,
    DelegateError,
    InternalError,
    InvalidNetworkConfig,
    PluginNotAvailable,
)
from cni_plugins.spec.types import Result
from ipam import dhcp_conf, dhcp_rpc
from ipam.gob import GobError

ALLOCATE_TIMEOUT = 240.0  # above the daemon's own bound on an acquisition (-resendtimeout, 208 s by default)
RELEASE_TIMEOUT = 60.0
STATUS_TIMEOUT = 5.0


def _ipam(args: CmdArgs) -> dict[str, Any]:
    if not args.conf.ipam:
        raise InvalidNetworkConfig(
            "IPAM config missing 'ipam' key", 'add "ipam": {"type": "dhcp"} (and "daemonSocketPath" if not the default)'
        )
    return args.conf.ipam


def _cmd_args(args: CmdArgs) -> dict[str, Any]:
    # The daemon may run in another directory: the namespace path goes absolute, as the reference sends it.
    netns = os.path.abspath(args.netns) if args.netns else ""
    return dhcp_rpc.cmd_args(
        args.container_id,
        netns,
        args.ifname,
        args.environ.get("CNI_ARGS", ""),
        args.environ.get("CNI_PATH", ""),
        args.stdin,
    )


def _call(
    path: str, method: str, args: CmdArgs, timeout: float, poll: Callable[[], None] | None = None
) -> dict[str, Any]:
    """The daemon's reply; its errors as CNI errors, worded as the reference's plugin words them."""
    try:
        return dhcp_rpc.call(path, method, _cmd_args(args), timeout=timeout, poll=poll)
    except dhcp_rpc.Unreachable as exc:
        raise InternalError(
            f"error dialing DHCP daemon: {exc}",
            f"start it (cni-plugins dhcp daemon -socketpath {path}, or its systemd units) "
            'or point "ipam.daemonSocketPath" at its socket',
        ) from None
    except dhcp_rpc.CallFailed as exc:
        if exc.unknown_method:
            raise
        raise DelegateError(exc.code, f"error calling {method}: {exc.text}") from None
    except dhcp_rpc.RpcError as exc:
        raise InternalError(f"error calling {method}: {exc}") from None


def _result(reply: dict[str, Any], method: str) -> Result:
    try:
        result = dhcp_rpc.result_from_gob(reply)
    except GobError as exc:
        raise InternalError(f"error calling {method}: the daemon's result cannot be read: {exc}") from None
    if not result.ips:
        raise InternalError(f"error calling {method}: the daemon returned no address")
    return result


def cmd_add(args: CmdArgs) -> Result:
    ipam = _ipam(args)
    options = dhcp_conf.parse(ipam, args.environ.get("CNI_ARGS", ""))
    # A caller that goes away (the helper cancels) stops the wait; its DEL releases what was acquired.
    reply = _call(options.socket_path, "DHCP.Allocate", args, ALLOCATE_TIMEOUT, poll=cancel.check)
    return _result(reply, "DHCP.Allocate")


def cmd_check(args: CmdArgs) -> None:
    ipam = _ipam(args)
    options = dhcp_conf.parse(ipam, args.environ.get("CNI_ARGS", ""))
    try:
        reply = _call(options.socket_path, "DHCP.Check", args, RELEASE_TIMEOUT)
    except dhcp_rpc.CallFailed:
        # The reference's daemon has no Check, and its v1.1.1 Allocate would start a second
        # lease for the attachment: that the daemon answered is all that can be checked.
        log.warning(f"CHECK: the DHCP daemon at {options.socket_path} cannot tell which lease it holds")
        return
    held = _result(reply, "DHCP.Check")
    prev = args.conf.prev_result
    if prev is None:
        return
    wanted = {ip.address for ip in held.ips}
    if not wanted & {ip.address for ip in prev.ips}:
        raise CNIError(
            f"dhcp: the lease holds {', '.join(sorted(map(str, wanted)))}, not an address of prevResult "
            f"({', '.join(str(ip.address) for ip in prev.ips) or 'none'})",
            "ADD the attachment again",
        )


def _del_socket(args: CmdArgs) -> str:
    """The daemon's socket for a DEL, which never fails on its own config: the default when
    the config cannot say."""
    try:
        return dhcp_conf.socket_path(args.conf.ipam or {})
    except CNIError as err:
        log.warning(f"DEL: ignoring {err.msg}; asking the daemon at {dhcp_conf.DEFAULT_SOCKET}")
        return dhcp_conf.DEFAULT_SOCKET


def _call_if_running(path: str, method: str, args: CmdArgs, timeout: float) -> None:
    try:
        dhcp_rpc.call(path, method, _cmd_args(args), timeout=timeout)
    except dhcp_rpc.Unreachable as exc:
        log.warning(f"{method}: no DHCP daemon listens ({exc}): it holds no lease, nothing to release")
    except dhcp_rpc.CallFailed as exc:
        if exc.unknown_method:
            log.warning(f"{method}: the DHCP daemon at {path} has no such method: nothing done")
            return
        raise DelegateError(exc.code, f"error calling {method}: {exc.text}") from None
    except dhcp_rpc.RpcError as exc:
        raise InternalError(f"error calling {method}: {exc}") from None


def cmd_del(args: CmdArgs) -> None:
    _call_if_running(_del_socket(args), "DHCP.Release", args, RELEASE_TIMEOUT)


def cmd_status(args: CmdArgs) -> None:
    path = dhcp_conf.socket_path(_ipam(args))
    try:
        # No method: the daemon is up if it takes the connection and answers the handshake.
        dhcp_rpc.call(path, "DHCP.Status", _cmd_args(args), timeout=STATUS_TIMEOUT, connect_timeout=STATUS_TIMEOUT)
    except dhcp_rpc.CallFailed:
        pass  # it answered (the reference's daemon has no Status)
    except dhcp_rpc.RpcError as exc:
        raise PluginNotAvailable(
            f"the DHCP daemon is not available: {exc}",
            f"start it (cni-plugins dhcp daemon -socketpath {path}, or its systemd units)",
        ) from None


def cmd_gc(args: CmdArgs) -> None:
    if args.conf.valid_attachments is None:
        return  # nothing says which attachments are valid: nothing is collected
    _call_if_running(_del_socket(args), "DHCP.GC", args, RELEASE_TIMEOUT)


PLUGIN = Plugin(
    name="dhcp",
    add=cmd_add,
    delete=cmd_del,
    check=cmd_check,
    status=cmd_status,
    gc=cmd_gc,
    about="CNI dhcp IPAM plugin (cni-py); the daemon: cni-plugins dhcp daemon",
)


def main() -> None:
    skel.main(PLUGIN)
