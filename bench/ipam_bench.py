"""host-local: median ADD and DEL time, ours next to the reference, in one run.

Every operation execs the plugin as a runtime does (env + config on stdin), on an empty
network and on one that already holds N reservations (default 5,000 in a /16), written
straight to disk in the reference's layout. Our plugin's first call on the pre-populated
network rebuilds its attachment index from a full scan; that one-off cost is reported on
its own line and kept out of the medians.

    .venv/bin/python bench/ipam_bench.py [--runs 30] [--prefill 5000] [--reference /usr/lib/cni/host-local]
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import our_plugins  # bench/our_plugins.py

SUBNET = ipaddress.ip_network("10.200.0.0/16")
NETWORK = "bench"


def exec_plugin(binary: str, command: str, conf: bytes, cid: str) -> float:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": "/var/run/netns/bench-none",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": os.path.dirname(binary),
    }
    start = time.perf_counter()
    proc = subprocess.run([binary], input=conf, env=env, capture_output=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{binary} {command} {cid} failed: {proc.stdout.decode()} {proc.stderr.decode()}")
    return elapsed


def in_process(command: str, conf: bytes, cid: str) -> float:
    """The same call through ``skel.run`` in this process: the plugin's own work, no interpreter start."""
    import io

    from cni_plugins.protocol import skel
    from ipam import host_local

    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": "/var/run/netns/bench-none",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/nonexistent",
    }
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    rc = skel.run(host_local.PLUGIN, environ=env, stdin=conf, stdout=out, stderr=err)
    elapsed = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"in-process {command} {cid} failed: {out.getvalue()} {err.getvalue()}")
    return elapsed


def prefill(data_dir: Path, count: int) -> None:
    """``count`` reservations in the reference's layout, as if made by earlier ADDs."""
    net = data_dir / NETWORK
    net.mkdir(parents=True, mode=0o755)
    hosts = SUBNET.hosts()
    next(hosts)  # the gateway
    last = None
    for i in range(count):
        last = next(hosts)
        fd = os.open(net / str(last), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, f"prefill-{i}\r\neth0".encode())
        os.close(fd)
    if last is not None:
        (net / "last_reserved_ip.0").write_text(str(last))
    os.sync()  # as on a node where these were made over time: no pending writeback skews the first call


def measure(binary: str, data_dir: Path, runs: int, count: int) -> dict[str, float]:
    run = (
        (lambda command, conf, cid: in_process(command, conf, cid))
        if binary == "in-process"
        else (lambda command, conf, cid: exec_plugin(binary, command, conf, cid))
    )
    conf = json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "type": "bridge",
            "ipam": {"type": "host-local", "subnet": str(SUBNET), "dataDir": str(data_dir)},
        }
    ).encode()
    prefill(data_dir, count)
    first = run("ADD", conf, "warmup")  # ours: rebuilds its index here if prefilled
    run("DEL", conf, "warmup")
    adds = [run("ADD", conf, f"bench-{i}") for i in range(runs)]
    dels = [run("DEL", conf, f"bench-{i}") for i in range(runs)]
    files = sum(1 for name in os.listdir(data_dir / NETWORK) if name[0].isdigit())
    if files != count:
        raise SystemExit(f"{binary}: {files} reservations left, expected {count}")
    return {
        "first": first,
        "add": statistics.median(adds),
        "del": statistics.median(dels),
        "add_p90": sorted(adds)[int(0.9 * (runs - 1))],
        "del_p90": sorted(dels)[int(0.9 * (runs - 1))],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=30, help="ADDs (then DELs) measured per case")
    parser.add_argument("--prefill", type=int, default=5000, help="reservations already on the busy network")
    parser.add_argument("--reference", default="/usr/lib/cni/host-local", help="the reference host-local binary")
    parser.add_argument("--ours", default="", help="our installed host-local (default: install into a temp dir)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="ipam-bench-"))
    helper = None
    try:
        if args.ours:
            plugins = {"cni-py": args.ours}
        else:  # as installed by default (a warm helper, here a private one) and without a helper
            sock = str(work / "run" / "helper.sock")
            helper = our_plugins.start_helper(sock)
            our_plugins.install(work / "warm", "host-local", helper="on", helper_socket=sock)
            our_plugins.install(work / "cold", "host-local")
            plugins = {
                "cni-py/helper": str(work / "warm" / "host-local"),
                "cni-py/no helper": str(work / "cold" / "host-local"),
            }
        plugins["cni-py/in-process"] = "in-process"
        if os.path.exists(args.reference):
            plugins["reference"] = args.reference
        rows = []
        for count in (0, args.prefill):
            for name, binary in plugins.items():
                data_dir = work / f"{name}-{count}"
                r = measure(binary, data_dir, args.runs, count)
                rows.append((name, count, r))
                shutil.rmtree(data_dir)
        print(f"host-local, {args.runs} runs per cell, every operation an exec; times in ms (median, p90)")
        print(
            f"{'plugin':<18} {'reservations':>12} {'ADD median':>11} "
            f"{'ADD p90':>8} {'DEL median':>11} {'DEL p90':>8} {'first call':>11}"
        )
        for name, count, r in rows:
            print(
                f"{name:<18} {count:>12} {r['add'] * 1e3:>11.1f} {r['add_p90'] * 1e3:>8.1f} "
                f"{r['del'] * 1e3:>11.1f} {r['del_p90'] * 1e3:>8.1f} {r['first'] * 1e3:>11.1f}"
            )
        print("first call: the untimed warm-up ADD on that network (cni-py rebuilds its index there after the prefill)")
        print(
            "cni-py/helper: handed to a warm helper (the default "
            "install); cni-py/no helper: each call in its own interpreter"
        )
        print("cni-py/in-process: the same calls through skel.run inside this process, without interpreter start-up")
    finally:
        our_plugins.stop_helper(helper)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
