"""The host stand-in of one part: the network and mount namespaces the part process runs in
(made by ``unshare``, see ``part.py``), the container namespaces it makes, and the state a
part compares before and after: links and addresses, nftables (our tables, iptables-nft's
tables, every set element), reservations under dataDir and temporary files.

Everything is read in place: the part process stands in the host namespace, so the
nftables binding and ``ip`` read it directly; container namespaces are read with
``ip -n``. ``/run/netns`` is a tmpfs of this mount namespace: the container namespaces are
the part's alone and go with it.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NETNS_DIR = "/run/netns"
IPTABLES_TABLES = {"filter", "nat", "mangle", "raw", "security"}  # iptables-nft's, in families ip and ip6
IP_FILE_CHARS = set("0123456789abcdefABCDEF.:")


def sh(*argv: str, check: bool = True, input: str | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def enter_host() -> None:
    """In a process just made by ``unshare --net --mount --propagation private``: loopback up,
    a private /run/netns for the container namespaces."""
    os.makedirs(NETNS_DIR, exist_ok=True)
    sh("mount", "-t", "tmpfs", "-o", "mode=0755", "cnipy-rel-netns", NETNS_DIR)
    sh("ip", "link", "set", "lo", "up")


def netns_path(name: str) -> str:
    return f"{NETNS_DIR}/{name}"


def add_netns(names: Iterable[str]) -> None:
    """Make container namespaces (``ip -batch``; their loopback is the loopback plugin's business)."""
    names = list(names)
    for start in range(0, len(names), 500):
        sh("ip", "-batch", "-", input="".join(f"netns add {n}\n" for n in names[start : start + 500]))


def del_netns(names: Iterable[str]) -> None:
    names = list(names)
    for start in range(0, len(names), 500):
        sh("ip", "-batch", "-", "-force", input="".join(f"netns del {n}\n" for n in names[start : start + 500]))


def own_netns_inode() -> int:
    return os.stat("/proc/self/ns/net").st_ino


# ---------------------------------------------------------------- state


def links(ns: str | None = None) -> dict[str, dict[str, Any]]:
    """name -> kind, addresses (global and host scope) of a namespace (its name or its path
    under /run/netns; None: this one)."""
    if ns and ns.startswith(NETNS_DIR + "/"):
        ns = ns[len(NETNS_DIR) + 1 :]  # ip -n takes a name
    argv = ["ip", *(["-n", ns] if ns else []), "-j", "-d", "addr", "show"]
    out: dict[str, dict[str, Any]] = {}
    for link in json.loads(sh(*argv) or "[]"):
        addrs = sorted(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a.get("scope") != "link")
        kind = (link.get("linkinfo") or {}).get("info_kind", "")
        out[link["ifname"]] = {"kind": kind, "addrs": addrs}
    return out


def _normal(obj: Any) -> Any:
    """A rule or element as nft lists it, without what changes by itself (handles, counters)."""
    if isinstance(obj, dict):
        return {k: (None if k == "counter" else _normal(v)) for k, v in obj.items() if k not in ("handle", "index")}
    if isinstance(obj, list):
        return [_normal(v) for v in obj]
    return obj


def ruleset() -> list[dict[str, Any]]:
    import nftables

    ctx = nftables.Nftables()
    ctx.set_json_output(True)
    rc, out, err = ctx.cmd("list ruleset")
    if rc != 0:
        raise RuntimeError(f"nft list ruleset: {err}")
    items: list[dict[str, Any]] = json.loads(out).get("nftables", [])
    return items


@dataclass
class NftState:
    """Multisets: set and map elements, rules, chains; iptables-nft's apart from the rest."""

    elements: collections.Counter[str] = field(default_factory=collections.Counter)
    rules: collections.Counter[str] = field(default_factory=collections.Counter)
    iptables_rules: collections.Counter[str] = field(default_factory=collections.Counter)
    chains: collections.Counter[str] = field(default_factory=collections.Counter)


def nft_state() -> NftState:
    state = NftState()
    for item in ruleset():
        kind, obj = next(iter(item.items()))
        if kind in ("metainfo", "table") or not isinstance(obj, dict):
            continue
        where = f"{obj.get('family')} {obj.get('table')}"
        iptables = obj.get("family") in ("ip", "ip6") and obj.get("table") in IPTABLES_TABLES
        if kind in ("set", "map"):
            for el in obj.get("elem") or []:
                state.elements[f"{where} {obj['name']}: {json.dumps(_normal(el), sort_keys=True)}"] += 1
        elif kind == "chain":
            state.chains[f"{where} {obj['name']}"] += 1
        elif kind == "rule":
            text = f"{where} {obj['chain']}: {json.dumps(_normal(obj.get('expr')), sort_keys=True)}"
            text += f" {obj.get('comment', '')}"
            (state.iptables_rules if iptables else state.rules)[text] += 1
    return state


def reservations(data_dir: Path) -> list[str]:
    """host-local's address files under ``data_dir`` (every network), as ``net/address``."""
    found: list[str] = []
    if not data_dir.is_dir():
        return found
    for net in sorted(data_dir.iterdir()):
        if net.is_dir():
            found += [f"{net.name}/{p.name}" for p in net.iterdir() if p.name and set(p.name) <= IP_FILE_CHARS]
    return found


def temp_files(data_dir: Path) -> list[str]:
    """Temporary files our host-local writes (``.cni-py-index/.tmp.*``), and any ``*.tmp*``."""
    found = []
    for dirpath, _dirs, files in os.walk(data_dir):
        found += [os.path.join(dirpath, f) for f in files if f.startswith(".tmp") or ".tmp." in f]
    return sorted(found)


@dataclass
class State:
    """What a part compares: the host's links, nftables, reservations, temporary files, and
    the links of the container namespaces it looks at."""

    host_links: dict[str, dict[str, Any]]
    nft: NftState
    reserved: list[str]
    temps: list[str]
    containers: dict[str, dict[str, dict[str, Any]]]


def snapshot(data_dirs: Iterable[Path] = (), containers: Iterable[str] = ()) -> State:
    dirs = list(data_dirs)
    return State(
        host_links=links(None),
        nft=nft_state(),
        reserved=[r for d in dirs for r in reservations(d)],
        temps=[t for d in dirs for t in temp_files(d)],
        containers={c: links(c) for c in containers},
    )


def leaks(base: State, now: State) -> dict[str, list[str]]:
    """What ``now`` holds beyond ``base``: host links (by name and kind), set and map elements,
    rules (ours and iptables'), chains, reservations, temporary files, container links."""
    host = [
        f"{n} ({v['kind'] or 'device'})"
        for n, v in now.host_links.items()
        if n not in base.host_links or base.host_links[n]["kind"] != v["kind"]
    ]
    ctr = [
        f"{c}: {n}"
        for c, ls in now.containers.items()
        for n in ls
        if n not in base.containers.get(c, {"lo": {}}) and n != "lo"
    ]
    return {
        "links": sorted(host) + sorted(ctr),
        "nft elements": sorted((now.nft.elements - base.nft.elements).elements()),
        "nft rules": sorted((now.nft.rules - base.nft.rules).elements()),
        "iptables rules": sorted((now.nft.iptables_rules - base.nft.iptables_rules).elements()),
        "chains": sorted((now.nft.chains - base.nft.chains).elements()),
        "reservations": sorted(set(now.reserved) - set(base.reserved)),
        "temp files": sorted(set(now.temps) - set(base.temps)),
    }


def count(found: dict[str, list[str]]) -> int:
    return sum(len(v) for v in found.values())


def changes(before: State, after: State) -> dict[str, list[str]]:
    """Anything different, either way (an error must change nothing)."""
    grown, shrunk = leaks(before, after), leaks(after, before)
    out = {k: v for k, v in grown.items() if v}
    for k, v in shrunk.items():
        if v:
            out[f"{k} removed"] = v
    for name in set(before.host_links) & set(after.host_links):
        if before.host_links[name]["addrs"] != after.host_links[name]["addrs"]:
            out.setdefault("addresses", []).append(
                f"{name}: {before.host_links[name]['addrs']} -> {after.host_links[name]['addrs']}"
            )
    for c in set(before.containers) & set(after.containers):
        b, a = before.containers[c], after.containers[c]
        for name in set(b) & set(a):
            if b[name]["addrs"] != a[name]["addrs"]:
                out.setdefault("addresses", []).append(f"{c} {name}: {b[name]['addrs']} -> {a[name]['addrs']}")
    return out
