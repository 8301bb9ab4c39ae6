"""kill -9 at random points of ADD and DEL, then DEL (and GC at 1.1.0) as a runtime would.

The chain is podman's (bridge + host-local, portmap, firewall with the same-bridge policy).
Each round picks a container, a verb, one plugin of the chain, what to kill (the process
the runtime exec'd; with the helper, the launcher or the worker serving the call) and when:
after a random delay within the plugin's usual duration, or (ours, bridge ADD) as soon as
it has logged a named step (between IPAM and the container's link, between the links and
the rules, ...). What the killed process was doing is read before the kill (a system call on
an nftables or rtnetlink socket counts as "inside an nft/netlink exchange").

After a killed ADD the runtime DELs without a prevResult (libcni caches only a successful
ADD); after a killed DEL it runs the whole DEL again (kubelet retries), at most three times.
Then what is left beyond the state before the round is counted, and the same container is
ADDed (which must work) and DELeted. A pinned container lives through every round; every 25
rounds (1.1.0) GC runs with it as the only valid attachment, and at the end it must still
pass CHECK.
"""

from __future__ import annotations

import collections
import random
import statistics
import time
from pathlib import Path
from typing import Any

from tests.reliability import host
from tests.reliability.runtime import Column, Kill, Run, Runtime, first_failure, ok, podman_chain, port_caps

POOL = 4
GC_EVERY = 25
DEL_TRIES = 3
EXAMPLES = 5


def run(column: Column, work: Path, size: dict[str, Any]) -> dict[str, Any]:
    rounds = int(size["kill_rounds"])
    seconds = float(size.get("kill_seconds") or 0)  # a time limit: the rounds run by then are counted
    rng = random.Random(f"kill-{size['seed']}-{column.name}")
    data = work / "ipam"
    rt = Runtime(column, podman_chain(column.version, data), debug=column.ours)
    pool = [f"kill{i}" for i in range(POOL)]
    host.add_netns([*pool, "killpin"])
    counts: collections.Counter[str] = collections.Counter()
    examples: dict[str, list[str]] = collections.defaultdict(list)
    landed: collections.Counter[str] = collections.Counter()
    where: collections.Counter[str] = collections.Counter()

    def note(label: str, n: int, example: str) -> None:
        counts[label] += n
        if n and len(examples[label]) < EXAMPLES:
            examples[label].append(example[:600])

    pinned, pin_runs = rt.add("kill-pinned", host.netns_path("killpin"), port_caps(19999))
    if pinned is None:
        raise RuntimeError(f"the pinned container's ADD failed: {first_failure(pin_runs)}")
    checked_before = ok(_check(rt, pinned))
    durations, steps = calibrate(rt, host.netns_path(pool[0]))
    base = host.snapshot([data], pool)
    gone_before = _helper_count(column, "caller gone")
    deadline = time.monotonic() + seconds if seconds else None
    done = 0
    for i in range(rounds):
        if deadline is not None and time.monotonic() > deadline:
            break
        done += 1
        cid, ns = f"kill-{i}", host.netns_path(pool[i % POOL])
        caps = port_caps(20000 + i % POOL)
        verb = rng.choice(("ADD", "ADD", "DEL"))
        p = rng.randrange(len(rt.plugins))
        target = rng.choice(("launcher", "worker")) if column.helper else "process"
        options = steps.get((p, verb), [])
        if options and rng.random() < 0.5:
            kill = Kill(target=target, after_step=rng.choice(options))
            point = f"after step {kill.after_step}"
        else:
            kill = Kill(target=target, delay=rng.uniform(0, 1.2 * durations[(p, verb)]))
            point = "random time"
        label = f"{verb} {rt.plugins[p]['type']} {target}"
        if verb == "ADD":
            result, runs = rt.add(cid, ns, caps, kill_at=(p, kill))
            victim = runs[p] if len(runs) > p else None
            dels = _delete_until_done(rt, cid, ns, result, caps, counts, examples)
        else:
            result, runs = rt.add(cid, ns, caps)
            if result is None:
                note("ADD failures (no kill)", 1, first_failure(runs))
            first = rt.delete(cid, ns, result, caps, kill_at=(p, kill))
            victim = next((r for r in first if r.killed), None)
            if not ok(first) and not any(r.killed for r in first):
                note("DEL failures", 1, first_failure(first))
            dels = _delete_until_done(rt, cid, ns, result, caps, counts, examples) if not ok(first) else first
        hit = victim is not None and bool(victim.killed)
        landed[f"{label}: {'killed' if hit else 'ended first'}"] += 1
        counts["kills that landed"] += hit
        if hit and victim is not None:
            where[f"{point}; in {victim.where or '?'}"] += 1
        if not ok(dels):
            note("DELs that never succeeded", 1, f"round {i} {label} {point}: {first_failure(dels)}")
        now = host.snapshot([data], pool)
        found = host.leaks(base, now)
        for kind, items in found.items():
            note(f"leaked {kind}", len(items), f"round {i} ({label}, {point}): {items[:3]}")
        base = now
        again, runs = rt.add(cid, ns, caps)
        if again is None:
            note("next ADD failures", 1, f"round {i} ({label}, {point}): {first_failure(runs)}")
        dels = _delete_until_done(rt, cid, ns, again, caps, counts, examples)
        if column.gc and (i + 1) % GC_EVERY == 0:
            gc = rt.gc([("kill-pinned", "eth0")])
            note("GC failures", sum(r.rc != 0 for r in gc), first_failure(gc))
        base = _settle(base, [data], pool, counts, examples, f"round {i} (the next ADD and its DEL)")
    if column.gc:
        gc = rt.gc([("kill-pinned", "eth0")])
        note("GC failures", sum(r.rc != 0 for r in gc), first_failure(gc))
    check = _check(rt, pinned)
    if checked_before:
        note("pinned container broken (CHECK)", 0 if ok(check) else 1, first_failure(check))
    else:
        examples["CHECK of the pinned container failed before any kill"].append(first_failure(check)[:600])
    dels = rt.delete("kill-pinned", host.netns_path("killpin"), pinned, port_caps(19999))
    note("DEL failures", 0 if ok(dels) else 1, first_failure(dels))
    host.del_netns([*pool, "killpin"])
    counts["rounds"] = done
    out: dict[str, Any] = {
        "counts": dict(counts),
        "examples": dict(examples),
        "kills": dict(sorted(landed.items())),
        "where the kills landed": dict(where.most_common()),
        "calibrated durations (s)": {f"{rt.plugins[p]['type']} {v}": round(d, 4) for (p, v), d in durations.items()},
    }
    if column.helper:
        out["calls whose caller went away (helper)"] = _helper_count(column, "caller gone") - gone_before
    return out


