"""Where a bridge ADD's time goes with N containers attached, next to a host holding one.

Two namespaces stand for two hosts: "full" gets N containers (podman's bridge network, our
bridge + host-local), "small" gets one. After a settling pause, one more container is ADDed
and DELeted on each, taking turns, P times; every named step of the ADD (``step(...)`` in
cni_plugins/plugins/bridge.py), every netlink request and every sysctl access is timed. The table
lists each one's median on both hosts and the difference, largest first: what the attached
containers cost a new ADD, apart from machine-speed drift (the two sides run seconds apart).
Everything runs in this one process, as in a warm helper worker. With ``--chain`` every
container also gets portmap (one port) and firewall, untimed, so both hosts carry the rules
chain_bench's do. "ADD total" also holds what no step names, such as freeing the nftables
context when the call returns, which can wait for the kernel (13 ms after a deletion, in one
measurement) where a helper worker frees it after its reply: compare the steps. With
``--via-helper`` the probes exec our installed plugins as a runtime does (with ``--chain``
the whole chain, DEL in reverse with the result as prevResult), served by a private warm
helper; only the bridge ADD is timed, and the step rows and "plugin (skel.run)" (the
worker's whole call; the rest of "ADD total" is the launcher and the hand-over) come from
its debug log.

    sudo .venv/bin/python bench/bridge_steps_bench.py [-n 1000] [--probes 30] [--settle 45] [--chain] [--via-helper]
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import our_plugins

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cni_plugins.kernel import netlink, netns, sysctl  # noqa: E402  (needs the sys.path insert above)
from cni_plugins.plugins import bridge  # noqa: E402  (needs the sys.path insert above)
from cni_plugins.protocol import skel, steps  # noqa: E402  (needs the sys.path insert above)

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
    for name in (
        "open",
        "close",
        "link",
        "link_by_index",
        "create_link",
        "set_link",
        "set_bridge_port",
        "addresses",
        "add_address",
        "add_route",
        "routes",
    ):
        setattr(netlink.Netlink, name, _timed(getattr(netlink.Netlink, name), f"netlink: {name}"))
    for name in ("read", "write"):
        setattr(sysctl, name, _timed(getattr(sysctl, name), f"sysctl: {name}"))


def _rest_of_chain(
    command: str,
    conf: dict[str, Any],
    env: dict[str, str],
    port: int,
    prev: dict[str, Any] | None,
    exec_dir: Path | None = None,
) -> dict[str, Any] | None:
    """portmap and firewall after the bridge (before it for DEL, with ``prev`` the chain's
    result as a runtime passes it), untimed: in this process, or exec'd from ``exec_dir``.
    Returns the chain's result after them (ADD)."""
    from cni_plugins.plugins import firewall, portmap

    plugins = [portmap.PLUGIN, firewall.PLUGIN] if command == "ADD" else [firewall.PLUGIN, portmap.PLUGIN]
    timed_before = dict(_spent)  # their netlink and sysctl calls are not the bridge's
    final = prev
    for plugin in plugins:
        stage: dict[str, Any] = {"cniVersion": conf["cniVersion"], "name": conf["name"], "type": plugin.name}
        if plugin.name == "portmap":
            stage["runtimeConfig"] = {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]}
        if final is not None:
            stage["prevResult"] = final
        stdin = json.dumps(stage).encode()
        if exec_dir is not None:
            proc = subprocess.run(
                [str(exec_dir / plugin.name)], input=stdin, env={**env, "CNI_COMMAND": command}, capture_output=True
            )
            code, output = proc.returncode, proc.stdout.decode()
        else:
            out = io.StringIO()
            code = skel.run(plugin, environ={**env, "CNI_COMMAND": command}, stdin=stdin, stdout=out, stderr=sys.stderr)
            output = out.getvalue()
        if code != 0:
            raise RuntimeError(f"{plugin.name} {command}: {output}")
        if command == "ADD":
            final = json.loads(output)
    _spent.clear()
    _spent.update(timed_before)
    return final


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "-n",
        type=int,
        default=1000,
        help="containers on the full host (at most 1,022: the kernel caps a bridge at 1,023 ports)",
    )
    parser.add_argument("--probes", type=int, default=30)
    parser.add_argument(
        "--chain",
        action="store_true",
        help=(
            "every container also gets portmap (one port) and firewall, "
            "as in chain_bench, so the hosts carry their rules"
        ),
    )
    parser.add_argument(
        "--via-helper",
        action="store_true",
        help=(
            "probe ADDs exec our installed bridge, served by a private warm "
            "helper (as chain_bench runs it); steps come from its debug log"
        ),
    )
    parser.add_argument("--settle", type=float, default=45.0, help="seconds between the fill and the probes")
    opts = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: network namespaces")
    tag = f"bsb{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="cni-bridge-steps-"))
    bin_dir = work / "bin"
    sock, log_file = str(work / "helper.sock"), work / "debug.log"
    our_plugins.install(
        bin_dir,
        *(("bridge", "host-local", "portmap", "firewall") if opts.via_helper else ("host-local",)),
        helper="on" if opts.via_helper else "off",
        helper_socket=sock if opts.via_helper else "",
    )
    helper = our_plugins.start_helper(sock) if opts.via_helper else None
    hosts = {"small": f"{tag}-small", "full": f"{tag}-full"}
    probe_ns = {"small": f"{tag}-ps", "full": f"{tag}-pf"}
    fill = [f"{tag}-f{i}" for i in range(opts.n)]
    names = [*hosts.values(), *probe_ns.values(), f"{tag}-s0", *fill]

    results: dict[str, dict[str, Any] | None] = {}

    def bridge_conf(side: str) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0", "name": "podman", "type": "bridge", "bridge": "cni-podman0",
            "isGateway": True, "ipMasq": True, "hairpinMode": True,
            "ipam": {
                "type": "host-local", "routes": [{"dst": "0.0.0.0/0"}], "ranges": [[{"subnet": "10.88.0.0/16"}]],
                "dataDir": str(work / f"ipam-{side}"),
            },
        }  # fmt: skip

    def call_env(command: str, cid: str, ctr: str) -> dict[str, str]:
        return {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": f"/var/run/netns/{ctr}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(bin_dir),
        }

    def exec_add(side: str, cid: str, ctr: str, port: int) -> float:
        """The chain's ADD by exec, through the helper, as a runtime runs it; only the bridge
        call is timed, and its worker's step timings go into ``_spent``."""
        conf, env = bridge_conf(side), call_env("ADD", cid, ctr)
        log_file.write_text("")
        with netns.entered(f"/var/run/netns/{hosts[side]}"):
            start = time.perf_counter()
            proc = subprocess.run(
                [str(bin_dir / "bridge")],
                input=json.dumps(conf).encode(),
                env={**env, "CNI_PY_DEBUG": "1", "CNI_PY_LOG_FILE": str(log_file)},
                capture_output=True,
            )
            took = time.perf_counter() - start
            if proc.returncode != 0:
                raise RuntimeError(f"ADD {cid} on {side}: {proc.stdout.decode()}")
            result = json.loads(proc.stdout)
            results[cid + side] = _rest_of_chain("ADD", conf, env, port, result, bin_dir) if port else result
        for line in log_file.read_text().splitlines():
            if (
                " bridge: debug: ADD " in line
            ):  # the worker's whole skel.run: the rest of "ADD total" is launcher and hand-over
                _add_time("plugin (skel.run)", float(line.rpartition(": ")[2][:-3]) / 1000)
            what, _, ms = line.partition(" bridge: debug: step ")[2].rpartition(": ")
            if what and ms.endswith(" ms"):
                _add_time(f"step: {what}", float(ms[:-3]) / 1000)
        return took

    def exec_del(side: str, cid: str, ctr: str, port: int) -> None:
        conf, env, prev = bridge_conf(side), call_env("DEL", cid, ctr), results.pop(cid + side)
        with netns.entered(f"/var/run/netns/{hosts[side]}"):
            if port:
                _rest_of_chain("DEL", conf, env, port, prev, bin_dir)
            subprocess.run(
                [str(bin_dir / "bridge")],
                input=json.dumps({**conf, "prevResult": prev}).encode(),
                env=env,
                capture_output=True,
                check=True,
            )

    def call(command: str, side: str, cid: str, ctr: str, port: int = 0) -> float:
        conf, env = bridge_conf(side), call_env(command, cid, ctr)
        out = io.StringIO()
        with netns.entered(f"/var/run/netns/{hosts[side]}"):
            if command == "DEL" and port:
                _rest_of_chain(command, conf, env, port, None)  # no prevResult: found by owner
            start = time.perf_counter()
            code = skel.run(bridge.PLUGIN, environ=env, stdin=json.dumps(conf).encode(), stdout=out, stderr=sys.stderr)
            took = time.perf_counter() - start
            if code == 0 and command == "ADD" and port:
                _rest_of_chain(command, conf, env, port, json.loads(out.getvalue()))
        if code != 0:
            raise RuntimeError(f"{command} {cid} on {side}: {out.getvalue()}")
        return took

    subprocess.run(
        ["ip", "-force", "-batch", "-"], input="".join(f"netns add {n}\n" for n in names), text=True, check=True
    )
    try:
        for side in hosts:
            subprocess.run(["ip", "-n", hosts[side], "link", "set", "lo", "up"], check=True)
        instrument()
        port = (lambda i: 20000 + i) if opts.chain else (lambda i: 0)
        call("ADD", "small", "small-0", f"{tag}-s0", port(0))
        started = time.monotonic()
        for i, ctr in enumerate(fill):
            call("ADD", "full", f"full-{i}", ctr, port(i))
        print(
            f"full host: {opts.n} containers in {time.monotonic() - started:.0f} s; settling {opts.settle:.0f} s",
            flush=True,
        )
        time.sleep(opts.settle)
        samples: dict[str, list[dict[str, float]]] = {"small": [], "full": []}
        for r in range(opts.probes):
            for side in ("full", "small") if r % 2 == 0 else ("small", "full"):
                _spent.clear()
                add = exec_add if opts.via_helper else functools.partial(call, "ADD")
                total = add(side, f"probe-{r}", probe_ns[side], port(opts.n + 1 + r))
                samples[side].append({**_spent, "ADD total": total})
                remove = exec_del if opts.via_helper else functools.partial(call, "DEL")
                remove(side, f"probe-{r}", probe_ns[side], port(opts.n + 1 + r))
        rows = []
        for key in {k for side in samples.values() for s in side for k in s}:
            small, full = (
                statistics.median(s.get(key, 0.0) for s in samples[side]) * 1000 for side in ("small", "full")
            )
            rows.append((full - small, key, small, full))
        how = (
            "exec'd, served by a warm helper; steps from its debug log"
            if opts.via_helper
            else "in one process, as in a warm helper worker"
        )
        print(f"median of {opts.probes} ADDs on each host, ms ({how})")
        print(f"{'':<34}{'1 attached':>12}{f'{opts.n} attached':>15}{'difference':>12}")
        for diff, key, small, full in sorted(
            rows, key=lambda row: (row[1] not in ("ADD total", "plugin (skel.run)"), row[1] != "ADD total", -row[0])
        ):
            print(f"{key:<34}{small:>12.2f}{full:>15.2f}{diff:>+12.2f}")
        return 0
    finally:
        our_plugins.stop_helper(helper, sock)
        subprocess.run(
            ["ip", "-force", "-batch", "-"],
            input="".join(f"netns del {n}\n" for n in names),
            text=True,
            capture_output=True,
        )
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
