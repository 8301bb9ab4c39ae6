"""``bandwidth`` (chained): shape a veth-attached container's traffic with HTB.

As the reference (``plugins/meta/bandwidth``, the HTB version that brought the subnet options):
* limits: ``ingressRate``/``ingressBurst`` (toward the container) and ``egressRate``/``egressBurst``
  (from it), in bits/s and bits; a rate needs its burst and a burst its rate. If any of these
  or ``shapedSubnets``/``unshapedSubnets`` is in the config, the config's values are used and
  the runtime's ``bandwidth`` capability (``runtimeConfig.bandwidth``) is ignored, as the
  reference does; otherwise the capability's. No limit at all: prevResult passes through.
* ingress: an ``htb`` root qdisc ``1:`` on the host end of the container's veth; egress: an
  ``ifb`` named ``bwp`` + sha512(network + containerID)[:12] (MTU of the veth, txqueuelen at
  least 1000), an ``ingress`` qdisc on the veth with a u32 match-all filter redirecting to
  the ifb (two mirred actions, as the reference's netlink library writes them), and the same
  HTB on the ifb. The HTB: class ``1:30`` at the rate (ceil twice it, buffer from the burst),
  class ``1:1`` uncapped (100 GB/s), default ``1:30``; with ``shapedSubnets`` the default is
  ``1:1`` and u32 filters (pref 16 for IPv4, 15 for IPv6) send those subnets to ``1:30``;
  with ``unshapedSubnets`` filters send those to ``1:1``. The ifb joins the result's
  interfaces (no sandbox).

Differences, each a fix:
* subnets are matched on the far end of the traffic: the destination on the ifb (egress, as
  the reference) and the *source* on the host veth (ingress). The reference matches the
  destination on both, which on the veth is always the container itself, so its subnet
  lists never applied to ingress.
* an ADD that fails leaves nothing (the reference leaves the qdiscs and the ifb it made);
  without prevResult it is an error, never a crash.
* DEL also removes this attachment's qdiscs from the host veth when the container is still
  there (the reference leaves them, and its ingress redirect then points at a deleted ifb,
  which drops the container's traffic until the veth goes); a gone or empty netns is fine.
* CHECK compares the shaped class's rate and buffer (the reference compares the default
  class by a handle that never matches), the subnet filters and the ingress redirect.
* GC (1.1.0) deletes ifbs of this network that no valid attachment owns. Only ours: each
  ifb this plugin makes carries the alias ``cni-py bandwidth <network>``; others are left alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cni_plugins.kernel.netns import NetNSGone
from cni_plugins.kernel.tc import (
    ETH_P_ALL,
    ETH_P_IP,
    ETH_P_IPV6,
    INGRESS_HANDLE,
    TC_ACT_OK,
    TC_ACT_STOLEN,
    TC_H_INGRESS,
    TC_H_ROOT,
    U32_MAX,
    Tc,
    U32Key,
    buffer_ticks,
    fmt_handle,
    handle,
    htb_class_options,
    htb_qdisc_options,
    tick_in_usec,
    u32_options,
)
from cni_plugins.protocol import log, skel
from cni_plugins.protocol.skel import CmdArgs, Plugin
from cni_plugins.protocol.steps import options_for_del, quietly, step
from cni_plugins.spec.errors import CNIError, ErrorList, InvalidNetworkConfig
from cni_plugins.spec.types import Interface, IPNetwork, Result
from cni_plugins.spec.version import SUPPORTED_VERSIONS, at_least
from conf.fields import dict_field, int_field, str_list_field

if TYPE_CHECKING:
    from cni_plugins.kernel.netlink import Link, Netlink

ENTRY_KEYS = ("ingressRate", "ingressBurst", "egressRate", "egressBurst", "shapedSubnets", "unshapedSubnets")
U64_MAX = 2**64 - 1
ROOT = handle(1, 0)
SHAPED = handle(1, 0x30)
UNSHAPED = handle(1, 1)
UNCAPPED_RATE = 100_000_000_000  # bytes/s
IFB_PREFIX = "bwp"
ALIAS_PREFIX = "cni-py bandwidth "
IFALIAS_MAX = 255
CHAINED = "bandwidth shapes the host end of a container's veth: chain it after bridge or ptp"


@dataclass(frozen=True, slots=True, kw_only=True)
class Limit:
    rate: int  # bits/s; 0: not shaped
    burst: int  # bits
    where: str  # the keys' prefix, for messages ("ingress", "runtimeConfig.bandwidth.egress")

    @property
    def active(self) -> bool:
        return self.rate > 0

    def buffer(self, ticks_per_usec: float) -> int:
        """The HTB buffer in scheduler ticks; refused when the kernel cannot hold it."""
        rate, burst = self.rate // 8, self.burst // 8
        if rate == 0:
            raise InvalidNetworkConfig(
                f"{self.where}Rate: {self.rate} bit/s is below the kernel's resolution of 1 byte/s",
                "give a rate of at least 8 bit/s",
            )
        usec = burst * 1_000_000 / rate
        if usec > U32_MAX or usec * ticks_per_usec > U32_MAX:
            raise InvalidNetworkConfig(
                f"{self.where}Burst: {self.burst} bits take {usec / 1e6:.0f} s at {self.where}Rate {self.rate} bit/s,"
                " longer than the kernel can hold",
                f"lower {self.where}Burst or raise {self.where}Rate",
            )
        return buffer_ticks(rate, burst, ticks_per_usec)


@dataclass(frozen=True, slots=True, kw_only=True)
class BandwidthConf:
    ingress: Limit
    egress: Limit
    shaped: tuple[IPNetwork, ...] = ()
    unshaped: tuple[IPNetwork, ...] = ()

    @property
    def shapes(self) -> bool:
        return self.ingress.active or self.egress.active

    @property
    def subnets(self) -> tuple[tuple[IPNetwork, ...], bool]:
        """(subnets with filters, whether they are exempt from shaping)."""
        return (self.unshaped, True) if self.unshaped else (self.shaped, False)

    @classmethod
    def from_json(cls, args: CmdArgs) -> BandwidthConf:
        raw = args.conf.raw
        if any(key in raw for key in ENTRY_KEYS):
            entry: dict[str, Any] = raw
            where = ""
        else:
            entry = dict_field(args.conf.runtime_config.raw, "bandwidth", "runtimeConfig")
            where = "runtimeConfig.bandwidth."
        conf = cls(
            ingress=_limit(entry, where, "ingress"),
            egress=_limit(entry, where, "egress"),
            shaped=_subnets(entry, where, "shapedSubnets"),
            unshaped=_subnets(entry, where, "unshapedSubnets"),
        )
        if conf.shaped and conf.unshaped:
            raise InvalidNetworkConfig(
                f"{where}unshapedSubnets and {where}shapedSubnets cannot be both specified",
                "give only one of them: shapedSubnets shapes only those, unshapedSubnets all but those",
            )
        return conf


def _limit(entry: dict[str, Any], where: str, direction: str) -> Limit:
    prefix = f"{where}{direction}"
    rate = int_field(entry, f"{direction}Rate", 0, where.rstrip("."), minimum=0, maximum=U64_MAX)
    burst = int_field(entry, f"{direction}Burst", 0, where.rstrip("."), minimum=0, maximum=U64_MAX)
    if rate and not burst:
        raise InvalidNetworkConfig(f"{prefix}Burst: missing; if rate is set, burst must also be set")
    if burst and not rate:
        raise InvalidNetworkConfig(f"{prefix}Rate: missing; if burst is set, rate must also be set")
    if burst // 8 >= U32_MAX:
        raise InvalidNetworkConfig(f"{prefix}Burst: {burst} bits: burst cannot be more than 4GB")
    return Limit(rate=rate, burst=burst, where=prefix)


def _subnets(entry: dict[str, Any], where: str, key: str) -> tuple[IPNetwork, ...]:
    out = []
    for i, text in enumerate(str_list_field(entry, key, where.rstrip("."))):
        try:
            if "/" not in text:
                raise ValueError("no prefix length")
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise InvalidNetworkConfig(
                f"{where}{key}[{i}]: bad subnet {text!r} provided, details invalid CIDR address: {text}",
                "write a subnet as address/prefix, e.g. 10.0.0.0/8 or fd00::/8",
            ) from None
    return tuple(out)


def ifb_name(network: str, container_id: str) -> str:
    """The reference's name: it depends on network and container only, not on the interface."""
    return IFB_PREFIX + hashlib.sha512((network + container_id).encode()).hexdigest()[:12]


