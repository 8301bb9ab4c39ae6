"""veth (ptp) and macvlan with host-local: median ADD and DEL time, ours next to the reference.

Every call execs the plugin as a runtime does (env + config on stdin). This process enters a
throwaway "host" namespace first, so every plugin (and its IPAM) runs there, never on the
machine itself; each implementation gets its own container namespace and dataDir. Ours is
installed into a temporary CNI bin dir as by default, with a warm helper on a private socket
that this script starts and stops (our host-local is found there, as a runtime would
find it; the delegation then runs in-process, see ``cni_plugins.protocol.invoke``), the reference's
is ``/usr/lib/cni`` (its ptp/macvlan exec its host-local). Calls of the two alternate, so
drift on the machine hits both alike.

    sudo .venv/bin/python bench/main_plugins_bench.py [--runs 40] [--reference /usr/lib/cni]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import our_plugins

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cni_plugins.kernel import netns  # noqa: E402  (needs the sys.path insert above)

CHAINS = {
    "ptp": lambda data_dir: {
        "cniVersion": "1.0.0",
        "name": "benchptp",
        "type": "ptp",
        "ipMasq": False,
        "ipam": {"type": "host-local", "subnet": "10.210.0.0/16", "dataDir": data_dir},
    },
    "macvlan": lambda data_dir: {
        "cniVersion": "1.0.0",
        "name": "benchmv",
        "type": "macvlan",
        "master": "benchm0",
        "mode": "bridge",
        "ipam": {"type": "host-local", "subnet": "10.211.0.0/16", "dataDir": data_dir},
    },
}


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def exec_plugin(bin_dir: str, plugin: str, command: str, conf: bytes, ctr: str) -> float:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "bench1",
        "CNI_NETNS": f"/var/run/netns/{ctr}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": bin_dir,
    }
    start = time.perf_counter()
    proc = subprocess.run([os.path.join(bin_dir, plugin)], input=conf, env=env, capture_output=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{bin_dir}/{plugin} {command} failed: {proc.stdout.decode()} {proc.stderr.decode()}")
    return elapsed


def version_exec(binary: str) -> float:
    start = time.perf_counter()
    subprocess.run(
        [binary], input=b'{"cniVersion":"1.0.0"}', env={"CNI_COMMAND": "VERSION"}, capture_output=True, check=True
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--reference", default="/usr/lib/cni")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces)")
    tag = f"cnibench{os.getpid()}"
    host, names = f"{tag}-host", [f"{tag}-host"]
    work = Path(tempfile.mkdtemp(prefix="cni-main-bench-"))
    ours_bin = work / "bin"
    impls = {"ours": str(ours_bin), "reference": args.reference}
    helper = None
    try:
        sock = str(work / "run" / "helper.sock")
        helper = our_plugins.start_helper(sock)  # as installed by default, with a private warm helper
        our_plugins.install(ours_bin, helper="on", helper_socket=sock)
        sh("ip", "netns", "add", host)
        sh("ip", "-n", host, "link", "set", "lo", "up")
        sh("ip", "-n", host, "link", "add", "benchm0", "type", "veth", "peer", "name", "benchm0p")
        sh("ip", "-n", host, "link", "set", "benchm0", "up")
        sh("ip", "-n", host, "link", "set", "benchm0p", "up")
        ctrs = {}
        for chain in CHAINS:
            for impl in impls:
                ctrs[chain, impl] = f"{tag}-{chain}-{impl}"
                names.append(ctrs[chain, impl])
                sh("ip", "netns", "add", ctrs[chain, impl])
        times: dict[tuple[str, str, str], list[float]] = {}
        with netns.entered(f"/var/run/netns/{host}"):  # children inherit this thread's namespace
            for chain, make in CHAINS.items():
                confs = {impl: json.dumps(make(str(work / f"ipam-{impl}"))).encode() for impl in impls}
                for i in range(args.runs + 2):  # two warm-up rounds, not counted
                    for impl, bin_dir in impls.items():
                        add = exec_plugin(bin_dir, chain, "ADD", confs[impl], ctrs[chain, impl])
                        delete = exec_plugin(bin_dir, chain, "DEL", confs[impl], ctrs[chain, impl])
                        if i >= 2:
                            times.setdefault((chain, impl, "ADD"), []).append(add)
                            times.setdefault((chain, impl, "DEL"), []).append(delete)
        print(f"median of {args.runs} execs each (ms), plugins exec'd inside a host netns, IPAM host-local")
        print(f"{'chain':<20}{'verb':<6}{'ours':>9}{'reference':>11}{'ours/ref':>10}")
        for chain in CHAINS:
            for verb in ("ADD", "DEL"):
                ours = statistics.median(times[chain, "ours", verb]) * 1000
                ref = statistics.median(times[chain, "reference", verb]) * 1000
                print(f"{chain + '+host-local':<20}{verb:<6}{ours:>9.1f}{ref:>11.1f}{ours / ref:>10.2f}")
        floor = statistics.median(version_exec(str(ours_bin / "ptp")) for _ in range(args.runs)) * 1000
        print(f"for scale: our ptp answering VERSION (interpreter start + launcher, no work) {floor:.1f} ms")
    finally:
        our_plugins.stop_helper(helper)
        for name in reversed(names):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["rm", "-rf", str(work)])


if __name__ == "__main__":
    main()
