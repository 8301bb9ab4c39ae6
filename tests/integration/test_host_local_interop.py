"""Our host-local and the reference one (Debian's containernetworking-plugins, v1.1.1 at
/usr/lib/cni/host-local) on one shared dataDir: each respects the other's reservations,
releases them, and both take the same lock."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.integration.nsutil import PluginRun, path, run_plugin, unique

REFERENCE_DIR = Path("/usr/lib/cni")
pytestmark = pytest.mark.skipif(
    not (REFERENCE_DIR / "host-local").exists(),
    reason="reference host-local not installed (containernetworking-plugins)",
)


class Pair:
    def __init__(self, cni_bin: Path, data_dir: Path, netns: str) -> None:
        self.bins = {"ours": cni_bin, "theirs": REFERENCE_DIR}
        self.data_dir, self.netns, self.net = data_dir, netns, unique("interop")

    def conf(self, subnet: str = "10.72.0.0/24") -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0",
            "name": self.net,
            "type": "bridge",
            "ipam": {"type": "host-local", "subnet": subnet, "dataDir": str(self.data_dir)},
        }

    def __call__(
        self, who: str, command: str, cid: str, conf: dict[str, Any] | None = None, ifname: str = "eth0"
    ) -> PluginRun:
        return run_plugin(
            self.bins[who],
            "host-local",
            command,
            conf or self.conf(),
            netns=self.netns,
            container_id=cid,
            ifname=ifname,
        )

    def add(self, who: str, cid: str, conf: dict[str, Any] | None = None) -> str:
        return str(self(who, "ADD", cid, conf).ok()["ips"][0]["address"])

    def files(self) -> dict[str, bytes]:
        d = self.data_dir / self.net
        return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.name[0].isdigit()}


@pytest.fixture
def pair(cni_bin: Path, tmp_path: Path, container_ns: str) -> Pair:
    return Pair(cni_bin, tmp_path / "data", path(container_ns))


@pytest.mark.parametrize("first,second", [("ours", "theirs"), ("theirs", "ours")])
def test_each_respects_and_releases_the_others_reservations(pair: Pair, first: str, second: str) -> None:
    a = pair.add(first, "a")
    b = pair.add(second, "b")
    assert a != b
    assert pair.files() == {a.split("/")[0]: b"a\r\neth0", b.split("/")[0]: b"b\r\neth0"}
    # The round-robin cursor is shared: the next one continues after the other's address.
    c = pair.add(first, "c")
    assert c == "10.72.0.4/24"
    # A second ADD for an attachment the other plugin made is refused by both.
    dup = pair(second, "ADD", "a")
    assert dup.rc != 0 and "duplicate allocation is not allowed" in dup.json["msg"]
    # CHECK sees the other's reservation.
    pair(second, "CHECK", "a").ok()
    # DEL by the other releases it.
    pair(second, "DEL", "a").ok()
    pair(first, "DEL", "b").ok()
    assert pair.files() == {"10.72.0.4": b"c\r\neth0"}
    bad = pair(first, "CHECK", "a")
    assert bad.rc != 0
    pair(first, "DEL", "a").ok()
    pair(second, "DEL", "b").ok()
    pair(second, "DEL", "c").ok()
    assert pair.files() == {}


def test_reference_reuses_what_we_released_and_vice_versa(pair: Pair) -> None:
    conf = pair.conf("10.73.0.0/29")
    got = {pair.add("ours" if i % 2 else "theirs", f"c{i}", conf) for i in range(5)}
    assert len(got) == 5
    for who in ("ours", "theirs"):
        full = pair(who, "ADD", "extra", conf)
        assert full.rc != 0 and "no IP addresses available" in full.json["msg"]
    pair("theirs", "DEL", "c1", conf).ok()  # made by ours
    assert pair.add("theirs", "n1", conf) == "10.73.0.3/29"
    pair("ours", "DEL", "c2", conf).ok()  # made by theirs
    assert pair.add("ours", "n2", conf) == "10.73.0.4/29"


def test_old_format_reservation_released_by_ours(pair: Pair) -> None:
    pair.add("theirs", "x")
    d = pair.data_dir / pair.net
    (d / "10.72.0.99").write_text("legacy-ctr")
    pair("ours", "DEL", "legacy-ctr").ok()
    assert "10.72.0.99" not in pair.files()


def test_both_plugins_take_the_same_lock(pair: Pair) -> None:
    """Ours and theirs allocating at the same time never hand out one address twice."""
    conf = json.dumps(pair.conf("10.74.0.0/22")).encode()
    got: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker(who: str, w: int) -> None:
        for i in range(15):
            res = run_plugin(pair.bins[who], "host-local", "ADD", conf, netns=pair.netns, container_id=f"{who}{w}-{i}")
            with lock:
                if res.rc != 0:
                    errors.append(res.stdout)
                else:
                    got.append(res.json["ips"][0]["address"])

    threads = [threading.Thread(target=worker, args=(who, w)) for who in ("ours", "theirs") for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(got) == 90 and len(set(got)) == 90
    assert len(pair.files()) == 90
    # Everything can be released by either plugin afterwards.
    for who, w, i in ((who, w, i) for who in ("ours", "theirs") for w in range(3) for i in range(15)):
        pair("theirs" if who == "ours" else "ours", "DEL", f"{who}{w}-{i}").ok()
    assert pair.files() == {}
    assert [n for n in os.listdir(pair.data_dir / pair.net / ".cni-py-index") if ":" in n] == []
