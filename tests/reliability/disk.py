"""dataDir full, read-only, without inodes.

For each fault, dataDir is a fresh mount of the part's own mount namespace:

* **full**: a small tmpfs, filled by a file until the kernel says ENOSPC;
* **no inodes**: a tmpfs with few inodes, filled with empty files until ENOSPC;
* **read-only**: a directory bind-mounted onto itself and remounted read-only.

With space, one container is ADDed and DELeted (the network's directory, the bridge and the
tables exist from then on: the state compared against) and ``live`` containers are ADDed.
Then the fault, and:

* ADD of new containers: each must fail with a CNI error (JSON on stdout, non-zero exit),
  leaving nothing behind before the runtime's DEL, and the runtime's DEL after it must
  exit 0 and leave nothing either;
* DEL of the live containers: must exit 0 and remove their links and rules (a reservation
  a read-only file system keeps is counted apart: "removes what it can");
* the fault is lifted (filler removed, remounted read-write), GC at 1.1.0 with no valid
  attachment, and what is left is counted; then each container's next ADD must work, and
  its DEL leave nothing.
"""

from __future__ import annotations

import collections
import errno
import os
from pathlib import Path
from typing import Any

from tests.reliability import host
from tests.reliability.runtime import Column, Run, Runtime, first_failure, ok, podman_chain, port_caps

FAULTS = ("full", "no inodes", "read-only")
EXAMPLES = 5