def ifb_alias(network: str) -> str:
    """What marks an ifb as made by this plugin for ``network`` (GC deletes only these)."""
    alias = ALIAS_PREFIX + network
    if len(alias.encode()) <= IFALIAS_MAX:
        return alias
    return ALIAS_PREFIX + "sha256:" + hashlib.sha256(network.encode()).hexdigest()


def require_prev(args: CmdArgs) -> Result:
    prev = args.conf.prev_result
    if prev is None:
        raise InvalidNetworkConfig("bandwidth: must be called as a chained plugin: prevResult missing", CHAINED)
    return prev


# ------------------------------------------------------------ ADD


def cmd_add(args: CmdArgs) -> Result:
    from cni_plugins.kernel.netlink import host_and_container

    conf = BandwidthConf.from_json(args)
    prev = require_prev(args)
    if not conf.shapes:
        return prev
    ticks = tick_in_usec()
    buffers = {limit.where: limit.buffer(ticks) for limit in (conf.ingress, conf.egress) if limit.active}
    result = prev
    with host_and_container(args.netns) as (host, ctr, _host_fd, _ctr_fd), Tc() as tc, contextlib.ExitStack() as undo:
        veth = host_veth(host, ctr, args, prev)
        if conf.ingress.active:
            with step(f"shape ingress on {veth.name}"):
                setup_htb(tc, veth, conf, conf.ingress, buffers[conf.ingress.where], undo, match_source=True)
        if conf.egress.active:
            name = ifb_name(args.conf.name, args.container_id)
            with step(f"create ifb {name}"):
                ifb = create_ifb(host, name, veth, ifb_alias(args.conf.name), undo)
            result = result.replace(interfaces=(*result.interfaces, Interface(name=name, mac=ifb.mac)))
            with step(f"redirect what {veth.name} receives to {name}"):
                tc.add_qdisc(veth.index, "ingress", hdl=INGRESS_HANDLE, parent=TC_H_INGRESS)
                undo.callback(
                    quietly,
                    "delete ingress qdisc",
                    tc.delete_qdisc,
                    veth.index,
                    hdl=INGRESS_HANDLE,
                    parent=TC_H_INGRESS,
                )
                redirects = ((ifb.index, TC_ACT_STOLEN), (ifb.index, TC_ACT_OK))
                tc.add_filter(
                    veth.index,
                    "u32",
                    parent=INGRESS_HANDLE,
                    prio=1,
                    protocol=ETH_P_ALL,
                    options=u32_options(UNSHAPED, (), redirects),
                )
            with step(f"shape egress on {name}"):
                setup_htb(tc, ifb, conf, conf.egress, buffers[conf.egress.where], undo, match_source=False)
        undo.pop_all()
    return result


