"""``bridge``: containers on a Linux bridge in the host namespace, one veth pair each.

The reference's options, names and defaults (``plugins/main/bridge``). ADD is a recipe of
named steps, each undone if a later one fails: bridge, veth, bridge port (with its options;
after the container's routes when DAD is off, see ``cmd_add``), MAC spoof check, IPAM,
container addresses, gateway on the bridge and forwarding, masquerade, routes, port state.
The result is ``interfaces = [bridge, host veth, container veth]`` (plus the
``<bridge>.<vlan>`` gateway link with ``vlan`` + ``isGateway``), every IP at index 2.

Masquerade is always served by nftables (``firewall.rules.masq``; ``ipMasqBackend: iptables``
gets a note), the MAC spoof check by ``firewall.rules.spoofchk``; both are per-container map
elements in tables of our own, found by owner (network, container ID, ifname) on DEL.
The bridge, its gateway address and the shared base chains stay when containers leave,
as in the reference (deleting an idle bridge races with a concurrent ADD).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cni_plugins.kernel import netns, sysctl
from cni_plugins.kernel.netns import NetNSGone
from cni_plugins.plugins import nft_state
from cni_plugins.protocol import invoke, log, skel
from cni_plugins.protocol.skel import CmdArgs, Plugin
from cni_plugins.protocol.steps import (
    ipam_add,
    ipam_check,
    options_for_del,
    prev_result_for_check,
    quietly,
    step,
    to_ipam,
)
from cni_plugins.spec.errors import CNIError, ErrorList, InternalError, UnsupportedField
from cni_plugins.spec.types import Interface, IPInterface, Result, Route
from conf.bridge import BridgeConf

if TYPE_CHECKING:
    from cni_plugins.kernel.netlink import Link, Netlink

PORT_UP_RETRIES_MS = (0, 50, 500, 1000, 1000)
LINK_LOCAL_WAIT_S = 0.05  # for the kernel to configure the container's IPv6 link-local address
DEFAULT_ROUTE = {4: ipaddress.ip_network("0.0.0.0/0"), 6: ipaddress.ip_network("::/0")}


def cmd_add(args: CmdArgs) -> Result:
    from cni_plugins.kernel.addr import add_routes, configure_iface
    from cni_plugins.kernel.link import (
        attach_to_bridge,
        configure_bridge_port,
        setup_veth,
    )
    from cni_plugins.kernel.netlink import host_and_container

    conf = BridgeConf.from_json(args.conf, args.cni_args)
    conf.validate_for_add()
    if conf.ip_masq and conf.ip_masq_backend == "iptables":
        log.note("ipMasqBackend: iptables asked for; masquerade is served by nftables (table inet cni_py_masq)")
    if conf.ipam_type:  # before the bridge is made: an ADD failing on this would leave it behind
        invoke.find_in_path(conf.ipam_type, args.path)
    with host_and_container(args.netns) as (host, ctr, host_fd, ctr_fd), contextlib.ExitStack() as undo:
        with step("bridge"):
            br = setup_bridge(host, conf)
        with step("veth"):
            pair = setup_veth(
                ctr, host, host_fd, args.ifname, mtu=conf.mtu, mac=conf.mac, up=False
            )  # up once DAD is set
            undo.callback(quietly, "delete veth", ctr.delete_link_if_exists, args.ifname)
            # A bridge port does no IP. Without IPv6 it holds no link-local address and adds no
            # fe80::/64 and ff00::/8 routes: with those, every IPv6 route lookup and link change
            # on the host walks one entry per container (bench/README.md, "Growth").
            _write_sysctls([(sysctl.iface_key(6, pair.host.name, "disable_ipv6"), "1")])

        def attach_port() -> None:
            with step("bridge port"):
                attach_to_bridge(host, pair.host, br)
                configure_bridge_port(
                    host,
                    pair.host,
                    hairpin=conf.hairpin,
                    isolated=conf.port_isolation,
                    vlan=conf.vlan,
                    trunk=conf.trunk,
                    preserve_default_vlan=conf.preserve_default_vlan,
                )

        # With DAD off (the default) the port joins the bridge once the container's end is
        # configured: the first announcements of its IPv6 link-local address, an MLD report
        # and a router solicitation sent as its link comes up, then end at the host end
        # instead of being flooded to every port (CPU work that grows with the ports; see
        # bench/README.md, "Growth"). MLD repeats its report within the second, the kernel
        # solicits again after 4 s. Duplicate address detection needs the neighbours first.
        attach_late = bool(conf.ipam_type) and not conf.enable_dad
        if not attach_late:
            attach_port()
        owner = nft_state.owner(args)
        if conf.macspoofchk:
            from firewall.rules.spoofchk import setup_spoofcheck, teardown_spoofcheck

            nft = nft_state.host_nft()
            with step("macspoofchk"):
                setup_spoofcheck(nft, owner, pair.host.name, pair.container.mac)
            undo.callback(
                quietly, "mac spoof check", teardown_spoofcheck, nft, owner, pair.host.name, pair.container.mac
            )
        result = Result(
            interfaces=(
                Interface(name=br.name),
                Interface(name=pair.host.name),
                Interface(name=args.ifname, mac=pair.container.mac, sandbox=args.netns),
            )
        )
        if conf.ipam_type:
            ipam = ipam_add(args, conf.ipam_type, undo)
            result, gateways = with_gateways(result, ipam, conf)
            with step(f"configure {args.ifname}"), netns.entered(ctr_fd, label=args.netns):
                ipv6_off = conf.disable_ipv6 and not any(ip.version == 6 for ip in result.ips)
                _write_sysctls(_container_sysctls(args.ifname, conf.enable_dad, ipv6_off))
                announces = attach_late and not ipv6_off and _ipv6_on(args.ifname)
            with step(f"configure {args.ifname}"):
                ctr_link = configure_iface(ctr, ctr_fd, args.ifname, result, routes=False)
            # The link-up has the kernel announce the container's IPv6 link-local address (MLD
            # report, router solicitation) while it holds RTNL (flooded to every bridge port
            # when the port is attached already): a route add right after it waits. The host
            # work below needs no RTNL and runs meanwhile; the routes come after it.
            with step("gateway"):
                result = set_gateways(host, br, conf, gateways, result)
            if conf.ip_masq:
                from firewall.rules.masq import setup_masq, teardown_masq

                nft, addresses = nft_state.host_nft(), [ip.address for ip in result.ips]
                with step("ipMasq"):
                    setup_masq(nft, owner, addresses)
                undo.callback(quietly, "masquerade", teardown_masq, nft, owner, addresses)
            with step(f"routes in {args.ifname}"):
                add_routes(ctr, ctr_link, result)
            if attach_late:
                if announces:
                    with step(f"link-local address of {args.ifname}"):
                        _wait_link_local(ctr, ctr_link.index)
                attach_port()
        elif not conf.disable_container_interface:
            with step(f"set {args.ifname} up"):
                ctr.set_link(pair.container.index, state="up")
        with step("port state"):
            port = (
                host.require_link(pair.host.name) if conf.disable_container_interface else wait_port_up(host, pair.host)
            )
        interfaces = list(result.interfaces)  # MACs as they are now: a bridge takes its ports' until pinned
        interfaces[0] = dataclasses.replace(interfaces[0], mac=host.require_link(br.name).mac)
        interfaces[1] = dataclasses.replace(interfaces[1], mac=port.mac)
        undo.pop_all()
    return result.replace(interfaces=tuple(interfaces), dns=conf.dns if conf.dns is not None else result.dns)


def setup_bridge(host: Netlink, conf: BridgeConf) -> Link:
    from cni_plugins.kernel.link import ensure_bridge
    from cni_plugins.kernel.netlink import NotSupported

    try:
        return ensure_bridge(host, conf.bridge, mtu=conf.mtu, promisc=conf.promisc, vlan_filtering=conf.vlan_filtering)
    except NotSupported as err:
        if not conf.vlan_filtering:
            raise
        option = f"vlan: {conf.vlan}" if conf.vlan else f"vlanTrunk: {list(conf.trunk)}"
        raise UnsupportedField(
            f"{option}: this kernel cannot filter VLANs on a bridge ({err.msg})",
            "VLANs need a kernel with CONFIG_BRIDGE_VLAN_FILTERING; remove vlan/vlanTrunk to use an untagged port",
        ) from None


def with_gateways(base: Result, ipam: Result, conf: BridgeConf) -> tuple[Result, list[IPInterface]]:
    """IPs at index 2 with gateways (IPAM's, else network+1 when isGateway), a default route per
    family for isDefaultGateway unless IPAM gave one with a gateway, and the bridge addresses."""
    ips, routes, gateways = [], list(ipam.routes), []
    for ip in ipam.ips:
        gw = ip.gateway if ip.gateway is not None or not conf.is_gateway else ip.address.network.network_address + 1
        ips.append(dataclasses.replace(ip, interface=2, gateway=gw))
        if conf.is_default_gateway and not any(r.dst == DEFAULT_ROUTE[ip.version] and r.gw is not None for r in routes):
            routes.append(Route(dst=DEFAULT_ROUTE[ip.version], gw=gw))
        if conf.is_gateway and gw is not None:
            gateways.append(ipaddress.ip_interface(f"{gw}/{ip.address.network.prefixlen}"))
    return base.replace(ips=tuple(ips), routes=tuple(routes), dns=ipam.dns), gateways


def set_gateways(host: Netlink, br: Link, conf: BridgeConf, gateways: list[IPInterface], result: Result) -> Result:
    """Gateway addresses on the bridge (or ``<bridge>.<vlan>``), forwarding for their families."""
    from cni_plugins.kernel.addr import ensure_gateway_addr

    if not gateways:
        return result
    target = br
    if conf.vlan:
        target = ensure_vlan_gateway(host, br, conf)
        result = result.replace(interfaces=(*result.interfaces, Interface(name=target.name, mac=target.mac)))
    for gw in gateways:
        ensure_gateway_addr(host, target, gw, force=conf.force_address)
    for version in sorted({gw.version for gw in gateways}):
        sysctl.enable_forwarding(version)
    return result


def ensure_vlan_gateway(host: Netlink, br: Link, conf: BridgeConf) -> Link:
    """The reference's gateway for a VLAN: a veth ``<bridge>.<vlan>`` in the host namespace whose
    peer is an access port of the bridge in that VLAN (no 8021q link is involved)."""
    from cni_plugins.kernel.link import (
        attach_to_bridge,
        configure_bridge_port,
        setup_veth,
    )

    name = conf.vlan_gateway
    link = host.link(name)
    if link is None:
        fd = netns.current_netns_fd()
        try:
            pair = setup_veth(host, host, fd, name, mtu=br.mtu)
        finally:
            os.close(fd)
        attach_to_bridge(host, pair.host, br)
        configure_bridge_port(host, pair.host, vlan=conf.vlan, preserve_default_vlan=conf.preserve_default_vlan)
        link = pair.container
    return link


def wait_port_up(host: Netlink, port: Link) -> Link:
    """The host veth once it is operationally up (the reference's retry schedule), as read then."""
    now: Link | None = None
    for delay_ms in PORT_UP_RETRIES_MS:
        time.sleep(delay_ms / 1000)
        now = host.link_by_index(port.index)
        if now is not None and now.operstate == "UP":
            return now
    raise InternalError(
        f"bridge port in error state: {now.operstate if now else 'gone'}", f"host veth {port.name} did not come up"
    )


def cmd_del(args: CmdArgs) -> None:
    """Container link, IPAM, spoof check, masquerade; each step runs even if another failed."""
    conf = options_for_del(
        "bridge", lambda: BridgeConf.from_json(args.conf, args.cni_args), lambda: BridgeConf.owning_all(args.conf)
    )
    errors = ErrorList("bridge DEL")
    seen: tuple[list[IPInterface] | None, str, str] = (None, "", "")
    if args.netns:
        with errors.step(f"delete {args.ifname} in {args.netns}"):
            # the addresses, for masquerade, only when prevResult does not give them
            from cni_plugins.kernel.addr import given_addresses

            read = conf.ip_masq and not given_addresses(args.conf.prev_result, args.ifname)
            seen = _delete_container_link(args, read_addresses=read)
    if conf.ipam_type:
        with errors.step(f"IPAM {conf.ipam_type} DEL"):
            invoke.delegate(conf.ipam_type, "DEL", args.stdin, args.environ, args.path)
    addresses, port, mac = seen
    prev = args.conf.prev_result
    if prev is not None:
        from cni_plugins.kernel.addr import ips_for

        addresses = [prev.ips[i].address for i in ips_for(prev, args.ifname)] or addresses
        port = port or (prev.interfaces[1].name if len(prev.interfaces) > 2 and not prev.interfaces[1].sandbox else "")
        mac = mac or _mac(prev.interface(args.ifname, sandbox=True))
    if conf.macspoofchk or conf.ip_masq:
        nft, owner = nft_state.host_nft(), nft_state.owner(args)
        if conf.macspoofchk:
            from firewall.rules.spoofchk import teardown_spoofcheck

            with errors.step("mac spoof check"):
                teardown_spoofcheck(nft, owner, port or None, mac or None)
        if conf.ip_masq:
            from firewall.rules.masq import teardown_masq

            with errors.step("masquerade"):
                teardown_masq(nft, owner, addresses)
    errors.raise_if_any()


def _delete_container_link(args: CmdArgs, *, read_addresses: bool) -> tuple[list[IPInterface] | None, str, str]:
    """Delete the container's veth (the pair goes with it); what it showed: global addresses,
    the host peer's name and the MAC. Missing namespace or link: nothing to do."""
    from cni_plugins.kernel.netlink import Netlink

    try:
        with Netlink.open(args.netns) as ctr, Netlink.open(None) as host:
            link = ctr.link(args.ifname)
            if link is None:
                return None, "", ""
            addresses = [a.address for a in ctr.addresses(index=link.index) if a.scope == 0] if read_addresses else []
            peer = host.link_by_index(link.link) if link.link else None
            ctr.delete_link_if_exists(args.ifname)
            return addresses or None, peer.name if peer is not None and peer.kind == "veth" else "", link.mac
    except NetNSGone:
        return None, "", ""


def cmd_check(args: CmdArgs) -> None:
    conf = BridgeConf.from_json(args.conf, args.cni_args)
    ipam_check(args, conf.ipam_type)
    problems = check_links(args, conf, prev_result_for_check(args, "bridge"))
    if problems:
        raise InternalError(f"bridge CHECK: {'; '.join(problems)}", "DEL and ADD the container again to repair it")


def check_links(args: CmdArgs, conf: BridgeConf, prev: Result) -> list[str]:
    """Bridge, container veth, its host peer on the bridge, addresses, routes, firewall state."""
    from cni_plugins.kernel.addr import ips_for, validate_ips, validate_routes
    from cni_plugins.kernel.netlink import host_and_container

    want_br = prev.interface(conf.bridge, sandbox=False)
    want_ctr = prev.interface(args.ifname, sandbox=args.netns)
    if want_br is None or want_ctr is None:
        return [f"prevResult lacks the bridge {conf.bridge!r} or interface {args.ifname!r} in sandbox {args.netns}"]
    problems: list[str] = []
    with host_and_container(args.netns) as (host, ctr, _host_fd, _fd):
        br, link = host.link(conf.bridge), ctr.link(args.ifname)
        if br is None or br.kind != "bridge":
            return [f"bridge {conf.bridge} not found (or not a bridge) in the host namespace"]
        if link is None or link.kind != "veth":
            return [f"container interface {args.ifname} not found (or not a veth) in {args.netns}"]
        if want_br.mac and want_br.mac != br.mac:
            problems.append(f"bridge {br.name} MAC is {br.mac}, prevResult says {want_br.mac}")
        if br.promisc != conf.promisc:
            problems.append(f"bridge {br.name} promiscuous mode is {br.promisc}, the config says {conf.promisc}")
        if want_ctr.mac and want_ctr.mac != link.mac:
            problems.append(f"interface {args.ifname} MAC is {link.mac}, prevResult says {want_ctr.mac}")
        port = host.link_by_index(link.link) if link.link else None
        want_port = prev.interface(port.name) if port is not None else None
        if (
            port is None
            or want_port is None
            or port.kind != "veth"
            or port.link != link.index
            or port.master != br.index
        ):
            problems.append(f"no veth of prevResult peered with {args.ifname} is a port of bridge {br.name}")
        else:
            if want_port.mac and want_port.mac != port.mac:
                problems.append(f"host veth {port.name} MAC is {port.mac}, prevResult says {want_port.mac}")
            if bool(port.port.get("IFLA_BRPORT_MODE")) != conf.hairpin:
                problems.append(
                    f"host veth {port.name} hairpin is "
                    f"{bool(port.port.get('IFLA_BRPORT_MODE'))}, the config says {conf.hairpin}"
                )
            if conf.port_isolation and not port.port.get("IFLA_BRPORT_ISOLATED"):
                problems.append(f"host veth {port.name} is not an isolated port")
        _collect(problems, validate_ips, ctr, args.ifname, [prev.ips[i] for i in ips_for(prev, args.ifname)])
        _collect(problems, validate_routes, ctr, prev.routes)
        problems += _check_firewall(args, conf, prev, port)
    return problems


def _check_firewall(args: CmdArgs, conf: BridgeConf, prev: Result, port: Link | None) -> list[str]:
    if not (conf.ip_masq and prev.ips) and not (conf.macspoofchk and port is not None):
        return []
    nft, owner, problems = nft_state.host_nft(), nft_state.owner(args), []
    if conf.ip_masq and prev.ips:
        from firewall.rules.masq import validate_masq

        problems += validate_masq(nft, owner, [ip.address for ip in prev.ips])
    if conf.macspoofchk and port is not None:
        from firewall.rules.spoofchk import validate_spoofcheck

        want = _mac(prev.interface(args.ifname, sandbox=True))
        problems += validate_spoofcheck(nft, owner, port.name, want)
    return problems


def cmd_status(args: CmdArgs) -> None:
    to_ipam(args, "STATUS")


def cmd_gc(args: CmdArgs) -> None:
    """Forward GC to IPAM; drop masquerade and spoof-check entries of attachments not in
    ``cni.dev/valid-attachments`` (nothing of ours is touched when the list is absent)."""

    errors = ErrorList("bridge GC")
    if args.conf.ipam_type:
        with errors.step(f"IPAM {args.conf.ipam_type} GC"):
            invoke.delegate(args.conf.ipam_type, "GC", args.stdin, args.environ, args.path)
    owners = nft_state.valid_owners(args)
    if owners is not None:
        from firewall.rules.masq import gc_masq
        from firewall.rules.spoofchk import gc_spoofcheck

        nft = nft_state.host_nft()
        with errors.step("masquerade GC"):
            gc_masq(nft, args.conf.name, owners)
        with errors.step("mac spoof check GC"):
            gc_spoofcheck(nft, args.conf.name, owners)
    errors.raise_if_any()


# ---------------------------------------------------------------- small pieces


def _mac(iface: Interface | None) -> str:
    return iface.mac if iface is not None else ""


def _container_sysctls(ifname: str, enable_dad: bool, ipv6_off: bool) -> list[tuple[str, str]]:
    """DAD off by default (fast start; hairpin echoes would fail it), on with enhanced DAD
    when ``enabledad``; IPv6 off on the interface with ``disableIPv6`` on an IPv4-only network
    (no link-local address: no MLD reports or router solicitations flooded to every bridge
    port when it comes up); ``arp_notify`` announces the new address."""
    if ipv6_off:
        settings = [("disable_ipv6", "1")]
    else:
        settings = [("enhanced_dad", "1"), ("accept_dad", "1")] if enable_dad else [("accept_dad", "0")]
    return [(sysctl.iface_key(6, ifname, leaf), value) for leaf, value in settings] + [
        (sysctl.iface_key(4, ifname, "arp_notify"), "1")
    ]


def _ipv6_on(ifname: str) -> bool:
    """Whether ``ifname`` (in the calling thread's namespace) has IPv6."""
    try:
        return sysctl.read(sysctl.iface_key(6, ifname, "disable_ipv6")) == "0"
    except CNIError:  # no IPv6 in this kernel
        return False


def _wait_link_local(ctr: Netlink, index: int) -> None:
    """Until the kernel has configured the link-local address of the container's interface
    (at most ``LINK_LOCAL_WAIT_S``): it sends the address's first MLD report and router
    solicitation in the same step, holding the RTNL that attaching the port waits for, so
    they go out before the port is on the bridge."""
    deadline = time.monotonic() + LINK_LOCAL_WAIT_S
    while not any(
        a.address.ip.is_link_local and not a.tentative for a in ctr.addresses(index=index, family=socket.AF_INET6)
    ):
        if time.monotonic() >= deadline:
            return
        time.sleep(0.0005)


def _write_sysctls(settings: list[tuple[str, str]]) -> None:
    """In the calling thread's namespace; a missing key (IPv6 disabled) is skipped, as the reference does."""
    for key, value in settings:
        try:
            sysctl.write(key, value)
        except CNIError:
            pass


def _collect(problems: list[str], validate: Callable[..., None], *fn_args: Any) -> None:
    try:
        validate(*fn_args)
    except CNIError as err:
        problems.append(err.msg)


PLUGIN = Plugin(
    name="bridge",
    add=cmd_add,
    delete=cmd_del,
    check=cmd_check,
    status=cmd_status,
    gc=cmd_gc,
    cni_args=frozenset({"MAC"}),
    about="CNI bridge plugin (cni-py)",
)


def main() -> None:
    skel.main(PLUGIN)
