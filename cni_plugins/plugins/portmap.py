"""``portmap`` (chained): forward host ports to the container, on nftables, flat in the
number of containers (layout and reasoning: ``firewall.rules.portmap``).

Reference-compatible: the ``portMappings`` capability, ``snat`` (default true: hairpin and
localhost traffic, with ``route_localnet`` on the interface towards the container),
``masqAll``, ``conditionsV4``/``conditionsV6`` (nft syntax, parsed into a restricted set of
matches) and ``backend`` (``iptables``, ``nftables`` or empty: always served by nftables).
Options that mean nothing on nftables (``markMasqBit``, ``externalSetMarkChain``,
iptables-syntax conditions) are refused with a message naming the nftables equivalent.

Ours: by default the newest mapping of a host port wins and an older container's late DEL
leaves it alone (ownership per element); ``"exclusiveHostPorts": true`` refuses a host port
that another attachment holds, naming it. Stale UDP conntrack entries for mapped ports are
removed on ADD and on DEL.

No mappings: the result passes through and nftables is not even imported.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from cni_plugins.plugins import nft_state
from cni_plugins.protocol import log, skel
from cni_plugins.protocol.skel import CmdArgs, Plugin
from cni_plugins.protocol.steps import options_for_del, prev_result_for_check
from cni_plugins.spec.errors import (
    CNIError,
    ErrorList,
    InvalidNetworkConfig,
    UnsupportedField,
)
from cni_plugins.spec.types import IPInterface, Result
from conf.fields import bool_field, str_field, str_list_field
from conf.netconf import NetConf, PortMapping
from firewall.layout import stamp_for
from firewall.owned import (
    EntryTaken,
    Group,
    claim_groups,
    problems,
    release_all_of,
    release_groups,
)
from firewall.rules import conditions
from firewall.rules import portmap as rules

BACKENDS = ("", "iptables", "nftables")
IPTABLES_ONLY = {
    "markMasqBit": (
        "nftables needs no mark bit: masquerading is decided by conntrack (ct status dnat) in table inet cni_py_portmap"
    ),
    "externalSetMarkChain": (
        "nftables uses no mark chain: to masquerade port-mapped traffic from any source, set masqAll"
    ),
}


class HostPortTaken(CNIError):
    """exclusiveHostPorts: the host port is mapped by another attachment."""

    code = 999


@dataclass(frozen=True, slots=True, kw_only=True)
class PortMapConf:
    """The plugin's options and the attachment it works on, parsed once."""

    snat: bool = True
    masq_all: bool = False
    exclusive_host_ports: bool = False
    backend: str = ""
    conditions: dict[int, tuple[dict[str, Any], ...]] = field(default_factory=dict)
    port_mappings: tuple[PortMapping, ...] = ()
    containers: dict[int, IPInterface] = field(default_factory=dict)  # first IPv4 / IPv6 of CNI_IFNAME

    @classmethod
    def from_netconf(cls, conf: NetConf, ifname: str, *, strict: bool = True) -> PortMapConf:
        """``strict=False`` (DEL, GC) skips the checks that only matter when setting up."""
        raw = conf.raw
        backend = str_field(raw, "backend", "", choices=BACKENDS)
        conds: dict[int, tuple[dict[str, Any], ...]] = {}
        if strict:
            for key, hint in IPTABLES_ONLY.items():
                if raw.get(key) is not None:
                    raise UnsupportedField(
                        f"{key} is an iptables option and cannot be used here", f"{hint}; remove {key}"
                    )
            for version, key in ((4, "conditionsV4"), (6, "conditionsV6")):
                conds[version] = conditions.parse(str_list_field(raw, key), version, key)
        return cls(
            snat=bool_field(raw, "snat", True),
            masq_all=bool_field(raw, "masqAll", False),
            exclusive_host_ports=bool_field(raw, "exclusiveHostPorts", False),
            backend=backend,
            conditions=conds,
            port_mappings=conf.runtime_config.port_mappings,
            containers=container_addresses(conf.prev_result, ifname) if conf.prev_result else {},
        )

    def mappings(self) -> dict[int, tuple[rules.Mapping, ...]]:
        """Mappings per container address family; a hostIP of the other family is skipped."""
        out: dict[int, list[rules.Mapping]] = {4: [], 6: []}
        for pm in self.port_mappings:
            host = ipaddress.ip_address(pm.host_ip) if pm.host_ip else None
            for v in (4, 6) if host is None else (host.version,):
                host_ip = "" if host is None or host.is_unspecified else str(host)
                out[v].append(
                    rules.Mapping(
                        host_port=pm.host_port, container_port=pm.container_port, protocol=pm.protocol, host_ip=host_ip
                    )
                )
        return {v: tuple(ms) for v, ms in out.items() if ms and v in self.containers}

    def groups(self, network: str) -> list[Group]:
        return rules.groups_for(
            network,
            self.containers,
            self.mappings(),
            snat=self.snat,
            masq_all=self.masq_all,
            exclusive=self.exclusive_host_ports,
        )

    def udp_ports(self) -> list[int]:
        return sorted({m.host_port for ms in self.mappings().values() for m in ms if m.protocol == "udp"})


