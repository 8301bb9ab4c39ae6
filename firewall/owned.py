"""Per-attachment entries in nftables sets and maps, with ownership, in O(1) batches.

The problem: DNAT and masquerade entries are keyed by what packets carry (addresses,
ports), and two attachments can want the same key (a replacement container gets the same
IP or host port before its predecessor's DEL). The newest must win, and the older one's DEL
must not remove the newer one's entries. Listing a map to check who owns an element costs
O(elements) (43 ms at 3,000 elements here), and libnftables 1.0.6 has no JSON ``get element``.

The mechanism: beside the data maps, an ``owners`` map holds ``key -> mark(owner)``.
Kernel set semantics give an atomic compare-and-delete: in one transaction,

    add owners { key : MY_MARK }; delete owners { key }; (same for each data map with its data)

succeeds when the key is ours or absent (adding an identical element is a no-op), and fails
as a whole with EEXIST when another owner holds it, so nothing of theirs is touched.
ADD adds ``owners`` and data elements in one batch; only when a key is taken (EEXIST, the
rare replacement case) are the maps listed to build the exact replacement batch.

Every element also carries ``Owner.comment``, for people reading ``nft list`` and for GC.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from cni_plugins.protocol import log
from cni_plugins.spec.errors import CNIError, TryAgainLater
from firewall.expr import element_key
from firewall.layout import Stamp, prune
from firewall.model import Owner, owner_prefix_of
from firewall.nft import EEXIST, ENOENT, Command, NftBackend, NftError

RETRIES = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class OwnedMaps:
    """Where the entries of one feature live: a table and its ``owners`` map."""

    family: str
    table: str
    owners: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One key and its value in each data map (``None`` for a plain set)."""

    key: Any
    data: dict[str, Any] = field(default_factory=dict)


class EntryTaken(CNIError):
    """Exclusive claim refused: another attachment owns the key (``key``, held by ``holder``:
    that owner's comment), so callers can name both in their own words."""

    code = 999
    key: Any = None
    holder: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Group:
    """Entries of one owners map, claimed or released together with other groups in one
    transaction. ``exclusive``: refuse keys another owner holds instead of taking them over.
    ``owner``: these entries belong to someone other than the caller (e.g. a shared
    per-bridge entry with a synthetic owner)."""

    maps: OwnedMaps
    entries: tuple[Entry, ...]
    exclusive: bool = False
    owner: Owner | None = None


def _elem(key: Any, comment: str, data: Any = None) -> Any:
    elem = {"elem": {"val": key, "comment": comment}}
    return elem if data is None else [elem, data]


def _el(verb: str, maps: OwnedMaps, name: str, elems: list[Any]) -> Command:
    return {verb: {"element": {"family": maps.family, "table": maps.table, "name": name, "elem": elems}}}


def _comment(elem: Any) -> str:
    if isinstance(elem, list) and len(elem) == 2:
        elem = elem[0]
    if isinstance(elem, dict) and "elem" in elem:
        return str(elem["elem"].get("comment", ""))
    return ""


def _data(elem: Any) -> Any:
    return elem[1] if isinstance(elem, list) and len(elem) == 2 else None


def add_commands(maps: OwnedMaps, owner: Owner, entries: Iterable[Entry], *, exclusive: bool = False) -> list[Command]:
    out: list[Command] = []
    for e in entries:
        out.append(_el("create" if exclusive else "add", maps, maps.owners, [_elem(e.key, owner.comment, owner.mark)]))
        for name, value in e.data.items():
            out.append(_el("add", maps, name, [_elem(e.key, owner.comment, value)]))
    return out


def release_commands(maps: OwnedMaps, owner: Owner, entry: Entry) -> list[Command]:
    """Compare-and-delete for one entry (see the module docstring)."""
    out = [
        _el("add", maps, maps.owners, [_elem(entry.key, owner.comment, owner.mark)]),
        _el("delete", maps, maps.owners, [entry.key]),
    ]
    for name, value in entry.data.items():
        out.append(_el("add", maps, name, [_elem(entry.key, owner.comment, value)]))
        out.append(_el("delete", maps, name, [entry.key]))
    return out


