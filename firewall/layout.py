"""Re-assert a table's constant layout (base chains, per-network chains) only when it is not
already there, found out inside the ADD's own transaction, with no listing.

Why: re-asserting chains on every ADD (add + flush + re-add their rules) is convergent but
not free: rewriting a chain that jumps through verdict maps makes the kernel re-validate
every element of those maps (a cost that grows with the number of containers), and any
transaction that updates or deletes something queues kernel work that frees the old
objects after an RCU grace period, which closing the nftables socket waits for (~15 ms
here; the warm helper's workers keep theirs open, see ``nft.share_per_namespace``).

How: the full layout is applied together with a *stamp*, an empty named set whose name
carries a hash of exactly the commands that built the layout
(``layout-<hash(scope)>-<hash(commands)>``). An ADD first sends only its elements plus an
``add element`` and a ``delete element`` of that stamp set: they succeed when the stamp
exists (and leave it empty) and fail with ENOENT when it does not (no table yet,
``nft flush ruleset``, another version of our code or another config of the network,
e.g. new ``conditionsV4``). Only then is the full layout sent, with the stamp, in the same
single transaction as the elements; older stamps of the same scope are dropped then (a
rare path, so it may list the table), so that going back to an earlier config re-asserts.

Limit: a person who flushes one of our chains by hand (``nft flush chain inet
cni_py_portmap hostports``) leaves the stamp in place; deleting the table (or ``nft
flush ruleset``) makes the next ADD rebuild everything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from firewall.model import short_hash
from firewall.nft import Command, NftBackend

STAMP_PREFIX = "layout-"


@dataclass(frozen=True, slots=True, kw_only=True)
class Stamp:
    family: str
    table: str
    scope: str  # whose layout this is: a network name, or a plugin's fixed name
    digest: str  # hash of the commands that build it

    @property
    def scope_prefix(self) -> str:
        return f"{STAMP_PREFIX}{short_hash(self.scope, 8)}-"

    @property
    def name(self) -> str:
        return f"{self.scope_prefix}{self.digest}"

    def guard(self) -> list[Command]:
        """Commands that fail (ENOENT) unless this exact layout was applied, and change
        nothing otherwise (the stamp set stays empty)."""
        where = {"family": self.family, "table": self.table, "name": self.name, "elem": [1]}
        return [{"add": {"element": where}}, {"delete": {"element": where}}]

    def create(self) -> list[Command]:
        """The stamp itself: sent after the layout, in the same transaction."""
        return [{"add": {"set": {"family": self.family, "table": self.table, "name": self.name, "type": "mark"}}}]


def stamp_for(family: str, table: str, scope: str, setup: list[Command]) -> Stamp:
    return Stamp(family=family, table=table, scope=scope, digest=short_hash(json.dumps(setup, sort_keys=True), 16))


def prune(nft: NftBackend, stamp: Stamp, *, what: str) -> None:
    """Drop this scope's other stamps (left by an earlier config or version). Lists the
    table: only after a full layout was applied, never on the hot path."""
    stale = []
    for item in nft.list_table(stamp.family, stamp.table):
        name = item.get("set", {}).get("name", "")
        if name.startswith(stamp.scope_prefix) and name != stamp.name:
            stale.append({"delete": {"set": {"family": stamp.family, "table": stamp.table, "name": name}}})
    if stale:
        nft.run(stale, what=f"{what}: drop outdated layout stamps")
