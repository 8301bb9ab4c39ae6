"""Ownership of nftables map entries, on the in-memory FakeNft (same element semantics as the kernel)."""

from __future__ import annotations

import pytest

from firewall.model import Owner
from firewall.owned import (
    Entry,
    EntryTaken,
    OwnedMaps,
    claim,
    gc,
    release,
    release_all_of,
)
from tests.fakes.nft import FakeNft

MAPS = OwnedMaps(family="inet", table="t", owners="owners")
A = Owner(network="net", container_id="aaa", ifname="eth0")
B = Owner(network="net", container_id="bbb", ifname="eth0")
SETUP = [
    {"add": {"table": {"family": "inet", "name": "t"}}},
    {"add": {"map": {"family": "inet", "table": "t", "name": "owners", "type": "ipv4_addr", "map": "mark"}}},
    {"add": {"map": {"family": "inet", "table": "t", "name": "dnat", "type": "ipv4_addr", "map": "ipv4_addr"}}},
]


def entry(key: str, ip: str) -> Entry:
    return Entry(key=key, data={"dnat": ip})


def state(nft: FakeNft) -> dict[str, object]:
    owners = {k: v[1] for k, v in nft.elements("inet", "t", "owners").items()}
    dnat = {k: v[1] for k, v in nft.elements("inet", "t", "dnat").items()}
    return {"owners": owners, "dnat": dnat}


def test_claim_then_release() -> None:
    nft = FakeNft()
    claim(nft, MAPS, A, [entry("10.0.0.1", "10.88.0.2")], setup=SETUP, what="t")
    assert state(nft)["dnat"] == {'"10.0.0.1"': "10.88.0.2"}
    assert len(nft.batches) == 1  # one transaction on the hot path
    release(nft, MAPS, A, [entry("10.0.0.1", "10.88.0.2")], what="t")
    assert state(nft) == {"owners": {}, "dnat": {}}
    release(nft, MAPS, A, [entry("10.0.0.1", "10.88.0.2")], what="t")  # idempotent


def test_newest_wins_and_late_del_of_older_leaves_newer() -> None:
    nft = FakeNft()
    claim(nft, MAPS, A, [entry("10.0.0.1", "10.88.0.2")], setup=SETUP, what="t")
    claim(nft, MAPS, B, [entry("10.0.0.1", "10.88.0.2")], setup=SETUP, what="t")  # same data, new owner
    assert state(nft)["owners"] == {'"10.0.0.1"': B.mark}
    release(nft, MAPS, A, [entry("10.0.0.1", "10.88.0.2")], what="t")  # A's late DEL
    assert state(nft)["dnat"] == {'"10.0.0.1"': "10.88.0.2"} and state(nft)["owners"] == {'"10.0.0.1"': B.mark}
    release(nft, MAPS, B, [entry("10.0.0.1", "10.88.0.2")], what="t")
    assert state(nft) == {"owners": {}, "dnat": {}}


def test_exclusive_claim_names_current_owner() -> None:
    nft = FakeNft()
    claim(nft, MAPS, A, [entry("10.0.0.1", "10.88.0.2")], setup=SETUP, what="t")
    with pytest.raises(EntryTaken) as exc:
        claim(nft, MAPS, B, [entry("10.0.0.1", "10.88.0.3")], setup=SETUP, exclusive=True, what="t")
    assert "aaa" in exc.value.msg
    assert state(nft)["dnat"] == {'"10.0.0.1"': "10.88.0.2"}
    claim(
        nft, MAPS, A, [entry("10.0.0.1", "10.88.0.2")], setup=SETUP, exclusive=True, what="t"
    )  # re-ADD by owner is fine


def test_release_with_mixed_ownership_keeps_others() -> None:
    nft = FakeNft()
    claim(nft, MAPS, A, [entry("10.0.0.1", "10.88.0.2"), entry("10.0.0.2", "10.88.0.2")], setup=SETUP, what="t")
    claim(nft, MAPS, B, [entry("10.0.0.2", "10.88.0.9")], setup=SETUP, what="t")
    release(nft, MAPS, A, [entry("10.0.0.1", "10.88.0.2"), entry("10.0.0.2", "10.88.0.2")], what="t")
    assert state(nft)["dnat"] == {'"10.0.0.2"': "10.88.0.9"}


def test_release_all_and_gc() -> None:
    nft = FakeNft()
    claim(nft, MAPS, A, [entry("10.0.0.1", "10.88.0.2")], setup=SETUP, what="t")
    claim(nft, MAPS, B, [entry("10.0.0.2", "10.88.0.3")], setup=SETUP, what="t")
    release_all_of(nft, MAPS, A, ("dnat",), what="t")
    assert state(nft)["dnat"] == {'"10.0.0.2"': "10.88.0.3"}
    assert gc(nft, MAPS, ("dnat",), {B.prefix}, B.prefix.split("-")[0], what="t") == 0
    assert gc(nft, MAPS, ("dnat",), set(), B.prefix.split("-")[0], what="t") == 1
    assert state(nft) == {"owners": {}, "dnat": {}}
