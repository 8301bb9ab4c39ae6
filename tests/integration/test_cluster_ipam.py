"""cluster-ipam on a multi-node bed (tests/integration/clusterbed.py): etcd in a namespace of
its own, three nodes on an underlay bridge, the plugin exec'd inside each node as its
runtime execs it (through the warm helper), reservations read back from etcd.

The flood's size: ``CNI_PY_CLUSTER_FLOOD`` containers per runtime (default 100; 3 nodes x 4
runtimes each)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.spec.version import SUPPORTED_VERSIONS
from tests.integration.clusterbed import ETCD_URL, PYTHON, Bed, Node, etcd_available
from tests.integration.nsutil import Namespaces, PluginRun, path, poll, sh

pytestmark = pytest.mark.skipif(bool(etcd_available()), reason=etcd_available() or "etcd available")

FLOOD = int(os.environ.get("CNI_PY_CLUSTER_FLOOD", "100"))
PREFIX = "/cni-py"


@pytest.fixture
def bed(namespaces: Namespaces, tmp_path: Path, cni_bin: Path) -> Iterator[Bed]:
    b = Bed(namespaces, tmp_path, cni_bin)
    try:
        b.start_etcd()
        for _ in range(3):
            b.add_node()
        yield b
    finally:
        b.close()


def conf(node: Node, version: str = "1.1.0", *, name: str = "cnet", timeout: float = 2, **ipam: Any) -> dict[str, Any]:
    top = {k: ipam.pop(k) for k in list(ipam) if k in ("prevResult", "args")}
    return {
        "cniVersion": version,
        "name": name,
        "type": "macvlan",
        **top,
        "ipam": {
            "type": "cluster-ipam",
            "ranges": [[{"subnet": "10.77.0.0/20"}]],
            "etcd": {"endpoints": [ETCD_URL], "prefix": PREFIX, "timeout": timeout},
            "nodeName": node.name,
            **ipam,
        },
    }


def reservations(bed: Bed, network: str = "cnet") -> dict[str, str]:
    """ip -> "containerID\\r\\nifname", as etcd holds them."""
    base = f"{PREFIX}/ipam/{network}/ips/"
    return {k[len(base) :]: v for k, v in bed.etcd_keys(base).items()}


def owners(bed: Bed, network: str = "cnet") -> dict[str, str]:
    """ "containerID/ifname/ip" -> node."""
    base = f"{PREFIX}/ipam/{network}/owners/"
    return {k[len(base) :]: v for k, v in bed.etcd_keys(base).items()}


def address(run: PluginRun) -> str:
    out = run.ok()
    ip = out["ips"][0] if "ips" in out else out["ip4"]
    return str(ip.get("address") or ip.get("ip")).split("/")[0]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_check_del_on_every_version(bed: Bed, version: str) -> None:
    n1, n2 = bed.nodes[0], bed.nodes[1]
    ranges = [[{"subnet": "10.77.0.0/29"}]]
    first = n1.plugin("cluster-ipam", "ADD", conf(n1, version, ranges=ranges), "ctr1")
    second = n2.plugin("cluster-ipam", "ADD", conf(n2, version, ranges=ranges), "ctr2")
    assert (address(first), address(second)) == ("10.77.0.2", "10.77.0.3")
    assert reservations(bed) == {"10.77.0.2": "ctr1\r\neth0", "10.77.0.3": "ctr2\r\neth0"}  # host-local's content
    assert owners(bed) == {"ctr1/eth0/10.77.0.2": "n1", "ctr2/eth0/10.77.0.3": "n2"}
    again = n1.plugin("cluster-ipam", "ADD", conf(n1, version, ranges=ranges), "ctr1")
    assert again.rc == 1 and again.json["code"] == 7 and "duplicate allocation" in again.json["msg"]
    if version >= "0.4.0":
        ip: dict[str, str] = {"address": "10.77.0.2/29"}
        if version < "1.0.0":
            ip["version"] = "4"
        prev = {"cniVersion": version, "ips": [ip]}
        n1.plugin("cluster-ipam", "CHECK", conf(n1, version, ranges=ranges, prevResult=prev), "ctr1").ok()
        wrong = n2.plugin("cluster-ipam", "CHECK", conf(n2, version, ranges=ranges, prevResult=prev), "ctr2")
        assert wrong.rc == 1 and "10.77.0.2 in prevResult is not reserved" in wrong.json["msg"]
        gone = n1.plugin("cluster-ipam", "CHECK", conf(n1, version, ranges=ranges), "nope")
        assert gone.rc == 1 and "failed to find address" in gone.json["msg"]
    for _ in range(2):  # DEL, and DEL again: nothing held is success
        n1.plugin("cluster-ipam", "DEL", conf(n1, version, ranges=ranges), "ctr1").ok()
    assert reservations(bed) == {"10.77.0.3": "ctr2\r\neth0"} and list(owners(bed)) == ["ctr2/eth0/10.77.0.3"]
    n2.plugin("cluster-ipam", "DEL", conf(n2, version), "ctr2").ok()  # DEL reads no ranges
    assert reservations(bed) == {} and owners(bed) == {}


def test_bad_config_is_code_7_and_changes_nothing(bed: Bed) -> None:
    n1 = bed.nodes[0]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"etcd": None}, "ipam.etcd: missing"),
        ({"etcd": {"endpoints": []}}, "ipam.etcd.endpoints: missing"),
        ({"etcd": {"endpoints": ["10.0.0.1:2379"]}}, "ipam.etcd.endpoints[0]"),
        ({"etcd": {"endpoints": [ETCD_URL], "timeout": -1}}, "ipam.etcd.timeout"),
        ({"nodeName": "a/b"}, "ipam.nodeName"),
        ({"ranges": [[{"subnet": "10.77.0.0/33"}]]}, "ipam.ranges[0][0].subnet"),
    ]
    for ipam, words in cases:
        out = n1.plugin("cluster-ipam", "ADD", conf(n1, **ipam), "ctr1")
        assert out.rc == 1 and out.json["code"] == 7 and words in out.json["msg"], out.stdout
        assert "Traceback" not in out.stderr
    assert reservations(bed) == {}


def test_requested_address_and_exhaustion(bed: Bed) -> None:
    n1, n2 = bed.nodes[0], bed.nodes[1]
    small = [[{"subnet": "10.77.0.0/30"}]]  # one address: .2
    taken = n1.plugin("cluster-ipam", "ADD", conf(n1, ranges=small, args={"cni": {"ips": ["10.77.0.2"]}}), "a")
    assert address(taken) == "10.77.0.2"
    full = n2.plugin("cluster-ipam", "ADD", conf(n2, ranges=small), "b")
    assert full.rc == 1 and "no IP addresses available" in full.json["msg"]
    dup = n2.plugin("cluster-ipam", "ADD", conf(n2, ranges=small, args={"cni": {"ips": ["10.77.0.2"]}}), "c")
    assert dup.rc == 1 and "10.77.0.2 is not available" in dup.json["msg"]
    assert list(reservations(bed)) == ["10.77.0.2"]


def test_round_robin_per_range_set_across_nodes(bed: Bed) -> None:
    """Nodes with a subnet each under one network name (a node's conflist with cluster-ipam)
    keep a cursor each: n2's ADD does not send n1's round-robin back to its range's start,
    so n1's next container gets the next address, as host-local gives it."""
    n1, n2 = bed.nodes[0], bed.nodes[1]
    r1, r2 = [[{"subnet": "10.77.1.0/24"}]], [[{"subnet": "10.77.2.0/24"}]]
    assert address(n1.plugin("cluster-ipam", "ADD", conf(n1, ranges=r1), "a")) == "10.77.1.2"
    assert address(n2.plugin("cluster-ipam", "ADD", conf(n2, ranges=r2), "x")) == "10.77.2.2"
    n1.plugin("cluster-ipam", "DEL", conf(n1, ranges=r1), "a").ok()
    assert address(n1.plugin("cluster-ipam", "ADD", conf(n1, ranges=r1), "b")) == "10.77.1.3"
    shared = [[{"subnet": "10.77.1.0/24"}, {"subnet": "10.77.2.0/24"}]]  # a pool both nodes share: one cursor
    assert address(n2.plugin("cluster-ipam", "ADD", conf(n2, ranges=shared), "y")) == "10.77.1.2"
    assert address(n1.plugin("cluster-ipam", "ADD", conf(n1, ranges=shared), "c")) == "10.77.1.4"
    base = f"{PREFIX}/ipam/cnet/last_reserved_ip."
    assert {k[len(base) :]: v for k, v in bed.etcd_keys(base).items()} == {
        "10.77.1.1-10.77.1.254": "10.77.1.3",
        "10.77.2.1-10.77.2.254": "10.77.2.2",
        "10.77.1.1-10.77.1.254,10.77.2.1-10.77.2.254": "10.77.1.4",
    }


def _runtime(node: Node, runtime: int, count: int, results: dict[str, str], errors: list[str]) -> None:
    body = conf(node)
    for i in range(count):
        cid = f"{node.name}r{runtime}c{i}"
        out = node.plugin("cluster-ipam", "ADD", body, cid)
        if out.rc != 0:
            errors.append(f"{cid}: {out.stdout} {out.stderr}")
            continue
        results[cid] = address(out)


def test_three_nodes_four_runtimes_never_share_an_address(bed: Bed) -> None:
    """3 nodes x 4 runtimes x FLOOD containers, all at once: every address once, each
    recorded in etcd for its container and node; then each node's GC (nothing valid) gives
    back its own reservations only."""
    results: dict[str, str] = {}
    errors: list[str] = []
    threads = [
        threading.Thread(target=_runtime, args=(node, r, FLOOD, results, errors))
        for node in bed.nodes
        for r in range(4)
    ]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    assert errors == []
    assert len(results) == 12 * FLOOD
    assert len(set(results.values())) == len(results), "an address was handed out twice"
    held = reservations(bed)
    assert held == {ip: f"{cid}\r\neth0" for cid, ip in results.items()}
    assert owners(bed) == {f"{cid}/eth0/{ip}": cid.split("r")[0] for cid, ip in results.items()}
    print(f"{len(results)} ADDs from 12 runtimes on 3 nodes in {took:.1f} s")
    keep = bed.nodes[2]
    for node in bed.nodes[:2]:
        gc = {**conf(node), "cni.dev/valid-attachments": []}
        node.plugin("cluster-ipam", "GC", gc, "").ok()
    left = reservations(bed)
    assert sorted(left) == sorted(ip for cid, ip in results.items() if cid.startswith(keep.name + "r"))


def test_etcd_down_is_a_clear_error_in_time_and_adds_work_again(bed: Bed) -> None:
    n1 = bed.nodes[0]
    n1.plugin("cluster-ipam", "ADD", conf(n1, timeout=1), "before").ok()
    for how, sig in (("hangs", signal.SIGSTOP), ("is gone", signal.SIGTERM)):
        bed.stop_etcd(sig)
        for command, cid, code in (("ADD", "during", 11), ("DEL", "before", 11), ("STATUS", "", 50)):
            start = time.monotonic()
            out = n1.plugin("cluster-ipam", command, conf(n1, timeout=1), cid)
            took = time.monotonic() - start
            assert out.rc == 1 and out.json["code"] == code, (how, command, out.stdout)
            assert ETCD_URL in out.json["msg"] and "etcd unreachable" in out.json["msg"], out.json["msg"]
            assert took < 3.0, f"{command} while etcd {how} took {took:.1f} s with a 1 s timeout"
        if sig == signal.SIGSTOP:
            bed.resume_etcd()
            n1.plugin("cluster-ipam", "STATUS", conf(n1, timeout=1), "").ok()
    bed.start_etcd(fresh=False)
    n1.plugin("cluster-ipam", "STATUS", conf(n1, timeout=1), "").ok()
    n1.plugin("cluster-ipam", "ADD", conf(n1, timeout=1), "after").ok()
    assert sorted(v.split("\r\n")[0] for v in reservations(bed).values()) == ["after", "before"]


def test_https_to_a_plain_http_etcd_says_so_within_the_timeout(bed: Bed) -> None:
    """etcd closes a connection that starts with a TLS ClientHello on its plain port: ADD
    retries until its timeout (a connection closed may be a restart), then ends with code 11
    naming the handshake; STATUS with 50; nothing is reserved. (A TLS refusal proper ends at
    once: tests/unit/test_etcd_client.py.)"""
    n1 = bed.nodes[0]
    tls = {"endpoints": [ETCD_URL.replace("http://", "https://")], "prefix": PREFIX, "timeout": 1}
    for command, code in (("ADD", 11), ("STATUS", 50)):
        start = time.monotonic()
        out = n1.plugin("cluster-ipam", command, conf(n1, etcd=tls), "tls")
        took = time.monotonic() - start
        assert out.rc == 1 and out.json["code"] == code, out.stdout
        assert "closed during the tls handshake (does this endpoint serve https?)" in out.json["msg"], out.stdout
        assert took < 3.0, f"{command} took {took:.1f} s with a 1 s timeout"
    assert reservations(bed) == {}


def _careful_runtime(node: Node, runtime: int, stop: threading.Event, results: dict[str, str], log: list[str]) -> None:
    """As the spec asks of a runtime: a failed ADD is followed by DEL (until it succeeds),
    then the ADD is tried again."""
    body = conf(node, timeout=1)
    i = 0
    while not stop.is_set():
        cid = f"{node.name}r{runtime}c{i}"
        while True:
            out = node.plugin("cluster-ipam", "ADD", body, cid)
            if out.rc == 0:
                results[cid] = address(out)
                break
            log.append(f"{cid} ADD: {out.json and out.json.get('code')}")
            while node.plugin("cluster-ipam", "DEL", body, cid).rc != 0:
                time.sleep(0.1)
        i += 1


def test_etcd_restart_during_a_flood_loses_and_duplicates_nothing(bed: Bed) -> None:
    results: dict[str, str] = {}
    failures: list[str] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_careful_runtime, args=(node, r, stop, results, failures))
        for node in bed.nodes
        for r in range(2)
    ]
    for t in threads:
        t.start()
    try:
        assert poll(lambda: len(results) >= 60, timeout=60)
        at_restart = len(results)
        bed.stop_etcd(signal.SIGKILL)  # no goodbye: what it had committed is on disk, nothing else
        time.sleep(1.5)  # longer than the calls' timeout: calls in flight fail
        bed.start_etcd(fresh=False)
        assert poll(lambda: len(results) >= at_restart + 60, timeout=60)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures, "no call was in flight while etcd was down"
    assert len(set(results.values())) == len(results), "an address was handed out twice"
    assert reservations(bed) == {ip: f"{cid}\r\neth0" for cid, ip in results.items()}, "lost or leaked a reservation"
    print(f"{len(results)} containers, {len(failures)} ADDs failed and were retried after DEL")