def container_addresses(result: Result, ifname: str) -> dict[int, IPInterface]:
    """The first IPv4 and IPv6 address on CNI_IFNAME in a sandbox, as the reference picks them:
    an entry whose interface index points at another (or a non-sandbox) interface is skipped;
    one without an index, or with an index out of range, is taken."""
    out: dict[int, IPInterface] = {}
    for ip in result.ips:
        if ip.version in out:
            continue
        idx = ip.interface
        if idx is not None and 0 <= idx < len(result.interfaces):
            iface = result.interfaces[idx]
            if iface.name != ifname or not iface.sandbox:
                continue
        out[ip.version] = ip.address
    return out


def cmd_add(args: CmdArgs) -> Result:
    prev = args.conf.prev_result
    if prev is None:
        raise InvalidNetworkConfig(
            "portmap must be called as a chained plugin", "put it after a main plugin (bridge, ptp, ...) in a conflist"
        )
    conf = PortMapConf.from_netconf(args.conf, args.ifname)
    if conf.backend == "iptables":
        log.note("backend iptables asked for; port mappings are served by nftables (table inet cni_py_portmap)")
    groups = conf.groups(args.conf.name)
    if not groups:
        return prev  # nothing to map: the firewall is not touched
    if conf.snat and 4 in conf.mappings():
        _enable_localnet(conf.containers[4])
    owner = nft_state.owner(args)
    what = f"map ports of {args.container_id}/{args.ifname}"
    setup = rules.setup_commands(
        args.conf.name, conf.containers, conf.conditions, snat=conf.snat, masq_all=conf.masq_all
    )
    try:
        stamp = stamp_for(rules.FAMILY, rules.TABLE, args.conf.name, setup)
        claim_groups(nft_state.host_nft(), owner, groups, setup=setup, what=what, stamp=stamp)
    except EntryTaken as err:
        owners_map = next((g.maps.owners for g in groups if any(e.key == err.key for e in g.entries)), "")
        raise HostPortTaken(
            f"host {rules.describe(owners_map, err.key)} is already mapped by {rules.owner_text(err.holder)}",
            "exclusiveHostPorts is set: remove that container's mapping first, or pick another host port",
        ) from None
    _flush_udp(conf)
    return prev


