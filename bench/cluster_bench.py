"""Across hosts: cluster-ipam's ADD/DEL next to host-local's, and pod-to-pod round trip and
TCP throughput across nodes next to the same node, per mode (routed, vxlan).

It runs on the multi-node bed of the tests (tests/integration/clusterbed.py): etcd in a
namespace of its own, nodes as namespaces on an underlay bridge (a veth each), every
plugin exec'd inside a node as the node's runtime execs it (``nsenter --net``, env + config
on stdin), pods attached by cnitool through the conflist the node agent wrote.

1. IPAM: ``--runs`` ADDs one after another on node n1, then as many DELs, for cluster-ipam
   (reservations in etcd, one CAS transaction per address) and host-local (a file per
   address on the node), each through the warm helper (the default install) and without
   one, and the reference host-local when it is installed; the plugins take turns, call by
   call. Then the concurrent case of the
   tests: 3 nodes x 4 runtimes adding ``--flood`` containers each, all at once.
2. Network, per mode, each on a bed of its own (both stand at once): two pods on n1, one
   on n2, the agents running. Round trip: ``ping -c --pings -i 0.005`` (avg, max);
   throughput: ``iperf3 -t --seconds`` (TCP, one stream, the receiver's rate and the
   sender's retransmits). Pod to pod on one node, pod to pod across nodes, and node to node
   on the underlay (the floor); every path of both modes in turn, ``--rounds`` times.

    sudo .venv/bin/python bench/cluster_bench.py [--runs 100] [--flood 25] [--pings 200] [--seconds 5] [--rounds 2]

Prints a table and writes bench/out/cluster_bench-<UTC time>.json (the load average is in
it: on a shared machine, compare numbers from the same run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.integration.clusterbed import ETCD_URL, Bed, Node  # noqa: E402  (needs the sys.path insert above)
from tests.integration.nsutil import Namespaces, path, sh  # noqa: E402  (needs the sys.path insert above)

REFERENCE = "/usr/lib/cni/host-local"
NETWORK = "bench"


# ---------------------------------------------------------------- IPAM


def ipam_conf(kind: str, node: Node, data_dir: Path, network: str = NETWORK) -> bytes:
    ipam: dict[str, Any] = {"type": kind, "ranges": [[{"subnet": "10.77.0.0/16"}]]}
    if kind == "cluster-ipam":
        ipam.update(etcd={"endpoints": [ETCD_URL], "prefix": "/bench", "timeout": 5}, nodeName=node.name)
    else:
        ipam["dataDir"] = str(data_dir / node.name)
    return json.dumps({"cniVersion": "1.0.0", "name": network, "type": "macvlan", "ipam": ipam}).encode()


def exec_in(node: Node, binary: str, command: str, conf: bytes, cid: str) -> float:
    """One call inside ``node`` as its runtime makes it; seconds from the exec to the exit."""
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": path(node.bed.pod_ns),
        "CNI_IFNAME": "eth0",
        "CNI_PATH": os.path.dirname(binary),
    }
    start = time.perf_counter()
    proc = subprocess.run(["nsenter", f"--net={path(node.ns)}", binary], input=conf, env=env, capture_output=True)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{binary} {command} {cid} on {node.name}: {proc.stdout.decode()} {proc.stderr.decode()}")
    return took


def nsenter_floor(node: Node, runs: int) -> float:
    """What ``nsenter --net=... /bin/true`` alone costs: part of every call above, for both."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(["nsenter", f"--net={path(node.ns)}", "/bin/true"], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


CLIENT_CALL = """
import sys
sys.path.insert(0, sys.argv[1])
from cni_plugins.etcd.client import Client, Options, created_at, parse_endpoint, prefix_end, put_op
key = b"/bench/startup/" + sys.argv[3].encode()
with Client(Options(endpoints=(parse_endpoint(sys.argv[2]),))) as c:
    c.range(b"/bench/startup/", prefix_end(b"/bench/startup/"))
    c.txn([created_at(key, 0)], [put_op(key, b"x")], [])
"""


