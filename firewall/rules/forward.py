"""Forwarding rules (the ``firewall`` plugin) on nftables, flat in the number of containers
and of bridges.

Our table (``inet cni_py_firewall``)::

    map accept4_owners { type ipv4_addr : mark }   set accept4 { type ipv4_addr }   (and 6)
    map bridge_owners { type ifname . ifname : mark }
    map bridge_pairs  { type ifname . ifname : verdict }   # "br" . "br" : return (same-bridge) | drop (isolated)
    set policy_bridges { type ifname }                     # bridges with same-bridge or isolated
    chain forward { type filter hook forward priority filter - 10; policy accept;
        jump CNI-ADMIN                                     # the administrators' chain, consulted first
        jump isolation
        ip daddr @accept4 ct state established,related meta mark set meta mark | MARK accept
        ip daddr @accept4 ct status dnat meta mark set meta mark | MARK accept   # published ports
        ip saddr @accept4 meta mark set meta mark | MARK accept
        (the same for ip6) }
    chain isolation {
        ct status dnat return                              # published ports stay reachable (Docker)
        iifname . oifname vmap @bridge_pairs               # traffic within one bridge
        iifname @policy_bridges oifname @policy_bridges drop }   # between two policed bridges
    chain CNI-ADMIN { }                                    # created, never flushed: yours

Per container there are only set elements (owned per attachment through
``firewall.owned``), per bridge one set element and one vmap element: a packet does a
few hash lookups whatever the number of containers and bridges, and ADD/DEL is one
transaction of a constant number of commands. A bridge's entries are shared by every
container on it and stay while it exists; once the bridge is gone they are removed by the
DEL that finds it gone, or by GC (``forget_bridges``).

An accept in our table cannot override a drop elsewhere. Where the drop is the policy of
iptables' FORWARD chain (iptables-nft, as on Docker hosts), our accepts must also be said
there, in rules ``iptables -S`` can read. iptables-nft 1.8.9 reads native payload, meta and
mark matches but not ``ct state`` (the table would become "incompatible"), and libnftables'
JSON cannot create the xtables ``conntrack`` match. So the decision is made here and handed
over as a packet mark, the way Docker's nftables backend offers ``--bridge-accept-fwmark``::

    -A FORWARD -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD
    -A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN
    -A CNI-FORWARD -m mark --mark MARK/MARK -m comment --comment "$MARK_COMMENT" -j ACCEPT

``MARK_COMMENT`` is "CNI firewall plugin: accepted in table inet cni_py_firewall". Those
rules are constant (they never grow with containers). They are ensured from a listing of
FORWARD and CNI-FORWARD (the host's chain and ours, both small), never by flushing:
CNI-FORWARD may still hold the reference plugin's per-address rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cni_plugins.spec.types import IPAddress
from firewall.expr import ADDR_TYPES, Table, element_key, match, payload
from firewall.model import Owner
from firewall.nft import Command, NftBackend
from firewall.owned import Entry, Group, OwnedMaps

FAMILY = "inet"
TABLE = "cni_py_firewall"
NFT = Table(FAMILY, TABLE)
PRIORITY = -10  # before iptables' filter FORWARD (0), so the mark is set when it looks
DEFAULT_MARK = 0x10000000
DEFAULT_ADMIN_CHAIN = "CNI-ADMIN"
IPT_CHAIN = "CNI-FORWARD"
IPT_TABLE = "filter"
IPT_FAMILIES = ("ip", "ip6")
FORWARD_COMMENT = "CNI firewall plugin rules"
ADMIN_COMMENT = "CNI firewall plugin admin overrides"
MARK_COMMENT = "CNI firewall plugin: accepted in table inet cni_py_firewall"
OPEN, SAME_BRIDGE, ISOLATED = "open", "same-bridge", "isolated"
ACCEPT = {v: OwnedMaps(family=FAMILY, table=TABLE, owners=f"accept{v}_owners") for v in (4, 6)}
ACCEPT_SET = {4: "accept4", 6: "accept6"}
BRIDGES = OwnedMaps(family=FAMILY, table=TABLE, owners="bridge_owners")
BRIDGE_PAIRS = "bridge_pairs"
POLICY_BRIDGES = "policy_bridges"
BRIDGE_OWNER_NETWORK = "cni-py-bridge"


def _mark_set(mark: int) -> dict[str, Any]:
    key = {"meta": {"key": "mark"}}
    return {"mangle": {"key": key, "value": {"|": [key, mark]}}}


def base_commands(admin_chain: str, mark: int) -> list[Command]:
    """Table, sets, maps and chains (constant size, convergent; the admin chain is only created)."""
    out: list[Command] = [NFT.add()]
    for v in (4, 6):
        out.append({"add": NFT.obj("map", name=ACCEPT[v].owners, type=ADDR_TYPES[v], map="mark")})
        out.append({"add": NFT.obj("set", name=ACCEPT_SET[v], type=ADDR_TYPES[v])})
    pair = ["ifname", "ifname"]
    out.append({"add": NFT.obj("map", name=BRIDGES.owners, type=pair, map="mark")})
    out.append({"add": NFT.obj("map", name=BRIDGE_PAIRS, type=pair, map="verdict")})
    out.append({"add": NFT.obj("set", name=POLICY_BRIDGES, type="ifname")})
    out.append({"add": NFT.obj("chain", name=admin_chain)})
    iif, oif = {"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}
    dnat = match({"ct": {"key": "status"}}, "dnat", "in")
    out += [
        {"add": NFT.obj("chain", name="isolation")},
        {"flush": NFT.obj("chain", name="isolation")},
        NFT.rule("isolation", dnat, {"return": None}),
        NFT.rule("isolation", {"vmap": {"key": {"concat": [iif, oif]}, "data": f"@{BRIDGE_PAIRS}"}}),
        NFT.rule("isolation", match(iif, f"@{POLICY_BRIDGES}"), match(oif, f"@{POLICY_BRIDGES}"), {"drop": None}),
    ]
    out += [
        {"add": NFT.obj("chain", name="forward", type="filter", hook="forward", prio=PRIORITY, policy="accept")},
        {"flush": NFT.obj("chain", name="forward")},
        NFT.rule("forward", {"jump": {"target": admin_chain}}),
        NFT.rule("forward", {"jump": {"target": "isolation"}}),
    ]
    established = match({"ct": {"key": "state"}}, ["established", "related"], "in")
    for v in (4, 6):
        daddr = match(payload(v, "daddr"), f"@{ACCEPT_SET[v]}")
        saddr = match(payload(v, "saddr"), f"@{ACCEPT_SET[v]}")
        out.append(NFT.rule("forward", daddr, established, _mark_set(mark), {"accept": None}))
        out.append(NFT.rule("forward", daddr, dnat, _mark_set(mark), {"accept": None}))
        out.append(NFT.rule("forward", saddr, _mark_set(mark), {"accept": None}))
    return out


def accept_groups(addresses: Iterable[IPAddress]) -> list[Group]:
    """The attachment's elements: each address in its family's accept set."""
    per: dict[int, dict[str, Entry]] = {4: {}, 6: {}}
    for a in addresses:
        per[a.version].setdefault(str(a), Entry(key=str(a), data={ACCEPT_SET[a.version]: None}))
    return [Group(maps=ACCEPT[v], entries=tuple(per[v].values())) for v in (4, 6) if per[v]]


def bridge_owner(bridge: str) -> Owner:
    """Per-bridge entries are shared by every container on the bridge: a synthetic owner,
    the same for every network, so the newest policy for a bridge wins."""
    return Owner(network=BRIDGE_OWNER_NETWORK, container_id=bridge, ifname=bridge)


def bridge_commands_and_group(bridge: str, policy: str) -> tuple[list[Command], Group | None]:
    """same-bridge / isolated: the bridge joins the policed set, and its own pair gets a verdict."""
    if policy == OPEN:
        return [], None
    verdict = {"drop": None} if policy == ISOLATED else {"return": None}
    add = {"add": NFT.obj("element", name=POLICY_BRIDGES, elem=[bridge])}
    entry = Entry(key={"concat": [bridge, bridge]}, data={BRIDGE_PAIRS: verdict})
    return [add], Group(maps=BRIDGES, entries=(entry,), owner=bridge_owner(bridge))


def forget_bridges(nft: NftBackend, gone: Callable[[str], bool], *, what: str) -> list[str]:
    """Remove the per-bridge entries (owner, verdict, policed-set member) of every bridge for
    which ``gone(name)`` says the link no longer exists: nothing refers to them any more.
    Lists three small maps (one element per bridge). Returns the bridges forgotten."""
    stale: set[str] = set()
    deletes: list[Command] = []
    for name in (BRIDGES.owners, BRIDGE_PAIRS, POLICY_BRIDGES):
        keys = []
        for el in nft.list_map(FAMILY, TABLE, name):
            key = element_key(el)
            bridge = _bridge_of(key)
            if bridge is not None and (bridge in stale or gone(bridge)):
                stale.add(bridge)
                keys.append(key)
        if keys:
            deletes.append({"delete": NFT.obj("element", name=name, elem=keys)})
    nft.run(deletes, what=what)
    return sorted(stale)


def _bridge_of(key: Any) -> str | None:
    """The bridge a per-bridge key names: ``"br"`` . ``"br"`` or (policed set) ``"br"``."""
    if isinstance(key, str):
        return key
    if isinstance(key, dict) and isinstance(key.get("concat"), list) and len(key["concat"]) == 2:
        first, second = key["concat"]
        if isinstance(first, str) and first == second:
            return first
    return None


# ---------------------------------------------------------------- iptables-nft's FORWARD


def _ipt(kind: str, family: str, **fields: Any) -> dict[str, Any]:
    return {kind: {"family": family, "table": IPT_TABLE, **fields}}


def _jumps_to(rule: dict[str, Any], chain: str) -> bool:
    return any(isinstance(e, dict) and e.get("jump", {}).get("target") == chain for e in rule.get("expr", []))


def _is_mark_rule(rule: dict[str, Any], mark: int) -> bool:
    return rule.get("comment") == MARK_COMMENT and any(
        isinstance(e, dict) and e.get("match", {}).get("right") == mark for e in rule.get("expr", [])
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class IptablesState:
    """What one family's ``filter`` table holds of ours (from listings of two small chains)."""

    family: str
    forward: list[dict[str, Any]]  # FORWARD's rules
    cni_forward: list[dict[str, Any]] | None  # CNI-FORWARD's rules, None if the chain is missing