def host_veth(host: Netlink, ctr: Netlink, args: CmdArgs, prev: Result) -> Link:
    """The host end of the container interface's veth, which prevResult must list (no sandbox)."""
    if not prev.interfaces:
        raise InvalidNetworkConfig("bandwidth: prevResult: no interfaces provided", CHAINED)
    peer = _peer_of(host, ctr, args.ifname)
    if isinstance(peer, str):
        raise CNIError(f"container interface {args.ifname} has no veth peer: {peer}", CHAINED)
    if not any(i.name == peer.name and not i.sandbox for i in prev.interfaces):
        raise CNIError(
            f"no veth peer of container interface {args.ifname} found in host ns: {peer.name} is not in prevResult",
            "pass the result of the plugin that made the veth as prevResult",
        )
    return peer


def _peer_of(host: Netlink, ctr: Netlink, ifname: str) -> Link | str:
    """The host link at the other end of the container's veth ``ifname``, or why there is none.
    Both ends must name each other: an index alone could name a link of another namespace."""
    link = ctr.link(ifname)
    if link is None:
        return f"{ifname} not found in {ctr.label}"
    if link.kind != "veth" or not link.link:
        return f"{ifname} is a {link.kind or 'plain'} link, not a veth"
    peer = host.link_by_index(link.link)
    if peer is None or peer.kind != "veth" or peer.link != link.index:
        return f"veth peer with index {link.link} is not in host ns"
    return peer


