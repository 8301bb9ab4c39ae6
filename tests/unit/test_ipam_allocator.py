"""The allocator on MemoryStore: round-robin, gateway skip, exhaustion, requested address,
duplicate allocation, release and GC rules."""

from __future__ import annotations

import ipaddress

import pytest

from cni_plugins.spec.errors import CNIError
from ipam import allocator
from ipam.allocator import Allocator
from ipam.config import parse_range_set
from ipam.ranges import RangeSet
from ipam.store import Key
from tests.fakes.memory_store import MemoryStore

IP = ipaddress.ip_address


def rs(*ranges: dict[str, str]) -> RangeSet:
    return parse_range_set(list(ranges), "ipam.ranges[0]")


def take(a: Allocator, cid: str, requested: str | None = None) -> str:
    return str(a.allocate(Key(cid, "eth0"), IP(requested) if requested else None).address)


def test_first_address_skips_gateway_and_round_robins() -> None:
    store = MemoryStore()
    a = Allocator(range_set=rs({"subnet": "10.1.0.0/29"}), store=store, range_id=0)
    got = [take(a, f"c{i}") for i in range(5)]
    assert got == ["10.1.0.2/29", "10.1.0.3/29", "10.1.0.4/29", "10.1.0.5/29", "10.1.0.6/29"]
    assert store.last[0] == IP("10.1.0.6")
    store.release(Key("c1", "eth0"))  # frees .3
    store.release(Key("c3", "eth0"))  # frees .5
    assert take(a, "d1") == "10.1.0.3/29"  # wraps to the start: .2 is still taken
    assert take(a, "d2") == "10.1.0.5/29"  # continues after the last reserved address


def test_round_robin_does_not_reuse_a_released_address_immediately() -> None:
    store = MemoryStore()
    a = Allocator(range_set=rs({"subnet": "10.1.0.0/24"}), store=store, range_id=0)
    assert take(a, "c1") == "10.1.0.2/24"
    store.release(Key("c1", "eth0"))
    assert take(a, "c2") == "10.1.0.3/24"


def test_cursor_outside_set_restarts_at_range_start() -> None:
    store = MemoryStore()
    store.last[0] = IP("192.168.0.9")  # range config changed since
    a = Allocator(range_set=rs({"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.50"}), store=store, range_id=0)
    assert take(a, "c1") == "10.1.0.50/24"


