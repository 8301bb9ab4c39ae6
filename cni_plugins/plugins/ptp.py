"""``veth`` (installed also as the reference's ``ptp``): a veth pair, no bridge; the host routes.

As the reference (``plugins/main/ptp``):
* container: the IPAM address with its real prefix, then the kernel's connected route is
  deleted and replaced by a link-scope host route to the gateway plus a route to the subnet
  via the gateway (both with ``src`` = the container address): everything goes through the
  host, including traffic to neighbours in the same subnet. IPAM's routes are added too.
* host: the veth gets the gateway address as /32 (/128) (every ptp veth on a host carries the
  same one) and a host route to the container address; forwarding is turned on.
* ``ipMasq``: masquerade of traffic leaving the subnet, by nftables (``firewall.rules.masq``) also
  when ``ipMasqBackend`` says iptables (a note on stderr says so).
* result: ``interfaces = [host veth, container veth]``, IPs at index 1; the config's ``dns``
  replaces IPAM's when any of its fields is set.

Difference: the gateway address on the host veth skips DAD (the reference waits for it): it
is the same address on every veth and only the container is on the other end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cni_plugins.kernel import sysctl
from cni_plugins.kernel.netlink import RT_SCOPE_HOST, RT_SCOPE_LINK
from cni_plugins.kernel.netns import NetNSGone
from cni_plugins.plugins import nft_state
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
)
from cni_plugins.spec.errors import CNIError, ErrorList, InvalidNetworkConfig
from cni_plugins.spec.types import (
    DNS,
    Interface,
    IPAddress,
    IPConfig,
    IPInterface,
    IPNetwork,
    Result,
)
from conf.fields import bool_field, int_field, str_field

if TYPE_CHECKING:
    from cni_plugins.kernel.netlink import Link, Netlink

MASQ_BACKENDS = ("iptables", "nftables")


@dataclass(frozen=True, slots=True, kw_only=True)
class VethConf:
    ip_masq: bool
    ip_masq_backend: str  # '' = automatic; served by nftables whatever it says
    mtu: int  # 0 = the kernel's default
    ipam_type: str  # required by ADD, CHECK and STATUS; DEL without one has nothing to release
    dns: DNS | None  # None: keep IPAM's

    def require_ipam(self) -> str:
        if not self.ipam_type:
            raise InvalidNetworkConfig(
                "ipam: an IPAM plugin is required (ipam.type)",
                'ptp routes container addresses: give e.g. "ipam": {"type": "host-local", ...}',
            )
        return self.ipam_type

    @classmethod
    def from_json(cls, args: CmdArgs) -> VethConf:
        raw = args.conf.raw
        dns = raw.get("dns")
        dns_set = isinstance(dns, dict) and (
            any(dns.get(k) is not None for k in ("nameservers", "search", "options")) or bool(dns.get("domain"))
        )
        return cls(
            ip_masq=bool_field(raw, "ipMasq", False),
            ip_masq_backend=str_field(raw, "ipMasqBackend", "", choices=("", *MASQ_BACKENDS)),
            mtu=int_field(raw, "mtu", 0, minimum=0),
            ipam_type=args.conf.ipam_type,
            dns=args.conf.dns if dns_set else None,
        )


def cmd_add(args: CmdArgs) -> Result:
    from cni_plugins.kernel.link import setup_veth
    from cni_plugins.kernel.netlink import host_and_container

    conf = VethConf.from_json(args)
    conf.require_ipam()
    if conf.ip_masq and conf.ip_masq_backend == "iptables":
        log.note("ipMasqBackend: iptables asked for; masquerade is served by nftables (table inet cni_py_masq)")
    with host_and_container(args.netns) as (host, ctr, host_fd, ctr_fd), contextlib.ExitStack() as undo:
        ipam = ipam_add(args, conf.ipam_type, undo)
        missing_gw = [str(ip.address) for ip in ipam.ips if ip.gateway is None]
        if missing_gw:
            raise InvalidNetworkConfig(
                f"IPAM {conf.ipam_type} gave no gateway for {', '.join(missing_gw)}",
                "ptp routes through the gateway address: configure one in ipam",
            )
        with step("enable forwarding"):
            for version in sorted({ip.version for ip in ipam.ips}):
                sysctl.enable_forwarding(version)
        with step("veth"):
            pair = setup_veth(ctr, host, host_fd, args.ifname, mtu=conf.mtu, up=False)
            undo.callback(quietly, "delete veth", ctr.delete_link_if_exists, args.ifname)
            _no_router_ads(pair.host.name)
        result = Result(
            interfaces=(
                Interface(name=pair.host.name, mac=pair.host.mac),
                Interface(name=args.ifname, mac=pair.container.mac, sandbox=args.netns),
            ),
            ips=tuple(dataclasses.replace(ip, interface=1) for ip in ipam.ips),
            routes=ipam.routes,
            dns=ipam.dns,
        )
        with step(f"configure {args.ifname}"):
            setup_container_side(ctr, ctr_fd, args.ifname, result)
        with step(f"configure host veth {pair.host.name}"):
            setup_host_side(host, pair.host, result.ips)
        if conf.ip_masq:
            from firewall.rules.masq import setup_masq, teardown_masq

            nft, owner, addresses = nft_state.host_nft(), nft_state.owner(args), [ip.address for ip in result.ips]
            undo.callback(quietly, "masquerade", teardown_masq, nft, owner, addresses)  # leaves others' entries alone
            with step("ipMasq"):
                setup_masq(nft, owner, addresses)
        undo.pop_all()
    return result if conf.dns is None else result.replace(dns=conf.dns)


def setup_container_side(ctr: Netlink, ctr_fd: int, ifname: str, result: Result) -> None:
    """Addresses and IPAM routes, then the routing trick: no connected route, only the
    gateway on the link and the subnet via the gateway (veth has no IFF_POINTOPOINT). One
    netlink batch, in this order."""
    from cni_plugins.kernel.addr import configure_iface

    with ctr.batch():
        link = configure_iface(ctr, ctr_fd, ifname, result)
        for ip in result.ips:
            assert ip.gateway is not None  # checked in cmd_add
            subnet = ip.address.network
            ctr.del_route(subnet, oif=link.index)
            # exists_ok: the same gateway as another address of this family
            ctr.add_route(_host_net(ip.gateway), oif=link.index, scope=RT_SCOPE_LINK, src=ip.address.ip, exists_ok=True)
            ctr.add_route(subnet, gw=ip.gateway, oif=link.index, src=ip.address.ip)


def setup_host_side(host: Netlink, veth: Link, ips: tuple[IPConfig, ...]) -> None:
    """The gateway as /32 (/128) on the host veth, and a host route to each container address
    (one netlink batch)."""
    with host.batch():
        for ip in ips:
            assert ip.gateway is not None
            # exists_ok: two addresses of one family share a gateway
            host.add_address(veth.index, _host_iface(ip.gateway), nodad=True, exists_ok=True)
            scope = RT_SCOPE_HOST if ip.version == 4 else None
            host.add_route(_host_net(ip.address.ip), oif=veth.index, scope=scope, exists_ok=True)
        host.set_link(veth.index, state="up")


def cmd_del(args: CmdArgs) -> None:
    """IPAM, the container veth (its host end and routes go with it), masquerade; each step
    runs even if another failed; a missing netns, link or reservation is fine."""
    conf = options_for_del(
        "ptp",
        lambda: VethConf.from_json(args),
        lambda: VethConf(ip_masq=True, ip_masq_backend="", mtu=0, ipam_type=args.conf.ipam_type, dns=None),
    )
    errors = ErrorList("ptp DEL")
    if conf.ipam_type:
        with errors.step(f"IPAM {conf.ipam_type} DEL"):
            invoke.delegate(conf.ipam_type, "DEL", args.stdin, args.environ, args.path)
    seen: list[IPInterface] | None = None
    if args.netns:
        with errors.step(f"delete {args.ifname} in {args.netns}"):
            # the addresses, for masquerade, only when prevResult does not give them
            from cni_plugins.kernel.addr import given_addresses

            read = conf.ip_masq and not given_addresses(args.conf.prev_result, args.ifname)
            seen = _delete_container_link(args, read_addresses=read)
    if conf.ip_masq:
        from cni_plugins.kernel.addr import ips_for
        from firewall.rules.masq import teardown_masq

        prev = args.conf.prev_result
        addresses = [prev.ips[i].address for i in ips_for(prev, args.ifname)] if prev is not None else []
        with errors.step("masquerade"):
            teardown_masq(nft_state.host_nft(), nft_state.owner(args), addresses or seen)
    errors.raise_if_any()


def _delete_container_link(args: CmdArgs, *, read_addresses: bool) -> list[IPInterface] | None:
    from cni_plugins.kernel.netlink import Netlink

    try:
        with Netlink.open(args.netns) as ctr:
            link = ctr.link(args.ifname)
            if link is None:
                return None
            addresses = [a.address for a in ctr.addresses(index=link.index) if a.scope == 0] if read_addresses else []
            ctr.delete_link_if_exists(args.ifname)
            return addresses or None
    except NetNSGone:
        return None


def cmd_check(args: CmdArgs) -> None:
    from cni_plugins.kernel.addr import ips_for, validate_ips, validate_routes
    from cni_plugins.kernel.netlink import host_and_container

    conf = VethConf.from_json(args)
    ipam_check(args, conf.require_ipam())
    prev = prev_result_for_check(args, "ptp")
    expected = prev_container_interface(prev, args)
    ips = [prev.ips[i] for i in ips_for(prev, args.ifname)]
    with host_and_container(args.netns) as (host, ctr, _hfd, _fd):
        link = ctr.link(args.ifname)
        if link is None:
            raise CNIError(f"container interface {args.ifname} not found in {args.netns}")
        if link.kind != "veth":
            raise CNIError(f"container interface {args.ifname} is not a veth (it is {link.kind or 'a plain link'})")
        if expected.mac and expected.mac.lower() != link.mac.lower():
            raise CNIError(f"interface {args.ifname} MAC {link.mac} does not match {expected.mac} in prevResult")
        validate_ips(ctr, args.ifname, ips)
        validate_routes(ctr, prev.routes)
        peer = host.link_by_index(link.link) if link.link else None
        host_routes = {r.dst for r in host.routes() if peer is not None and r.oif == peer.index}
        for ip in ips:
            if _host_net(ip.address.ip) not in host_routes:
                raise CNIError(f"host route to {ip.address.ip} via the host veth is missing", "DEL and ADD again")
    if conf.ip_masq and ips:
        from firewall.rules.masq import validate_masq

        problems = validate_masq(nft_state.host_nft(), nft_state.owner(args), [ip.address for ip in ips])
        if problems:
            raise CNIError(f"ipMasq: {'; '.join(problems)}")


def cmd_status(args: CmdArgs) -> None:
    invoke.delegate(VethConf.from_json(args).require_ipam(), "STATUS", args.stdin, args.environ, args.path)


def cmd_gc(args: CmdArgs) -> None:
    """GC to IPAM; masquerade entries of attachments not in ``cni.dev/valid-attachments`` go
    (nothing of ours is touched when the list is absent)."""
    errors = ErrorList("ptp GC")
    if args.conf.ipam_type:
        with errors.step(f"IPAM {args.conf.ipam_type} GC"):
            invoke.delegate(args.conf.ipam_type, "GC", args.stdin, args.environ, args.path)
    owners = nft_state.valid_owners(args)
    if owners is not None and bool_field(args.conf.raw, "ipMasq", False):
        from firewall.rules.masq import gc_masq

        with errors.step("masquerade GC"):
            gc_masq(nft_state.host_nft(), args.conf.name, owners)
    errors.raise_if_any()


# ---------------------------------------------------------------- small pieces


def _host_net(ip: IPAddress) -> IPNetwork:
    return ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")


def _host_iface(ip: IPAddress) -> IPInterface:
    return ipaddress.ip_interface(f"{ip}/{ip.max_prefixlen}")


def _no_router_ads(host_veth: str) -> None:
    """The host end never takes router advertisements (the reference's SetupVeth)."""
    try:
        sysctl.write(sysctl.iface_key(6, host_veth, "accept_ra"), "0")
    except CNIError:
        pass  # IPv6 disabled on the host


PLUGIN = Plugin(
    name="ptp",
    add=cmd_add,
    delete=cmd_del,
    check=cmd_check,
    status=cmd_status,
    gc=cmd_gc,
    about="CNI ptp (veth point-to-point) plugin (cni-py)",
)


def main() -> None:
    skel.main(PLUGIN)
