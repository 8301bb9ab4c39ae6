"""Port mappings (the ``portmap`` plugin) in our own nftables table, flat in the number of
containers: a packet's lookup and an ADD cost the same at the thousandth container as at
the first.

Layout (table ``inet cni_py_portmap``)::

    # per kind K of mapping: any4 / any6 (every local address of one family, keyed
    # proto . port) and hostip4 / hostip6 (one host address, keyed addr . proto . port)
    map K_owners { type <key> : mark }         # who owns each key (firewall.owned)
    map K_chain  { type <key> : verdict }      # key -> jump to the mapping network's chain
    map K_addr   { type <key> : ipv4_addr }    # key -> container address (ipv6_addr for *6)
    map K_port   { type <key> : inet_service } # key -> container port
    map masq4_owners { type ipv4_addr : mark }  map masq4 { type ipv4_addr : verdict }  (and 6)

    chain prerouting { type nat hook prerouting priority dstnat; fib daddr type local jump hostports }
    chain output     { type nat hook output priority dstnat;     fib daddr type local jump hostports }
    chain hostports {
        ip daddr . meta l4proto . th dport vmap @hostip4_chain
        ip6 daddr . meta l4proto . th dport vmap @hostip6_chain
        meta nfproto ipv4 meta l4proto . th dport vmap @any4_chain
        meta nfproto ipv6 meta l4proto . th dport vmap @any6_chain }
    chain dnat-<hash(network)>-K {               # per network and kind: its conditions, then
        <conditionsV4|V6> dnat ip to <key> map @K_addr : <key> map @K_port }   # DNAT via the maps
    chain postrouting { type nat hook postrouting priority srcnat;
        ct status dnat ip daddr vmap @masq4
        ct status dnat ip6 daddr vmap @masq6 }
    chain hairpin-<subnet> { ip saddr { <subnet>, 127.0.0.0/8 } masquerade }   # snat (v6: no 127/8)
    chain masq-all { masquerade }                                              # masqAll

Per container there are only map elements, each commented with ``Owner.comment``: one
transaction of a constant number of commands per ADD or DEL, nothing listed on the hot
path. Base chains and the per-network/per-subnet chains are re-asserted (add + flush +
re-add their few rules, in the same batch as the elements) whenever the network's layout
stamp is missing (``firewall.layout``): on its first ADD, after the table was deleted or
the ruleset flushed, and when its config changed, so a network's conditions follow its
latest config (per network, where the reference's are global). Other ADDs send only their
elements. Specific host addresses are looked up before wildcards.

Masquerade only touches connections this host DNATed (``ct status dnat``) to a mapped
container: hairpin traffic (from the container's subnet: itself or a neighbour), from
127.0.0.0/8 (localhost, with route_localnet), or from anywhere with masqAll.

Ownership: newest wins by default, and an older attachment's late DEL leaves the newer
one's elements alone (``firewall.owned``); with ``exclusive`` a taken host port is refused.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Mapping as TMapping
from dataclasses import dataclass
from typing import Any

from cni_plugins.spec.types import IPInterface, IPNetwork
from firewall.expr import ADDR_TYPES, PROTOCOLS, Table, payload
from firewall.model import short_hash
from firewall.nft import Command
from firewall.owned import Entry, Group, OwnedMaps

FAMILY = "inet"
TABLE = "cni_py_portmap"
NFT = Table(FAMILY, TABLE)
DSTNAT, SRCNAT = -100, 100
NFPROTO = {4: "ipv4", 6: "ipv6"}
LOCALHOST4 = {"prefix": {"addr": "127.0.0.0", "len": 8}}
MASQ_ALL = "masq-all"
L4PROTO = {"meta": {"key": "l4proto"}}
DPORT = {"payload": {"protocol": "th", "field": "dport"}}


@dataclass(frozen=True, slots=True, kw_only=True)
class Kind:
    """One kind of mapping key: a family, and a specific host address or not."""

    name: str
    version: int
    specific: bool

    @property
    def maps(self) -> OwnedMaps:
        return OwnedMaps(family=FAMILY, table=TABLE, owners=f"{self.name}_owners")

    @property
    def data_maps(self) -> tuple[str, str, str]:
        return (f"{self.name}_chain", f"{self.name}_addr", f"{self.name}_port")

    @property
    def key_type(self) -> list[str]:
        base = ["inet_proto", "inet_service"]
        return [ADDR_TYPES[self.version], *base] if self.specific else base

    def key_expr(self) -> dict[str, Any]:
        parts: list[Any] = [L4PROTO, DPORT]
        if self.specific:
            parts.insert(0, payload(self.version, "daddr"))
        return {"concat": parts}

    def key(self, protocol: str, port: int, host_ip: str = "") -> dict[str, Any]:
        return {"concat": [host_ip, protocol, port] if self.specific else [protocol, port]}


KINDS = (
    Kind(name="hostip4", version=4, specific=True),
    Kind(name="hostip6", version=6, specific=True),
    Kind(name="any4", version=4, specific=False),
    Kind(name="any6", version=6, specific=False),
)
KIND = {k.name: k for k in KINDS}
MASQ = {v: OwnedMaps(family=FAMILY, table=TABLE, owners=f"masq{v}_owners") for v in (4, 6)}
MASQ_VMAP = {4: "masq4", 6: "masq6"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Mapping:
    """One port mapping for one container address (already filtered by family)."""

    host_port: int
    container_port: int
    protocol: str
    host_ip: str  # "" = every local address of the family


def _chain(name: str, *rules: list[Any], hook: str = "", prio: int = 0) -> list[Command]:
    """add + flush + re-add: the chain converges to exactly these rules."""
    spec: dict[str, Any] = {"name": name}
    if hook:
        spec.update(type="nat", hook=hook, prio=prio, policy="accept")
    return [
        {"add": NFT.obj("chain", **spec)},
        {"flush": NFT.obj("chain", name=name)},
        *(NFT.rule(name, *r) for r in rules),
    ]


def dnat_chain(network: str, kind: Kind) -> str:
    return f"dnat-{short_hash(network, 12)}-{kind.name}"


def hairpin_chain(subnet: IPNetwork) -> str:
    token = str(subnet).replace(".", "_").replace(":", "_").replace("/", "-")
    return f"hairpin-{token}"


def base_commands() -> list[Command]:
    """Table, maps and base chains (constant size, convergent)."""
    out: list[Command] = [NFT.add()]
    for k in KINDS:
        out.append({"add": NFT.obj("map", name=k.maps.owners, type=k.key_type, map="mark")})
        chain_map, addr_map, port_map = k.data_maps
        out.append({"add": NFT.obj("map", name=chain_map, type=k.key_type, map="verdict")})
        out.append({"add": NFT.obj("map", name=addr_map, type=k.key_type, map=ADDR_TYPES[k.version])})
        out.append({"add": NFT.obj("map", name=port_map, type=k.key_type, map="inet_service")})
    for v in (4, 6):
        out.append({"add": NFT.obj("map", name=MASQ[v].owners, type=ADDR_TYPES[v], map="mark")})
        out.append({"add": NFT.obj("map", name=MASQ_VMAP[v], type=ADDR_TYPES[v], map="verdict")})
    local = {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}}
    out += _chain("hostports", *(_dispatch(k) for k in KINDS))
    out += _chain("prerouting", [local, {"jump": {"target": "hostports"}}], hook="prerouting", prio=DSTNAT)
    out += _chain("output", [local, {"jump": {"target": "hostports"}}], hook="output", prio=DSTNAT)
    dnat = {"match": {"op": "in", "left": {"ct": {"key": "status"}}, "right": "dnat"}}
    out += _chain(
        "postrouting",
        *([dnat, {"vmap": {"key": payload(v, "daddr"), "data": f"@{MASQ_VMAP[v]}"}}] for v in (4, 6)),
        hook="postrouting",
        prio=SRCNAT,
    )
    out += _chain(MASQ_ALL, [{"masquerade": None}])
    return out


def _dispatch(k: Kind) -> list[Any]:
    head = (
        []
        if k.specific
        else [{"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": NFPROTO[k.version]}}]
    )
    return [*head, {"vmap": {"key": k.key_expr(), "data": f"@{k.data_maps[0]}"}}]


def network_commands(network: str, conditions: TMapping[int, Sequence[dict[str, Any]]]) -> list[Command]:
    """The network's DNAT chains, one per kind, with its conditions (convergent)."""
    out: list[Command] = []
    for k in KINDS:
        _, addr_map, port_map = k.data_maps
        dnat = {
            "dnat": {
                "family": PROTOCOLS[k.version],
                "addr": {"map": {"key": k.key_expr(), "data": f"@{addr_map}"}},
                "port": {"map": {"key": k.key_expr(), "data": f"@{port_map}"}},
            }
        }
        out += _chain(dnat_chain(network, k), [*conditions.get(k.version, ()), dnat])
    return out


