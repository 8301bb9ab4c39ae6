"""A host link lent to a container (``host-device``): finding it, moving it in, giving it back.

As the reference's current ``host-device``: the link's host name is kept in its alias
(IFLA_IFALIAS), the only record there is, so that whoever gives it back (us or the
reference) knows its name. Every rename happens in a temporary namespace of its own,
never in the host (where a rename races udev and network managers, and the name
``CNI_IFNAME`` may be taken) nor in the container (where the host name may be taken).
Each move is undone when a later step fails, so a failed ADD or DEL leaves the link where
it was, under the name it had.

A container namespace that dies with a lent link in it: virtual links (veth, macvlan,
tap) die with it; a physical one is moved to the initial namespace by the kernel, under
its container name, or ``dev<ifindex>`` if that name is taken there, its alias kept.
``returned`` finds such a link, and ``give_back`` renames it to its alias.

Selectors that read sysfs (``kernelpath``, PCI and auxiliary-bus ids) see the links of the
namespace whose sysfs is mounted at ``/sys`` in this mount namespace: the runtime's, as
the runtime execs the plugin (the warm helper joins the caller's mount namespace).
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cni_plugins.kernel import netns
from cni_plugins.kernel.netlink import IFF_UP, Link, LinkExists, Netlink
from cni_plugins.protocol import log
from cni_plugins.spec.errors import CNIError, InternalError, InvalidNetworkConfig
from cni_plugins.spec.names import interface_name_problem

SYSFS = "/sys"
DPDK_DRIVERS = ("vfio-pci", "uio_pci_generic", "igb_uio")  # userspace drivers: the link is not a netdev
IFF_LOOPBACK = 0x8
_KERNEL_FALLBACK_NAME = re.compile(r"dev\d+")  # what the kernel names a returned link whose name is taken


@dataclass(frozen=True, slots=True, kw_only=True)
class Selector:
    """Which host link: the first non-empty of these, in this order (the reference's)."""

    device: str = ""
    hwaddr: str = ""  # lower-case, colon-separated
    kernelpath: str = ""
    pci: str = ""  # ``pciBusID``, or ``runtimeConfig.deviceID`` when that names a PCI device
    aux: str = ""  # ``runtimeConfig.deviceID`` naming an auxiliary-bus device

    @property
    def empty(self) -> bool:
        return not (self.device or self.hwaddr or self.kernelpath or self.pci or self.aux)


def pci_dir(pci: str, sysfs: str = SYSFS) -> str:
    return os.path.join(sysfs, "bus", "pci", "devices", pci)


def aux_dir(aux: str, sysfs: str = SYSFS) -> str:
    return os.path.join(sysfs, "bus", "auxiliary", "devices", aux)


def dpdk_driver(pci: str, sysfs: str = SYSFS) -> str:
    """The userspace (DPDK) driver the PCI device is bound to, or '' (a kernel driver, or none)."""
    driver = os.path.basename(os.path.realpath(os.path.join(pci_dir(pci, sysfs), "driver")))
    return driver if driver in DPDK_DRIVERS else ""


def sysfs_names(sel: Selector, sysfs: str = SYSFS) -> list[str]:
    """The link names sysfs lists for a ``kernelpath``, PCI or auxiliary-bus selector."""
    if sel.kernelpath:
        where = os.path.join(sel.kernelpath, "net")
    elif sel.pci:
        where = os.path.join(pci_dir(sel.pci, sysfs), "net")
        if not os.path.isdir(where):  # a virtio NIC: <pci>/virtio<N>/net
            base = pci_dir(sel.pci, sysfs)
            try:
                virtio = sorted(e for e in os.listdir(base) if e.startswith("virtio"))
            except OSError:
                virtio = []
            where = next(
                (os.path.join(base, v, "net") for v in virtio if os.path.isdir(os.path.join(base, v, "net"))), where
            )
    elif sel.aux:
        where = os.path.join(aux_dir(sel.aux, sysfs), "net")
    else:
        return []
    try:
        return sorted(os.listdir(where))
    except OSError:
        return []


def find(host: Netlink, sel: Selector, sysfs: str = SYSFS, *, pci_key: str = "pciBusID") -> tuple[Link, str]:
    """The host link ``sel`` names, and the name to give it back under: its own, or for a
    ``device`` the kernel returned from a dead namespace (found by its alias), that device.
    ``pci_key``: the key that named ``sel.pci``, for the error."""
    if sel.device:
        link = host.link(sel.device)
        original = sel.device
        if link is None:
            link = next((c for c in host.links() if c.alias == sel.device and c.name != sel.device), None)
        if link is None:
            raise InvalidNetworkConfig(
                f"device: no link named {sel.device!r} in {host.label}",
                "name a link of the host; a link lent to a container is back only after that container's DEL",
            )
        return _movable(link, f"device {sel.device!r}"), original
    links = host.links()
    if sel.hwaddr:
        for link in links:
            if link.mac.lower() == sel.hwaddr:
                return _movable(link, f"hwaddr {sel.hwaddr}"), link.name
        raise InvalidNetworkConfig(
            f"hwaddr: no link with MAC address {sel.hwaddr} in {host.label}", "give the MAC of a link of the host"
        )
    by_name = {link.name: link for link in links if not link.flags & IFF_LOOPBACK}
    for name in sysfs_names(sel, sysfs):  # the first in name order, as the reference reads the directory
        if name in by_name:
            return by_name[name], name
    if sel.kernelpath:
        raise InvalidNetworkConfig(
            f"kernelpath: no network device under {os.path.join(sel.kernelpath, 'net')} in {host.label}",
            "give the sysfs path of the device (e.g. /sys/devices/pci0000:00/0000:00:19.0), not of its net/ entry",
        )
    which = f"{pci_key} {sel.pci!r}" if sel.pci else f"runtimeConfig.deviceID {sel.aux!r}"
    raise InvalidNetworkConfig(
        f"{which}: the device has no network interface in {host.label}",
        "its driver exposes no netdev, or it is lent to a container already",
    )


def _movable(link: Link, what: str) -> Link:
    if link.flags & IFF_LOOPBACK:
        raise InvalidNetworkConfig(
            f"{what}: {link.name} is a loopback interface, which cannot leave its namespace",
            "name another link of the host",
        )
    return link


def returned(link: Link, ifname: str) -> bool:
    """True for a host link as the kernel leaves a lent link whose namespace died: named as
    in the container (``ifname``) or ``dev<N>``, its host name still in its alias."""
    if not link.alias or link.alias == link.name or interface_name_problem(link.alias):
        return False
    return link.name == ifname or bool(_KERNEL_FALLBACK_NAME.fullmatch(link.name))


def returned_links(host: Netlink, sel: Selector, ifname: str, sysfs: str = SYSFS) -> list[Link]:
    """Host links that the kernel returned from a dead container namespace and that ``sel``
    names: by alias (``device``), MAC (``hwaddr``) or sysfs entry (the others)."""
    names = set(sysfs_names(sel, sysfs)) if not (sel.device or sel.hwaddr) else set()
    return [
        link
        for link in host.links()
        if returned(link, ifname)
        and (
            (sel.device and link.alias == sel.device)
            or (sel.hwaddr and link.mac.lower() == sel.hwaddr)
            or (not (sel.device or sel.hwaddr) and link.name in names)
        )
    ]


@contextmanager
def _temporary(label: str) -> Iterator[tuple[Netlink, int]]:
    with netns.temporary() as fd, Netlink.open(fd, label=label) as nl:
        yield nl, fd


def move_in(host: Netlink, host_fd: int, ctr: Netlink, ctr_fd: int, link: Link, original: str, ifname: str) -> Link:
    """Lend the host ``link`` to the container as ``ifname``, up, its host name ``original``
    in its alias. On failure the link is back in the host as it was (name, alias, up/down)."""
    if ctr.link(ifname) is not None:
        raise LinkExists(
            f"container interface {ifname!r} already exists in {ctr.label}",
            "an interface name may be added once per container",
        )
    was_up = bool(link.flags & IFF_UP)
    with _temporary(f"a temporary namespace for {link.name}") as (tmp, tmp_fd):
        if was_up:
            host.set_link(link.index, state="down")
        try:
            host.set_link(link.index, net_ns_fd=tmp_fd)
        except CNIError as err:
            if was_up:
                _quietly(f"set {link.name} up again", host.set_link, link.index, state="up")
            if err.details == f"errno {errno.EINVAL}":
                raise InvalidNetworkConfig(
                    f"{link.name} cannot leave its namespace (the kernel refuses to move it: {err.msg})",
                    "a bridge and some other virtual links are bound to their namespace; name another link",
                ) from None
            raise
        moved = tmp.require_link(link.name)
        try:
            tmp.set_link(moved.index, ifalias=original)
            if ifname != moved.name:
                tmp.set_link(moved.index, ifname=ifname)
            tmp.set_link(moved.index, net_ns_fd=ctr_fd)
        except CNIError as err:
            _restore(tmp, moved.index, link.name, link.alias, host_fd, host, was_up)
            raise err.with_context(f"move {link.name} into {ctr.label} as {ifname}") from None
    lent = ctr.require_link(ifname)
    ctr.set_link(lent.index, state="up")
    return ctr.require_link(ifname)


def move_out(ctr: Netlink, ctr_fd: int, host: Netlink, host_fd: int, link: Link, *, up: bool = False) -> None:
    """Give the container's ``link`` back to the host under the name in its alias, alias
    cleared, down unless ``up`` (a DEL cannot know its state before the ADD: nothing records
    it; an ADD that failed does). On failure it stays in the container as it was."""
    original = link.alias
    if host.link(original) is not None:
        raise InternalError(
            f"cannot give {link.name} back to the host as {original!r}: the host has a link of that name now",
            f"rename or remove the host's {original!r}, then DEL again",
        )
    ctr.set_link(link.index, state="down")
    with _temporary(f"a temporary namespace for {link.name}") as (tmp, tmp_fd):
        try:
            ctr.set_link(link.index, net_ns_fd=tmp_fd)
        except CNIError:
            _quietly(f"set {link.name} up again", ctr.set_link, link.index, state="up")
            raise
        moved = tmp.require_link(link.name)
        try:
            tmp.set_link(moved.index, ifname=original)
            tmp.set_link(moved.index, ifalias="")
            tmp.set_link(moved.index, net_ns_fd=host_fd)
        except CNIError as err:
            _restore(tmp, moved.index, link.name, original, ctr_fd, ctr, True)
            raise err.with_context(f"give {link.name} back to the host as {original!r}") from None
    if up:
        host.set_link(host.require_link(original).index, state="up")


def give_back(host: Netlink, link: Link) -> None:
    """Rename a link the kernel returned from a dead namespace to its alias; clear the alias."""
    original = link.alias
    if host.link(original) is not None:
        raise InternalError(
            f"cannot rename {link.name} back to {original!r}: the host has a link of that name now",
            f"rename or remove the host's {original!r}, then DEL again",
        )
    if link.flags & IFF_UP:
        host.set_link(link.index, state="down")
    host.set_link(link.index, ifname=original)
    host.set_link(link.index, ifalias="")


def _restore(tmp: Netlink, index: int, name: str, alias: str, home_fd: int, home: Netlink, up: bool) -> None:
    """Undo a move through ``tmp``: the link's name and alias as they were, back home."""
    _quietly(f"rename it back to {name!r}", tmp.set_link, index, ifname=name)
    _quietly("restore its alias", tmp.set_link, index, ifalias=alias)
    try:
        tmp.set_link(index, net_ns_fd=home_fd)
    except CNIError as err:
        log.warning(f"rollback: cannot move {name} back to {home.label}; it is lost with the namespace: {err.msg}")
        return
    if up:
        back = home.link(name)
        if back is not None:
            _quietly(f"set {name} up again", home.set_link, back.index, state="up")


def _quietly(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except CNIError as err:
        log.warning(f"rollback: {what}: {err.msg}")