def setup_htb(
    tc: Tc,
    dev: Link,
    conf: BandwidthConf,
    limit: Limit,
    buffer: int,
    undo: contextlib.ExitStack,
    *,
    match_source: bool,
) -> None:
    """The HTB root qdisc, its two classes and the subnet filters on ``dev``."""
    subnets, exempt = conf.subnets
    rate = limit.rate // 8
    default = SHAPED if not subnets or exempt else UNSHAPED
    tc.add_qdisc(dev.index, "htb", hdl=ROOT, parent=TC_H_ROOT, options=htb_qdisc_options(default & 0xFFFF))
    undo.callback(quietly, f"delete htb qdisc on {dev.name}", tc.delete_qdisc, dev.index, hdl=ROOT, parent=TC_H_ROOT)
    tc.add_class(
        dev.index,
        "htb",
        hdl=SHAPED,
        parent=ROOT,
        options=htb_class_options(rate=rate, ceil=2 * rate, buffer=buffer, cbuffer=buffer),
    )
    tc.add_class(
        dev.index,
        "htb",
        hdl=UNSHAPED,
        parent=ROOT,
        options=htb_class_options(rate=UNCAPPED_RATE, ceil=UNCAPPED_RATE, buffer=0, cbuffer=0),
    )
    for net in subnets:
        prio, protocol = (16, ETH_P_IP) if net.version == 4 else (15, ETH_P_IPV6)
        options = u32_options(UNSHAPED if exempt else SHAPED, subnet_keys(net, source=match_source))
        tc.add_filter(dev.index, "u32", parent=ROOT, prio=prio, protocol=protocol, options=options)


def subnet_keys(net: IPNetwork, *, source: bool) -> tuple[U32Key, ...]:
    """u32 keys matching ``net`` as the packet's source or destination address (offsets in the
    IP header); a 32-bit word of the mask that is 0 needs no key (``/0``: no key at all)."""
    start = (12 if source else 16) if net.version == 4 else (8 if source else 24)
    value, mask = net.network_address.packed, net.netmask.packed
    keys = []
    for i in range(0, len(mask), 4):
        m = int.from_bytes(mask[i : i + 4], "big")
        if m:
            keys.append(U32Key(m, int.from_bytes(value[i : i + 4], "big"), start + i))
    return tuple(keys)


def create_ifb(host: Netlink, name: str, veth: Link, alias: str, undo: contextlib.ExitStack) -> Link:
    from cni_plugins.kernel.netlink import LinkExists

    try:
        host.create_link(name, "ifb", mtu=veth.mtu, txqlen=max(veth.txqlen, 1000), state="up")
    except LinkExists:
        raise InvalidNetworkConfig(
            f"ifb {name} already exists",
            "its name comes from the network name and container ID only: one interface per container and"
            " network can be shaped, and an earlier ADD of this container must be DELeted first",
        ) from None
    undo.callback(quietly, f"delete {name}", host.delete_link_if_exists, name)
    link = host.require_link(name)
    host.set_link(link.index, ifalias=alias)
    return link


