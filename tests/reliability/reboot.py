"""A reboot, simulated both ways round, then what a runtime does after one.

* **links wiped, state kept**: the containers' namespaces and every link of the host are
  gone (as after a reboot), while dataDir, the runtime's result cache and the firewall
  tables are kept (state on persistent storage, tables restored by a firewall service).
  Then, as libcni's ``GCNetworkList`` does: DEL of every stale cache entry (its cached
  result as ``prevResult``, its namespace path that no longer exists), then GC at 1.1.0
  with no valid attachment. At 1.1.0 GC alone (no DEL, a runtime that lost its cache
  but knows which containers live) is run too, in a round of its own.
* **state wiped, links kept**: dataDir, the result cache and every nftables table are gone
  while the containers and their links live on. The runtime DELs each container without a
  cached result (it has none), then GCs at 1.1.0.

Each round counts what is left beyond the state before it (links, reservations, nft
elements and rules, iptables rules), the DELs and GCs that failed, and whether each
container's next ADD works.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

from tests.reliability import host
from tests.reliability.runtime import Column, Runtime, first_failure, ok, podman_chain, port_caps

EXAMPLES = 5


class Reboot:
    def __init__(self, column: Column, work: Path, size: dict[str, Any]) -> None:
        self.column = column
        self.data = work / "ipam"
        self.rt = Runtime(column, podman_chain(column.version, self.data, bridge="rebootbr0", subnet="10.81.0.0/16"))
        self.names = [f"reboot{i}" for i in range(int(size["reboot_containers"]))]
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)

    def note(self, label: str, n: int = 1, example: str = "") -> None:
        self.counts[label] += n
        if n and example and len(self.examples[label]) < EXAMPLES:
            self.examples[label].append(example[:600])

    def leaks(self, base: host.State, label: str, containers: bool = True) -> None:
        """Count what is left beyond ``base`` (in the containers' namespaces too, while they exist)."""
        found = host.leaks(base, host.snapshot([self.data], self.names if containers else []))
        for kind, items in found.items():
            self.note(f"{label}: leaked {kind}", len(items), str(items[:3]))

    # ------------------------------------------------------------ steps

    def add_all(self) -> dict[str, dict[str, Any]]:
        """ADD every container; the runtime's result cache (container -> result)."""
        host.add_netns(self.names)
        cache = {}
        for i, name in enumerate(self.names):
            result, runs = self.rt.add(name, host.netns_path(name), port_caps(21000 + i))
            if result is None:
                self.note("ADD failures before the reboot", 1, f"{name}: {first_failure(runs)}")
                self.rt.delete(name, host.netns_path(name), None, port_caps(21000 + i))
            else:
                cache[name] = result
        return cache

    def wipe_links(self) -> None:
        """The containers' namespaces and every link of the host but loopback, gone."""
        host.del_netns(self.names)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # a namespace's links go with it, shortly after
            left = [n for n in host.links(None) if n != "lo"]
            for name in left:
                host.sh("ip", "link", "del", name, check=False)
            if not left:
                return
            time.sleep(0.1)
        raise RuntimeError(f"links still there after the wipe: {host.links(None)}")

    def wipe_state(self) -> None:
        """dataDir and every nftables table of the host (the runtime forgets its cache)."""
        host.sh("rm", "-rf", str(self.data))
        for item in host.ruleset():
            table = item.get("table")
            if table:
                host.sh("nft", "delete", "table", table["family"], table["name"])

    def stale_dels(self, cache: dict[str, dict[str, Any]], label: str) -> None:
        """libcni's DEL of each cached attachment (its namespace may be gone)."""
        for i, name in enumerate(self.names):
            runs = self.rt.delete(name, host.netns_path(name), cache.get(name), port_caps(21000 + i))
            self.note(f"{label}: DEL failures", 0 if ok(runs) else 1, f"{name}: {first_failure(runs)}")

    def gc(self, label: str) -> None:
        if self.column.gc:
            runs = self.rt.gc([])
            self.note(f"{label}: GC failures", sum(r.rc != 0 for r in runs), first_failure(runs))

    def next_adds(self, base: host.State, label: str) -> None:
        """Each container ADDed again (in a new namespace) must work; then DELeted, nothing left."""
        host.add_netns(self.names)
        for i, name in enumerate(self.names):
            result, runs = self.rt.add(name, host.netns_path(name), port_caps(21000 + i))
            if result is None:
                self.note(f"{label}: next ADD failures", 1, f"{name}: {first_failure(runs)}")
            dels = self.rt.delete(name, host.netns_path(name), result, port_caps(21000 + i))
            self.note(f"{label}: DEL failures after the next ADD", 0 if ok(dels) else 1, first_failure(dels))
        self.leaks(base, f"{label}: after the next ADD and DEL")
        host.del_netns(self.names)

    def warm(self) -> host.State:
        """One ADD and DEL first (the bridge, tables and base chains exist from then on): the
        state compared against."""
        host.add_netns(self.names[:1])
        result, runs = self.rt.add(self.names[0], host.netns_path(self.names[0]), port_caps(21000))
        if result is None:
            raise RuntimeError(f"the first ADD failed: {first_failure(runs)}")
        for _ in range(3):  # a runtime retries a DEL that failed
            dels = self.rt.delete(self.names[0], host.netns_path(self.names[0]), result, port_caps(21000))
            self.note("DEL failures (first container)", 0 if ok(dels) else 1, first_failure(dels))
            if ok(dels):
                break
        host.del_netns(self.names[:1])
        return host.snapshot([self.data], [])

    # ------------------------------------------------------------ rounds

    def links_wiped(self, gc_alone: bool) -> None:
        label = "links wiped, GC alone" if gc_alone else "links wiped, stale DELs"
        base = self.warm()
        cache = self.add_all()
        self.counts[f"{label}: containers"] = len(cache)
        self.wipe_links()
        if gc_alone:
            self.gc(label)
            self.leaks(base, f"{label}: after GC", containers=False)
        else:
            self.stale_dels(cache, label)
            self.leaks(base, f"{label}: after DEL", containers=False)
            self.gc(label)
            self.leaks(base, f"{label}: after DEL and GC", containers=False)
        self.next_adds(base, label)

    def state_wiped(self) -> None:
        label = "state wiped"
        base = self.warm()
        cache = self.add_all()
        self.counts[f"{label}: containers"] = len(cache)
        self.wipe_state()
        self.stale_dels({}, label)
        self.leaks(base, f"{label}: after DEL")
        self.gc(label)
        self.leaks(base, f"{label}: after DEL and GC")
        host.del_netns(self.names)
        self.next_adds(base, label)

    def run(self) -> dict[str, Any]:
        if self.column.gc:
            self.links_wiped(gc_alone=True)
        self.links_wiped(gc_alone=False)
        self.state_wiped()
        return {"counts": dict(self.counts), "examples": dict(self.examples)}


def run(column: Column, work: Path, size: dict[str, Any]) -> dict[str, Any]:
    return Reboot(column, work, size).run()
