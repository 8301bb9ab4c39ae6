"""A node's kernel side of a pod network, in the namespace the agent runs in (the node's).

``routed``: one route per remote subnet via the remote node's address on the underlay
(``ip route replace 10.244.2.0/24 via 192.168.0.12``); the nodes must share an L2 segment.

``vxlan``: one device per node and network (``cnipy.<VNI>``: ``local`` the node's address,
``dev`` the underlay, ``dstport`` the config's, ``nolearning``, a MAC that survives
restarts, the subnet's first address as a /32, no IPv6, MTU = underlay - 50), and per
remote node a permanent neighbour entry, a permanent FDB entry and an onlink route
(``cni_plugins.kernel.overlay``).

``sync`` makes the kernel match the leases it is given, whatever was there before: routes
into the cluster CIDR other than the node's own subnet are the agent's (a left node's
route is removed even if the agent was down when it left), and so is everything on the
vxlan device. Nothing here is removed when the agent stops: pods keep their connectivity
while it restarts; ``teardown`` (``cni-plugins node leave``) removes it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from cni_plugins.kernel import overlay, sysctl
from cni_plugins.kernel.netlink import Link, Netlink, RouteEntry
from cni_plugins.node.network import ROUTED, VXLAN, VXLAN_OVERHEAD, Lease, NetworkConfig
from cni_plugins.protocol import log
from cni_plugins.spec.errors import CNIError, InternalError


def vxlan_name(vni: int) -> str:
    return f"cnipy.{vni}"


@dataclass(frozen=True, slots=True)
class Underlay:
    """The node's link to the other nodes and its address there."""

    ifname: str
    index: int
    mtu: int
    address: ipaddress.IPv4Interface


def find_underlay(nl: Netlink, public_ip: ipaddress.IPv4Address | None, ifname: str = "") -> Underlay:
    """The link holding ``public_ip`` (or named ``ifname``; else the default route's), with its
    IPv4 address."""
    links: dict[int, Link] = {}
    candidates = []
    for addr in nl.addresses(family=socket.AF_INET):
        link = links.get(addr.index) or nl.link_by_index(addr.index)
        if link is None:
            continue
        links[addr.index] = link
        if isinstance(addr.address, ipaddress.IPv4Interface):
            candidates.append((link, addr.address))
    if not ifname and public_ip is None:
        default = next((r for r in nl.routes(socket.AF_INET) if r.dst.prefixlen == 0 and r.oif), None)
        if default is None:
            raise InternalError("no default route to tell the node's address by", "give --public-ip or --iface")
        ifname = next((link.name for link, _ in candidates if link.index == default.oif), "")
    for link, address in candidates:
        if (public_ip is None or address.ip == public_ip) and (not ifname or link.name == ifname):
            return Underlay(link.name, link.index, link.mtu, address)
    where = f" on {ifname}" if ifname else ""
    raise InternalError(f"no IPv4 address {public_ip or ''}{where} on this node", "give the node's address and link")