# ------------------------------------------------------------ DEL


def cmd_del(args: CmdArgs) -> None:
    """Delete the ifb and, when the container's veth is still there, this attachment's qdiscs
    on its host end. Only the network name and container ID are needed; an option DEL cannot
    read is ignored (logged)."""
    from cni_plugins.kernel.netlink import Netlink

    options_for_del("bandwidth", lambda: BandwidthConf.from_json(args), lambda: None)
    name = ifb_name(args.conf.name, args.container_id)
    errors = ErrorList("bandwidth DEL")
    with Netlink.open() as host:
        ifb = host.link(name)
        if ifb is not None and ifb.kind != "ifb":
            log.warning(f"bandwidth DEL: {name} is a {ifb.kind or 'plain'} link, not an ifb: left alone")
            ifb = None
        if args.netns:
            with errors.step(f"remove shaping from the host end of {args.ifname}"):
                try:
                    unshape_host_veth(host, args, ifb)
                except NetNSGone:
                    pass  # the container and its veth are gone
        if ifb is not None:
            with errors.step(f"delete ifb {name}"):
                host.delete_link_if_exists(name)
    errors.raise_if_any()


def unshape_host_veth(host: Netlink, args: CmdArgs, ifb: Link | None) -> None:
    """Remove the root qdisc and the ingress redirect that bandwidth put on the host veth, each
    only if it has bandwidth's shape (the reference's TBF too), so nothing else's goes."""
    from cni_plugins.kernel.netlink import Netlink

    with Netlink.open(args.netns) as ctr:
        veth = _peer_of(host, ctr, args.ifname)
    if isinstance(veth, str):
        return
    with Tc() as tc:
        for qdisc in tc.qdiscs(veth.index):
            if qdisc.parent == TC_H_ROOT and qdisc.handle == ROOT and (qdisc.kind == "tbf" or _ours(tc, veth)):
                tc.delete_qdisc(veth.index, hdl=ROOT, parent=TC_H_ROOT)
            elif qdisc.parent == TC_H_INGRESS and _only_redirects_to(tc, host, veth, ifb):
                tc.delete_qdisc(veth.index, hdl=INGRESS_HANDLE, parent=TC_H_INGRESS)


def _ours(tc: Tc, dev: Link) -> bool:
    """An htb root qdisc with exactly bandwidth's two classes."""
    classes = tc.classes(dev.index)
    return sorted((c.kind, c.handle) for c in classes) == [("htb", UNSHAPED), ("htb", SHAPED)]


def _only_redirects_to(tc: Tc, host: Netlink, veth: Link, ifb: Link | None) -> bool:
    """Every filter of the ingress qdisc redirects to this attachment's ifb (or to a link that
    is gone: an ifb an earlier DEL removed)."""
    rules = [f for f in tc.filters(veth.index, INGRESS_HANDLE) if f.keys is not None]
    targets = {target for f in rules for target, _ in f.redirects}
    if not rules or any(not f.redirects for f in rules):
        return False
    return all((ifb is not None and t == ifb.index) or host.link_by_index(t) is None for t in targets)


# ------------------------------------------------------------ CHECK


def cmd_check(args: CmdArgs) -> None:
    from cni_plugins.kernel.netlink import host_and_container

    conf = BandwidthConf.from_json(args)
    prev = require_prev(args)
    ticks = tick_in_usec()
    with host_and_container(args.netns) as (host, ctr, _host_fd, _ctr_fd), Tc() as tc:
        veth = host_veth(host, ctr, args, prev)
        if conf.ingress.active:
            validate_htb(tc, veth, conf, conf.ingress, conf.ingress.buffer(ticks), match_source=True)
        if conf.egress.active:
            name = ifb_name(args.conf.name, args.container_id)
            ifb = host.link(name)
            if ifb is None:
                raise CNIError(f"get ifb device: {name} not found", "the egress shaping ADD made is gone")
            if not any(t == ifb.index for f in tc.filters(veth.index, INGRESS_HANDLE) for t, _ in f.redirects):
                raise CNIError(f"{veth.name} does not redirect what it receives to ifb {name}")
            validate_htb(tc, ifb, conf, conf.egress, conf.egress.buffer(ticks), match_source=False)