def client_startup(node: Node, runs: int) -> dict[str, float]:
    """A fresh interpreter that imports our etcd client, connects, runs a prefix range and a
    CAS transaction and exits, next to one that does nothing (``python -I -S -c pass``): what
    a plugin process without the helper pays for talking to etcd. Taking turns."""
    empty, client = [], []
    base = ["nsenter", f"--net={path(node.ns)}", sys.executable, "-I", "-S", "-c"]
    for i in range(runs):
        start = time.perf_counter()
        subprocess.run([*base, "pass"], check=True)
        empty.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run([*base, CLIENT_CALL, str(ROOT), ETCD_URL, f"k{i}"], check=True)
        client.append(time.perf_counter() - start)
    return {"python_ms": statistics.median(empty) * 1e3, "client_ms": statistics.median(client) * 1e3}


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    return {"median_ms": statistics.median(ordered) * 1e3, "p90_ms": ordered[int(0.9 * (len(ordered) - 1))] * 1e3}


def bench_ipam(bed: Bed, plugins: dict[str, str], runs: int, flood: int, work: Path) -> list[dict[str, Any]]:
    n1 = bed.nodes[0]
    rows: list[dict[str, Any]] = []
    confs = {  # a network each: the sequential calls of two plugins never meet in etcd
        label: ipam_conf(kind_of(label), n1, work / f"data-{i}", f"{NETWORK}{i}") for i, label in enumerate(plugins)
    }
    for label, binary in plugins.items():
        for i in range(3):  # warm-up: the helper started, the first connection to etcd made
            exec_in(n1, binary, "ADD", confs[label], f"warm{i}")
            exec_in(n1, binary, "DEL", confs[label], f"warm{i}")
    # Interleaved, one call of each plugin in turn: a machine that slows down or speeds up
    # meanwhile (others' work on a shared machine) weighs on every plugin alike.
    adds: dict[str, list[float]] = {label: [] for label in plugins}
    dels: dict[str, list[float]] = {label: [] for label in plugins}
    for i in range(runs):
        for label, binary in plugins.items():
            adds[label].append(exec_in(n1, binary, "ADD", confs[label], f"seq{i}"))
    for i in range(runs):
        for label, binary in plugins.items():
            dels[label].append(exec_in(n1, binary, "DEL", confs[label], f"seq{i}"))
    for label in plugins:
        rows.append(
            {"plugin": label, "case": "one after another", "add": summary(adds[label]), "delete": summary(dels[label])}
        )
        print(f"  {label}: ADD {rows[-1]['add']['median_ms']:.1f} ms, DEL {rows[-1]['delete']['median_ms']:.1f} ms")
    flooded = [label for label in plugins if "no helper" not in label and not label.startswith("reference")]
    runs_of: dict[str, list[dict[str, Any]]] = {label: [] for label in flooded}
    for turn, order in enumerate((flooded, flooded[::-1])):  # A B, then B A: drift weighs on both alike
        for label in order:
            runs_of[label].append(concurrent_adds(bed, label, plugins[label], flood, work, turn))
    for label in flooded:
        both = runs_of[label]
        row = {
            "plugin": label,
            "case": both[0]["case"] + ", twice",
            "add": summary(both[0]["times"] + both[1]["times"]),
            "adds_per_s": statistics.mean(r["adds_per_s"] for r in both),
            "turns": [{k: v for k, v in r.items() if k != "times"} for r in both],
        }
        rows.append(row)
        print(f"  {label}, concurrent: ADD median {row['add']['median_ms']:.1f} ms, {row['adds_per_s']:.1f} ADD/s")
    return rows


def kind_of(label: str) -> str:
    return "cluster-ipam" if label.startswith("cluster-ipam") else "host-local"


