"""``macvlan``: a macvlan link on a host ("master") interface, placed in the container.

As the reference (``plugins/main/macvlan``): the master defaults to the interface of the
default route (looked up in the container when ``linkInContainer``); the link is born in
the container under a temporary name and renamed to CNI_IFNAME; ``arp_notify`` and
``ndisc_notify`` are set; IPAM is optional (no ``ipam``, or ``ipam: {}``: the link is only
brought up). The result is ``interfaces = [macvlan]`` with every IP at index 0, and the
config's ``dns`` replaces whatever IPAM returned, as the reference does.

Note (Linux, not this plugin): the host cannot reach its own macvlan children through the
master; containers on one master reach each other in ``bridge`` mode only.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cni_plugins.kernel import netns, sysctl
from cni_plugins.kernel.netns import NetNSGone
from cni_plugins.protocol import invoke, skel
from cni_plugins.protocol.skel import CmdArgs, Plugin
from cni_plugins.protocol.steps import (
    ipam_add,
    ipam_check,
    prev_container_interface,
    prev_result_for_check,
    quietly,
    step,
    to_ipam,
)
from cni_plugins.spec.errors import (
    CNIError,
    ErrorList,
    IncompatibleCNIVersion,
    InvalidNetworkConfig,
)
from cni_plugins.spec.types import DNS, Interface, Result
from cni_plugins.spec.version import at_least
from conf.fields import bool_field, int_field, parse_mac, str_field

if TYPE_CHECKING:
    from cni_plugins.kernel.netlink import Link, Netlink

MODES = ("bridge", "private", "vepa", "passthru")
U32_MAX = 2**32 - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class MacvlanConf:
    master: str  # '' = the interface of the default route, found at ADD/CHECK time
    mode: str
    mtu: int  # 0 = the kernel's choice (the master's MTU)
    mac: str
    link_in_container: bool
    bcqueuelen: int | None
    ipam_type: str  # '' = L2 only
    dns: DNS

    @classmethod
    def from_json(cls, args: CmdArgs) -> MacvlanConf:
        """Options from stdin; the MAC from, in rising priority, ``mac``, CNI_ARGS ``MAC``,
        ``args.cni.mac`` and ``runtimeConfig.mac``. Touches no kernel state (DEL needs none)."""
        raw = args.conf.raw
        mac_sources = (
            ("mac", str_field(raw, "mac")),
            ("CNI_ARGS MAC", args.cni_args.get("MAC") or ""),
            ("args.cni.mac", args.conf.args.mac),
            ("runtimeConfig.mac", args.conf.runtime_config.mac),
        )
        where, mac = next(((w, m) for w, m in reversed(mac_sources) if m), ("mac", ""))
        bcqueuelen = raw.get("bcqueuelen")
        return cls(
            master=str_field(raw, "master"),
            mode=str_field(raw, "mode", "bridge", choices=MODES) or "bridge",
            mtu=int_field(raw, "mtu", 0, minimum=0),
            mac=parse_mac(mac, where),
            link_in_container=bool_field(raw, "linkInContainer", False),
            bcqueuelen=None if bcqueuelen is None else int_field(raw, "bcqueuelen", 0, minimum=0, maximum=U32_MAX),
            ipam_type=args.conf.ipam_type,
            dns=args.conf.dns,
        )


def cmd_add(args: CmdArgs) -> Result:
    from cni_plugins.kernel.netlink import host_and_container

    conf = MacvlanConf.from_json(args)
    if not conf.ipam_type and not at_least(args.conf.cni_version, "0.3.0"):
        raise IncompatibleCNIVersion(  # refuse before creating anything: the result could not be printed
            f"cniVersion {args.conf.cni_version} results must carry an IP address, and without IPAM there is none",
            'use cniVersion 0.3.0 or later for an L2-only macvlan, or configure "ipam"',
        )
    with host_and_container(args.netns) as (host, ctr, _host_fd, ctr_fd), contextlib.ExitStack() as undo:
        parent = ctr if conf.link_in_container else host
        master = find_master(conf, parent)
        if conf.mtu > master.mtu:
            raise InvalidNetworkConfig(
                f"mtu: {conf.mtu} is out of range, must be within [0, {master.mtu}] (the MTU of master {master.name!r})"
            )
        from cni_plugins.kernel.link import create_macvlan

        with step("create macvlan"):
            link = create_macvlan(
                parent,
                ctr,
                ctr_fd,
                args.ifname,
                master,
                mode=conf.mode,
                mtu=conf.mtu,
                mac=conf.mac,
                bcqueuelen=conf.bcqueuelen,
            )
        undo.callback(quietly, f"delete {args.ifname}", ctr.delete_link_if_exists, args.ifname)
        if conf.bcqueuelen is not None and link.info.get("IFLA_MACVLAN_BC_QUEUE_LEN") is None:
            raise InvalidNetworkConfig(
                "bcqueuelen: this kernel does not support a macvlan broadcast queue length",
                "it needs Linux 5.11 or later; remove the option",
            )
        result = Result(interfaces=(Interface(name=args.ifname, mac=link.mac, sandbox=args.netns),))
        if conf.ipam_type:
            ipam = ipam_add(args, conf.ipam_type, undo)
            ips = tuple(dataclasses.replace(ip, interface=0) for ip in ipam.ips)
            result = result.replace(ips=ips, routes=ipam.routes)
            with netns.entered(ctr_fd, label=args.netns):
                _set_notify_sysctls(args.ifname)
            from cni_plugins.kernel.addr import configure_iface

            with step(f"configure {args.ifname}"):
                configure_iface(ctr, ctr_fd, args.ifname, result)
        else:
            with step(f"set {args.ifname} up"):
                ctr.set_link(link.index, state="up")
        undo.pop_all()
    return result.replace(dns=conf.dns)


def cmd_del(args: CmdArgs) -> None:
    """IPAM DEL first, then the link; a missing netns, link or reservation is success. No
    option of macvlan's own is read: a DEL does not fail on one it cannot read."""
    ipam_type = args.conf.ipam_type
    errors = ErrorList("macvlan DEL")
    if ipam_type:
        with errors.step(f"IPAM {ipam_type} DEL"):
            invoke.delegate(ipam_type, "DEL", args.stdin, args.environ, args.path)
    if args.netns:
        from cni_plugins.kernel.netlink import Netlink

        with errors.step(f"delete {args.ifname} in {args.netns}"):
            try:
                with Netlink.open(args.netns) as ctr:
                    ctr.delete_link_if_exists(args.ifname)
            except NetNSGone:
                pass
    errors.raise_if_any()


