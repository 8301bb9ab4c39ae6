"""nftables contexts shared per network namespace (``firewall.nft.share_per_namespace``), as
a helper's workers keep them between calls: each namespace gets its own, reused there only,
and a worker lets them go (and with them the namespaces they hold) once idle."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cni_plugins.kernel import netns
from firewall import nft
from tests.integration.nsutil import Namespaces, path, poll, run_plugin, sh


@pytest.fixture
def shared() -> Iterator[None]:
    nft.share_per_namespace()
    try:
        yield
    finally:
        nft.close_shared()
        nft._SHARED = None


def test_one_context_per_namespace_used_only_there(
    shared: None, namespaces: Namespaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = (namespaces.make(f"nc{i}") for i in range(3))
    ctx: dict[str, object] = {}
    for ns in (a, b, a):
        with netns.entered(path(ns)):
            backend = nft.LibNftables()
            assert ctx.setdefault(ns, backend._ctx) is backend._ctx  # a's context again for a
            backend.run([{"add": {"table": {"family": "inet", "name": f"t_{ns[-3:]}"}}}], what="test")
    assert ctx[a] is not ctx[b] and nft.shared_count() == 2
    for ns in (a, b):  # each table went into the namespace it was made for, and only there
        tables = sh("nft", "-j", "list", "tables", ns=ns).stdout
        names = [t["table"]["name"] for t in json.loads(tables)["nftables"] if "table" in t]
        assert names == [f"t_{ns[-3:]}"]
    monkeypatch.setattr(nft, "SHARED_MAX", 2)
    with netns.entered(path(c)):
        nft.LibNftables()
    assert nft.shared_count() == 2  # b's, the least recently used, was freed
    with netns.entered(path(a)):
        assert nft.LibNftables()._ctx is ctx[a]
    nft.close_shared()
    assert nft.shared_count() == 0
    with netns.entered(path(a)):
        assert nft.LibNftables()._ctx is not ctx[a]


@pytest.fixture
def helper_bin(tmp_path: Path) -> Iterator[Path]:
    sock = tmp_path / "run" / "helper.sock"
    bin_dir = tmp_path / "bin"
    subprocess.run(
        [sys.executable, "-m", "cni_plugins.install", "install", "--dir", str(bin_dir), "--helper", "on"]
        + ["--helper-socket", str(sock)],
        check=True,
        capture_output=True,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "cni_plugins.install", "helper", "--socket", str(sock), "--idle", "0"]
    )
    assert poll(lambda: sock.exists(), timeout=20), "helper did not start"
    try:
        yield bin_dir
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_an_idle_worker_lets_the_callers_namespace_go(helper_bin: Path, namespaces: Namespaces) -> None:
    """A worker's context holds its namespace alive; once the worker is idle it frees it, and
    a deleted host namespace really goes (seen from the far end of a veth into it)."""
    host, far, ctr = namespaces.make("nh"), namespaces.make("nf"), namespaces.make("nc")
    sh("ip", "link", "add", "nfnear", "netns", host, "type", "veth", "peer", "name", "nffar", "netns", far)
    conf = {
        "cniVersion": "1.0.0",
        "name": "ctxnet",
        "type": "firewall",
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.66.0.2/24"}]},
    }
    for i in range(4):  # more calls than one worker takes: several workers hold a context there
        run_plugin(helper_bin, "firewall", "ADD", conf, netns=path(ctr), container_id=f"c{i}", host_ns=host).ok()
    assert "cni_py_firewall" in sh("nft", "list", "tables", ns=host).stdout
    sh("ip", "netns", "del", host)
    namespaces.names.remove(host)
    gone = poll(lambda: "nffar" not in sh("ip", "-o", "link", "show", ns=far).stdout, timeout=15)
    assert gone, "the host namespace was still held 15 s after its last call"