def claim(
    nft: NftBackend,
    maps: OwnedMaps,
    owner: Owner,
    entries: list[Entry],
    *,
    setup: Iterable[Command] = (),
    exclusive: bool = False,
    what: str,
) -> None:
    """Make ``entries`` owner's, together with ``setup`` commands, in one transaction.

    Default: the newest claim wins (a key held by someone else is taken over).
    ``exclusive``: refuse with ``EntryTaken`` naming the current owner instead.
    """
    claim_groups(nft, owner, [Group(maps=maps, entries=tuple(entries), exclusive=exclusive)], setup=setup, what=what)


def claim_groups(
    nft: NftBackend,
    owner: Owner,
    groups: Iterable[Group],
    *,
    setup: Iterable[Command] = (),
    what: str,
    stamp: Stamp | None = None,
    always: Iterable[Command] = (),
) -> None:
    """``claim`` for entries of several owners maps (and tables): still one transaction.

    ``stamp``: ``setup`` is the table's layout, sent only when that stamp is missing
    (``firewall.layout``); ``always`` goes into every attempt."""
    setup, always = list(setup), list(always)
    fast = stamp is not None  # first try: elements only, guarded by the layout stamp
    pending = [g for g in groups if g.entries]
    tries = 0
    while tries < RETRIES:
        head = stamp.guard() if fast and stamp is not None else setup + (stamp.create() if stamp is not None else [])
        batch = (
            head
            + always
            + [c for g in pending for c in add_commands(g.maps, g.owner or owner, g.entries, exclusive=g.exclusive)]
        )
        try:
            nft.run(batch, what=what)
            if stamp is not None and not fast:
                prune(nft, stamp, what=what)
            return
        except NftError as exc:
            if fast and exc.kind == ENOENT:
                fast = False  # the layout is missing or outdated: send it with the elements
                continue
            if exc.kind != EEXIST:
                raise
        tries += 1
        # Rare path: some key is held (by another owner, or by us with other data). Look.
        settled = []
        for g in pending:
            if g.exclusive:
                mark = (g.owner or owner).mark
                others = {k: c for k, (m, c) in _holders(nft, g.maps, list(g.entries)).items() if m != mark}
                if others:
                    key, comment = next(iter(others.items()))
                    err = EntryTaken(
                        f"{what}: {key} is already taken by another attachment ({comment})",
                        "remove that container's mapping first, or drop "
                        "the exclusive option to let the newest mapping win",
                    )
                    err.key, err.holder = _json_key(key), comment
                    raise err
                g = replace(g, exclusive=False)  # all ours already: converge like a normal claim
            settled.append(g)
            always = always + _delete_present(nft, g.maps, list(g.entries))
        pending = settled
    raise TryAgainLater(f"{what}: entries kept changing under us; retry")


def release(nft: NftBackend, maps: OwnedMaps, owner: Owner, entries: list[Entry], *, what: str) -> None:
    """Remove owner's entries; keys held by someone else are left alone; absence is fine."""
    if not entries:
        return
    batch = [c for e in entries for c in release_commands(maps, owner, e)]
    try:
        nft.run(batch, what=what)
        return
    except NftError:
        pass
    # Some key is someone else's, or its data is not what we expected: settle per entry.
    for e in entries:
        try:
            nft.run(release_commands(maps, owner, e), what=what)
        except NftError:
            held = _holders(nft, maps, [e])
            if held.get(_canon(e.key), (None, ""))[0] == owner.mark:
                nft.run(_delete_present(nft, maps, [e]), what=what)
            else:
                log.debug(f"{what}: {e.key} belongs to another attachment now; left in place")


