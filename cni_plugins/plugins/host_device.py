"""``host-device``: lend a link of the host to the container, and give it back on DEL.

As the reference (``plugins/main/host-device``, current upstream): the link is named by
``device``, ``hwaddr``, ``kernelpath`` or ``pciBusID`` (``runtimeConfig.deviceID``, the
``deviceID`` capability, overrides ``pciBusID`` and may name an auxiliary-bus device),
the first one set; it moves into the container as CNI_IFNAME, up, with its host name in
its alias (``cni_plugins.kernel.hostdev``); IPAM is optional. A PCI device bound to a
userspace (DPDK) driver has no link: nothing moves, and only IPAM runs. The result is
``interfaces = [link]`` with every IP at index 0, and, with IPAM, the config's ``dns``.

DEL releases the IPAM reservation, then gives the link back under its host name, down,
alias cleared. Beyond the reference, DEL succeeds when there is nothing to give back
(the link is gone, or is not one host-device lent), and when the container's namespace
is gone it looks in the host for the link the kernel returned from it (a physical link,
named as in the container or ``dev<N>``, its alias kept) and renames it back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cni_plugins.kernel import hostdev
from cni_plugins.kernel.hostdev import Selector
from cni_plugins.kernel.netns import NetNSGone
from cni_plugins.protocol import invoke, log, skel
from cni_plugins.protocol.skel import CmdArgs, Plugin
from cni_plugins.protocol.steps import (
    ipam_add,
    ipam_check,
    options_for_del,
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
from conf.fields import parse_mac, str_field

if TYPE_CHECKING:
    from cni_plugins.kernel.netlink import Netlink

SELECTORS = '"device", "hwaddr", "kernelpath" or "pciBusID"'


@dataclass(frozen=True, slots=True, kw_only=True)
class HostDeviceConf:
    selector: Selector  # only the one that applies is set
    ipam_type: str
    dns: DNS
    pci_key: str = "pciBusID"  # the key that named selector.pci, for errors

    @classmethod
    def from_json(cls, args: CmdArgs) -> HostDeviceConf:
        """Options from stdin; checks their form, not the host (DEL needs none of it)."""
        raw = args.conf.raw
        device = str_field(raw, "device")
        if device and interface_name_problem(device):
            raise InvalidNetworkConfig(f"device: {device!r}: {interface_name_problem(device)}")
        hwaddr = parse_mac(str_field(raw, "hwaddr"), "hwaddr")
        kernelpath = _kernelpath(str_field(raw, "kernelpath"))
        pci = _bus_id(str_field(raw, "pciBusID"), "pciBusID")
        device_id = _bus_id(str_field(args.conf.runtime_config.raw, "deviceID", "", "runtimeConfig"), "deviceID")
        if device:
            sel = Selector(device=device)
        elif hwaddr:
            sel = Selector(hwaddr=hwaddr)
        elif kernelpath:
            sel = Selector(kernelpath=kernelpath)
        elif device_id:  # the capability overrides pciBusID, as in the reference
            on_aux = not os.path.isdir(hostdev.pci_dir(device_id)) and os.path.isdir(hostdev.aux_dir(device_id))
            sel = Selector(aux=device_id) if on_aux else Selector(pci=device_id)
        elif pci:
            sel = Selector(pci=pci)
        else:
            raise InvalidNetworkConfig(
                f"no host device named: specify either {SELECTORS}",
                'e.g. "device": "eth1", or "hwaddr": "02:11:22:33:44:55"',
            )
        pci_key = "runtimeConfig.deviceID" if device_id and sel.pci else "pciBusID"
        return cls(selector=sel, ipam_type=args.conf.ipam_type, dns=args.conf.dns, pci_key=pci_key)

    @classmethod
    def unknown(cls, args: CmdArgs) -> HostDeviceConf:
        """A DEL's options when they cannot be read: no selector (the container's link is still
        found by CNI_IFNAME and given back by its alias)."""
        return cls(selector=Selector(), ipam_type=args.conf.ipam_type, dns=DNS())


def _kernelpath(value: str) -> str:
    if not value:
        return ""
    normal = os.path.normpath(value)
    if not value.startswith("/") or not normal.startswith("/sys/devices/") or "\0" in value:
        raise InvalidNetworkConfig(
            f"kernelpath: {value!r} must be an absolute path under /sys/devices/",
            "give the sysfs path of the device, e.g. /sys/devices/pci0000:00/0000:00:19.0",
        )
    return normal


def _bus_id(value: str, key: str) -> str:
    """A PCI address or auxiliary-bus id: one name under /sys/bus/*/devices."""
    if value and ("/" in value or "\0" in value or value in (".", "..")):
        raise InvalidNetworkConfig(
            f"{key}: {value!r} is not a device id", "give a PCI address such as 0000:03:00.1, or a device name"
        )
    return value


def _dpdk(args: CmdArgs, sel: Selector) -> bool:
    """True when the PCI device is bound to a userspace driver (no link to move)."""
    if not sel.pci:
        return False
    where = hostdev.pci_dir(sel.pci)
    if not os.path.isdir(where):
        key = "runtimeConfig.deviceID" if str_field(args.conf.runtime_config.raw, "deviceID") else "pciBusID"
        raise InvalidNetworkConfig(
            f"{key}: no PCI device {sel.pci!r} on this host ({where} does not exist)",
            "give the address `lspci -D` shows, e.g. 0000:03:00.1",
        )
    driver = hostdev.dpdk_driver(sel.pci)
    if driver:
        log.note(f"{sel.pci} is bound to {driver}: nothing to move, only IPAM runs")
    return bool(driver)


def cmd_add(args: CmdArgs) -> Result:
    from cni_plugins.kernel.netlink import host_and_container

    conf = HostDeviceConf.from_json(args)
    if not conf.ipam_type and not at_least(args.conf.cni_version, "0.3.0"):
        raise IncompatibleCNIVersion(  # refuse before moving anything: the result could not be printed
            f"cniVersion {args.conf.cni_version} results must carry an IP address, and without IPAM there is none",
            'use cniVersion 0.3.0 or later for host-device without IPAM, or configure "ipam"',
        )
    if _dpdk(args, conf.selector):
        if not conf.ipam_type:
            return Result()
        with contextlib.ExitStack() as undo:
            ipam = ipam_add(args, conf.ipam_type, undo)
            undo.pop_all()
        return Result(ips=ipam.ips, routes=ipam.routes, dns=conf.dns)
    with host_and_container(args.netns) as (host, ctr, host_fd, ctr_fd), contextlib.ExitStack() as undo:
        with step("find the host device"):
            link, original = hostdev.find(host, conf.selector, pci_key=conf.pci_key)
        with step(f"move {link.name} into the container as {args.ifname}"):
            lent = hostdev.move_in(host, host_fd, ctr, ctr_fd, link, original, args.ifname)
        undo.callback(
            quietly,
            f"give {args.ifname} back to the host",
            _move_out,
            ctr,
            ctr_fd,
            host,
            host_fd,
            args.ifname,
            up=link.is_up,
        )
        result = Result(interfaces=(Interface(name=args.ifname, mac=lent.mac, sandbox=args.netns),))
        if conf.ipam_type:
            ipam = ipam_add(args, conf.ipam_type, undo)
            ips = tuple(dataclasses.replace(ip, interface=0) for ip in ipam.ips)
            result = result.replace(ips=ips, routes=ipam.routes, dns=conf.dns)
            from cni_plugins.kernel.addr import configure_iface

            with step(f"configure {args.ifname}"):
                configure_iface(ctr, ctr_fd, args.ifname, result)
        undo.pop_all()
    return result


def _move_out(ctr: Netlink, ctr_fd: int, host: Netlink, host_fd: int, ifname: str, *, up: bool) -> None:
    link = ctr.link(ifname)
    if link is not None and link.alias:
        hostdev.move_out(ctr, ctr_fd, host, host_fd, link, up=up)


def cmd_del(args: CmdArgs) -> None:
    """IPAM DEL, then the link back to the host (from the container, or as the kernel returned
    it from a dead one). Nothing left to give back is success."""
    from cni_plugins.kernel.netlink import Netlink, host_and_container

    conf = options_for_del("host-device", lambda: HostDeviceConf.from_json(args), lambda: HostDeviceConf.unknown(args))
    errors = ErrorList("host-device DEL")
    if conf.ipam_type:
        with errors.step(f"IPAM {conf.ipam_type} DEL"):
            invoke.delegate(conf.ipam_type, "DEL", args.stdin, args.environ, args.path)
    try:
        if _dpdk(args, conf.selector):
            errors.raise_if_any()
            return
    except CNIError as err:
        log.warning(f"DEL: {err.msg}")  # the device is gone: there is nothing to give back either
    in_container = False
    if args.netns:
        try:
            with host_and_container(args.netns) as (host, ctr, host_fd, ctr_fd):
                link = ctr.link(args.ifname)
                in_container = link is not None
                if link is not None and not link.alias:
                    log.warning(
                        f"DEL: {args.ifname} in {args.netns} was not lent by host-device (no alias); left alone"
                    )
                elif link is not None:
                    with errors.step(f"give {args.ifname} back to the host as {link.alias!r}"):
                        hostdev.move_out(ctr, ctr_fd, host, host_fd, link)
        except NetNSGone:
            pass
    if not in_container and not conf.selector.empty:
        with errors.step("look for the link in the host"), Netlink.open(None) as host:
            for link in hostdev.returned_links(host, conf.selector, args.ifname):
                with errors.step(f"rename {link.name} back to {link.alias!r}"):
                    hostdev.give_back(host, link)
    errors.raise_if_any()


def cmd_check(args: CmdArgs) -> None:
    from cni_plugins.kernel.netlink import Netlink

    conf = HostDeviceConf.from_json(args)
    ipam_check(args, conf.ipam_type)
    prev = prev_result_for_check(args, "host-device")
    if _dpdk(args, conf.selector):
        return
    expected = prev_container_interface(prev, args)
    with Netlink.open(args.netns) as ctr:
        link = ctr.link(args.ifname)
        if link is None:
            raise CNIError(f"container interface {args.ifname} not found in {args.netns}")
        if expected.mac and expected.mac.lower() != link.mac.lower():
            raise CNIError(f"interface {args.ifname} MAC {link.mac} does not match {expected.mac} in prevResult")
        if not link.alias:
            raise CNIError(
                f"container interface {args.ifname} has no alias: its host name is lost, DEL cannot give it back",
                "set it with `ip link set <ifname> alias <host name>` in the container",
            )
        from cni_plugins.kernel.addr import ips_for, validate_ips, validate_routes

        validate_ips(ctr, args.ifname, [prev.ips[i] for i in ips_for(prev, args.ifname)])
        validate_routes(ctr, prev.routes)


def cmd_status(args: CmdArgs) -> None:
    to_ipam(args, "STATUS")


def cmd_gc(args: CmdArgs) -> None:
    to_ipam(args, "GC")


PLUGIN = Plugin(
    name="host-device",
    add=cmd_add,
    delete=cmd_del,
    check=cmd_check,
    status=cmd_status,
    gc=cmd_gc,
    about="CNI host-device plugin (cni-py)",
)


def main() -> None:
    skel.main(PLUGIN)
