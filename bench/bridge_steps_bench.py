"""Where a bridge ADD's time goes with N containers attached, next to a host holding one.

Two namespaces stand for two hosts: "full" gets N containers (podman's bridge network, our
bridge + host-local), "small" gets one. After a settling pause, one more container is ADDed
and DELeted on each, taking turns, P times; every named step of the ADD (``step(...)`` in
cni_plugins/bridge.py), every netlink request and every sysctl access is timed. The table
lists each one's median on both hosts and the difference, largest first: what the attached
containers cost a new ADD, apart from machine-speed drift (the two sides run seconds apart).
Everything runs in this one process, as in a warm helper worker.

    sudo .venv/bin/python bench/bridge_steps_bench.py [-n 1000] [--probes 30] [--settle 45]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cni_plugins import bridge, netlink, netns, skel, steps, sysctl  # noqa: E402
import our_plugins  # noqa: E402  (bench/our_plugins.py)

_spent: dict[str, float] = {}


def _add_time(key: str, seconds: float) -> None:
    _spent[key] = _spent.get(key, 0.0) + seconds


@contextlib.contextmanager
def _timed_step(what: str) -> Iterator[None]:
    start = time.perf_counter()
    with steps.step(what):
        yield
    _add_time(f"step: {what}", time.perf_counter() - start)


def _timed(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _add_time(label, time.perf_counter() - start)

    return wrapper


def instrument() -> None:
    bridge.step = _timed_step  # type: ignore[assignment]
    bridge.PLUGIN = dataclasses.replace(bridge.PLUGIN, add=_timed(bridge.PLUGIN.add, "cmd_add"))
    netlink.Netlink.close = _timed(netlink.Netlink.close, "netlink: close")
    for name in ("open", "link", "link_by_index", "create_link", "set_link", "set_bridge_port", "addresses", "add_address", "add_route", "routes"):
        setattr(netlink.Netlink, name, _timed(getattr(netlink.Netlink, name), f"netlink: {name}"))
    for name in ("read", "write"):
        setattr(sysctl, name, _timed(getattr(sysctl, name), f"sysctl: {name}"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="containers on the full host (at most 1,022: the kernel caps a bridge at 1,023 ports)")
    parser.add_argument("--probes", type=int, default=30)
    parser.add_argument("--settle", type=float, default=45.0, help="seconds between the fill and the probes")
    opts = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: network namespaces")
    tag = f"bsb{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="cni-bridge-steps-"))
    bin_dir = work / "bin"
    our_plugins.install(bin_dir, "host-local")
    hosts = {"small": f"{tag}-small", "full": f"{tag}-full"}
    probe_ns = {"small": f"{tag}-ps", "full": f"{tag}-pf"}
    fill = [f"{tag}-f{i}" for i in range(opts.n)]
    names = [*hosts.values(), *probe_ns.values(), f"{tag}-s0", *fill]

    def call(command: str, side: str, cid: str, ctr: str) -> float:
        conf = {
            "cniVersion": "1.0.0", "name": "podman", "type": "bridge", "bridge": "cni-podman0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
            "ipam": {"type": "host-local", "routes": [{"dst": "0.0.0.0/0"}], "ranges": [[{"subnet": "10.88.0.0/16"}]], "dataDir": str(work / f"ipam-{side}")},
        }  # fmt: skip
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": f"/var/run/netns/{ctr}", "CNI_IFNAME": "eth0", "CNI_PATH": str(bin_dir)}
        out = io.StringIO()
        with netns.entered(f"/var/run/netns/{hosts[side]}"):
            start = time.perf_counter()
            code = skel.run(bridge.PLUGIN, environ=env, stdin=json.dumps(conf).encode(), stdout=out, stderr=sys.stderr)
            took = time.perf_counter() - start
        if code != 0:
            raise RuntimeError(f"{command} {cid} on {side}: {out.getvalue()}")
        return took

    subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"netns add {n}\n" for n in names), text=True, check=True)
    try:
        for side in hosts:
            subprocess.run(["ip", "-n", hosts[side], "link", "set", "lo", "up"], check=True)
        instrument()
        call("ADD", "small", "small-0", f"{tag}-s0")
        started = time.monotonic()
        for i, ctr in enumerate(fill):
            call("ADD", "full", f"full-{i}", ctr)
        print(f"full host: {opts.n} containers in {time.monotonic() - started:.0f} s; settling {opts.settle:.0f} s", flush=True)
        time.sleep(opts.settle)
        samples: dict[str, list[dict[str, float]]] = {"small": [], "full": []}
        for r in range(opts.probes):
            for side in ("full", "small") if r % 2 == 0 else ("small", "full"):
                _spent.clear()
                total = call("ADD", side, f"probe-{r}", probe_ns[side])
                samples[side].append({**_spent, "ADD total": total})
                call("DEL", side, f"probe-{r}", probe_ns[side])
        rows = []
        for key in {k for side in samples.values() for s in side for k in s}:
            small, full = (statistics.median(s.get(key, 0.0) for s in samples[side]) * 1000 for side in ("small", "full"))
            rows.append((full - small, key, small, full))
        print(f"median of {opts.probes} ADDs on each host, ms (in one process, as in a warm helper worker)")
        print(f"{'':<34}{'1 attached':>12}{f'{opts.n} attached':>15}{'difference':>12}")
        for diff, key, small, full in sorted(rows, key=lambda row: (row[1] != "ADD total", -row[0])):
            print(f"{key:<34}{small:>12.2f}{full:>15.2f}{diff:>+12.2f}")
        return 0
    finally:
        subprocess.run(["ip", "-force", "-batch", "-"], input="".join(f"netns del {n}\n" for n in names), text=True, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
