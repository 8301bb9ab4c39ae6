"""Links the main plugins create: veth pairs, bridges, macvlans. Over ``netlink.Netlink``.

Kernel quirks and idempotence live here, as in the reference's ``pkg/ip``:
* a veth pair is created *inside the container namespace* with its peer placed in the host
  namespace in the same request, so the container-side name (``eth0``) can never collide
  with a host link; a host-side name clash is retried with a new random name;
* an existing link of the bridge's name is reused only if it is a bridge;
* both ends are re-read after creation for the index and MAC the kernel assigned.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from dataclasses import dataclass

from cni_plugins.kernel import sysctl
from cni_plugins.kernel.netlink import IFF_UP, Link, LinkExists, LinkNotFound, Netlink
from cni_plugins.spec.errors import CNIError, InternalError, InvalidNetworkConfig

VETH_RETRIES = 10


def random_veth_name() -> str:
    return "veth" + os.urandom(4).hex()


@dataclass(frozen=True, slots=True, kw_only=True)
class VethPair:
    host: Link  # as seen from the host namespace
    container: Link  # as seen from the container namespace


def setup_veth(
    container: Netlink,
    host: Netlink,
    host_ns_fd: int,
    ifname: str,
    *,
    mtu: int = 0,
    mac: str = "",
    host_name: str = "",
    up: bool = True,
) -> VethPair:
    """Create ``ifname`` in the container with its peer in the host; both up unless ``up=False``
    (then only the host end is up). ``host_name`` empty: a random ``veth<hex>`` name."""
    for attempt in range(VETH_RETRIES):
        name = host_name or random_veth_name()
        peer: dict[str, object] = {"ifname": name, "net_ns_fd": host_ns_fd}
        attrs: dict[str, object] = {"peer": peer}
        if mtu:
            attrs["mtu"] = mtu
            peer["mtu"] = mtu
        if mac:
            attrs["address"] = mac
        try:
            created = container.add_link(ifname, "veth", **attrs)
            break
        except LinkExists:
            if container.link(ifname) is not None:  # looked at only now: the common path reads nothing before creating
                raise LinkExists(
                    f"container interface {ifname!r} already exists in {container.label}",
                    "an interface name may be added once per container",
                ) from None
            if host_name or attempt == VETH_RETRIES - 1:
                raise
    host_end = host.require_link(name)
    host.set_link(host_end.index, state="up")
    if up:
        container.set_link(created.index, state="up")
        created = dataclasses.replace(created, flags=created.flags | IFF_UP)
    # Not read again: only the flags changed (index, name, MAC and peer stay as created).
    return VethPair(host=dataclasses.replace(host_end, flags=host_end.flags | IFF_UP), container=created)


def ensure_bridge(
    host: Netlink, name: str, *, mtu: int = 0, promisc: bool = False, vlan_filtering: bool = False
) -> Link:
    """The bridge ``name``, created if missing (a concurrent creator is fine), up.

    ``mtu`` applies only when creating it, as in the reference. Call in the host namespace:
    it also turns off IPv6 router advertisements on the bridge (a /proc/sys write).
    """
    link = host.link(name)
    changed = link is None
    if link is None:
        attrs: dict[str, object] = {}
        if mtu:
            attrs["mtu"] = mtu
        if vlan_filtering:
            attrs["br_vlan_filtering"] = 1
        try:
            link = host.add_link(name, "bridge", **attrs)
        except LinkExists:
            link = host.require_link(name)
    if link.kind != "bridge":
        raise InvalidNetworkConfig(
            f"{name!r} already exists but is not a bridge (it is a {link.kind or 'plain'} link)",
            'pick another "bridge" name',
        )
    if vlan_filtering and not link.info.get("IFLA_BR_VLAN_FILTERING"):
        host.set_link(link.index, kind="bridge", br_vlan_filtering=1)
        changed = True
    if promisc and not link.promisc:
        host.set_flags(link.index, promisc=True)
        changed = True
    try:
        sysctl.write(sysctl.iface_key(6, name, "accept_ra"), "0")
    except CNIError:  # IPv6 disabled on this host: nothing to turn off
        pass
    if not link.is_up:
        host.set_link(link.index, state="up")
        changed = True
    return host.require_link(name) if changed else link


BRIDGE_MAX_PORTS = 1024  # the kernel's BR_MAX_PORTS, port numbers included; EXFULL past it


def attach_to_bridge(host: Netlink, port: Link, bridge: Link) -> None:
    try:
        host.set_link(port.index, master=bridge.index)
    except InternalError as err:
        if err.details != f"errno {errno.EXFULL}":
            raise
        raise InternalError(
            f"bridge {bridge.name} is full: the kernel allows at most {BRIDGE_MAX_PORTS - 1} ports on one bridge",
            "spread the containers over more networks, each with its own bridge",
        ) from None


MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8}
IFF_LOOPBACK = 0x8


def default_route_link(nl: Netlink) -> Link | None:
    """The link of the first default route in the main table (IPv4 first), as the reference picks it."""
    for route in nl.routes():
        if route.dst.prefixlen == 0 and route.oif is not None:
            return nl.link_by_index(route.oif)
    return None


def create_macvlan(
    parent_ns: Netlink,
    container: Netlink,
    container_fd: int,
    ifname: str,
    master: Link,
    *,
    mode: str,
    mtu: int = 0,
    mac: str = "",
    bcqueuelen: int | None = None,
) -> Link:
    """A macvlan on ``master`` (a link of ``parent_ns``) named ``ifname`` in the container, down.

    It is created under a random name, born directly in the container namespace, then
    renamed: creating it as ``eth0`` could collide with a host link of that name (the
    reference's workaround for the same kernel behaviour). If the rename fails it is deleted.
    """
    if container.link(ifname) is not None:
        raise LinkExists(
            f"container interface {ifname!r} already exists in {container.label}",
            "an interface name may be added once per container",
        )
    if master.flags & IFF_LOOPBACK:
        raise InvalidNetworkConfig(
            f"master {master.name!r} is a loopback interface; a macvlan needs an Ethernet master",
            'set "master" to an Ethernet interface',
        )
    attrs: dict[str, object] = {"link": master.index, "macvlan_mode": MACVLAN_MODES[mode]}
    if parent_ns is not container:
        attrs["net_ns_fd"] = container_fd
    if mtu:
        attrs["mtu"] = mtu
    if mac:
        attrs["address"] = mac
    if bcqueuelen is not None:
        attrs["macvlan_bc_queue_len"] = bcqueuelen
    tmp_name = "mv" + os.urandom(5).hex()
    try:
        parent_ns.create_link(tmp_name, "macvlan", **attrs)
    except CNIError as err:
        raise err.with_context(f"create macvlan on master {master.name!r}") from None
    created = container.require_link(tmp_name)
    try:
        container.set_link(created.index, ifname=ifname)
    except CNIError as err:
        container.delete_link_if_exists(tmp_name)
        raise err.with_context(f"rename macvlan to {ifname!r}") from None
    return container.require_link(ifname)


DEFAULT_VLAN = 1


def configure_bridge_port(
    host: Netlink,
    port: Link,
    *,
    hairpin: bool = False,
    isolated: bool = False,
    vlan: int = 0,
    trunk: tuple[int, ...] = (),
    preserve_default_vlan: bool = True,
) -> None:
    """Options of ``port``, already attached to a bridge, as the reference's setupVeth does:
    hairpin (set either way), the ``isolated`` flag when asked, then VLANs (the bridge must
    filter VLANs): VLAN 1 is removed unless preserved; ``vlan`` (or VLAN 1 for a trunk
    without one) becomes the untagged PVID; ``trunk`` VIDs are added tagged."""
    attrs: dict[str, object] = {"mode": int(hairpin)}  # IFLA_BRPORT_MODE: hairpin
    if isolated:
        attrs["isolated"] = 1
    host.set_bridge_port(port.index, **attrs)
    if not (vlan or trunk):
        return
    if not preserve_default_vlan:
        try:
            host.bridge_vlan("del", port.index, DEFAULT_VLAN)
        except LinkNotFound:
            pass  # no default VLAN on this port
    native = vlan or DEFAULT_VLAN
    host.bridge_vlan("add", port.index, native, pvid=True, untagged=True)
    for vid in trunk:
        if vid != native:
            host.bridge_vlan("add", port.index, vid)
