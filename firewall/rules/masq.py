"""Masquerade for container addresses (``ipMasq`` of bridge and ptp), in our own nftables table.

Layout (table ``inet cni_py_masq``)::

    map owners4 { type ipv4_addr : mark }          # who owns each source address (firewall.owned)
    map owners6 { type ipv6_addr : mark }
    map masq4   { type ipv4_addr : verdict }       # container address -> goto its subnet's chain
    map masq6   { type ipv6_addr : verdict }
    chain postrouting { type nat hook postrouting priority srcnat; policy accept;
        ip saddr vmap @masq4
        ip6 saddr vmap @masq6 }
    chain masq-<hash(network)>-<subnet> {           # one per (network, subnet), shared by its containers
        ip daddr <subnet> return                    # traffic that stays in the subnet keeps its source
        ip daddr 224.0.0.0/4 return                 # multicast is never masqueraded (as the reference)
        masquerade }

Per container there are only map elements (one per address in ``masqN`` and ``ownersN``),
each commented with ``Owner.comment``. So an ADD or DEL is one transaction of a constant
number of commands, whatever the number of containers: no rule per container to list,
no chain per container, nothing read back on the hot path. Base and subnet chains are
re-asserted (add + flush + re-add their few rules, in the same batch as the elements) when
their layout stamp is missing (``firewall.layout``: the first ADD, a deleted table, a
changed layout), so they converge to the right content like the reference's tables and a
deleted table heals on the next ADD; other ADDs send only their elements.

Ownership goes through ``firewall.owned``: a newer attachment that got the same address
takes the element over, and the older one's late DEL leaves it alone. Without addresses
(DEL with neither prevResult nor a live interface) entries are found by owner (listing,
off the hot path); GC drops entries of a network whose owner is not a valid attachment.

Per-(network, subnet) chains are left in place on DEL, as the reference leaves its base
chains: other containers of the subnet use them, and they cost nothing when unused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from cni_plugins.spec.types import IPInterface, IPNetwork
from firewall.expr import ADDR_TYPES, Table, element_key, payload
from firewall.layout import prune, stamp_for
from firewall.model import Owner, network_prefix, short_hash
from firewall.nft import EEXIST, ENOENT, Command, NftBackend, NftError
from firewall.owned import (
    Entry,
    OwnedMaps,
    add_commands,
    claim,
    gc,
    release,
    release_all_of,
    release_commands,
)

FAMILY = "inet"
TABLE = "cni_py_masq"
NFT = Table(FAMILY, TABLE)
BASE_CHAIN = "postrouting"
SRCNAT_PRIORITY = 100
MAPS = {
    4: OwnedMaps(family=FAMILY, table=TABLE, owners="owners4"),
    6: OwnedMaps(family=FAMILY, table=TABLE, owners="owners6"),
}
VMAPS = {4: "masq4", 6: "masq6"}
MULTICAST: dict[int, IPNetwork] = {4: ipaddress.ip_network("224.0.0.0/4"), 6: ipaddress.ip_network("ff00::/8")}


def chain_name(network: str, subnet: IPNetwork) -> str:
    """``masq-<hash(network)>-<subnet>`` with only [a-z0-9_-], so ``nft list`` output re-parses."""
    token = str(subnet).replace(".", "_").replace(":", "_").replace("/", "-")
    return f"masq-{short_hash(network, 12)}-{token}"


def _daddr_in(version: int, net: IPNetwork) -> object:
    left = payload(version, "daddr")
    return {
        "match": {
            "op": "==",
            "left": left,
            "right": {"prefix": {"addr": str(net.network_address), "len": net.prefixlen}},
        }
    }


def base_commands() -> list[Command]:
    """The table, its maps and the base chain, re-asserted (convergent, idempotent)."""
    out: list[Command] = [NFT.add()]
    for v in (4, 6):
        out.append({"add": NFT.obj("map", name=MAPS[v].owners, type=ADDR_TYPES[v], map="mark")})
        out.append({"add": NFT.obj("map", name=VMAPS[v], type=ADDR_TYPES[v], map="verdict")})
    out.append(
        {
            "add": NFT.obj(
                "chain", name=BASE_CHAIN, type="nat", hook="postrouting", prio=SRCNAT_PRIORITY, policy="accept"
            )
        }
    )
    out.append({"flush": NFT.obj("chain", name=BASE_CHAIN)})
    for v in (4, 6):
        saddr = payload(v, "saddr")
        out.append(NFT.rule(BASE_CHAIN, {"vmap": {"key": saddr, "data": f"@{VMAPS[v]}"}}))
    return out


def subnet_chain_commands(network: str, subnet: IPNetwork) -> list[Command]:
    """The chain that masquerades traffic leaving ``subnet`` (re-asserted like the base chain)."""
    name, v = chain_name(network, subnet), subnet.version
    return [
        {"add": NFT.obj("chain", name=name)},
        {"flush": NFT.obj("chain", name=name)},
        NFT.rule(name, _daddr_in(v, subnet), {"return": None}),
        NFT.rule(name, _daddr_in(v, MULTICAST[v]), {"return": None}),
        NFT.rule(name, {"masquerade": None}),
    ]


def entries_for(network: str, addresses: Iterable[IPInterface]) -> dict[int, list[Entry]]:
    """Map entries per IP version: source address -> goto its subnet's chain."""
    out: dict[int, list[Entry]] = {4: [], 6: []}
    for addr in addresses:
        verdict = {"goto": {"target": chain_name(network, addr.network)}}
        out[addr.version].append(Entry(key=str(addr.ip), data={VMAPS[addr.version]: verdict}))
    return out


