"""firewall.rules.masq against the real kernel (in a throwaway namespace), and its O(1) claim."""

from __future__ import annotations

import ipaddress
import statistics
import time
from typing import Any

from cni_plugins.kernel import netns
from firewall.model import Owner
from firewall.nft import LibNftables
from firewall.rules import masq
from tests.integration.nsutil import path, sh

A = Owner(network="knet", container_id="aaa", ifname="eth0")
B = Owner(network="knet", container_id="bbb", ifname="eth0")
IP_A = ipaddress.ip_interface("10.66.0.2/16")
IP6_A = ipaddress.ip_interface("fd00:66::2/64")


def nft_in(ns: str) -> LibNftables:
    with netns.entered(path(ns)):
        return LibNftables()


def elements(nft: LibNftables, name: str) -> dict[str, Any]:
    return {str(el[0]["elem"]["val"]): el[1] for el in nft.list_map("inet", "cni_py_masq", name)}


def test_setup_teardown_ownership_and_resubnet(host_ns: str) -> None:
    nft = nft_in(host_ns)
    masq.setup_masq(nft, A, [IP_A, IP6_A])
    assert elements(nft, "masq4") == {"10.66.0.2": {"goto": {"target": masq.chain_name("knet", IP_A.network)}}}
    assert elements(nft, "masq6") == {"fd00:66::2": {"goto": {"target": masq.chain_name("knet", IP6_A.network)}}}
    assert masq.validate_masq(nft, A, [IP_A, IP6_A]) == []
    listing = sh("nft", "list", "table", "inet", "cni_py_masq", ns=host_ns).stdout
    assert "ip saddr vmap @masq4" in listing and "masquerade" in listing and A.prefix in listing
    masq.setup_masq(nft, A, [IP_A, IP6_A])  # a repeated ADD converges
    masq.setup_masq(nft, B, [IP_A])  # B took the address over
    assert elements(nft, "owners4") == {"10.66.0.2": B.mark}
    masq.teardown_masq(nft, A, [IP_A, IP6_A])  # A's late DEL: B's entry stays
    assert elements(nft, "owners4") == {"10.66.0.2": B.mark} and elements(nft, "masq6") == {}
    masq.setup_masq(nft, B, [ipaddress.ip_interface("10.66.0.2/24")])  # other verdict: kernel says EOPNOTSUPP
    assert elements(nft, "masq4") == {
        "10.66.0.2": {"goto": {"target": masq.chain_name("knet", ipaddress.ip_network("10.66.0.0/24"))}}
    }
    masq.teardown_masq(nft, B, None)
    assert elements(nft, "masq4") == {} and elements(nft, "owners4") == {}
    masq.teardown_masq(nft, B, [IP_A])  # again, and on an empty map: fine


def test_teardown_without_table_is_fine(host_ns: str) -> None:
    nft = nft_in(host_ns)
    masq.teardown_masq(nft, A, [IP_A])
    masq.teardown_masq(nft, A, None)
    assert masq.gc_masq(nft, "knet", []) == 0


def test_add_cost_does_not_grow_with_1000_entries(host_ns: str) -> None:
    nft = nft_in(host_ns)
    base = ipaddress.ip_address("10.66.0.2")
    times = []
    for i in range(1000):
        owner = Owner(network="knet", container_id=f"c{i}", ifname="eth0")
        t0 = time.perf_counter()
        masq.setup_masq(nft, owner, [ipaddress.ip_interface(f"{base + i}/16")])
        times.append(time.perf_counter() - t0)
    first, last = statistics.median(times[:50]), statistics.median(times[-50:])
    print(
        f"masq ADD batch: median of first 50 {first * 1e3:.3f} ms, of last 50 (950..1000 entries) {last * 1e3:.3f} ms"
    )
    assert last <= first * 1.5 + 0.0005, (first, last)
    assert len(elements(nft, "masq4")) == 1000
    t0 = time.perf_counter()
    masq.teardown_masq(
        nft, Owner(network="knet", container_id="c500", ifname="eth0"), [ipaddress.ip_interface(f"{base + 500}/16")]
    )
    assert time.perf_counter() - t0 < 0.05
    assert masq.gc_masq(nft, "knet", []) == 999