def validate_htb(tc: Tc, dev: Link, conf: BandwidthConf, limit: Limit, buffer: int, *, match_source: bool) -> None:
    name = dev.name
    htbs = [q for q in tc.qdiscs(dev.index) if q.kind == "htb"]
    if not htbs:
        raise CNIError(f"Failed to find qdisc: no htb qdisc on {name}")
    if len(htbs) > 1:
        raise CNIError(f"Several htb qdisc found for device {name}")
    subnets, exempt = conf.subnets
    default = SHAPED if not subnets or exempt else UNSHAPED
    if htbs[0].defcls != default & 0xFFFF:
        raise CNIError(f"Default class does not match for device {name} ({htbs[0].defcls} != {default & 0xFFFF})")
    classes = tc.classes(dev.index)
    if len(classes) != 2:
        raise CNIError(f"Number of htb classes does not match for device {name} ({len(classes)} != 2)")
    by_handle = {c.handle: c for c in classes}
    if any(c.kind != "htb" for c in classes) or set(by_handle) != {SHAPED, UNSHAPED}:
        raise CNIError(f"Unexpected class for parent htb qdisc bound to device {name}")
    rate, shaped, uncapped = limit.rate // 8, by_handle[SHAPED], by_handle[UNSHAPED]
    for what, got, want in (
        ("Rate", shaped.rate, rate),
        ("Ceil", shaped.ceil, 2 * rate),
        ("Burst buffer size", shaped.buffer, buffer),
    ):
        if got != want:
            raise CNIError(
                f"{what} does not match for the shaped class {fmt_handle(SHAPED)} of {name} ({got} != {want})"
            )
    if uncapped.rate != UNCAPPED_RATE:
        raise CNIError(
            f"Rate does not match for the uncapped class for device {name} ({uncapped.rate} != {UNCAPPED_RATE})"
        )
    target = UNSHAPED if exempt else SHAPED
    match_all = (U32Key(0, 0, 0),)  # what u32 holds for a /0 subnet
    want_filters = sorted(
        (16 if n.version == 4 else 15, target, subnet_keys(n, source=match_source) or match_all) for n in subnets
    )
    got_filters = sorted((f.prio, f.classid or 0, f.keys or ()) for f in tc.filters(dev.index, ROOT) if f.keys)
    if got_filters != want_filters:
        raise CNIError(f"the subnet filters on {name} do not match the config's subnets")


# ------------------------------------------------------------ GC


def cmd_gc(args: CmdArgs) -> None:
    """Delete this network's ifbs (by their alias) whose container is not a valid attachment."""
    from cni_plugins.kernel.netlink import Netlink

    valid = args.conf.valid_attachments
    if valid is None:
        log.note("GC without cni.dev/valid-attachments: nothing deleted")
        return
    keep = {ifb_name(args.conf.name, a.container_id) for a in valid}
    alias = ifb_alias(args.conf.name)
    errors = ErrorList("bandwidth GC")
    with Netlink.open() as host:
        for link in host.links():
            if link.kind == "ifb" and link.alias == alias and link.name not in keep:
                with errors.step(f"delete stale ifb {link.name}"):
                    host.delete_link_if_exists(link.name)
                    log.note(f"GC deleted ifb {link.name} of network {args.conf.name}")
    errors.raise_if_any()


PLUGIN = Plugin(
    name="bandwidth",
    add=cmd_add,
    delete=cmd_del,
    check=cmd_check,
    gc=cmd_gc,
    versions=tuple(v for v in SUPPORTED_VERSIONS if at_least(v, "0.3.0")),
    about="CNI bandwidth plugin (cni-py)",
)


def main() -> None:
    skel.main(PLUGIN)
