"""``tap``: a persistent tap device in the container, for a VM or user-space stack to attach to.

As the reference (``plugins/main/tap``, current upstream; Debian's 1.1.1 has no tap): the
tap is made in the container under a temporary name and renamed to CNI_IFNAME; ``mac``
and ``mtu`` are set on it; ``owner``/``group`` say who may attach to it without
CAP_NET_ADMIN; ``multiQueue`` makes it multi-queue; ``bridge`` names a bridge *in the
container* to enslave it to; IPAM is optional (no ``ipam``: the tap is only brought up).
The result is ``interfaces = [tap]`` with every IP at index 0, and the config's ``dns``.

The reference's two ways of making a tap show in its flags, and are kept: with both
``owner`` and ``group`` set it has a vnet header (and, unless multi-queue, packet
information), otherwise neither (``ip tuntap``'s defaults). Fixed here: ``mac`` and
``mtu`` apply in both cases (the reference drops them when owner and group are set), a
failed rename leaves no tap behind, and DEL removes only a tap, never another link that
happens to have CNI_IFNAME.

``selinuxContext`` (``selinuxcontext`` too): with SELinux on, the tap is made by ``ip``
running in that context, as the reference does; with SELinux off it is ignored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from cni_plugins.kernel import netns
from cni_plugins.kernel.netns import NetNSGone
from cni_plugins.protocol import invoke, log, skel
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
from cni_plugins.spec.errors import CNIError, ErrorList, IncompatibleCNIVersion, InvalidNetworkConfig
from cni_plugins.spec.names import interface_name_problem
from cni_plugins.spec.types import DNS, Interface, Result
from cni_plugins.spec.version import at_least
from conf.fields import bool_field, int_field, parse_mac, str_field

MTU_MIN, MTU_MAX = 68, 65535  # what the kernel accepts on a tap
ID_MAX = 2**32 - 2  # uid/gid: 2^32-1 is "no id"


@dataclass(frozen=True, slots=True, kw_only=True)
class TapConf:
    mac: str
    mtu: int  # 0: the kernel's default
    multi_queue: bool
    owner: int | None
    group: int | None
    selinux_context: str
    bridge: str
    ipam_type: str
    dns: DNS

    @classmethod
    def from_json(cls, args: CmdArgs) -> TapConf:
        """Options from stdin; the MAC from, in rising priority, ``mac``, CNI_ARGS ``MAC``,
        ``args.cni.mac`` and ``runtimeConfig.mac``. Touches no kernel state."""
        raw = args.conf.raw
        mac_sources = (
            ("mac", str_field(raw, "mac")),
            ("CNI_ARGS MAC", args.cni_args.get("MAC") or ""),
            ("args.cni.mac", args.conf.args.mac),
            ("runtimeConfig.mac", args.conf.runtime_config.mac),
        )
        where, mac = next(((w, m) for w, m in reversed(mac_sources) if m), ("mac", ""))
        mtu = int_field(raw, "mtu", 0, minimum=0, maximum=MTU_MAX)
        if 0 < mtu < MTU_MIN:
            raise InvalidNetworkConfig(
                f"mtu: {mtu} is out of range, must be 0 (the kernel's default) or between {MTU_MIN} and {MTU_MAX}"
            )
        bridge = str_field(raw, "bridge")
        if bridge and interface_name_problem(bridge):
            raise InvalidNetworkConfig(f"bridge: {bridge!r}: {interface_name_problem(bridge)}")
        return cls(
            mac=parse_mac(mac, where),
            mtu=mtu,
            multi_queue=bool_field(raw, "multiQueue", False),
            owner=_id(raw, "owner"),
            group=_id(raw, "group"),
            selinux_context=str_field(raw, "selinuxContext"),
            bridge=bridge,
            ipam_type=args.conf.ipam_type,
            dns=args.conf.dns,
        )

    @property
    def flags(self) -> int:
        """The IFF_* flags the reference makes its tap with (see the module docstring)."""
        from cni_plugins.kernel import tuntap

        if self.owner is not None and self.group is not None and not self.label:
            mq = tuntap.IFF_MULTI_QUEUE | tuntap.IFF_NO_PI if self.multi_queue else 0
            return tuntap.IFF_VNET_HDR | mq
        return tuntap.IFF_NO_PI | (tuntap.IFF_MULTI_QUEUE if self.multi_queue else 0)

    @property
    def label(self) -> str:
        """The SELinux context to make the tap in: ``selinuxContext`` if SELinux is on."""
        from cni_plugins.kernel.tuntap import selinux_enabled

        return self.selinux_context if self.selinux_context and selinux_enabled() else ""


def _id(raw: dict[str, Any], key: str) -> int | None:
    if raw.get(key) is None:
        return None
    return int_field(raw, key, 0, minimum=0, maximum=ID_MAX)


def cmd_add(args: CmdArgs) -> Result:
    from cni_plugins.kernel.link import random_veth_name
    from cni_plugins.kernel.netlink import LinkExists, Netlink
    from cni_plugins.kernel.tuntap import create_tap

    conf = TapConf.from_json(args)
    if not conf.ipam_type and not at_least(args.conf.cni_version, "0.3.0"):
        raise IncompatibleCNIVersion(  # refuse before creating anything: the result could not be printed
            f"cniVersion {args.conf.cni_version} results must carry an IP address, and without IPAM there is none",
            'use cniVersion 0.3.0 or later for an L2-only tap, or configure "ipam"',
        )
    if conf.selinux_context and not conf.label:
        log.note("selinuxContext ignored: SELinux is not enabled on this host")
    ctr_fd = netns.open_netns(args.netns)
    try:
        with Netlink.open(ctr_fd, label=args.netns) as ctr, contextlib.ExitStack() as undo:
            if ctr.link(args.ifname) is not None:
                raise LinkExists(
                    f"container interface {args.ifname!r} already exists in {args.netns}",
                    "an interface name may be added once per container",
                )
            bridge = None
            if conf.bridge:
                bridge = ctr.link(conf.bridge)
                if bridge is None or bridge.kind != "bridge":
                    what = "no such link" if bridge is None else f"it is a {bridge.kind or 'plain'} link"
                    raise InvalidNetworkConfig(
                        f"bridge: {conf.bridge!r} is not a bridge in {args.netns} ({what})",
                        "the bridge is looked up in the container's namespace; create it there first",
                    )
            tmp_name = random_veth_name()
            with step("create tap"):
                create_tap(ctr_fd, tmp_name, flags=conf.flags, owner=conf.owner, group=conf.group, label=conf.label)
            undo.callback(quietly, f"delete tap {tmp_name}", ctr.delete_link_if_exists, tmp_name)
            tap = ctr.require_link(tmp_name)
            attrs: dict[str, object] = {}
            if conf.mtu:
                attrs["mtu"] = conf.mtu
            if conf.mac:
                attrs["address"] = conf.mac
            with step(f"set {' and '.join(sorted(attrs))} of the tap" if attrs else "rename the tap"):
                if attrs:
                    ctr.set_link(tap.index, **attrs)
                ctr.set_link(tap.index, ifname=args.ifname)
            undo.callback(quietly, f"delete {args.ifname}", ctr.delete_link_if_exists, args.ifname)
            if bridge is not None:
                with step(f"attach {args.ifname} to bridge {bridge.name}"):
                    ctr.set_link(tap.index, master=bridge.index)
            with step(f"set {args.ifname} up"):
                ctr.set_link(tap.index, state="up")
            tap = ctr.require_link(args.ifname)
            result = Result(interfaces=(Interface(name=args.ifname, mac=tap.mac, sandbox=args.netns),))
            if conf.ipam_type:
                ipam = ipam_add(args, conf.ipam_type, undo)
                result = result.replace(
                    ips=tuple(dataclasses.replace(ip, interface=0) for ip in ipam.ips), routes=ipam.routes
                )
                with netns.entered(ctr_fd, label=args.netns):
                    _arp_notify(args.ifname)
                from cni_plugins.kernel.addr import configure_iface

                with step(f"configure {args.ifname}"):
                    configure_iface(ctr, ctr_fd, args.ifname, result)
            undo.pop_all()
    finally:
        os.close(ctr_fd)
    return result.replace(dns=conf.dns)


def _arp_notify(ifname: str) -> None:
    """Announce the address (gratuitous ARP), as the reference does; a failure is ignored."""
    from cni_plugins.kernel import sysctl

    try:
        sysctl.write(sysctl.iface_key(4, ifname, "arp_notify"), "1")
    except CNIError:
        pass


def cmd_del(args: CmdArgs) -> None:
    """IPAM DEL first, then the tap; a missing netns, tap or reservation is success. No
    option of tap's own is read: a DEL does not fail on one it cannot read."""
    ipam_type = args.conf.ipam_type
    errors = ErrorList("tap DEL")
    if ipam_type:
        with errors.step(f"IPAM {ipam_type} DEL"):
            invoke.delegate(ipam_type, "DEL", args.stdin, args.environ, args.path)
    if args.netns:
        from cni_plugins.kernel.netlink import Netlink

        with errors.step(f"delete {args.ifname} in {args.netns}"):
            try:
                with Netlink.open(args.netns) as ctr:
                    link = ctr.link(args.ifname)
                    if link is not None and link.kind != "tun":
                        log.warning(f"DEL: {args.ifname} in {args.netns} is not a tap (it is {link.kind}); left alone")
                    elif link is not None:
                        ctr.delete_link_if_exists(args.ifname)
            except NetNSGone:
                pass
    errors.raise_if_any()


