"""Masquerade builders and their ownership logic, on FakeNft (no root)."""

from __future__ import annotations

import ipaddress
from typing import Any

from firewall.model import Owner, short_hash
from firewall.rules import masq
from tests.fakes.nft import FakeNft

A = Owner(network="net1", container_id="aaa", ifname="eth0")
B = Owner(network="net1", container_id="bbb", ifname="eth0")
IP_A = ipaddress.ip_interface("10.88.0.2/16")
IP6_A = ipaddress.ip_interface("fd00:88::2/64")
T = {"family": "inet", "table": "cni_py_masq"}


def chain(subnet: str) -> str:
    return masq.chain_name("net1", ipaddress.ip_network(subnet))


def verdicts(nft: FakeNft, v: int = 4) -> dict[str, Any]:
    return {k.strip('"'): e[1] for k, e in nft.elements("inet", "cni_py_masq", f"masq{v}").items()}


def owners(nft: FakeNft, v: int = 4) -> dict[str, Any]:
    return {k.strip('"'): e[1] for k, e in nft.elements("inet", "cni_py_masq", f"owners{v}").items()}


def test_chain_names_are_plain_words() -> None:
    assert chain("10.88.0.0/16") == f"masq-{short_hash('net1', 12)}-10_88_0_0-16"
    assert chain("fd00:88::/64").endswith("-fd00_88__-64")


def test_setup_batch_is_the_expected_json() -> None:
    sub = chain("10.88.0.0/16")
    saddr4 = {"payload": {"protocol": "ip", "field": "saddr"}}
    saddr6 = {"payload": {"protocol": "ip6", "field": "saddr"}}
    daddr = {"payload": {"protocol": "ip", "field": "daddr"}}
    expected = [
        {"add": {"table": {"family": "inet", "name": "cni_py_masq"}}},
        {"add": {"map": {**T, "name": "owners4", "type": "ipv4_addr", "map": "mark"}}},
        {"add": {"map": {**T, "name": "masq4", "type": "ipv4_addr", "map": "verdict"}}},
        {"add": {"map": {**T, "name": "owners6", "type": "ipv6_addr", "map": "mark"}}},
        {"add": {"map": {**T, "name": "masq6", "type": "ipv6_addr", "map": "verdict"}}},
        {
            "add": {
                "chain": {
                    **T,
                    "name": "postrouting",
                    "type": "nat",
                    "hook": "postrouting",
                    "prio": 100,
                    "policy": "accept",
                }
            }
        },
        {"flush": {"chain": {**T, "name": "postrouting"}}},
        {"add": {"rule": {**T, "chain": "postrouting", "expr": [{"vmap": {"key": saddr4, "data": "@masq4"}}]}}},
        {"add": {"rule": {**T, "chain": "postrouting", "expr": [{"vmap": {"key": saddr6, "data": "@masq6"}}]}}},
        {"add": {"chain": {**T, "name": sub}}},
        {"flush": {"chain": {**T, "name": sub}}},
        {
            "add": {
                "rule": {
                    **T,
                    "chain": sub,
                    "expr": [
                        {"match": {"op": "==", "left": daddr, "right": {"prefix": {"addr": "10.88.0.0", "len": 16}}}},
                        {"return": None},
                    ],
                }
            }
        },
        {
            "add": {
                "rule": {
                    **T,
                    "chain": sub,
                    "expr": [
                        {"match": {"op": "==", "left": daddr, "right": {"prefix": {"addr": "224.0.0.0", "len": 4}}}},
                        {"return": None},
                    ],
                }
            }
        },
        {"add": {"rule": {**T, "chain": sub, "expr": [{"masquerade": None}]}}},
        {
            "add": {
                "element": {
                    **T,
                    "name": "owners4",
                    "elem": [[{"elem": {"val": "10.88.0.2", "comment": A.comment}}, A.mark]],
                }
            }
        },
        {
            "add": {
                "element": {
                    **T,
                    "name": "masq4",
                    "elem": [[{"elem": {"val": "10.88.0.2", "comment": A.comment}}, {"goto": {"target": sub}}]],
                }
            }
        },
    ]
    assert masq.setup_commands(A, [IP_A]) == expected