def calibrate(rt: Runtime, ns: str) -> tuple[dict[tuple[int, str], float], dict[tuple[int, str], list[str]]]:
    """Each plugin's usual ADD and DEL duration (median of 3) and the steps it logs."""
    times: dict[tuple[int, str], list[float]] = collections.defaultdict(list)
    steps: dict[tuple[int, str], list[str]] = {}
    for n in range(3):
        result, runs = rt.add(f"kill-calibrate-{n}", ns, port_caps(20000))
        if result is None:
            raise RuntimeError(f"calibration ADD failed: {first_failure(runs)}")
        for i, run in enumerate(runs):
            times[(i, "ADD")].append(run.seconds)
            names = _steps(run)
            if names:
                steps[(i, "ADD")] = sorted(set(names))
        dels = rt.delete(f"kill-calibrate-{n}", ns, result, port_caps(20000))
        if not ok(dels):
            raise RuntimeError(f"calibration DEL failed: {first_failure(dels)}")
        for j, run in enumerate(dels):
            times[(len(rt.plugins) - 1 - j, "DEL")].append(run.seconds)
    return {k: statistics.median(v) for k, v in times.items()}, steps


def _steps(run: Run) -> list[str]:
    out = []
    for line in run.stderr.splitlines():
        if b": debug: step " in line:
            out.append(line.split(b": debug: step ", 1)[1].rsplit(b":", 1)[0].decode("utf-8", "replace"))
    return out


def _delete_until_done(
    rt: Runtime,
    cid: str,
    ns: str,
    cached: dict[str, Any] | None,
    caps: dict[str, Any],
    counts: collections.Counter[str],
    examples: dict[str, list[str]],
) -> list[Run]:
    dels: list[Run] = []
    for _ in range(DEL_TRIES):
        dels = rt.delete(cid, ns, cached, caps)
        if ok(dels):
            break
        counts["DEL failures"] += 1
        if len(examples["DEL failures"]) < EXAMPLES:
            examples["DEL failures"].append(first_failure(dels)[:600])
    return dels


def _settle(
    base: host.State,
    data: list[Path],
    pool: list[str],
    counts: collections.Counter[str],
    examples: dict[str, list[str]],
    what: str,
) -> host.State:
    now = host.snapshot(data, pool)
    for kind, items in host.leaks(base, now).items():
        counts[f"leaked {kind}"] += len(items)
        if items and len(examples[f"leaked {kind}"]) < EXAMPLES:
            examples[f"leaked {kind}"].append(f"{what}: {items[:3]}")
    return now


def _check(rt: Runtime, result: dict[str, Any]) -> list[Run]:
    runs = []
    for plugin in rt.plugins:
        conf = rt.conf(plugin, result, port_caps(19999))
        runs.append(rt.exec(plugin["type"], "CHECK", conf, rt.env("CHECK", "kill-pinned", host.netns_path("killpin"))))
    return runs


def _helper_count(column: Column, key: str) -> int:
    if not column.helper:
        return 0
    from tests.reliability.runtime import helper_status

    value = helper_status(column.run_dir).get(key, 0)
    return int(value) if isinstance(value, int) else 0
