"""cnitool: run a network config list on a network namespace by hand.

Same commands, arguments and environment as the reference cnitool::

    cnitool add|check|del|gc|status <network-name> <netns-path> [-i IFNAME]

    NETCONFPATH  config directory (default /etc/cni/net.d)
    CNI_PATH     plugin directories, ':'-separated (default /opt/cni/bin)
    CNI_IFNAME   interface name (default eth0; -i/--ifname overrides)
    CNI_ARGS     K=V;K2=V2
    CAP_ARGS     capability args as a JSON object, e.g. {"portMappings": [...]}
    CNI_CACHE_DIR  result cache directory (default /var/lib/cni; ours, not the reference's)

The container ID is ``cnitool-`` + the hex of the first 10 bytes of SHA-512 of the absolute
netns path, as the reference derives it, so both tools find each other's cached results.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from typing import Any

from cni_plugins.runtime import cache
from cni_plugins.runtime.runner import CNIRunner, RuntimeConf
from cni_plugins.spec.errors import CNIError
from conf.loader import load_conflist

DEFAULT_NETDIR = "/etc/cni/net.d"
DEFAULT_CNI_PATH = "/opt/cni/bin"
COMMANDS = ("add", "check", "del", "gc", "status")


class UsageError(Exception):
    pass


def container_id_for(netns_path: str) -> str:
    return "cnitool-" + hashlib.sha512(netns_path.encode()).hexdigest()[:20]


def parse_cni_args(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for pair in text.split(";"):
        kv = pair.split("=")
        if len(kv) != 2 or not kv[0] or not kv[1]:
            raise UsageError(f"invalid CNI_ARGS pair {pair!r}")
        pairs.append((kv[0], kv[1]))
    return tuple(pairs)


def parse_cap_args(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"CAP_ARGS is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise UsageError("CAP_ARGS must be a JSON object")
    return obj


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cnitool",
        description="Add, check, or remove network interfaces from a network namespace",
        epilog="Environment: NETCONFPATH, CNI_PATH, CNI_IFNAME, CNI_ARGS, CAP_ARGS, CNI_CACHE_DIR",
    )
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("network", help="network name (the 'name' of a config list in NETCONFPATH)")
    parser.add_argument("netns", help="path of the network namespace, e.g. /var/run/netns/test")
    parser.add_argument("-i", "--ifname", default=None, help="interface name (default: CNI_IFNAME or eth0)")
    opts = parser.parse_args(argv)
    env = os.environ
    try:
        netdir = env.get("NETCONFPATH") or DEFAULT_NETDIR
        netlist = load_conflist(netdir, opts.network)
        cap_args = parse_cap_args(env["CAP_ARGS"]) if env.get("CAP_ARGS") else {}
        cni_args = parse_cni_args(env["CNI_ARGS"]) if env.get("CNI_ARGS") else ()
        ifname = opts.ifname or env.get("CNI_IFNAME") or "eth0"
        netns = os.path.abspath(opts.netns)
        paths = [p for p in (env.get("CNI_PATH") or DEFAULT_CNI_PATH).split(os.pathsep) if p]
        runner = CNIRunner(paths, env.get("CNI_CACHE_DIR") or cache.DEFAULT_CACHE_DIR)
        rt = RuntimeConf(
            container_id=container_id_for(netns),
            netns=netns,
            ifname=ifname,
            cni_args=cni_args,
            capability_args=cap_args,
        )
        if opts.command == "add":
            result = runner.add(netlist, rt)
            print(json.dumps(result, indent=4))
        elif opts.command == "check":
            runner.check(netlist, rt)
        elif opts.command == "del":
            runner.delete(netlist, rt)
        elif opts.command == "gc":
            runner.gc(netlist, None)  # the reference passes no valid-attachments list
        else:
            runner.status(netlist)
    except CNIError as exc:
        detail = f" ({exc.details})" if exc.details else ""
        print(f"cnitool: {exc.msg}{detail}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"cnitool: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