def test_add_is_one_constant_size_transaction_whatever_the_number_of_containers() -> None:
    nft = FakeNft()
    base = ipaddress.ip_address("10.88.0.2")
    for i in range(300):
        owner = Owner(network="net1", container_id=f"c{i}", ifname="eth0")
        masq.setup_masq(nft, owner, [ipaddress.ip_interface(f"{base + i}/16")])
    assert len(nft.batches) == 300  # one batch per ADD
    assert {len(b) for b in nft.batches[1:]} == {len(nft.batches[1])} and len(nft.batches[1]) < len(
        nft.batches[0]
    )  # layout once, then elements
    assert not any("flush" in c for b in nft.batches[1:] for c in b)
    assert len(verdicts(nft)) == 300
    masq.teardown_masq(
        nft, Owner(network="net1", container_id="c7", ifname="eth0"), [ipaddress.ip_interface("10.88.0.9/16")]
    )
    assert len(nft.batches) == 301 and len(nft.batches[-1]) == 4  # DEL: one batch, compare-and-delete
    assert "10.88.0.9" not in verdicts(nft) and len(verdicts(nft)) == 299


def test_dual_stack_in_one_batch_and_teardown_removes_everything() -> None:
    nft = FakeNft()
    masq.setup_masq(nft, A, [IP_A, IP6_A])
    assert len(nft.batches) == 1
    assert verdicts(nft, 4) == {"10.88.0.2": {"goto": {"target": chain("10.88.0.0/16")}}}
    assert verdicts(nft, 6) == {"fd00:88::2": {"goto": {"target": chain("fd00:88::/64")}}}
    assert masq.validate_masq(nft, A, [IP_A, IP6_A]) == []
    masq.teardown_masq(nft, A, [IP_A, IP6_A])
    assert verdicts(nft, 4) == {} == verdicts(nft, 6) and owners(nft, 4) == {} == owners(nft, 6)
    masq.teardown_masq(nft, A, [IP_A, IP6_A])  # DEL again: fine
    assert masq.validate_masq(nft, A, [IP_A]) == [
        "masquerade entry for 10.88.0.2 is missing or owned by another attachment"
    ]


def test_newest_owner_wins_and_late_teardown_of_older_leaves_it() -> None:
    nft = FakeNft()
    masq.setup_masq(nft, A, [IP_A])
    masq.setup_masq(nft, B, [IP_A])  # B got A's address before A's DEL
    assert owners(nft) == {"10.88.0.2": B.mark}
    masq.teardown_masq(nft, A, [IP_A])
    assert owners(nft) == {"10.88.0.2": B.mark} and "10.88.0.2" in verdicts(nft)
    masq.teardown_masq(nft, A, None)  # the same without addresses: by owner
    assert owners(nft) == {"10.88.0.2": B.mark}
    masq.teardown_masq(nft, B, [IP_A])
    assert owners(nft) == {} and verdicts(nft) == {}


def test_teardown_without_addresses_finds_entries_by_owner() -> None:
    nft = FakeNft()
    masq.setup_masq(nft, A, [IP_A, IP6_A])
    masq.setup_masq(nft, B, [ipaddress.ip_interface("10.88.0.3/16")])
    masq.teardown_masq(nft, A, None)
    assert verdicts(nft, 6) == {} and list(verdicts(nft, 4)) == ["10.88.0.3"]


def test_same_owner_with_a_new_subnet_converges() -> None:
    nft = FakeNft()
    masq.setup_masq(nft, A, [IP_A])
    masq.setup_masq(nft, A, [ipaddress.ip_interface("10.88.0.2/24")])
    assert verdicts(nft) == {"10.88.0.2": {"goto": {"target": chain("10.88.0.0/24")}}}
    assert owners(nft) == {"10.88.0.2": A.mark}


def test_gc_keeps_valid_attachments_and_other_networks() -> None:
    nft = FakeNft()
    other = Owner(network="net2", container_id="zzz", ifname="eth0")
    masq.setup_masq(nft, A, [IP_A])
    masq.setup_masq(nft, B, [ipaddress.ip_interface("10.88.0.3/16")])
    masq.setup_masq(nft, other, [ipaddress.ip_interface("10.99.0.3/16")])
    assert masq.gc_masq(nft, "net1", [B]) == 1
    assert sorted(verdicts(nft)) == ["10.88.0.3", "10.99.0.3"]
    assert masq.gc_masq(nft, "net1", []) == 1
    assert sorted(verdicts(nft)) == ["10.99.0.3"]


def test_teardown_on_empty_ruleset_is_fine() -> None:
    nft = FakeNft()
    masq.teardown_masq(nft, A, [IP_A])
    masq.teardown_masq(nft, A, None)
    assert masq.gc_masq(nft, "net1", []) == 0
