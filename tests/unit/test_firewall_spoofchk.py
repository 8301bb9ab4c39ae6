"""MAC spoof check builders and ownership, on FakeNft (no root)."""

from __future__ import annotations

from firewall.model import Owner
from firewall.rules import spoofchk
from tests.fakes.nft import FakeNft

A = Owner(network="net1", container_id="aaa", ifname="eth0")
B = Owner(network="net1", container_id="bbb", ifname="eth0")
T = {"family": "bridge", "table": "cni_py_macspoof"}


def state(nft: FakeNft) -> tuple[dict[str, int], set[tuple[str, str]]]:
    owners = {k.strip('"'): e[1] for k, e in nft.elements("bridge", "cni_py_macspoof", "owners").items()}
    allowed = {tuple(e["elem"]["val"]["concat"]) for e in nft.elements("bridge", "cni_py_macspoof", "allowed").values()}
    return owners, allowed


def test_setup_batch_is_the_expected_json() -> None:
    iifname = {"meta": {"key": "iifname"}}
    expected = [
        {"add": {"table": {"family": "bridge", "name": "cni_py_macspoof"}}},
        {"add": {"map": {**T, "name": "owners", "type": "ifname", "map": "mark"}}},
        {"add": {"set": {**T, "name": "allowed", "type": ["ifname", "ether_addr"]}}},
        {
            "add": {
                "chain": {
                    **T,
                    "name": "prerouting",
                    "type": "filter",
                    "hook": "prerouting",
                    "prio": -300,
                    "policy": "accept",
                }
            }
        },
        {"flush": {"chain": {**T, "name": "prerouting"}}},
        {
            "add": {
                "rule": {
                    **T,
                    "chain": "prerouting",
                    "expr": [
                        {"match": {"op": "==", "left": iifname, "right": "@owners"}},
                        {
                            "match": {
                                "op": "!=",
                                "left": {"concat": [iifname, {"payload": {"protocol": "ether", "field": "saddr"}}]},
                                "right": "@allowed",
                            }
                        },
                        {"drop": None},
                    ],
                }
            }
        },
        {
            "add": {
                "element": {
                    **T,
                    "name": "owners",
                    "elem": [[{"elem": {"val": "veth01", "comment": A.comment}}, A.mark]],
                }
            }
        },
        {
            "add": {
                "element": {
                    **T,
                    "name": "allowed",
                    "elem": [{"elem": {"val": {"concat": ["veth01", "0a:58:0a:00:00:02"]}, "comment": A.comment}}],
                }
            }
        },
    ]
    assert spoofchk.setup_commands(A, "veth01", "0A:58:0A:00:00:02") == expected


def test_setup_and_teardown_are_one_batch_each() -> None:
    nft = FakeNft()
    spoofchk.setup_spoofcheck(nft, A, "veth01", "0a:58:0a:00:00:02")
    spoofchk.setup_spoofcheck(nft, B, "veth02", "0a:58:0a:00:00:03")
    assert state(nft) == (
        {"veth01": A.mark, "veth02": B.mark},
        {("veth01", "0a:58:0a:00:00:02"), ("veth02", "0a:58:0a:00:00:03")},
    )
    assert spoofchk.validate_spoofcheck(nft, A, "veth01", "0a:58:0a:00:00:02") == []
    assert spoofchk.validate_spoofcheck(nft, A, "veth01", "0a:58:0a:00:00:09") != []
    before = len(nft.batches)
    spoofchk.teardown_spoofcheck(nft, A, "veth01", "0a:58:0a:00:00:02")
    assert len(nft.batches) == before + 1
    assert state(nft) == ({"veth02": B.mark}, {("veth02", "0a:58:0a:00:00:03")})
    spoofchk.teardown_spoofcheck(nft, A, "veth01", "0a:58:0a:00:00:02")  # again: fine
    assert spoofchk.validate_spoofcheck(nft, A, "veth01", "0a:58:0a:00:00:02") == [
        "mac spoof check for port veth01 is missing"
    ]


def test_teardown_by_owner_without_port_or_mac() -> None:
    nft = FakeNft()
    spoofchk.setup_spoofcheck(nft, A, "veth01", "0a:58:0a:00:00:02")
    spoofchk.setup_spoofcheck(nft, B, "veth02", "0a:58:0a:00:00:03")
    spoofchk.teardown_spoofcheck(nft, A, None, None)
    assert state(nft) == ({"veth02": B.mark}, {("veth02", "0a:58:0a:00:00:03")})
    spoofchk.teardown_spoofcheck(nft, B, "veth02", "0a:58:0a:00:00:99")  # a MAC that changed since ADD
    assert state(nft) == ({}, set())


def test_gc() -> None:
    nft = FakeNft()
    spoofchk.setup_spoofcheck(nft, A, "veth01", "0a:58:0a:00:00:02")
    spoofchk.setup_spoofcheck(nft, B, "veth02", "0a:58:0a:00:00:03")
    assert spoofchk.gc_spoofcheck(nft, "net1", [B]) == 1
    assert state(nft) == ({"veth02": B.mark}, {("veth02", "0a:58:0a:00:00:03")})
    assert spoofchk.gc_spoofcheck(nft, "other", []) == 0
    assert spoofchk.gc_spoofcheck(nft, "net1", []) == 1
    assert state(nft) == ({}, set())


def test_teardown_on_empty_ruleset_is_fine() -> None:
    nft = FakeNft()
    spoofchk.teardown_spoofcheck(nft, A, "veth01", "0a:58:0a:00:00:02")
    spoofchk.teardown_spoofcheck(nft, A, None, None)
    assert spoofchk.gc_spoofcheck(nft, "net1", []) == 0