def cmd_check(args: CmdArgs) -> None:
    from cni_plugins.kernel.netlink import host_and_container

    conf = MacvlanConf.from_json(args)
    ipam_check(args, conf.ipam_type)
    prev = prev_result_for_check(args, "macvlan")
    expected = prev_container_interface(prev, args)
    with host_and_container(args.netns) as (host, ctr, _host_fd, _fd):
        master = find_master(conf, ctr if conf.link_in_container else host)
        link = ctr.link(args.ifname)
        if link is None:
            raise CNIError(f"container interface {args.ifname} not found in {args.netns}")
        validate_macvlan(link, expected, conf.mode, master)
        from cni_plugins.kernel.addr import ips_for, validate_ips, validate_routes

        validate_ips(ctr, args.ifname, [prev.ips[i] for i in ips_for(prev, args.ifname)])
        validate_routes(ctr, prev.routes)


def validate_macvlan(link: Link, expected: Interface, mode: str, master: Link) -> None:
    name = link.name
    if link.kind != "macvlan":
        raise CNIError(f"container interface {name} is not a macvlan (it is {link.kind or 'a plain link'})")
    actual_mode = link.info.get("IFLA_MACVLAN_MODE")
    if actual_mode != mode:
        raise CNIError(f"container macvlan {name} is in mode {actual_mode}, the config says {mode}")
    if expected.mac and expected.mac.lower() != link.mac.lower():
        raise CNIError(f"interface {name} MAC {link.mac} does not match {expected.mac} in prevResult")
    if link.link is not None and link.link != master.index:
        raise CNIError(f"container macvlan {name} is not on master {master.name!r}")


def cmd_status(args: CmdArgs) -> None:
    to_ipam(args, "STATUS")


def cmd_gc(args: CmdArgs) -> None:
    to_ipam(args, "GC")


def find_master(conf: MacvlanConf, nl: Netlink) -> Link:
    """The master link, by name or (no ``master``) as the default route's interface."""
    from cni_plugins.kernel.link import default_route_link

    if not conf.master:
        link = default_route_link(nl)
        if link is None:
            raise InvalidNetworkConfig(
                f"master: not set, and {nl.label} has no default route to take it from",
                'set "master" to the interface the macvlans should sit on',
            )
        return link
    link = nl.link(conf.master)
    if link is None:
        raise InvalidNetworkConfig(
            f"master: interface {conf.master!r} not found in {nl.label}",
            'set "master" to an existing interface (with "linkInContainer": true it is looked up in the container)',
        )
    return link


def _set_notify_sysctls(ifname: str) -> None:
    """Announce the new address and MAC (gratuitous ARP / unsolicited NA), as the reference does."""
    for family, leaf in ((4, "arp_notify"), (6, "ndisc_notify")):
        try:
            sysctl.write(sysctl.iface_key(family, ifname, leaf), "1")
        except CNIError:
            pass  # IPv6 disabled in the container: nothing to announce


PLUGIN = Plugin(
    name="macvlan",
    add=cmd_add,
    delete=cmd_del,
    check=cmd_check,
    status=cmd_status,
    gc=cmd_gc,
    cni_args=frozenset({"MAC"}),
    about="CNI macvlan plugin (cni-py)",
)


def main() -> None:
    skel.main(PLUGIN)