def hairpin_commands(subnet: IPNetwork) -> list[Command]:
    sources: list[Any] = [{"prefix": {"addr": str(subnet.network_address), "len": subnet.prefixlen}}]
    if subnet.version == 4:
        sources.append(LOCALHOST4)
    saddr = payload(subnet.version, "saddr")
    return _chain(
        hairpin_chain(subnet), [{"match": {"op": "==", "left": saddr, "right": {"set": sources}}}, {"masquerade": None}]
    )


def kind_for(version: int, host_ip: str) -> Kind:
    wildcard = host_ip in ("", "0.0.0.0", "::")
    return KIND[f"{'any' if wildcard else 'hostip'}{version}"]


def groups_for(
    network: str,
    containers: TMapping[int, IPInterface],
    mappings: TMapping[int, Sequence[Mapping]],
    *,
    snat: bool,
    masq_all: bool,
    exclusive: bool = False,
) -> list[Group]:
    """The elements of one attachment: DNAT entries per kind, and masquerade per address."""
    per_kind: dict[str, dict[str, Entry]] = {k.name: {} for k in KINDS}
    for v, cip in containers.items():
        for m in mappings.get(v, ()):
            k = kind_for(v, m.host_ip)
            key = k.key(m.protocol, m.host_port, m.host_ip)
            data = {
                k.data_maps[0]: {"jump": {"target": dnat_chain(network, k)}},
                k.data_maps[1]: str(cip.ip),
                k.data_maps[2]: m.container_port,
            }
            per_kind[k.name].setdefault(
                repr(key), Entry(key=key, data=data)
            )  # the first of duplicates wins, as in the reference
    groups = [Group(maps=k.maps, entries=tuple(per_kind[k.name].values()), exclusive=exclusive) for k in KINDS]
    if snat:
        for v, cip in containers.items():
            if mappings.get(v):
                chain = MASQ_ALL if masq_all else hairpin_chain(cip.network)
                entry = Entry(key=str(cip.ip), data={MASQ_VMAP[v]: {"jump": {"target": chain}}})
                groups.append(Group(maps=MASQ[v], entries=(entry,)))
    return [g for g in groups if g.entries]


