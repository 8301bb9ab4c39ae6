"""A flood: many runtimes adding and deleting many containers in random order for a while,
duplicate ADDs and races on one container included.

Each runtime (a thread) picks a container at random and:

* ADDs it if it is not added (a failed ADD is followed by the runtime's DEL, as the spec
  asks), DELs it otherwise, and now and then DELs it once more (DEL is idempotent);
* now and then ADDs a container that is already added (it must fail; the runtime then DELs);
* now and then races two calls on one container that is not added: ADD and ADD, or ADD
  and DEL, from two runtimes at the same moment (the spec forbids it; runtimes do it
  anyway), then DELs it.

Runtimes never otherwise touch a container another is using. Every address an ADD returns
is held by its container until its DEL starts (for a race: the addresses its interface
actually has once the race is over); an address handed to a second container while held is
a duplicate. At the end every container still added is DELeted (twice) and what is left
beyond the state before the flood is counted; every container's namespace is read too.
"""

from __future__ import annotations

import collections
import json
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.reliability import host
from tests.reliability.runtime import Column, Run, Runtime, first_failure, ok, podman_chain, port_caps

P_RACE = 0.03
P_DUPLICATE = 0.03
P_DEL_AGAIN = 0.1
DEL_TRIES = 3
EXAMPLES = 5


@dataclass
class Container:
    index: int
    cid: str
    ns: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    added: bool = False
    result: dict[str, Any] | None = None
    history: list[str] = field(default_factory=list)