def cmd_check(args: CmdArgs) -> None:
    from cni_plugins.kernel.netlink import Netlink

    conf = TapConf.from_json(args)
    ipam_check(args, conf.ipam_type)
    prev = prev_result_for_check(args, "tap")
    expected = prev_container_interface(prev, args)
    with Netlink.open(args.netns) as ctr:
        link = ctr.link(args.ifname)
        if link is None:
            raise CNIError(f"container interface {args.ifname} not found in {args.netns}")
        if link.kind != "tun":
            raise CNIError(f"container interface {args.ifname} is not a tap (it is {link.kind or 'a plain link'})")
        if expected.mac and expected.mac.lower() != link.mac.lower():
            raise CNIError(f"interface {args.ifname} MAC {link.mac} does not match {expected.mac} in prevResult")
        if conf.bridge:
            bridge = ctr.link(conf.bridge)
            if bridge is None or link.master != bridge.index:
                raise CNIError(f"tap {args.ifname} is not a port of bridge {conf.bridge!r} in {args.netns}")
        from cni_plugins.kernel.addr import ips_for, validate_ips, validate_routes

        validate_ips(ctr, args.ifname, [prev.ips[i] for i in ips_for(prev, args.ifname)])
        validate_routes(ctr, prev.routes)


def cmd_status(args: CmdArgs) -> None:
    to_ipam(args, "STATUS")


def cmd_gc(args: CmdArgs) -> None:
    to_ipam(args, "GC")


PLUGIN = Plugin(
    name="tap",
    add=cmd_add,
    delete=cmd_del,
    check=cmd_check,
    status=cmd_status,
    gc=cmd_gc,
    cni_args=frozenset({"MAC"}),
    about="CNI tap plugin (cni-py)",
)


def main() -> None:
    skel.main(PLUGIN)
