"""Start-up cost: median time of a VERSION call and of an error path, ours next to the reference.

Installs our plugins into a temporary bin dir (the same launcher `cni-plugins install` writes)
and execs each binary as a runtime does, with a bare environment, interleaving ours and the
reference's so both see the same machine load. No namespace or root needed.

    .venv/bin/python bench/version_bench.py [--runs 200] [--reference /usr/lib/cni]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import our_plugins  # bench/our_plugins.py

CASES = {
    # name: (env, stdin)
    "VERSION": ({"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.0.0"}'),
    "error: no CNI_NETNS": (
        {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"},
        b'{"cniVersion":"1.0.0","name":"n","type":"bridge"}',
    ),
    "error: bad stdin": (
        {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "c1",
            "CNI_NETNS": "/var/run/netns/none",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": "/nonexistent",
        },
        b"{not json",
    ),
}


def exec_once(binary: str, env: dict[str, str], stdin: bytes) -> float:
    start = time.perf_counter()
    subprocess.run([binary], input=stdin, env=env, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--reference", default="/usr/lib/cni")
    parser.add_argument("--plugins", default="bridge,loopback,host-local")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cni-version-bench-") as work:
        ours_bin = Path(work) / "bin"
        our_plugins.install(ours_bin)
        plugins = args.plugins.split(",")
        times: dict[tuple[str, str, str], list[float]] = {}
        for i in range(args.runs + 5):  # five warm-up rounds, not counted
            for case, (env, stdin) in CASES.items():
                for plugin in plugins:
                    for impl, bin_dir in (("ours", str(ours_bin)), ("reference", args.reference)):
                        took = exec_once(f"{bin_dir}/{plugin}", env, stdin)
                        if i >= 5:
                            times.setdefault((case, plugin, impl), []).append(took)
    print(f"median and p95 of {args.runs} execs each (ms), ours and the reference interleaved")
    print(f"{'case':<24}{'plugin':<12}{'ours':>8}{'p95':>8}{'reference':>11}{'p95':>8}{'ours/ref':>10}")
    for case in CASES:
        for plugin in plugins:
            row = []
            for impl in ("ours", "reference"):
                samples = sorted(times[case, plugin, impl])
                row += [statistics.median(samples) * 1000, samples[int(len(samples) * 0.95) - 1] * 1000]
            print(
                f"{case:<24}{plugin:<12}{row[0]:>8.1f}{row[1]:>8.1f}"
                f"{row[2]:>11.1f}{row[3]:>8.1f}{row[0] / row[2]:>10.2f}"
            )


if __name__ == "__main__":
    main()
