"""The ownership mechanism against the real kernel, and the fake held to the same results."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cni_plugins.kernel import netns
from firewall.model import Owner
from firewall.nft import LibNftables, NftBackend
from firewall.owned import Entry, EntryTaken, OwnedMaps, claim, release
from tests.fakes.nft import FakeNft
from tests.integration.nsutil import path

MAPS = OwnedMaps(family="inet", table="cnitest_owned", owners="owners")
A = Owner(network="net", container_id="aaa", ifname="eth0")
B = Owner(network="net", container_id="bbb", ifname="eth0")
SETUP: list[dict[str, Any]] = [
    {"add": {"table": {"family": "inet", "name": "cnitest_owned"}}},
    {
        "add": {
            "map": {
                "family": "inet",
                "table": "cnitest_owned",
                "name": "owners",
                "type": ["inet_proto", "inet_service"],
                "map": "mark",
            }
        }
    },
    {
        "add": {
            "map": {
                "family": "inet",
                "table": "cnitest_owned",
                "name": "addr",
                "type": ["inet_proto", "inet_service"],
                "map": "ipv4_addr",
            }
        }
    },
]


def key(port: int) -> Any:
    return {"concat": ["tcp", port]}


def dump(nft: NftBackend) -> dict[str, dict[str, Any]]:
    out = {}
    for name in ("owners", "addr"):
        out[name] = {
            str(el[0]["elem"]["val"]["concat"][1]): el[1] for el in nft.list_map("inet", "cnitest_owned", name)
        }
    return out


@pytest.fixture(params=["kernel", "fake"])
def nft(request: pytest.FixtureRequest, host_ns: str) -> Iterator[NftBackend]:
    if request.param == "fake":
        yield FakeNft()
        return
    with netns.entered(path(host_ns)):
        backend = LibNftables()  # its socket lives in host_ns from now on
    yield backend


def test_replacement_and_late_delete(nft: NftBackend) -> None:
    claim(nft, MAPS, A, [Entry(key=key(8080), data={"addr": "10.88.0.2"})], setup=SETUP, what="t")
    claim(nft, MAPS, B, [Entry(key=key(8080), data={"addr": "10.88.0.2"})], setup=SETUP, what="t")
    assert dump(nft) == {"owners": {"8080": B.mark}, "addr": {"8080": "10.88.0.2"}}
    release(nft, MAPS, A, [Entry(key=key(8080), data={"addr": "10.88.0.2"})], what="t")
    assert dump(nft) == {"owners": {"8080": B.mark}, "addr": {"8080": "10.88.0.2"}}
    with pytest.raises(EntryTaken):
        claim(nft, MAPS, A, [Entry(key=key(8080), data={"addr": "10.88.0.7"})], setup=SETUP, exclusive=True, what="t")
    release(nft, MAPS, B, [Entry(key=key(8080), data={"addr": "10.88.0.2"})], what="t")
    release(nft, MAPS, B, [Entry(key=key(8080), data={"addr": "10.88.0.2"})], what="t")
    assert dump(nft) == {"owners": {}, "addr": {}}


def test_claim_over_other_data(nft: NftBackend) -> None:
    claim(
        nft,
        MAPS,
        A,
        [Entry(key=key(80), data={"addr": "10.88.0.2"}), Entry(key=key(81), data={"addr": "10.88.0.2"})],
        setup=SETUP,
        what="t",
    )
    claim(nft, MAPS, B, [Entry(key=key(81), data={"addr": "10.88.0.3"})], setup=SETUP, what="t")
    assert dump(nft)["addr"] == {"80": "10.88.0.2", "81": "10.88.0.3"}
    release(
        nft,
        MAPS,
        A,
        [Entry(key=key(80), data={"addr": "10.88.0.2"}), Entry(key=key(81), data={"addr": "10.88.0.2"})],
        what="t",
    )
    assert dump(nft) == {"owners": {"81": B.mark}, "addr": {"81": "10.88.0.3"}}