class Dataplane:
    def __init__(self, config: NetworkConfig, underlay: Underlay, own: Lease, device: str = "") -> None:
        self.config = config
        self.underlay = underlay
        self.own = own
        self.device = device or vxlan_name(config.vni)

    @property
    def pod_mtu(self) -> int:
        return self.underlay.mtu - VXLAN_OVERHEAD if self.config.backend == VXLAN else self.underlay.mtu

    # ------------------------------------------------------------ setup

    def setup(self) -> None:
        """Forwarding on; in vxlan mode the device, as configured (an existing one is kept when
        it matches, so pods keep working across restarts, else made again)."""
        sysctl.enable_forwarding(4)
        if self.config.backend != VXLAN:
            return
        with Netlink.open(None, label="node") as nl:
            link = nl.link(self.device)
            if link is not None and not self._matches(link):
                log.note(f"{self.device}: settings differ from the network's, making it again")
                nl.delete_link_if_exists(self.device)
                link = None
            if link is None:
                nl.create_link(
                    self.device,
                    "vxlan",
                    vxlan_id=self.config.vni,
                    vxlan_local=str(self.underlay.address.ip),
                    vxlan_link=self.underlay.index,
                    vxlan_port=self.config.port,
                    vxlan_learning=0,
                    address=self.own.vtep_mac,
                    mtu=self.pod_mtu,
                )
                link = nl.require_link(self.device)
                sysctl.write(sysctl.iface_key(6, self.device, "disable_ipv6"), "1")  # no RS/ND flooded to every node
            gw = ipaddress.IPv4Interface(f"{self.own.gateway}/32")  # /32: no broadcast route on the overlay
            for addr in nl.addresses(index=link.index, family=socket.AF_INET):
                if addr.address != gw:
                    nl.del_address(link.index, addr.address)  # a subnet this node had before
            if all(a.address != gw for a in nl.addresses(index=link.index, family=socket.AF_INET)):
                nl.add_address(link.index, gw)
            if link.mtu != self.pod_mtu:
                nl.set_link(link.index, mtu=self.pod_mtu)
            if not link.is_up:
                nl.set_link(link.index, state="up")

    def _matches(self, link: Link) -> bool:
        info = link.info
        try:
            return (
                link.kind == "vxlan"
                and info.get("IFLA_VXLAN_ID") == self.config.vni
                and info.get("IFLA_VXLAN_LOCAL") == str(self.underlay.address.ip)
                and info.get("IFLA_VXLAN_LINK") == self.underlay.index
                and info.get("IFLA_VXLAN_PORT") == self.config.port
                and not info.get("IFLA_VXLAN_LEARNING")
                and link.mac == self.own.vtep_mac
            )
        except (KeyError, TypeError):
            return False

    # ------------------------------------------------------------ peers

    def sync(self, peers: dict[ipaddress.IPv4Network, Lease]) -> list[str]:
        """Make routes (and vxlan entries) match ``peers`` (every lease, this node's included);
        what was changed, for the log. A peer that cannot be programmed is logged and skipped."""
        remote = {
            s: p
            for s, p in peers.items()
            if s != self.own.subnet and p.node != self.own.node and s.subnet_of(self.config.network)
        }
        usable = {}
        for subnet, peer in remote.items():
            problem = self._problem(peer)
            if problem:
                log.warning(f"peer {peer.node} ({subnet}): {problem}: not reachable from this node")
            else:
                usable[subnet] = peer
        changes: list[str] = []
        with Netlink.open(None, label="node") as nl, overlay.Rtnl() as rtnl:
            if self.config.backend == VXLAN:
                link = nl.link(self.device)
                if link is None:
                    raise InternalError(f"{self.device} is gone", "the agent makes it again on restart")
                self._sync_vxlan(rtnl, link.index, usable, changes)
                self._sync_routes(nl, rtnl, usable, link.index, changes)
            else:
                self._sync_routes(nl, rtnl, usable, self.underlay.index, changes)
        return changes

    def _problem(self, peer: Lease) -> str:
        if peer.backend != self.config.backend:
            return f"backend {peer.backend!r}, this node's is {self.config.backend!r}"
        if self.config.backend == VXLAN and (peer.vni != self.config.vni or not peer.vtep_mac):
            return f"VNI {peer.vni} without a VTEP MAC or not {self.config.vni}"
        if self.config.backend == ROUTED and peer.public_ip not in self.underlay.address.network:
            return f"{peer.public_ip} is not on this node's segment {self.underlay.address.network} (use vxlan)"
        return ""

    def _sync_vxlan(
        self, rtnl: overlay.Rtnl, index: int, peers: dict[ipaddress.IPv4Network, Lease], changes: list[str]
    ) -> None:
        want_neigh = {p.gateway: p.vtep_mac for p in peers.values()}
        want_fdb = {p.vtep_mac: p.public_ip for p in peers.values()}
        for n in rtnl.neighbours(index):
            if isinstance(n.dst, ipaddress.IPv4Address) and n.permanent and want_neigh.get(n.dst) != n.mac:
                rtnl.delete_neighbour(index, n.dst)
                changes.append(f"-neigh {n.dst}")
        have_fdb = {}
        for n in rtnl.neighbours(index, overlay.AF_BRIDGE):
            if n.mac == "00:00:00:00:00:00" or not n.permanent:
                continue
            if want_fdb.get(n.mac) != n.dst:
                rtnl.delete_fdb(index, n.mac, n.dst)
                changes.append(f"-fdb {n.mac}")
            else:
                have_fdb[n.mac] = n.dst
        have_neigh = {n.dst: n.mac for n in rtnl.neighbours(index) if n.permanent}
        for peer in peers.values():
            if have_neigh.get(peer.gateway) != peer.vtep_mac:
                rtnl.replace_neighbour(index, peer.gateway, peer.vtep_mac)
                changes.append(f"+neigh {peer.gateway}")
            if have_fdb.get(peer.vtep_mac) != peer.public_ip:
                rtnl.replace_fdb(index, peer.vtep_mac, peer.public_ip)
                changes.append(f"+fdb {peer.vtep_mac} dst {peer.public_ip}")

    def _sync_routes(
        self,
        nl: Netlink,
        rtnl: overlay.Rtnl,
        peers: dict[ipaddress.IPv4Network, Lease],
        oif: int,
        changes: list[str],
    ) -> None:
        vxlan = self.config.backend == VXLAN
        want = {s: (p.gateway if vxlan else p.public_ip) for s, p in peers.items()}
        have: dict[ipaddress.IPv4Network, RouteEntry] = {}
        for route in nl.routes(socket.AF_INET):
            dst = route.dst
            if not isinstance(dst, ipaddress.IPv4Network) or not dst.subnet_of(self.config.network):
                continue
            if dst == self.own.subnet or dst == self.config.network or route.gw is None:
                continue  # the node's own subnet (its bridge) and anything not routed via a gateway
            if want.get(dst) == route.gw and route.oif == oif:
                have[dst] = route
                continue
            try:
                nl.del_route(dst, gw=route.gw, oif=route.oif)
                changes.append(f"-route {dst} via {route.gw}")
            except CNIError as err:
                log.warning(f"delete route {dst}: {err.msg}")
        for subnet, gw in want.items():
            if subnet in have:
                continue
            try:
                if vxlan:
                    rtnl.replace_onlink_route(subnet, gw, oif)
                else:
                    nl.add_route(subnet, gw=gw, oif=oif, replace=True)
                changes.append(f"+route {subnet} via {gw}")
            except CNIError as err:
                log.warning(f"route {subnet} via {gw}: {err.msg}")

    # ------------------------------------------------------------ leave

    def teardown(self) -> None:
        """Remove what ``setup`` and ``sync`` made (the node leaves the network): the routes,
        and in vxlan mode the device (its neighbour and FDB entries go with it)."""
        with Netlink.open(None, label="node") as nl, overlay.Rtnl() as rtnl:
            if self.config.backend == VXLAN:
                nl.delete_link_if_exists(self.device)
            self._sync_routes(nl, rtnl, {}, self.underlay.index, [])
