"""firewall.rules.spoofchk against the real kernel: teardown paths, GC, and a constant ADD cost."""

from __future__ import annotations

import statistics
import time

from cni_plugins.kernel import netns
from firewall.model import Owner
from firewall.nft import LibNftables
from firewall.rules import spoofchk
from tests.integration.nsutil import path


def nft_in(ns: str) -> LibNftables:
    with netns.entered(path(ns)):
        return LibNftables()


def state(nft: LibNftables) -> tuple[set[str], set[tuple[str, str]]]:
    owners = {str(el[0]["elem"]["val"]) for el in nft.list_map("bridge", "cni_py_macspoof", "owners")}
    allowed = {tuple(el["elem"]["val"]["concat"]) for el in nft.list_map("bridge", "cni_py_macspoof", "allowed")}
    return owners, allowed


def test_setup_teardown_and_gc(host_ns: str) -> None:
    nft = nft_in(host_ns)
    a, b = Owner(network="n", container_id="a", ifname="eth0"), Owner(network="n", container_id="b", ifname="eth0")
    spoofchk.setup_spoofcheck(nft, a, "vetha", "0a:00:00:00:00:0a")
    spoofchk.setup_spoofcheck(nft, b, "vethb", "0a:00:00:00:00:0b")
    assert spoofchk.validate_spoofcheck(nft, a, "vetha", "0a:00:00:00:00:0a") == []
    spoofchk.teardown_spoofcheck(nft, a, "vetha", "0a:00:00:00:00:0a")
    spoofchk.teardown_spoofcheck(nft, a, "vetha", "0a:00:00:00:00:0a")  # again: the listing path, fine
    assert state(nft) == ({"vethb"}, {("vethb", "0a:00:00:00:00:0b")})
    spoofchk.setup_spoofcheck(nft, a, "vetha", "0a:00:00:00:00:0a")
    spoofchk.teardown_spoofcheck(nft, a, None, None)  # by owner
    assert state(nft) == ({"vethb"}, {("vethb", "0a:00:00:00:00:0b")})
    assert spoofchk.gc_spoofcheck(nft, "n", []) == 1
    assert state(nft) == (set(), set())


def test_add_cost_does_not_grow_with_1000_ports(host_ns: str) -> None:
    nft = nft_in(host_ns)
    times = []
    for i in range(1000):
        owner = Owner(network="n", container_id=f"c{i}", ifname="eth0")
        t0 = time.perf_counter()
        spoofchk.setup_spoofcheck(nft, owner, f"veth{i:08x}", f"0a:00:00:00:{i // 256:02x}:{i % 256:02x}")
        times.append(time.perf_counter() - t0)
    first, last = statistics.median(times[:50]), statistics.median(times[-50:])
    print(
        f"spoof check ADD batch: median of first 50 {first * 1e3:.3f} "
        f"ms, of last 50 (950..1000 ports) {last * 1e3:.3f} ms"
    )
    assert last <= first * 1.5 + 0.0005, (first, last)
    t0 = time.perf_counter()
    spoofchk.teardown_spoofcheck(
        nft, Owner(network="n", container_id="c500", ifname="eth0"), f"veth{500:08x}", "0a:00:00:00:01:f4"
    )
    assert time.perf_counter() - t0 < 0.05
    assert len(state(nft)[1]) == 999
