"""claim_groups / release_groups / problems: several owners maps in one transaction (FakeNft)."""

from __future__ import annotations

from typing import Any

import pytest

from firewall.model import Owner
from firewall.owned import (
    Entry,
    EntryTaken,
    Group,
    OwnedMaps,
    claim_groups,
    problems,
    release_groups,
)
from tests.fakes.nft import FakeNft

T = {"family": "inet", "table": "g"}
PORTS = OwnedMaps(family="inet", table="g", owners="port_owners")
ADDRS = OwnedMaps(family="inet", table="g", owners="addr_owners")
SETUP: list[dict[str, Any]] = [
    {"add": {"table": {"family": "inet", "name": "g"}}},
    {"add": {"map": {**T, "name": "port_owners", "type": ["inet_proto", "inet_service"], "map": "mark"}}},
    {"add": {"map": {**T, "name": "port_addr", "type": ["inet_proto", "inet_service"], "map": "ipv4_addr"}}},
    {"add": {"map": {**T, "name": "addr_owners", "type": "ipv4_addr", "map": "mark"}}},
    {"add": {"set": {**T, "name": "addrs", "type": "ipv4_addr"}}},
]
A = Owner(network="n", container_id="a", ifname="eth0")
B = Owner(network="n", container_id="b", ifname="eth0")


def groups(port: int, addr: str, *, exclusive: bool = False) -> list[Group]:
    return [
        Group(
            maps=PORTS, entries=(Entry(key={"concat": ["tcp", port]}, data={"port_addr": addr}),), exclusive=exclusive
        ),
        Group(maps=ADDRS, entries=(Entry(key=addr, data={"addrs": None}),)),
    ]


def state(nft: FakeNft) -> dict[str, Any]:
    return {
        name: sorted(nft.elements("inet", "g", name)) for name in ("port_owners", "port_addr", "addr_owners", "addrs")
    }


def test_one_batch_for_all_groups_and_release() -> None:
    nft = FakeNft()
    claim_groups(nft, A, groups(80, "10.0.0.2"), setup=SETUP, what="t")
    assert len(nft.batches) == 1
    assert problems(nft, PORTS, A, groups(80, "10.0.0.2")[0].entries) == []
    release_groups(nft, A, groups(80, "10.0.0.2"), what="t")
    assert state(nft) == {"port_owners": [], "port_addr": [], "addr_owners": [], "addrs": []}
    assert len(nft.batches) == 2


def test_newest_wins_and_late_delete_leaves_it() -> None:
    nft = FakeNft()
    claim_groups(nft, A, groups(80, "10.0.0.2"), setup=SETUP, what="t")
    claim_groups(nft, B, groups(80, "10.0.0.3"), setup=SETUP, what="t")
    release_groups(nft, A, groups(80, "10.0.0.2"), what="t")
    assert problems(nft, PORTS, B, groups(80, "10.0.0.3")[0].entries) == []
    assert state(nft)["addrs"] == ['"10.0.0.3"']
    found = problems(nft, PORTS, A, groups(80, "10.0.0.2")[0].entries)
    assert [why for _, why in found] == ["held by another attachment"]


def test_exclusive_names_the_holder() -> None:
    nft = FakeNft()
    claim_groups(nft, A, groups(80, "10.0.0.2"), setup=SETUP, what="t")
    with pytest.raises(EntryTaken) as info:
        claim_groups(nft, B, groups(80, "10.0.0.3", exclusive=True), setup=SETUP, what="t")
    assert info.value.key == {"concat": ["tcp", 80]} and info.value.holder == A.comment
    assert problems(nft, PORTS, A, groups(80, "10.0.0.2")[0].entries) == []
    # the same owner re-claiming with other data converges
    claim_groups(nft, A, groups(80, "10.0.0.9", exclusive=True), setup=SETUP, what="t")
    assert problems(nft, PORTS, A, groups(80, "10.0.0.9")[0].entries) == []
