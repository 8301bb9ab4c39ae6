"""Pieces of libnftables JSON that every rule builder uses: one of our tables and its objects,
matches, and the per-family names nftables gives protocols and address types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from firewall.nft import Command

PROTOCOLS = {4: "ip", 6: "ip6"}
ADDR_TYPES = {4: "ipv4_addr", 6: "ipv6_addr"}


@dataclass(frozen=True, slots=True)
class Table:
    """One of our nftables tables; builds commands on its objects."""

    family: str
    name: str

    def add(self) -> Command:
        return {"add": {"table": {"family": self.family, "name": self.name}}}

    def obj(self, kind: str, **fields: Any) -> dict[str, Any]:
        """``{kind: {family, table, **fields}}``: a chain, set, map, element or rule of this table."""
        return {kind: {"family": self.family, "table": self.name, **fields}}

    def rule(self, chain: str, *expr: Any) -> Command:
        return {"add": self.obj("rule", chain=chain, expr=list(expr))}


def match(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


def payload(version: int, field: str) -> dict[str, Any]:
    """The source or destination address (``field``: saddr/daddr) of an IPv4 or IPv6 packet."""
    return {"payload": {"protocol": PROTOCOLS[version], "field": field}}


def element_key(elem: Any) -> Any:
    """The key of a set element or map entry as ``nft -j`` lists it: ``[key, value]`` for a
    map, and ``{"elem": {"val": key, "comment": ...}}`` for one that carries a comment."""
    if isinstance(elem, list) and len(elem) == 2:
        elem = elem[0]
    if isinstance(elem, dict) and "elem" in elem:
        return elem["elem"]["val"]
    return elem