def release_groups(nft: NftBackend, owner: Owner, groups: Iterable[Group], *, what: str) -> None:
    """``release`` for entries of several owners maps: one transaction when all are ours."""
    groups = [g for g in groups if g.entries]
    batch = [c for g in groups for e in g.entries for c in release_commands(g.maps, g.owner or owner, e)]
    if not batch:
        return
    try:
        nft.run(batch, what=what)
        return
    except NftError:
        pass
    for g in groups:  # some key is someone else's now, or absent: settle entry by entry
        release(nft, g.maps, g.owner or owner, list(g.entries), what=what)


def problems(nft: NftBackend, maps: OwnedMaps, owner: Owner, entries: Iterable[Entry]) -> list[tuple[Entry, str]]:
    """CHECK: entries not held by ``owner`` or whose data differs, each with what is wrong.
    Lists the maps: not for hot paths."""
    entries = list(entries)
    if not entries:
        return []
    owners = {_canon(element_key(el)): _data(el) for el in nft.list_map(maps.family, maps.table, maps.owners)}
    data: dict[str, dict[str, Any]] = {}
    for name in sorted({n for e in entries for n in e.data}):
        data[name] = {_canon(element_key(el)): _data(el) for el in nft.list_map(maps.family, maps.table, name)}
    out = []
    for e in entries:
        k = _canon(e.key)
        if k not in owners:
            out.append((e, "missing"))
        elif owners[k] != owner.mark:
            out.append((e, "held by another attachment"))
        else:
            for name, value in e.data.items():
                if k not in data[name]:
                    out.append((e, f"missing from {name}"))
                elif value is not None and data[name][k] != value:
                    out.append((e, f"{name} holds {data[name][k]!r}, expected {value!r}"))
    return out


def release_all_of(nft: NftBackend, maps: OwnedMaps, owner: Owner, data_maps: tuple[str, ...], *, what: str) -> None:
    """DEL without knowing the keys (no prevResult): find owner's keys by listing. Not a hot path."""
    keys = [element_key(el) for el in nft.list_map(maps.family, maps.table, maps.owners) if _data(el) == owner.mark]
    if keys:
        entries = [Entry(key=k, data={}) for k in keys]
        nft.run(_delete_present(nft, maps, entries, data_maps), what=what)


def gc(
    nft: NftBackend, maps: OwnedMaps, data_maps: tuple[str, ...], keep: set[str], network_prefix: str, *, what: str
) -> int:
    """Remove entries of ``network_prefix`` whose owner prefix is not in ``keep``. Returns the count."""
    stale = []
    for el in nft.list_map(maps.family, maps.table, maps.owners):
        prefix = owner_prefix_of(_comment(el))
        if prefix.startswith(network_prefix + "-") and prefix not in keep:
            stale.append(Entry(key=element_key(el)))
    if stale:
        nft.run(_delete_present(nft, maps, stale, data_maps), what=what)
    return len(stale)


def _canon(key: Any) -> str:
    import json

    return json.dumps(key, sort_keys=True)


def _json_key(canon: str) -> Any:
    import json

    return json.loads(canon)


def _holders(nft: NftBackend, maps: OwnedMaps, entries: list[Entry]) -> dict[str, tuple[int | None, str]]:
    wanted = {_canon(e.key) for e in entries}
    out: dict[str, tuple[int | None, str]] = {}
    for el in nft.list_map(maps.family, maps.table, maps.owners):
        k = _canon(element_key(el))
        if k in wanted:
            data = _data(el)
            out[k] = (data if isinstance(data, int) else None, _comment(el))
    return out


def _delete_present(
    nft: NftBackend, maps: OwnedMaps, entries: list[Entry], data_maps: tuple[str, ...] = ()
) -> list[Command]:
    """Delete commands for the keys of ``entries`` wherever they are present right now."""
    wanted = {_canon(e.key) for e in entries}
    names = {maps.owners, *data_maps, *(n for e in entries for n in e.data)}
    out: list[Command] = []
    for name in sorted(names):
        present = [
            element_key(el) for el in nft.list_map(maps.family, maps.table, name) if _canon(element_key(el)) in wanted
        ]
        if present:
            out.append(_el("delete", maps, name, present))
    return out