SLOW_PLUGIN = """#!/bin/sh
# A plugin later in the chain that takes its time (what the node is killed in the middle of).
case "$CNI_COMMAND" in
  VERSION) echo '{"cniVersion":"1.1.0","supportedVersions":["1.0.0","1.1.0"]}' ;;
  ADD) cat >/dev/null; sleep 60 ;;
  *) cat >/dev/null ;;
esac
"""


def test_node_killed_mid_add_leaves_no_reservation_after_gc(bed: Bed, tmp_path: Path) -> None:
    n1, n2 = bed.nodes[0], bed.nodes[1]
    slow_dir = tmp_path / "slow"
    slow_dir.mkdir()
    (slow_dir / "slow").write_text(SLOW_PLUGIN)
    (slow_dir / "slow").chmod(0o755)
    for node in (n1, n2):
        chain = {
            "cniVersion": "1.1.0",
            "name": "cnet",
            "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipam": conf(node)["ipam"]},
                {"type": "slow"},
            ],
        }
        (node.conf_dir / "10-cnet.conflist").write_text(json.dumps(chain))
    kept_ns = bed.namespaces.make("kept")
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "NETCONFPATH": str(n2.conf_dir),
        "CNI_PATH": f"{bed.cni_bin}:{slow_dir}",
        "CNI_CACHE_DIR": str(n2.dir / "cache"),
    }
    ours = ["ip", "netns", "exec"]
    kept = subprocess.Popen(
        [*ours, n2.ns, PYTHON, "-m", "cni_plugins.runtime.cnitool", "add", "cnet", path(kept_ns)], env=env
    )
    dying_ns = bed.namespaces.make("dying")
    env1 = {**env, "NETCONFPATH": str(n1.conf_dir), "CNI_CACHE_DIR": str(n1.dir / "cache")}
    dying = subprocess.Popen(
        [*ours, n1.ns, PYTHON, "-m", "cni_plugins.runtime.cnitool", "add", "cnet", path(dying_ns)], env=env1
    )
    try:
        assert poll(lambda: any(v == "n1" for v in owners(bed).values()), timeout=30), "n1 never reserved"
        # The node dies: every process in it, the runtime and the plugin it was running.
        for pid in sh("ip", "netns", "pids", n1.ns).stdout.split():
            with contextlib.suppress(ProcessLookupError):  # a short-lived one may have ended since
                os.kill(int(pid), signal.SIGKILL)
        dying.wait(timeout=10)
        assert sorted(owners(bed).values()) == ["n1", "n2"]  # n1's reservation outlived it
    finally:
        for proc in (kept, dying):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    # The node is back: its runtime collects garbage with what it knows is alive (nothing).
    gc = {**conf(n1), "cni.dev/valid-attachments": []}
    n1.plugin("cluster-ipam", "GC", gc, "").ok()
    assert list(owners(bed).values()) == ["n2"], "n1's reservation survived GC, or n2's did not"
    assert len(reservations(bed)) == 1