def setup_commands(
    network: str,
    containers: TMapping[int, IPInterface],
    conditions: TMapping[int, Sequence[dict[str, Any]]],
    *,
    snat: bool,
    masq_all: bool,
) -> list[Command]:
    """Everything an ADD re-asserts besides its own elements."""
    out = base_commands() + network_commands(network, conditions)
    if snat and not masq_all:
        for subnet in dict.fromkeys(c.network for c in containers.values()):
            out += hairpin_commands(subnet)
    return out


def all_maps() -> Iterable[tuple[OwnedMaps, tuple[str, ...]]]:
    """Every owners map with its data maps (for DEL by owner and GC)."""
    for k in KINDS:
        yield k.maps, k.data_maps
    for v in (4, 6):
        yield MASQ[v], (MASQ_VMAP[v],)


def describe(owners_map: str, key: Any) -> str:
    """A key as a person reads it: ``tcp port 8080 on 10.0.0.1`` / ``... on all IPv4 addresses``."""
    parts = key.get("concat", []) if isinstance(key, dict) else []
    if owners_map.startswith("hostip") and len(parts) == 3:
        return f"{parts[1]} port {parts[2]} on {parts[0]}"
    if len(parts) == 2:
        return f"{parts[0]} port {parts[1]} on all IPv{owners_map[3]} addresses"
    return f"address {key}"


def owner_text(comment: str) -> str:
    """The readable part of an owner comment (``net:... if:... id:...``)."""
    return comment.split(" ", 1)[1] if " " in comment else comment
