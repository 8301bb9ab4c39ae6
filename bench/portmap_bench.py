"""portmap: ADD time at the 1st and the Nth port-mapped container (default N = 1,000), ours
next to the reference (/usr/lib/cni/portmap: Debian's v1.1.1, iptables backend, which on
Debian 12 is iptables-nft), in one run.

Each implementation runs inside its own fresh network namespace standing for the host
(``ip netns exec``), so the machine's own ruleset is never touched and neither run sees the
other's rules. Every ADD execs the plugin as a runtime does (env + config with prevResult on
stdin): container i gets address 10.<i> and maps host port 10000+i/tcp to port 80. Our
plugins are installed without the warm helper (every call a fresh process), as the
reference is. After the N ADDs, the DEL of the last container is timed too.

    sudo .venv/bin/python bench/portmap_bench.py [-n 1000] [--helper] [--reference PLUGIN] [--json out.json]

``--reference`` is the reference portmap executable (default /usr/lib/cni/portmap).
``--helper`` adds a run of ours through the warm helper (the installer's default mode),
which takes the interpreter start and imports off each call. "handler in-process" calls our
ADD handler in the benchmark's own process: the plugin's work without interpreter start.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import our_plugins

ROOT = Path(__file__).resolve().parent.parent
BASE = ipaddress.ip_address("10.0.0.0")
IN_PROCESS = "in-process"


def conf(i: int, ifname: str = "eth0") -> bytes:
    ip = BASE + 256 + i  # 10.0.1.1 ...
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "cni0"}, {"name": f"veth{i}"}, {"name": ifname, "sandbox": "/var/run/netns/x"}],
        "ips": [{"address": f"{ip}/8", "gateway": "10.0.0.1", "interface": 2}],
    }
    mapping = {"hostPort": 10000 + i, "containerPort": 80, "protocol": "tcp"}
    return json.dumps(
        {
            "cniVersion": "1.0.0",
            "name": "benchnet",
            "type": "portmap",
            "runtimeConfig": {"portMappings": [mapping]},
            "prevResult": prev,
        }
    ).encode()


def exec_plugin(binary: str, command: str, i: int, netns: str) -> float:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": f"bench{i:05d}",
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": os.path.dirname(binary) or "/opt/cni/bin",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    if binary == IN_PROCESS:
        return handler(env, i)
    start = time.perf_counter()
    proc = subprocess.run([binary], input=conf(i), env=env, capture_output=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{binary} {command} #{i} failed: {proc.stdout.decode()} {proc.stderr.decode()}")
    return elapsed


def handler(env: dict[str, str], i: int) -> float:
    """Our handler called in this process: the plugin's own work, without interpreter start."""
    import io

    sys.path.insert(0, str(ROOT))
    from cni_plugins.plugins import portmap
    from cni_plugins.protocol import skel

    out = io.StringIO()
    start = time.perf_counter()
    rc = skel.run(portmap.PLUGIN, environ=env, stdin=conf(i), stdout=out, stderr=io.StringIO())
    elapsed = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"in-process {env['CNI_COMMAND']} #{i} failed: {out.getvalue()}")
    return elapsed


def inner(binary: str, n: int, netns: str) -> dict[str, Any]:
    """Runs inside the host namespace: N ADDs, then the DEL of the last one."""
    adds = []
    for i in range(1, n + 1):
        adds.append(exec_plugin(binary, "ADD", i, netns))
    delete = exec_plugin(binary, "DEL", n, netns)
    ruleset = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    return {"adds": adds, "del_last": delete, "ruleset_lines": len(ruleset.splitlines())}


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def run_in_namespace(label: str, binary: str, n: int) -> dict[str, Any]:
    host, ctr = f"pmbench-{os.getpid()}-{label}", f"pmbench-{os.getpid()}-{label}-ctr"
    sh("ip", "netns", "add", host)
    sh("ip", "netns", "add", ctr)
    try:
        sh("ip", "netns", "exec", host, "ip", "link", "set", "lo", "up")
        # container addresses route to a (veth) link, as they would to a bridge
        sh("ip", "netns", "exec", host, "ip", "link", "add", "cni0", "type", "veth", "peer", "name", "cni0p")
        sh("ip", "netns", "exec", host, "ip", "addr", "add", "10.0.0.1/8", "dev", "cni0")
        sh("ip", "netns", "exec", host, "ip", "link", "set", "cni0p", "up")
        sh("ip", "netns", "exec", host, "ip", "link", "set", "cni0", "up")
        cmd = [
            "ip",
            "netns",
            "exec",
            host,
            sys.executable,
            __file__,
            "--inner",
            binary,
            "-n",
            str(n),
            "--netns",
            f"/var/run/netns/{ctr}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{label}: {proc.stderr.strip()}")
        out: dict[str, Any] = json.loads(proc.stdout)
        return out
    finally:
        subprocess.run(["ip", "netns", "del", host], capture_output=True)
        subprocess.run(["ip", "netns", "del", ctr], capture_output=True)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=1000, help="containers (default 1000)")
    parser.add_argument("--reference", default="/usr/lib/cni/portmap")
    parser.add_argument("--json", help="write all timings here")
    parser.add_argument(
        "--helper", action="store_true", help="also time ours through the warm helper (cni_plugins/helper/server.py)"
    )
    parser.add_argument("--inner", help=argparse.SUPPRESS)
    parser.add_argument("--netns", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(inner(args.inner, args.n, args.netns)))
        return 0
    with tempfile.TemporaryDirectory(prefix="pmbench-") as tmp:
        our_plugins.install(f"{tmp}/cold", "portmap")
        impls = {"ours, exec per call": f"{tmp}/cold/portmap"}
        helper = None
        if args.helper:
            sock = f"{tmp}/run/helper.sock"
            our_plugins.install(f"{tmp}/warm", "portmap", helper="on", helper_socket=sock)
            helper = our_plugins.start_helper(sock)
            impls["ours, via the warm helper"] = f"{tmp}/warm/portmap"
        impls["ours, handler in-process"] = IN_PROCESS
        if os.path.exists(args.reference):
            impls["reference v1.1.1 (iptables-nft)"] = args.reference
        results = {}
        try:
            for index, (label, binary) in enumerate(impls.items()):
                started = time.monotonic()
                results[label] = run_in_namespace(str(index), binary, args.n)
                results[label]["total_s"] = time.monotonic() - started
        finally:
            our_plugins.stop_helper(helper)
    n = args.n
    print(f"portmap ADD, exec'd per call, inside a fresh host namespace; {n} containers, one tcp mapping each")
    print(
        f"{'':34s} {'1st ADD':>11s} {'ADD #' + str(n):>11s} {'mean 1-10':>11s} "
        f"{'mean last 10':>13s} {'DEL #' + str(n):>11s}  ruleset lines"
    )
    for label, r in results.items():
        adds = r["adds"]
        print(
            f"{label:34s} {ms(adds[0]):>11s} {ms(adds[-1]):>11s} {ms(statistics.mean(adds[:10])):>11s} "
            f"{ms(statistics.mean(adds[-10:])):>13s} {ms(r['del_last']):>11s} "
            f" {r['ruleset_lines']}  (run {r['total_s']:.0f} s)"
        )
    tenth = max(1, n // 10)
    print(f"\nmedian ADD per block of {tenth} containers (trend, less noisy than single calls):")
    for label, r in results.items():
        adds = r["adds"]
        blocks = [statistics.median(adds[i : i + tenth]) for i in range(0, len(adds), tenth)]
        print(f"{label:34s} " + " ".join(f"{b * 1000:6.1f}" for b in blocks))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
