"""``firewall`` (chained): let forwarded traffic to and from the container through, and apply
the ``ingressPolicy`` between bridges, on nftables (layout and reasoning: ``firewall.rules.forward``).

Reference-compatible options: ``backend`` (``iptables``, ``firewalld`` or empty, as podman
writes it: always served by nftables, with a note on stderr when something else was asked
for), ``iptablesAdminChainName`` (default ``CNI-ADMIN``: a chain of yours, consulted first,
in our table and in iptables' filter table), ``firewalldZone`` (accepted, unused),
``ingressPolicy`` (``open``, ``same-bridge``, ``isolated``). Ours: ``iptablesAcceptMark``
(default 0x10000000), the mark that tells iptables' FORWARD chain a packet was accepted here.

Spec versions 0.4.0 and later only, as the reference.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cni_plugins.plugins import nft_state
from cni_plugins.protocol import log, skel
from cni_plugins.protocol.skel import CmdArgs, Plugin
from cni_plugins.spec.errors import CNIError, ErrorList, InvalidNetworkConfig, shown
from cni_plugins.spec.names import interface_name_problem
from cni_plugins.spec.types import IPAddress, Result
from conf.fields import str_field
from conf.netconf import NetConf
from firewall.layout import stamp_for
from firewall.nft import Command, NftBackend
from firewall.owned import claim_groups, problems, release_all_of, release_groups
from firewall.rules import forward

POLICIES = ("", forward.OPEN, forward.SAME_BRIDGE, forward.ISOLATED)
CHAIN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,27}$")
RESERVED_CHAINS = (
    "ACCEPT",
    "DROP",
    "RETURN",
    "QUEUE",
    "FORWARD",
    "INPUT",
    "OUTPUT",
    forward.IPT_CHAIN,
    "forward",
    "isolation",
)
VERSIONS = ("0.4.0", "1.0.0", "1.1.0")


@dataclass(frozen=True, slots=True, kw_only=True)
class FirewallConf:
    backend: str = ""
    admin_chain: str = forward.DEFAULT_ADMIN_CHAIN
    ingress_policy: str = forward.OPEN
    accept_mark: int = forward.DEFAULT_MARK
    addresses: tuple[IPAddress, ...] = ()
    bridge: str = ""  # prevResult's first interface (the bridge, for the bridge plugin)

    @classmethod
    def from_netconf(cls, conf: NetConf) -> FirewallConf:
        raw = conf.raw
        admin = str_field(raw, "iptablesAdminChainName", "") or forward.DEFAULT_ADMIN_CHAIN
        if not CHAIN_RE.match(admin) or admin in RESERVED_CHAINS:
            raise InvalidNetworkConfig(
                f"iptablesAdminChainName: {shown(admin)} cannot name a chain of yours",
                "use up to 28 letters, digits, '_', '.', '+' or '-' (not "
                f"starting with '-'), other than {', '.join(RESERVED_CHAINS)}",
            )
        policy = str_field(raw, "ingressPolicy", "") or forward.OPEN
        if policy not in POLICIES:
            raise InvalidNetworkConfig(
                f"ingressPolicy: unknown ingress policy {shown(policy)}", "use open, same-bridge or isolated"
            )
        str_field(raw, "firewalldZone", "")
        prev = conf.prev_result
        bridge = prev_bridge(prev)
        if policy != forward.OPEN and prev and prev.interfaces and not bridge:
            name = prev.interfaces[0].name
            raise InvalidNetworkConfig(
                f"prevResult.interfaces[0].name: {shown(name)} cannot be the bridge of ingress policy {policy!r}: "
                f"{interface_name_problem(name) or 'it is in a container'}",
                'chain "firewall" after "bridge": its first interface is the bridge, in the host namespace',
            )
        return cls(
            backend=str_field(raw, "backend", ""),
            admin_chain=admin,
            ingress_policy=policy,
            accept_mark=_mark(raw.get("iptablesAcceptMark")),
            addresses=tuple(ip.address.ip for ip in prev.ips) if prev else (),
            bridge=bridge,
        )


def prev_bridge(prev: Result | None) -> str:
    """prevResult's first interface (the bridge, after the bridge plugin) when it can name a
    host link; '' otherwise: a name nftables would store must be a valid interface name."""
    if prev is None or not prev.interfaces:
        return ""
    first = prev.interfaces[0]
    return first.name if not first.sandbox and not interface_name_problem(first.name) else ""


def _mark(value: object) -> int:
    if value is None:
        return forward.DEFAULT_MARK
    try:
        mark = (
            int(value, 0)
            if isinstance(value, str)
            else value
            if isinstance(value, int) and not isinstance(value, bool)
            else -1
        )
    except ValueError:
        mark = -1
    if not 0 < mark <= 0xFFFFFFFF:
        raise InvalidNetworkConfig(
            f"iptablesAcceptMark: {shown(value)} is not a mark",
            'give a nonzero 32-bit value, e.g. "0x10000000" (one bit no other tool uses)',
        )
    return mark


def _notes(conf: FirewallConf) -> None:
    if conf.backend == "firewalld":
        log.note(
            "backend firewalld asked for; served by nftables (table inet cni_py_firewall); firewalldZone is not used"
        )
    elif conf.backend not in ("", "iptables", "nftables"):
        log.note(f"unknown backend {shown(conf.backend)}; served by nftables (table inet cni_py_firewall)")
    for proc, tool in (("/proc/net/ip_tables_names", "iptables"), ("/proc/net/ip6_tables_names", "ip6tables")):
        try:
            with open(proc, encoding="ascii") as fh:
                legacy = "filter" in fh.read().split()
        except OSError:
            legacy = False
        if legacy:
            log.note(
                f"{tool}-legacy has a filter table here: our accepts cannot override a drop "
                f"in it; use {tool}-nft or accept the containers' traffic there yourself"
            )
    if conf.ingress_policy == forward.ISOLATED and _bridge_nf_call_iptables() != "1":
        log.note(
            "ingressPolicy isolated: traffic between containers of one bridge is filtered only with br_netfilter "
            "loaded and net.bridge.bridge-nf-call-iptables=1 (as with the reference and Docker's icc=false)"
        )


def _bridge_nf_call_iptables() -> str:
    from cni_plugins.kernel import sysctl

    try:
        return sysctl.read("net/bridge/bridge-nf-call-iptables")
    except CNIError:  # no br_netfilter
        return ""


def _iptables_states(nft: NftBackend) -> list[forward.IptablesState]:
    """One per family whose iptables-nft filter table has a FORWARD chain (two small listings)."""
    out = []
    for fam in forward.IPT_FAMILIES:
        rules = nft.list_chain(fam, forward.IPT_TABLE, "FORWARD")
        if rules is not None:
            ours = nft.list_chain(fam, forward.IPT_TABLE, forward.IPT_CHAIN)
            out.append(
                forward.IptablesState(
                    family=fam,
                    forward=[r["rule"] for r in rules],
                    cni_forward=None if ours is None else [r["rule"] for r in ours],
                )
            )
    return out


def cmd_add(args: CmdArgs) -> Result:
    prev = args.conf.prev_result
    if prev is None:
        raise InvalidNetworkConfig(
            "firewall: missing prevResult from earlier plugin", "chain firewall after a main plugin (bridge, ptp, ...)"
        )
    conf = FirewallConf.from_netconf(args.conf)
    if conf.ingress_policy != forward.OPEN and not conf.bridge:
        raise InvalidNetworkConfig(
            f"interface needs to be set for ingress policy {conf.ingress_policy!r}",
            'chain "firewall" after "bridge": its first interface is the bridge',
        )
    _notes(conf)
    nft = nft_state.host_nft()
    setup: list[Command] = forward.base_commands(conf.admin_chain, conf.accept_mark)
    always = [
        c
        for state in _iptables_states(nft)
        for c in forward.iptables_commands(state, conf.admin_chain, conf.accept_mark)
    ]
    extra, bridge_group = forward.bridge_commands_and_group(conf.bridge, conf.ingress_policy)
    groups = forward.accept_groups(conf.addresses) + ([bridge_group] if bridge_group else [])
    stamp = stamp_for(forward.FAMILY, forward.TABLE, "firewall", setup)  # one layout for every network
    claim_groups(
        nft,
        nft_state.owner(args),
        groups,
        setup=setup,
        always=always + extra,
        stamp=stamp,
        what=f"firewall for {args.container_id}/{args.ifname}",
    )
    return prev


def cmd_del(args: CmdArgs) -> None:
    """Remove this attachment's elements (found by owner when prevResult is missing). The
    constant chains stay, as the reference leaves its chains; per-bridge entries stay while
    the bridge exists (other containers are on it) and go once it is gone."""
    prev = args.conf.prev_result
    conf = FirewallConf(addresses=tuple(ip.address.ip for ip in prev.ips) if prev else ())
    owner, what = nft_state.owner(args), f"remove firewall entries of {args.container_id}/{args.ifname}"
    nft, errors = nft_state.host_nft(), ErrorList("firewall DEL")
    if prev is None:
        for v in (4, 6):
            with errors.step(f"remove IPv{v} accept entries"):
                release_all_of(nft, forward.ACCEPT[v], owner, (forward.ACCEPT_SET[v],), what=what)
    else:
        with errors.step("remove accept entries"):
            release_groups(nft, owner, forward.accept_groups(conf.addresses), what=what)
    bridge = prev_bridge(prev)
    if bridge and not _link_exists(bridge):
        with errors.step(f"remove the entries of bridge {bridge}, which is gone"):
            forward.forget_bridges(nft, lambda name: name == bridge, what=what)
    errors.raise_if_any()


def _link_exists(name: str) -> bool:
    """Whether the calling (host) namespace has a link ``name``."""
    from cni_plugins.kernel.netlink import Netlink

    with Netlink.open(None, label="host") as nl:
        return nl.link(name) is not None


def cmd_check(args: CmdArgs) -> None:
    if args.conf.prev_result is None:
        raise InvalidNetworkConfig(
            "firewall CHECK: missing prevResult from earlier plugin", "CHECK needs the result of ADD as prevResult"
        )
    conf = FirewallConf.from_netconf(args.conf)
    nft, owner, found = nft_state.host_nft(), nft_state.owner(args), []
    for chain in ("forward", "isolation", conf.admin_chain):
        if nft.list_chain(forward.FAMILY, forward.TABLE, chain) is None:
            found.append(f"chain {chain} is missing from table {forward.FAMILY} {forward.TABLE}")
    for group in forward.accept_groups(conf.addresses):
        found += [f"accept entry for {e.key}: {why}" for e, why in problems(nft, group.maps, owner, group.entries)]
    _, bridge_group = forward.bridge_commands_and_group(conf.bridge, conf.ingress_policy)
    if bridge_group is not None:
        found += [
            f"{conf.ingress_policy} entry for bridge {conf.bridge}: {why}"
            for e, why in problems(nft, bridge_group.maps, forward.bridge_owner(conf.bridge), bridge_group.entries)
        ]
    for state in _iptables_states(nft):
        found += forward.iptables_problems(state, conf.admin_chain, conf.accept_mark)
    if found:
        raise CNIError(
            f"firewall CHECK of {args.container_id}/{args.ifname}: {'; '.join(found)}",
            "run ADD again to restore the rules",
        )


def cmd_gc(args: CmdArgs) -> None:
    """Drop accept entries of this network whose owner is not in ``cni.dev/valid-attachments``,
    and the per-bridge entries of bridges that no longer exist."""
    errors = ErrorList("firewall GC")
    with errors.step("accept entries"):
        nft_state.gc_owned(args, "firewall", [(forward.ACCEPT[v], (forward.ACCEPT_SET[v],)) for v in (4, 6)])
    with errors.step("entries of bridges that are gone"):
        gone = forward.forget_bridges(nft_state.host_nft(), lambda name: not _link_exists(name), what="firewall GC")
        if gone:
            log.note(f"GC removed the entries of bridges that are gone: {', '.join(gone)}")
    errors.raise_if_any()


PLUGIN = Plugin(
    name="firewall",
    add=cmd_add,
    delete=cmd_del,
    check=cmd_check,
    gc=cmd_gc,
    versions=VERSIONS,
    about="CNI firewall plugin (cni-py, nftables)",
)


def main() -> None:
    skel.main(PLUGIN)