def concurrent_adds(bed: Bed, label: str, binary: str, flood: int, work: Path, turn: int) -> dict[str, Any]:
    """Every node's 4 runtimes adding ``flood`` containers each, all at once (the tests' flood)."""
    kind = kind_of(label)
    data = work / f"flood-{label.replace('/', '-')}"
    adds: list[float] = []
    lock = threading.Lock()

    errors: list[str] = []

    def runtime(node: Node, r: int) -> None:
        conf = ipam_conf(kind, node, data)
        for i in range(flood):
            try:
                took = exec_in(node, binary, "ADD", conf, f"{node.name}r{r}c{i}t{turn}")
            except SystemExit as exc:
                errors.append(str(exc))
                return
            with lock:
                adds.append(took)

    threads = [threading.Thread(target=runtime, args=(n, r)) for n in bed.nodes for r in range(4)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    expected = len(bed.nodes) * 4 * flood
    if len(adds) != expected:
        raise SystemExit(f"{label}: {len(adds)} of {expected} concurrent ADDs succeeded: {errors[:3]}")
    if kind == "cluster-ipam":
        held = bed.etcd_keys(f"/bench/ipam/{NETWORK}/ips/")
        if len(held) != expected * (turn + 1):  # every flood's ADDs; nothing left by the sequential runs
            raise SystemExit(f"{label}: {expected * (turn + 1)} ADDs but {len(held)} reservations in etcd")
    return {
        "plugin": label,
        "case": f"{len(bed.nodes)} nodes x 4 runtimes x {flood} ADDs at once",
        "add": summary(adds),
        "adds_per_s": expected / wall,
        "times": adds,
    }


# ---------------------------------------------------------------- network

PING = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


def rtt(src_ns: str, dst: str, pings: int) -> dict[str, float]:
    out = sh("ping", "-q", "-c", str(pings), "-i", "0.005", "-W", "2", dst, ns=src_ns, timeout=60).stdout
    m = PING.search(out)
    if m is None or f" {pings} received" not in out:
        raise SystemExit(f"ping {dst}: {out}")
    return {"avg_ms": float(m.group(2)), "max_ms": float(m.group(3))}


def tcp(server_ns: str, server_ip: str, client_ns: str, seconds: float) -> dict[str, float]:
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-B", server_ip, "-p", "5201"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):  # until it listens
            probe = sh("ss", "-Hltn", "sport = :5201", ns=server_ns).stdout
            if probe.strip():
                break
            time.sleep(0.05)
        out = sh("iperf3", "-c", server_ip, "-p", "5201", "-t", str(seconds), "-J", ns=client_ns, timeout=seconds + 30)
        end = json.loads(out.stdout)["end"]
        return {
            "gbit_s": end["sum_received"]["bits_per_second"] / 1e9,
            "retransmits": float(end["sum_sent"].get("retransmits", 0)),
        }
    finally:
        server.kill()
        server.wait()


Path_ = tuple[str, str, str, str]  # label, source namespace, destination namespace, destination address


def setup_network(bed: Bed, mode: str) -> list[Path_]:
    """The network in ``mode``, agents on n1 and n2, pods a and b on n1 and c on n2; the paths to measure."""
    bed.init_network(mode)
    n1, n2 = bed.nodes[0], bed.nodes[1]
    for node in (n1, n2):
        node.start_agent(ttl=30)
    for _ in range(200):  # until n1 has its route to n2's pods
        if any(
            line.startswith("10.244.") and " via " in line for line in sh("ip", "route", ns=n1.ns).stdout.splitlines()
        ):
            break
        time.sleep(0.05)
    else:
        raise SystemExit(f"{mode}: n1 has no route to n2's subnet: {sh('ip', 'route', ns=n1.ns).stdout}")
    a, b, c = n1.pod("a"), n1.pod("b"), n2.pod("c")
    return [
        ("same node", a[0], b[0], b[1]),
        ("across nodes", a[0], c[0], c[1]),
        ("node to node (underlay)", n1.ns, n2.ns, n2.ip),
    ]


def bench_network(beds: dict[str, Bed], rounds: int, pings: int, seconds: float) -> list[dict[str, Any]]:
    """Every path of every mode in turn, ``rounds`` times: the modes' beds stand side by side,
    so a machine that drifts weighs on both alike."""
    paths = {mode: setup_network(bed, mode) for mode, bed in beds.items()}
    rows: list[dict[str, Any]] = []
    for turn in range(rounds):
        for mode, measured in paths.items():
            for label, src_ns, dst_ns, dst_ip in measured:
                row: dict[str, Any] = {
                    "round": turn + 1,
                    "mode": mode,
                    "path": label,
                    "rtt": rtt(src_ns, dst_ip, pings),
                    "tcp": tcp(dst_ns, dst_ip, src_ns, seconds),
                }
                rows.append(row)
                print(
                    f"  round {turn + 1} {mode} {label}: RTT avg {row['rtt']['avg_ms']:.3f} ms, "
                    f"TCP {row['tcp']['gbit_s']:.2f} Gbit/s ({row['tcp']['retransmits']:.0f} retransmits)"
                )
    return rows


# ---------------------------------------------------------------- main


def new_bed(namespaces: Namespaces, work: Path, cni_bin: Path, nodes: int) -> Bed:
    work.mkdir(parents=True)
    bed = Bed(namespaces, work, cni_bin)
    bed.start_etcd()
    for _ in range(nodes):
        bed.add_node()
    return bed


def table(result: dict[str, Any]) -> str:
    lines = ["IPAM, ms (median / p90), each call an exec inside node n1 (nsenter + plugin):"]
    lines.append(f"  nsenter --net=<node> /bin/true alone: {result['nsenter_ms']:.1f}")
    cs = result["client_startup"]
    lines.append(
        f"  a fresh python -I -S: {cs['python_ms']:.1f}; importing our etcd client, connecting, a range and a "
        f"CAS txn: {cs['client_ms']:.1f} (+{cs['client_ms'] - cs['python_ms']:.1f})"
    )
    for row in result["ipam"]:
        d = f" / DEL {row['delete']['median_ms']:.1f} / {row['delete']['p90_ms']:.1f}" if "delete" in row else ""
        rate = f", {row['adds_per_s']:.1f} ADD/s" if "adds_per_s" in row else ""
        lines.append(
            f"  {row['plugin']:<26} {row['case']:<46} ADD {row['add']['median_ms']:.1f} / {row['add']['p90_ms']:.1f}"
            f"{d}{rate}"
        )
    lines.append("Network, per round (RTT avg / max in ms; TCP Gbit/s, one iperf3 stream, retransmits):")
    for row in result["network"]:
        lines.append(
            f"  {row['round']} {row['mode']:<7} {row['path']:<24} "
            f"RTT {row['rtt']['avg_ms']:.3f} / {row['rtt']['max_ms']:.3f}  "
            f"TCP {row['tcp']['gbit_s']:.2f} ({row['tcp']['retransmits']:.0f})"
        )
    lines.append(f"load average at start / end: {result['load_start']} / {result['load_end']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=100, help="ADDs (then DELs) one after another per plugin")
    parser.add_argument("--flood", type=int, default=25, help="ADDs per runtime in the concurrent case (12 runtimes)")
    parser.add_argument("--pings", type=int, default=200, help="pings per round-trip measure")
    parser.add_argument("--seconds", type=float, default=5, help="seconds per iperf3 run")
    parser.add_argument("--rounds", type=int, default=2, help="times every network path is measured")
    parser.add_argument("--skip-network", action="store_true", help="IPAM only")
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"), help="where the JSON goes")
    args = parser.parse_args(argv)
    for tool in ("etcd", "iperf3", "nsenter"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (scripts/setup.sh install installs etcd-server and iperf3)")
    work = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    run_dir = work / "run"
    namespaces = Namespaces()
    beds: list[Bed] = []
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_start": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "args": vars(args),
    }
    try:
        bins = {}
        for name, extra in (("warm", ["--run-dir", str(run_dir)]), ("cold", ["--helper", "off"])):
            bins[name] = work / name
            subprocess.run(
                [sys.executable, "-m", "cni_plugins.install", "install", "--dir", str(bins[name]), *extra],
                check=True,
                capture_output=True,
                cwd=ROOT,
            )
        plugins = {
            "cluster-ipam/helper": str(bins["warm"] / "cluster-ipam"),
            "cluster-ipam/no helper": str(bins["cold"] / "cluster-ipam"),
            "host-local/helper": str(bins["warm"] / "host-local"),
            "host-local/no helper": str(bins["cold"] / "host-local"),
        }
        if os.path.exists(REFERENCE):
            plugins["reference host-local"] = REFERENCE
        print("IPAM")
        beds.append(new_bed(namespaces, work / "ipam", bins["warm"], 3))
        result["nsenter_ms"] = nsenter_floor(beds[-1].nodes[0], 30) * 1e3
        result["client_startup"] = client_startup(beds[-1].nodes[0], 30)
        result["ipam"] = bench_ipam(beds[-1], plugins, args.runs, args.flood, work)
        beds[-1].close()
        result["network"] = []
        if not args.skip_network:
            print("network")
            by_mode = {mode: new_bed(namespaces, work / mode, bins["warm"], 2) for mode in ("routed", "vxlan")}
            beds += by_mode.values()
            result["network"] = bench_network(by_mode, args.rounds, args.pings, args.seconds)
        result["load_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        for bed in beds:
            bed.close()
        namespaces.cleanup()
        subprocess.run(
            [sys.executable, "-m", "cni_plugins.install", "helper", "stop", "--run-dir", str(run_dir)],
            capture_output=True,
            cwd=ROOT,
        )
        shutil.rmtree(work, ignore_errors=True)
    print(table(result))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"cluster_bench-{result['started'].replace(':', '')}.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
