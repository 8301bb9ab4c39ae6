"""Layout stamps (firewall/layout.py): the constant chains are sent once, then only elements;
a deleted table, another config or another layout brings them back."""

from __future__ import annotations

import ipaddress

from firewall import layout
from firewall.model import Owner
from firewall.owned import Entry, Group, OwnedMaps, claim_groups
from firewall.rules import masq
from tests.fakes.nft import FakeNft

T = {"family": "inet", "table": "cni_py_test"}
MAPS = OwnedMaps(family="inet", table="cni_py_test", owners="owners")


def setup_cmds(rule_comment: str) -> list[dict[str, object]]:
    return [
        {"add": {"table": {"family": "inet", "name": "cni_py_test"}}},
        {"add": {"map": {**T, "name": "owners", "type": "ipv4_addr", "map": "mark"}}},
        {"add": {"chain": {**T, "name": "base"}}},
        {"flush": {"chain": {**T, "name": "base"}}},
        {"add": {"rule": {**T, "chain": "base", "expr": [{"accept": None}], "comment": rule_comment}}},
    ]


def claim(nft: FakeNft, i: int, comment: str = "v1", scope: str = "net1") -> None:
    setup = setup_cmds(comment)
    owner = Owner(network=scope, container_id=f"c{i}", ifname="eth0")
    group = Group(maps=MAPS, entries=(Entry(key=f"10.0.0.{i}"),))
    claim_groups(
        nft, owner, [group], setup=setup, what="test", stamp=layout.stamp_for("inet", "cni_py_test", scope, setup)
    )


def stamps(nft: FakeNft) -> list[str]:
    return sorted(n for n in nft.tables[("inet", "cni_py_test")].sets if n.startswith(layout.STAMP_PREFIX))


def test_layout_once_then_elements_only() -> None:
    nft = FakeNft()
    for i in range(1, 6):
        claim(nft, i)
    assert len(nft.batches) == 5
    assert any("flush" in c for c in nft.batches[0])
    assert all(not any("flush" in c or "chain" in c.get("add", {}) for c in b) for b in nft.batches[1:])
    assert len(nft.tables[("inet", "cni_py_test")].sets["owners"]) == 5


def test_deleted_table_is_rebuilt() -> None:
    nft = FakeNft()
    claim(nft, 1)
    nft.run([{"delete": {"table": {"family": "inet", "name": "cni_py_test"}}}], what="someone")
    claim(nft, 2)
    assert any("flush" in c for c in nft.batches[-1])
    assert nft.list_chain("inet", "cni_py_test", "base") and len(stamps(nft)) == 1


def test_changed_layout_is_reasserted_and_going_back_too() -> None:
    nft = FakeNft()
    claim(nft, 1, "v1")
    claim(nft, 2, "v2")
    assert (
        any("flush" in c for c in nft.batches[-2]) and "delete" in nft.batches[-1][0] and len(stamps(nft)) == 1
    )  # the v1 stamp was dropped
    assert [r["rule"]["comment"] for r in nft.list_chain("inet", "cni_py_test", "base") or []] == ["v2"]
    claim(nft, 3, "v1")  # back to the first config: its stamp is gone, so the layout is sent again
    assert [r["rule"]["comment"] for r in nft.list_chain("inet", "cni_py_test", "base") or []] == ["v1"]
    claim(nft, 4, "v1")
    assert not any("flush" in c for c in nft.batches[-1])


def test_scopes_keep_their_own_stamps() -> None:
    nft = FakeNft()
    claim(nft, 1, scope="net1")
    claim(nft, 2, scope="net2")
    assert len(stamps(nft)) == 2
    claim(nft, 3, scope="net1")
    assert not any("flush" in c for c in nft.batches[-1])


def test_masquerade_uses_the_stamp() -> None:
    nft = FakeNft()
    for i in range(3):
        masq.setup_masq(
            nft, Owner(network="n", container_id=f"c{i}", ifname="eth0"), [ipaddress.ip_interface(f"10.1.0.{i + 2}/24")]
        )
    assert any("flush" in c for c in nft.batches[0]) and not any("flush" in c for b in nft.batches[1:] for c in b)
    nft.run([{"delete": {"table": {"family": "inet", "name": masq.TABLE}}}], what="someone")
    masq.setup_masq(nft, Owner(network="n", container_id="c9", ifname="eth0"), [ipaddress.ip_interface("10.1.0.9/24")])
    assert nft.list_chain("inet", masq.TABLE, masq.BASE_CHAIN)