def mark_rule(family: str, mark: int, **where: Any) -> dict[str, Any]:
    expr = [match({"&": [{"meta": {"key": "mark"}}, mark]}, mark), {"counter": None}, {"accept": None}]
    return _ipt("rule", family, chain=IPT_CHAIN, expr=expr, comment=MARK_COMMENT, **where)


def iptables_commands(state: IptablesState, admin_chain: str, mark: int) -> list[Command]:
    """Ensure FORWARD -> CNI-FORWARD -> (admin chain, mark accept) in one family's filter table,
    adding only what is missing and dropping our own duplicates (concurrent first ADDs).
    Nothing when all is in place, so a normal ADD sends no iptables command."""
    fam = state.family
    out: list[Command] = []
    jumps = [r for r in state.forward if _jumps_to(r, IPT_CHAIN)]
    if not jumps:
        expr = [{"counter": None}, {"jump": {"target": IPT_CHAIN}}]
        out.append({"insert": _ipt("rule", fam, chain="FORWARD", expr=expr, comment=FORWARD_COMMENT)})
    out += [
        {"delete": _ipt("rule", fam, chain="FORWARD", handle=r["handle"])}
        for r in jumps[1:]
        if r.get("comment") == FORWARD_COMMENT
    ]
    rules = state.cni_forward or []
    admins = [r for r in rules if _jumps_to(r, admin_chain)]
    marks = [r for r in rules if _is_mark_rule(r, mark)]
    if not marks:
        out.append(
            {"add": mark_rule(fam, mark, handle=admins[0]["handle"])} if admins else {"insert": mark_rule(fam, mark)}
        )
    if not admins:
        expr = [{"counter": None}, {"jump": {"target": admin_chain}}]
        out.append({"insert": _ipt("rule", fam, chain=IPT_CHAIN, expr=expr, comment=ADMIN_COMMENT)})
    dups = [r for r in admins[1:] if r.get("comment") == ADMIN_COMMENT] + marks[1:]
    out += [{"delete": _ipt("rule", fam, chain=IPT_CHAIN, handle=r["handle"])} for r in dups]
    if not out:
        return []
    return [{"add": _ipt("chain", fam, name=IPT_CHAIN)}, {"add": _ipt("chain", fam, name=admin_chain)}, *out]


def iptables_problems(state: IptablesState, admin_chain: str, mark: int) -> list[str]:
    where = f"iptables ({state.family} filter)"
    found = []
    if not any(_jumps_to(r, IPT_CHAIN) for r in state.forward):
        found.append(f"{where}: FORWARD does not jump to {IPT_CHAIN}")
    rules = state.cni_forward
    if rules is None:
        return [*found, f"{where}: chain {IPT_CHAIN} is missing"]
    if not any(_jumps_to(r, admin_chain) for r in rules):
        found.append(f"{where}: {IPT_CHAIN} does not jump to {admin_chain}")
    if not any(_is_mark_rule(r, mark) for r in rules):
        found.append(f"{where}: {IPT_CHAIN} does not accept mark {mark:#x}")
    return found