def cmd_del(args: CmdArgs) -> None:
    """This attachment's mappings, from prevResult and runtimeConfig; found by owner when
    either is missing or unreadable (options that cannot be read: by owner too)."""
    conf: PortMapConf | None = options_for_del(
        "portmap", lambda: PortMapConf.from_netconf(args.conf, args.ifname, strict=False), lambda: None
    )
    mappings_known = conf is not None and args.conf.readable("runtimeConfig")
    if conf is not None and mappings_known and not conf.port_mappings:
        return  # as the reference: nothing was mapped for this attachment
    errors = ErrorList("portmap DEL")
    owner, what = nft_state.owner(args), f"unmap ports of {args.container_id}/{args.ifname}"
    nft = nft_state.host_nft()
    if conf is None or not mappings_known or args.conf.prev_result is None:
        for maps, data_maps in rules.all_maps():  # no addresses or mappings: find the entries by owner
            with errors.step(f"remove entries of {maps.owners}"):
                release_all_of(nft, maps, owner, data_maps, what=what)
    else:
        with errors.step("remove port mappings"):
            release_groups(nft, owner, conf.groups(args.conf.name), what=what)
    if conf is not None:
        _flush_udp(conf, versions=(4, 6) if args.conf.prev_result is None else None)
    errors.raise_if_any()


def cmd_check(args: CmdArgs) -> None:
    prev_result_for_check(args, "portmap")
    conf = PortMapConf.from_netconf(args.conf, args.ifname)
    groups = conf.groups(args.conf.name)
    if not groups:
        return
    nft, owner, found = nft_state.host_nft(), nft_state.owner(args), []
    chains = ["prerouting", "output", "hostports", *(rules.dnat_chain(args.conf.name, k) for k in rules.KINDS)]
    if conf.snat:
        chains += ["postrouting", rules.MASQ_ALL if conf.masq_all else ""]
        chains += [] if conf.masq_all else [rules.hairpin_chain(c.network) for c in conf.containers.values()]
    for chain in filter(None, chains):
        if nft.list_chain(rules.FAMILY, rules.TABLE, chain) is None:
            found.append(f"chain {chain} is missing from table {rules.FAMILY} {rules.TABLE}")
    for g in groups:
        for entry, why in problems(nft, g.maps, g.owner or owner, g.entries):
            found.append(f"{rules.describe(g.maps.owners, entry.key)}: {why}")
    if found:
        raise CNIError(
            f"portmap CHECK of {args.container_id}/{args.ifname}: {'; '.join(found)}",
            "run ADD again to restore the mappings",
        )


def cmd_gc(args: CmdArgs) -> None:
    """Drop entries of this network whose owner is not in ``cni.dev/valid-attachments``."""
    nft_state.gc_owned(args, "portmap", rules.all_maps())


def _enable_localnet(container: IPInterface) -> None:
    """route_localnet=1 on the interface that routes to the container (127.0.0.1 -> hostPort)."""
    from cni_plugins.kernel import sysctl
    from cni_plugins.kernel.routeget import output_interface

    try:
        ifname = output_interface(container.ip)
    except OSError as exc:
        raise CNIError(f"find the interface that routes to {container.ip}: {exc}") from None
    if ifname is None or ifname == "lo":
        log.note(f"no interface routes to {container.ip}; connections to 127.0.0.1:hostPort will not reach it")
        return
    sysctl.ensure(sysctl.iface_key(4, ifname, "route_localnet"), "1")


def _flush_udp(conf: PortMapConf, versions: tuple[int, ...] | None = None) -> None:
    ports = (
        sorted({pm.host_port for pm in conf.port_mappings if pm.protocol == "udp"}) if versions else conf.udp_ports()
    )
    if not ports:
        return
    from cni_plugins.kernel.conntrack import delete_udp_flows

    for problem in delete_udp_flows(ports, versions or tuple(conf.mappings())):
        log.warning(f"stale UDP conntrack entries: {problem}")


PLUGIN = Plugin(
    name="portmap",
    add=cmd_add,
    delete=cmd_del,
    check=cmd_check,
    gc=cmd_gc,
    about="CNI portmap plugin (cni-py, nftables)",
)


def main() -> None:
    skel.main(PLUGIN)
