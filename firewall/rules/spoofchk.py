"""MAC spoof check (bridge ``macspoofchk``): frames a container sends into the bridge must
carry the container interface's MAC, else they are dropped before the bridge sees them.

The reference keeps this in table ``bridge nat`` with one jump rule per port in a shared
PREROUTING chain plus two chains per container, and finds its rule by listing the chain on
teardown. Ours lives in its own table, with per-container *elements* only::

    table bridge cni_py_macspoof {
        map owners { type ifname : mark }            # guarded ports (host veth), by owner
        set allowed { type ifname . ether_addr }     # the one source MAC each port may use
        chain prerouting { type filter hook prerouting priority -300; policy accept;
            iifname @owners iifname . ether saddr != @allowed drop } }

A port not in ``owners`` is not checked; a guarded port passes only frames whose source MAC
is its ``allowed`` pair. ADD and DEL are one transaction each whatever the number of ports.
Ports are host veth names: random per attachment, so ownership matters only for stale
entries; it still goes through ``firewall.owned`` (comment + mark) so DEL without prevResult
and GC find entries by owner.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from firewall.expr import Table, element_key
from firewall.model import Owner, network_prefix, owner_prefix_of
from firewall.nft import Command, NftBackend, NftError
from firewall.owned import Entry, OwnedMaps, add_commands, release, release_commands

FAMILY = "bridge"
TABLE = "cni_py_macspoof"
NFT = Table(FAMILY, TABLE)
CHAIN = "prerouting"
ALLOWED = "allowed"
PRIORITY = -300  # as the reference: before anything else in the bridge family
MAPS = OwnedMaps(family=FAMILY, table=TABLE, owners="owners")


def _pair(port: str, mac: str) -> dict[str, Any]:
    return {"concat": [port, mac.lower()]}


def base_commands() -> list[Command]:
    iifname = {"meta": {"key": "iifname"}}
    rule = [
        {"match": {"op": "==", "left": iifname, "right": f"@{MAPS.owners}"}},
        {
            "match": {
                "op": "!=",
                "left": {"concat": [iifname, {"payload": {"protocol": "ether", "field": "saddr"}}]},
                "right": f"@{ALLOWED}",
            }
        },
        {"drop": None},
    ]
    return [
        NFT.add(),
        {"add": NFT.obj("map", name=MAPS.owners, type="ifname", map="mark")},
        {"add": NFT.obj("set", name=ALLOWED, type=["ifname", "ether_addr"])},
        {"add": NFT.obj("chain", name=CHAIN, type="filter", hook="prerouting", prio=PRIORITY, policy="accept")},
        {"flush": NFT.obj("chain", name=CHAIN)},
        {"add": NFT.obj("rule", chain=CHAIN, expr=rule)},
    ]


def _allowed(verb: str, owner: Owner, port: str, mac: str) -> Command:
    elem: Any = {"elem": {"val": _pair(port, mac), "comment": owner.comment}} if verb == "add" else _pair(port, mac)
    return {verb: NFT.obj("element", name=ALLOWED, elem=[elem])}


def setup_commands(owner: Owner, port: str, mac: str) -> list[Command]:
    return base_commands() + add_commands(MAPS, owner, [Entry(key=port)]) + [_allowed("add", owner, port, mac)]


def setup_spoofcheck(nft: NftBackend, owner: Owner, port: str, mac: str) -> None:
    """Allow only ``mac`` as source of frames entering the bridge from ``port``. One transaction."""
    nft.run(setup_commands(owner, port, mac), what=f"set up mac spoof check on {port} for {mac}")


def teardown_spoofcheck(nft: NftBackend, owner: Owner, port: str | None = None, mac: str | None = None) -> None:
    """Remove owner's guard. With ``port`` and ``mac`` (prevResult or the live link) it is one
    transaction; without them the entries are found by owner (listing: DEL without prevResult)."""
    what = f"tear down mac spoof check of {owner.container_id}/{owner.ifname}"
    if port and mac:
        try:
            nft.run(release_commands(MAPS, owner, Entry(key=port)) + [_allowed("delete", owner, port, mac)], what=what)
            return
        except NftError:
            pass  # already gone (a repeated DEL), or the MAC changed since ADD: settle by listing
    ports = (
        {port}
        if port
        else {
            str(element_key(el))
            for el in nft.list_map(FAMILY, TABLE, MAPS.owners)
            if isinstance(el, list) and el[1] == owner.mark
        }
    )
    for p in ports:
        release(nft, MAPS, owner, [Entry(key=p)], what=what)
    _delete_allowed(nft, lambda pair, comment: pair[0] in ports and owner.matches_comment(comment), what=what)


def gc_spoofcheck(nft: NftBackend, network: str, valid: Iterable[Owner]) -> int:
    """Drop guards of ``network`` whose owner is not in ``valid``. Returns how many ports."""
    from firewall.owned import gc

    keep, net = {o.prefix for o in valid}, network_prefix(network)
    what = f"gc mac spoof check of {network}"
    count = gc(nft, MAPS, (), keep, net, what=what)

    def stale(pair: list[str], comment: str) -> bool:
        prefix = owner_prefix_of(comment)
        return prefix.startswith(net + "-") and prefix not in keep

    _delete_allowed(nft, stale, what=what)
    return count


def validate_spoofcheck(nft: NftBackend, owner: Owner, port: str, mac: str) -> list[str]:
    """CHECK: is ``port`` guarded for ``mac`` by owner? (Lists the maps: not a hot path.)"""
    owners = {str(element_key(el)): el[1] for el in nft.list_map(FAMILY, TABLE, MAPS.owners) if isinstance(el, list)}
    if owners.get(port) != owner.mark:
        return [f"mac spoof check for port {port} is missing"]
    keys = [element_key(el) for el in nft.list_map(FAMILY, TABLE, ALLOWED)]
    pairs = {tuple(key["concat"]) for key in keys if isinstance(key, dict)}
    if (port, mac.lower()) not in pairs:
        return [f"mac spoof check for port {port} does not allow {mac}"]
    return []


def _delete_allowed(nft: NftBackend, match: Any, *, what: str) -> None:
    doomed = []
    for el in nft.list_map(FAMILY, TABLE, ALLOWED):
        val, comment = element_key(el), el["elem"].get("comment", "") if isinstance(el, dict) and "elem" in el else ""
        if isinstance(val, dict) and match(val["concat"], comment):
            doomed.append(val)
    if doomed:
        nft.run([{"delete": NFT.obj("element", name=ALLOWED, elem=doomed)}], what=what)