def test_gateway_inside_range_is_skipped_and_custom_gateway_reported() -> None:
    store = MemoryStore()
    a = Allocator(range_set=rs({"subnet": "10.1.0.0/29", "gateway": "10.1.0.3"}), store=store, range_id=0)
    got = [a.allocate(Key(f"c{i}", "eth0")) for i in range(5)]
    assert [str(g.address.ip) for g in got] == ["10.1.0.1", "10.1.0.2", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
    assert {str(g.gateway) for g in got} == {"10.1.0.3"}


def test_network_and_broadcast_never_handed_out_even_inside_range() -> None:
    store = MemoryStore()
    a = Allocator(
        range_set=rs({"subnet": "10.1.0.0/29", "rangeStart": "10.1.0.0", "rangeEnd": "10.1.0.7"}),
        store=store,
        range_id=0,
    )
    got = {str(a.allocate(Key(f"c{i}", "eth0")).address.ip) for i in range(5)}
    assert got == {"10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"}
    with pytest.raises(CNIError, match="no IP addresses available in range set 10.1.0.0/29"):
        a.allocate(Key("c9", "eth0"))


def test_exhaustion_names_the_range_set_and_changes_nothing() -> None:
    store = MemoryStore()
    a = Allocator(range_set=rs({"subnet": "10.1.0.0/30"}), store=store, range_id=0)
    assert take(a, "c1") == "10.1.0.2/30"
    before = (dict(store.files), dict(store.last))
    with pytest.raises(CNIError) as info:
        a.allocate(Key("c2", "eth0"))
    assert info.value.code == 7 and "no IP addresses available in range set 10.1.0.0/30" in info.value.msg
    assert (store.files, store.last) == before


def test_pool_walks_into_the_next_range() -> None:
    store = MemoryStore()
    a = Allocator(range_set=rs({"subnet": "10.1.0.0/30"}, {"subnet": "10.2.0.0/30"}), store=store, range_id=0)
    assert [take(a, f"c{i}") for i in range(2)] == ["10.1.0.2/30", "10.2.0.2/30"]
    with pytest.raises(CNIError, match=r"range set 10.1.0.0/30,10.2.0.0/30"):
        take(a, "c3")


def test_requested_address_honoured_or_refused() -> None:
    store = MemoryStore()
    a = Allocator(range_set=rs({"subnet": "10.1.0.0/24"}), store=store, range_id=0)
    assert take(a, "c1", "10.1.0.77") == "10.1.0.77/24"
    assert store.last[0] == IP("10.1.0.77")
    with pytest.raises(CNIError, match="requested IP address 10.1.0.77 is not available"):
        take(a, "c2", "10.1.0.77")
    with pytest.raises(CNIError, match="gateway"):
        take(a, "c3", "10.1.0.1")
    with pytest.raises(CNIError, match="not in range set"):
        take(a, "c4", "10.9.0.1")


def test_duplicate_allocation_refused_naming_the_address() -> None:
    store = MemoryStore()
    a = Allocator(range_set=rs({"subnet": "10.1.0.0/24"}), store=store, range_id=0)
    take(a, "c1")
    with pytest.raises(CNIError) as info:
        take(a, "c1")
    assert "10.1.0.2 has been allocated to c1, duplicate allocation is not allowed" in info.value.msg
    assert take(a, "c1x") == "10.1.0.3/24"  # another container is fine
    assert str(a.allocate(Key("c1", "eth1")).address) == "10.1.0.4/24"  # and another interface
    store.files[IP("10.1.0.99")] = Key("old", "")  # old-format reservation (ID only)
    with pytest.raises(CNIError, match="10.1.0.99 has been allocated to old"):
        take(a, "old")


def test_allocate_all_rolls_back_earlier_sets_on_failure() -> None:
    store = MemoryStore()
    sets = (rs({"subnet": "10.1.0.0/24"}), parse_range_set([{"subnet": "fd00::/126"}], "ipam.ranges[1]"))
    allocator.allocate_all(store, sets, Key("a", "eth0"), (None, None))
    allocator.allocate_all(store, sets, Key("b", "eth0"), (None, None))
    with pytest.raises(
        CNIError, match="failed to allocate for range 1: no IP addresses available in range set fd00::/126"
    ):
        allocator.allocate_all(store, sets, Key("c", "eth0"), (None, None))
    assert store.held_by(Key("c", "eth0")) == ()  # its IPv4 address was released again
    assert len(store.files) == 4


def test_release_exact_then_legacy_and_holds() -> None:
    store = MemoryStore()
    store.files[IP("10.1.0.5")] = Key("c1", "eth0")
    store.files[IP("10.1.0.6")] = Key("c1", "eth1")
    store.files[IP("10.1.0.7")] = Key("c1", "")
    assert allocator.holds(store, Key("c1", "eth0")) == (IP("10.1.0.5"),)
    assert allocator.release(store, Key("c1", "eth0")) == (IP("10.1.0.5"),)
    assert allocator.release(store, Key("c1", "eth9")) == (IP("10.1.0.7"),)  # falls back to the ID-only file
    assert allocator.release(store, Key("c1", "eth9")) == ()  # idempotent
    assert allocator.holds(store, Key("zz", "eth0")) == ()
    assert set(store.files) == {IP("10.1.0.6")}


def test_gc_rules() -> None:
    store = MemoryStore()
    store.files.update(
        {
            IP("10.1.0.2"): Key("keep", "eth0"),
            IP("10.1.0.3"): Key("keep", "eth1"),  # same container, interface not listed
            IP("10.1.0.4"): Key("gone", "eth0"),
            IP("10.1.0.5"): Key("keep", ""),  # old format: kept while the container is valid
            IP("10.1.0.6"): Key("old", ""),
            IP("10.1.0.7"): None,  # empty or garbage file: a leak
        }
    )
    stale = allocator.gc(store, frozenset({Key("keep", "eth0")}))
    assert set(stale) == {IP("10.1.0.3"), IP("10.1.0.4"), IP("10.1.0.6"), IP("10.1.0.7")}
    assert set(store.files) == {IP("10.1.0.2"), IP("10.1.0.5")}
    assert allocator.gc(store, frozenset()) and store.files == {}