def test_the_helper_keeps_its_connection_to_etcd(bed: Bed, cni_bin_no_helper: Path) -> None:
    """Calls served by the warm helper's workers reuse their connection: after 20 calls the
    node holds no more connections to etcd than the helper has workers, mostly the same ones
    (a worker retires after its share of calls, and its successor connects anew: the helper
    serves the whole session). Without a helper none is left once a call ends."""
    n1 = bed.nodes[0]

    def connections() -> set[str]:
        out = sh("ss", "-Htn", "state", "established", "dst", f"{ETCD_URL.split('//')[1]}", ns=n1.ns).stdout
        return {line.split()[2] for line in out.splitlines() if line.strip()}

    for i in range(20):
        n1.plugin("cluster-ipam", "ADD", conf(n1), f"w{i}").ok()
    warm = connections()
    assert 1 <= len(warm) <= 16, warm
    for i in range(20):
        n1.plugin("cluster-ipam", "DEL", conf(n1), f"w{i}").ok()
    after = connections()
    assert 1 <= len(after) <= 16 and len(warm | after) <= 2 * len(warm), (warm, after)  # not one per call
    cold = Node(bed, n1.name, n1.ns, n1.ip, n1.dir)
    bed.cni_bin, saved = cni_bin_no_helper, bed.cni_bin
    try:
        cold.plugin("cluster-ipam", "ADD", conf(n1), "cold").ok()
    finally:
        bed.cni_bin = saved
    assert connections() == after