def setup_commands(owner: Owner, addresses: Sequence[IPInterface]) -> list[Command]:
    """The whole ADD batch: base objects, subnet chains, then owner's elements."""
    out = base_commands()
    for subnet in dict.fromkeys(a.network for a in addresses):
        out += subnet_chain_commands(owner.network, subnet)
    for v, entries in entries_for(owner.network, addresses).items():
        out += add_commands(MAPS[v], owner, entries)
    return out


def setup_masq(nft: NftBackend, owner: Owner, addresses: Sequence[IPInterface]) -> None:
    """Masquerade traffic from ``addresses`` (with their prefix: the subnet that is *not*
    masqueraded) leaving their subnet. One transaction on the hot path."""
    if not addresses:
        return
    what = f"set up masquerade for {', '.join(str(a) for a in addresses)}"
    layout = base_commands()
    for subnet in dict.fromkeys(a.network for a in addresses):
        layout += subnet_chain_commands(owner.network, subnet)
    stamp = stamp_for(FAMILY, TABLE, owner.network, layout)
    elements = [
        c for v, entries in entries_for(owner.network, addresses).items() for c in add_commands(MAPS[v], owner, entries)
    ]
    try:
        try:
            nft.run(stamp.guard() + elements, what=what)  # the layout is in place: elements only
            return
        except NftError as exc:
            if exc.kind != ENOENT:
                raise
        nft.run(setup_commands(owner, addresses) + stamp.create(), what=what)
        prune(nft, stamp, what=what)
        return
    except NftError as exc:
        if exc.kind != EEXIST and "Operation not supported" not in exc.msg:
            raise
    # Rare path: an address is held by another attachment (newest wins), or by us with other
    # data (the subnet changed). The kernel refuses a different verdict for an existing
    # element with EOPNOTSUPP, so our own stale element is released first.
    setup = base_commands()
    for subnet in dict.fromkeys(a.network for a in addresses):
        setup += subnet_chain_commands(owner.network, subnet)
    for v, entries in entries_for(owner.network, addresses).items():
        if entries:
            release(nft, MAPS[v], owner, entries, what=what)
            claim(nft, MAPS[v], owner, entries, setup=setup, what=what)


def teardown_masq(nft: NftBackend, owner: Owner, addresses: Sequence[IPInterface] | None) -> None:
    """Remove owner's masquerade entries. ``addresses`` None: find them by owner (lists the
    owners maps: for DEL without prevResult or interface). Absent entries, a missing table
    and entries another attachment took over are all fine. One transaction when all is ours."""
    what = f"tear down masquerade of {owner.container_id}/{owner.ifname}"
    if addresses is None:
        for v in (4, 6):
            release_all_of(nft, MAPS[v], owner, (VMAPS[v],), what=what)
        return
    per_family = entries_for(owner.network, addresses)
    batch = [c for v, entries in per_family.items() for e in entries for c in release_commands(MAPS[v], owner, e)]
    if not batch:
        return
    try:
        nft.run(batch, what=what)
    except NftError:
        for v, entries in per_family.items():  # settle entry by entry (owned.release does)
            release(nft, MAPS[v], owner, entries, what=what)


def gc_masq(nft: NftBackend, network: str, valid: Iterable[Owner]) -> int:
    """Drop entries of ``network`` whose owner is not in ``valid``. Returns how many."""
    keep = {o.prefix for o in valid}
    return sum(
        gc(nft, MAPS[v], (VMAPS[v],), keep, network_prefix(network), what=f"gc masquerade of {network}") for v in (4, 6)
    )


def validate_masq(nft: NftBackend, owner: Owner, addresses: Sequence[IPInterface]) -> list[str]:
    """CHECK: what is missing or wrong for owner's addresses (lists the maps: not a hot path)."""
    problems = []
    for v, entries in entries_for(owner.network, addresses).items():
        if not entries:
            continue
        owners = {element_key(el): el[1] for el in nft.list_map(FAMILY, TABLE, MAPS[v].owners) if isinstance(el, list)}
        verdicts = {element_key(el): el[1] for el in nft.list_map(FAMILY, TABLE, VMAPS[v]) if isinstance(el, list)}
        for e in entries:
            if owners.get(e.key) != owner.mark:
                problems.append(f"masquerade entry for {e.key} is missing or owned by another attachment")
            elif verdicts.get(e.key) != e.data[VMAPS[v]]:
                problems.append(
                    f"masquerade entry for {e.key} is {verdicts.get(e.key)!r}, expected {e.data[VMAPS[v]]!r}"
                )
    return problems