class Flood:
    def __init__(self, column: Column, work: Path, size: dict[str, Any]) -> None:
        self.data = work / "ipam"
        self.rt = Runtime(column, podman_chain(column.version, self.data, bridge="floodbr0", subnet="10.80.0.0/16"))
        n = int(size["flood_containers"])
        self.containers = [Container(i, f"flood-{i}", host.netns_path(f"flood{i}")) for i in range(n)]
        self.runtimes = int(size["flood_runtimes"])
        self.seconds = float(size["flood_seconds"])
        self.seed = size["seed"]
        self.mutex = threading.Lock()
        self.held: dict[str, str] = {}  # address -> container holding it
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)
        self.add_times: list[float] = []

    def note(self, label: str, n: int = 1, example: str = "") -> None:
        with self.mutex:
            self.counts[label] += n
            if n and example and len(self.examples[label]) < EXAMPLES:
                self.examples[label].append(example[:600])

    # ------------------------------------------------------------ addresses held

    def hold(self, c: Container, addresses: list[str]) -> None:
        with self.mutex:
            for a in addresses:
                other = self.held.get(a)
                if other is not None and other != c.cid:
                    self.counts["duplicate addresses"] += 1
                    if len(self.examples["duplicate addresses"]) < EXAMPLES:
                        self.examples["duplicate addresses"].append(f"{a} given to {c.cid} while {other} holds it")
                self.held[a] = c.cid

    def let_go(self, c: Container) -> None:
        with self.mutex:
            for a in [a for a, holder in self.held.items() if holder == c.cid]:
                del self.held[a]

    # ------------------------------------------------------------ what a runtime does

    def add(self, c: Container) -> None:
        started = time.monotonic()
        result, runs = self.rt.add(c.cid, c.ns, port_caps(20000 + c.index))
        self.note("ADDs")
        c.history.append(f"ADD {'ok' if result else 'failed'} {[r.rc for r in runs]}")
        if result is None:
            self.note("ADD failures", 1, f"{c.cid}: {first_failure(runs)} {c.history[-8:]}")
            self.delete(c, None)
            return
        with self.mutex:
            self.add_times.append(time.monotonic() - started)
        c.added, c.result = True, result
        self.hold(c, [ip["address"].split("/")[0] for ip in result.get("ips", [])])

    def delete(self, c: Container, cached: dict[str, Any] | None) -> None:
        self.let_go(c)
        for attempt in range(DEL_TRIES):
            runs = self.rt.delete(c.cid, c.ns, cached, port_caps(20000 + c.index))
            c.history.append(f"DEL {'cached' if cached else 'nocache'} {[r.rc for r in runs]}")
            self.note("DELs")
            if ok(runs):
                break
            self.note("DEL failures", 1, f"{c.cid} (try {attempt + 1}): {first_failure(runs)}")
        else:
            self.note("DELs that never succeeded", 1, c.cid)
        c.added, c.result = False, None

    def duplicate_add(self, c: Container) -> None:
        result, runs = self.rt.add(c.cid, c.ns, port_caps(20000 + c.index))
        c.history.append(f"dupADD {[r.rc for r in runs]}")
        self.note("duplicate ADDs")
        if result is not None:
            self.note("duplicate ADDs that succeeded", 1, f"{c.cid}: {json.dumps(result)[:300]}")
            self.hold(c, [ip["address"].split("/")[0] for ip in result.get("ips", [])])
        self.delete(c, c.result)  # the runtime DELs after a failed ADD

    def race(self, c: Container, rng: random.Random) -> None:
        second = rng.choice(("ADD", "DEL"))
        self.note(f"races (ADD and {second})")
        barrier = threading.Barrier(2)
        outcomes: list[tuple[str, dict[str, Any] | None, list[Run]]] = []

        def one(command: str) -> None:
            barrier.wait()
            if command == "ADD":
                result, runs = self.rt.add(c.cid, c.ns, port_caps(20000 + c.index))
            else:
                result, runs = None, self.rt.delete(c.cid, c.ns, None, port_caps(20000 + c.index))
            with self.mutex:
                outcomes.append((command, result, runs))

        other = threading.Thread(target=one, args=(second,))
        other.start()
        one("ADD")
        other.join()
        adds_ok = sum(1 for cmd, result, _ in outcomes if cmd == "ADD" and result is not None)
        c.history.append(f"race {[(cmd, r is not None, [x.rc for x in runs]) for cmd, r, runs in outcomes]}")
        if adds_ok == 2:
            self.note("races where both ADDs succeeded", 1, c.cid)
        for cmd, _, runs in outcomes:
            if cmd == "DEL" and not ok(runs):
                self.note("DEL failures", 1, f"{c.cid} (race): {first_failure(runs)}")
        configured = host.links(c.ns).get("eth0", {}).get("addrs", [])
        self.hold(c, [a.split("/")[0] for a in configured])
        self.delete(c, None)

    def runtime(self, k: int, deadline: float) -> None:
        rng = random.Random(f"flood-{self.seed}-{k}")
        while time.monotonic() < deadline:
            c = self.containers[rng.randrange(len(self.containers))]
            if not c.lock.acquire(blocking=False):
                continue  # another runtime's container right now
            try:
                roll = rng.random()
                if roll < P_RACE and not c.added:
                    self.race(c, rng)
                elif roll < P_RACE + P_DUPLICATE and c.added:
                    self.duplicate_add(c)
                elif not c.added:
                    self.add(c)
                else:
                    self.delete(c, c.result)
                    if rng.random() < P_DEL_AGAIN:
                        runs = self.rt.delete(c.cid, c.ns, None, port_caps(20000 + c.index))
                        self.note("DELs repeated")
                        if not ok(runs):
                            self.note("repeated DEL failures", 1, f"{c.cid}: {first_failure(runs)}")
            except Exception as exc:  # a harness failure must not end the runtime silently
                self.note("harness errors", 1, f"{c.cid}: {exc!r}")
            finally:
                c.lock.release()

    # ------------------------------------------------------------ the whole flood

    def run(self) -> dict[str, Any]:
        host.add_netns(f"flood{c.index}" for c in self.containers)
        warm = self.containers[0]
        self.add(warm)
        self.delete(warm, warm.result)
        self.counts.clear()
        base = host.snapshot([self.data])
        started = time.monotonic()
        deadline = started + self.seconds
        threads = [threading.Thread(target=self.runtime, args=(k, deadline)) for k in range(self.runtimes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        live = [c for c in self.containers if c.added]
        self.counts["duplicate addresses at the end (interfaces)"] = self.scan_duplicates(live)
        for c in live:
            self.delete(c, c.result)
        for c in live:
            runs = self.rt.delete(c.cid, c.ns, None, port_caps(20000 + c.index))
            self.note("DELs repeated")
            if not ok(runs):
                self.note("repeated DEL failures", 1, f"{c.cid}: {first_failure(runs)}")
        found = host.leaks(base, host.snapshot([self.data]))
        found["links"] += [f"{c.cid}: {name}" for c in self.containers for name in host.links(c.ns) if name != "lo"]
        for kind, items in found.items():
            self.note(f"leaked {kind}", len(items), str(items[:3]))
        host.del_netns(f"flood{c.index}" for c in self.containers)
        times = sorted(self.add_times)
        return {
            "counts": dict(self.counts),
            "examples": dict(self.examples),
            "seconds of flood": round(elapsed, 1),
            "containers added at the end": len(live),
            "chain ADD median (s)": round(times[len(times) // 2], 3) if times else None,
            "chain operations per minute": round((self.counts["ADDs"] + self.counts["DELs"]) / elapsed * 60),
        }

    def scan_duplicates(self, live: list[Container]) -> int:
        """Addresses configured on the interfaces of more than one container right now."""
        owners: dict[str, list[str]] = collections.defaultdict(list)
        for c in live:
            for a in host.links(c.ns).get("eth0", {}).get("addrs", []):
                owners[a.split("/")[0]].append(c.cid)
        dups = {a: o for a, o in owners.items() if len(o) > 1}
        for a, o in list(dups.items())[:EXAMPLES]:
            self.examples["duplicate addresses at the end (interfaces)"].append(f"{a}: {o}")
        return sum(len(o) - 1 for o in dups.values())


def run(column: Column, work: Path, size: dict[str, Any]) -> dict[str, Any]:
    return Flood(column, work, size).run()