class Disk:
    def __init__(self, column: Column, work: Path, size: dict[str, Any]) -> None:
        self.column = column
        self.work = work
        self.n = int(size["disk_containers"])
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, list[str]] = collections.defaultdict(list)

    def note(self, label: str, n: int = 1, example: str = "") -> None:
        self.counts[label] += n
        if n and example and len(self.examples[label]) < EXAMPLES:
            self.examples[label].append(example[:600])

    # ------------------------------------------------------------ the mounts

    def mount(self, fault: str, mnt: Path) -> None:
        mnt.mkdir(parents=True, exist_ok=True)
        if fault == "full":
            host.sh("mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "cnipy-rel-full", str(mnt))
        elif fault == "no inodes":
            host.sh("mount", "-t", "tmpfs", "-o", "size=4m,nr_inodes=64,mode=0755", "cnipy-rel-inodes", str(mnt))
        else:
            host.sh("mount", "--bind", str(mnt), str(mnt))

    def break_it(self, fault: str, mnt: Path) -> None:
        if fault == "full":
            fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
            finally:
                os.close(fd)
        elif fault == "no inodes":
            (mnt / "fillers").mkdir(exist_ok=True)
            i = 0
            try:
                while True:
                    (mnt / "fillers" / str(i)).touch()
                    i += 1
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
        else:
            host.sh("mount", "-o", "remount,bind,ro", str(mnt))

    def mend(self, fault: str, mnt: Path) -> None:
        if fault == "full":
            (mnt / "filler").unlink()
        elif fault == "no inodes":
            host.sh("rm", "-rf", str(mnt / "fillers"))
        else:
            host.sh("mount", "-o", "remount,bind,rw", str(mnt))

    # ------------------------------------------------------------ one fault

    def leaks(self, base: host.State, data: Path, containers: list[str]) -> dict[str, list[str]]:
        return host.leaks(base, host.snapshot([data], containers))

    def count_leaks(self, label: str, found: dict[str, list[str]], skip: tuple[str, ...] = ()) -> None:
        for kind, items in found.items():
            name = f"{label}: kept {kind}" if kind in skip else f"{label}: leaked {kind}"
            self.note(name, len(items), str(items[:3]))

    def one(self, fault: str, k: int) -> None:
        mnt = self.work / f"data{k}"
        self.mount(fault, mnt)
        try:
            self.run_fault(fault, k, mnt / "ipam")
        finally:
            host.sh("umount", "-l", str(mnt), check=False)

    def run_fault(self, fault: str, k: int, data: Path) -> None:
        rt = Runtime(
            self.column, podman_chain(self.column.version, data, bridge=f"diskbr{k}", subnet=f"10.{90 + k}.0.0/16")
        )
        mnt = data.parent
        live = [f"disk{k}live{i}" for i in range(self.n)]
        new = [f"disk{k}new{i}" for i in range(self.n)]
        host.add_netns([*live, *new])
        port = {name: port_caps(22000 + 100 * k + i) for i, name in enumerate(live + new)}

        first, runs = rt.add(new[0], host.netns_path(new[0]), port[new[0]])
        if first is None:
            raise RuntimeError(f"ADD with space failed: {first_failure(runs)}")
        if not ok(rt.delete(new[0], host.netns_path(new[0]), first, port[new[0]])):
            raise RuntimeError("DEL with space failed")
        base = host.snapshot([data], [*live, *new])
        cache: dict[str, dict[str, Any]] = {}
        for name in live:
            result, runs = rt.add(name, host.netns_path(name), port[name])
            if result is None:
                raise RuntimeError(f"ADD with space failed: {first_failure(runs)}")
            cache[name] = result

        self.break_it(fault, mnt)
        for name in new:
            before = host.snapshot([data], [*live, *new])
            result, runs = rt.add(name, host.netns_path(name), port[name])
            self.note(f"{fault}: ADDs", 1)
            if result is not None:
                self.note(f"{fault}: ADDs that succeeded", 1, name)
                cache[name] = result
                continue
            last = runs[-1]
            if not _cni_error(last):
                self.note(f"{fault}: ADD failures without a CNI error", 1, f"{name}: rc {last.rc} {last.text()}")
            else:
                err = last.json or {}
                msg = f"{err.get('code')} {err.get('msg')}"
                if len(self.examples[f"{fault}: ADD errors"]) < 2:
                    self.examples[f"{fault}: ADD errors"].append(msg[:300])
            self.count_leaks(f"{fault}: failed ADD", host.leaks(before, host.snapshot([data], [*live, *new])))
            dels = rt.delete(name, host.netns_path(name), None, port[name])
            self.note(f"{fault}: DEL failures (after the failed ADD)", 0 if ok(dels) else 1, first_failure(dels))
        for name in live:
            dels = rt.delete(name, host.netns_path(name), cache.get(name), port[name])
            self.note(f"{fault}: DEL failures", 0 if ok(dels) else 1, first_failure(dels))
        for name in [n for n in new if n in cache]:
            dels = rt.delete(name, host.netns_path(name), cache[name], port[name])
            self.note(f"{fault}: DEL failures", 0 if ok(dels) else 1, first_failure(dels))
        kept = ("reservations",) if fault == "read-only" else ()  # what a read-only dataDir cannot let go
        self.count_leaks(f"{fault}: after DEL", self.leaks(base, data, [*live, *new]), skip=kept)

        self.mend(fault, mnt)
        if self.column.gc:
            gc = rt.gc([])
            self.note(f"{fault}: GC failures", sum(r.rc != 0 for r in gc), first_failure(gc))
        self.count_leaks(f"{fault}: fault lifted{', GC' if self.column.gc else ''}", self.leaks(base, data, []))
        for name in live + new:
            result, runs = rt.add(name, host.netns_path(name), port[name])
            if result is None:
                self.note(f"{fault}: next ADD failures", 1, f"{name}: {first_failure(runs)}")
            dels = rt.delete(name, host.netns_path(name), result, port[name])
            self.note(f"{fault}: DEL failures", 0 if ok(dels) else 1, first_failure(dels))
        self.count_leaks(f"{fault}: after the next ADD and DEL", self.leaks(base, data, [*live, *new]))
        host.del_netns([*live, *new])

    def run(self) -> dict[str, Any]:
        for k, fault in enumerate(FAULTS):
            self.one(fault, k)
        return {"counts": dict(self.counts), "examples": dict(self.examples)}


def _cni_error(run: Run) -> bool:
    err = run.json
    return run.rc != 0 and isinstance(err, dict) and isinstance(err.get("code"), int) and "msg" in err


def run(column: Column, work: Path, size: dict[str, Any]) -> dict[str, Any]:
    os.makedirs(work, exist_ok=True)
    return Disk(column, work, size).run()
