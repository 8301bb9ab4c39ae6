"""Run the reliability suite: every part on every column, a table of counts and a JSON file.

    python -m tests.reliability                      # full sizes, every part, every column
    python -m tests.reliability --size short         # the sizes of the test suite's version
    python -m tests.reliability --parts kill --columns ours,reference --kill-rounds 200

Our plugins are installed by the real installer into the work dir twice (with the warm
helper, its own run dir; and ``--helper off``); the reference's are ``/usr/lib/cni``. Each
part runs on each column in a fresh host stand-in (``part.py``); the helper is stopped after
each part, so each part starts one of its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.reliability.part import PARTS, ROOT, run_part
from tests.reliability.runtime import REFERENCE_BIN, Column

OURS_VERSION = "1.1.0"
REFERENCE_VERSION = "1.0.0"  # the newest the Debian package's plugins speak
COLUMNS = ("ours", "ours-no-helper", "reference")

SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "kill_rounds": 1000,
        "kill_seconds": 0,  # no time limit
        "flood_runtimes": 16,
        "flood_containers": 2000,
        "flood_seconds": 600,
        "fuzz_cases": 100_000,
        "reboot_containers": 50,
        "disk_containers": 10,
    },
    "short": {
        "kill_rounds": 30,
        "kill_seconds": 0,
        "flood_runtimes": 4,
        "flood_containers": 40,
        "flood_seconds": 20,
        "fuzz_cases": 300,
        "reboot_containers": 8,
        "disk_containers": 3,
    },
}
OVERRIDES = [key for key in SIZES["full"] if key != "seed"]


def install(work: Path) -> dict[str, Column]:
    """Our plugins installed twice (helper on, off) into ``work``; the three columns."""
    run_dir = work / "run"
    with_helper, without = work / "bin", work / "bin-no-helper"
    for target, extra in ((with_helper, []), (without, ["--helper", "off"])):
        argv = [sys.executable, "-m", "cni_plugins.install", "install", "--dir", str(target)]
        subprocess.run([*argv, "--run-dir", str(run_dir), *extra], check=True, capture_output=True, cwd=ROOT)
    return {
        "ours": Column("ours", str(with_helper), OURS_VERSION, str(run_dir)),
        "ours-no-helper": Column("ours-no-helper", str(without), OURS_VERSION),
        "reference": Column("reference", REFERENCE_BIN, REFERENCE_VERSION),
    }


def stop_helper(column: Column) -> None:
    if column.helper:
        subprocess.run(
            [sys.executable, "-m", "cni_plugins.install", "helper", "stop", "--run-dir", column.run_dir],
            capture_output=True,
            cwd=ROOT,
            timeout=60,
        )


def available_parts() -> list[str]:
    """The parts whose module is present (a part may be missing from a checkout)."""
    here = Path(__file__).parent
    return [p for p in PARTS if (here / f"{p}.py").exists()]


def run_suite(
    parts: list[str], columns: list[str], size: dict[str, Any], work: Path, log: Any = None, out: Path | None = None
) -> dict[str, Any]:
    """Every part on every column; ``{"size": ..., "parts": {part: {column: result}}}``."""
    installed = install(work)
    results: dict[str, Any] = {"size": size, "parts": {}}
    for part in parts:
        results["parts"][part] = {}
        for name in columns:
            column = installed[name]
            if log:
                print(f"{time.strftime('%H:%M:%S')} {part} on {name} ...", file=log, flush=True)
            try:
                result = run_part(part, column, size, work / f"{part}-{name}")
            finally:
                stop_helper(column)
            results["parts"][part][name] = result
            if out is not None:  # as it goes: a suite stopped early keeps what it has run
                out.write_text(json.dumps(results, indent=1, default=str))
            if log:
                extra = f" ERROR: {result['error'][-500:]}" if result.get("error") else ""
                print(f"{time.strftime('%H:%M:%S')} {part} on {name}: {result.get('seconds')} s{extra}", file=log)
    return results


def summary(counts: dict[str, int]) -> dict[str, int]:
    """Counts of a part summed over its rounds (``"read-only: after DEL: leaked links"``
    counts as ``"after DEL: leaked links"``, ``"read-only: ADDs"`` as ``"ADDs"``), not over
    the stages of a round: each stage counts what is left at that point, and a leak left
    through two stages would count twice. The JSON keeps the rounds apart."""
    out: dict[str, int] = {}
    for key, value in counts.items():
        short = key.split(": ", 1)[-1]
        out[short] = out.get(short, 0) + value
    return out


def table(results: dict[str, Any], detail: bool = False) -> str:
    """A Markdown table: one row per part and count, one column per plugin set."""
    columns: list[str] = []
    for by_column in results["parts"].values():
        columns += [c for c in by_column if c not in columns]
    lines = ["| part | count | " + " | ".join(columns) + " |", "| --- | --- |" + " ---: |" * len(columns)]
    for part, by_column in results["parts"].items():
        counts = {c: r.get("counts", {}) for c, r in by_column.items()}
        if not detail:
            counts = {c: summary(v) for c, v in counts.items()}
        keys: list[str] = []
        for by_key in counts.values():
            keys += [k for k in by_key if k not in keys]
        for key in keys:
            cells = [str(counts.get(c, {}).get(key, 0)) for c in columns]
            lines.append(f"| {part} | {key} | " + " | ".join(cells) + " |")
        errors = [c for c in columns if by_column.get(c, {}).get("error")]
        if errors:
            cells = ["crashed" if c in errors else "" for c in columns]
            lines.append(f"| {part} | harness error | " + " | ".join(cells) + " |")
        cells = [str(by_column.get(c, {}).get("seconds", "")) for c in columns]
        lines.append(f"| {part} | seconds | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability", description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(available_parts()), help="comma-separated (default: all)")
    parser.add_argument("--columns", default=",".join(COLUMNS), help="comma-separated (default: all)")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    for key in OVERRIDES:
        parser.add_argument("--" + key.replace("_", "-"), type=int, dest=key)
    parser.add_argument("--seed", default="1")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "reliability.json")
    parser.add_argument("--work", type=Path, help="work dir (default: a new one under /tmp, removed)")
    parser.add_argument("--detail", action="store_true", help="every count of every round in the table")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("the suite makes namespaces, links and nftables rules: run it as root")
    parts = [p for p in args.parts.split(",") if p]
    columns = [c for c in args.columns.split(",") if c]
    unknown = [p for p in parts if p not in available_parts()] + [c for c in columns if c not in COLUMNS]
    if unknown:
        parser.error(f"unknown or missing parts or columns: {', '.join(unknown)}")
    size = dict(SIZES[args.size], seed=args.seed)
    size.update({k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None})
    started = time.monotonic()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.work:
        results = run_suite(parts, columns, size, args.work, log=sys.stderr, out=args.out)
    else:
        with tempfile.TemporaryDirectory(prefix="cnipy-reliability-") as tmp:
            results = run_suite(parts, columns, size, Path(tmp), log=sys.stderr, out=args.out)
    results["seconds"] = round(time.monotonic() - started, 1)
    results["load average at the end"] = os.getloadavg()
    args.out.write_text(json.dumps(results, indent=1, default=str))
    print(table(results, detail=args.detail))
    print(f"\nJSON: {args.out}")
    failed = [f"{p} on {c}" for p, by in results["parts"].items() for c, r in by.items() if r.get("error")]
    if failed:
        print("harness errors: " + ", ".join(failed), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
