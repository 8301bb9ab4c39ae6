"""One part of the suite against one column, in a process of its own that stands in a
network and mount namespace of its own (the host stand-in):

    unshare --net --mount --propagation private -- python -m tests.reliability.part \\
        PART --column '{"name": ...}' --size '{...}' --work DIR --out FILE

``run_part`` starts it that way and returns what it wrote: ``{"counts": {...}, ...}``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from tests.reliability import host
from tests.reliability.runtime import Column

PARTS = ("kill", "flood", "fuzz", "reboot", "disk")
ROOT = Path(__file__).resolve().parents[2]


def run_part(
    part: str, column: Column, size: dict[str, Any], work: Path, timeout: float | None = None
) -> dict[str, Any]:
    """Run ``part`` on ``column`` in a fresh host stand-in; its result (``error`` set if it crashed)."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / "result.json"
    argv = [
        "unshare",
        "--net",
        "--mount",
        "--propagation",
        "private",
        "--",
        sys.executable,
        "-m",
        "tests.reliability.part",
        part,
        "--column",
        json.dumps(column.to_json()),
        "--size",
        json.dumps(size),
        "--work",
        str(work),
        "--out",
        str(out),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for key in [k for k in env if k.startswith("CNI_")]:
        del env[key]
    started = time.monotonic()
    with open(work / "part.log", "wb") as log:
        proc = subprocess.run(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    result: dict[str, Any]
    try:
        result = json.loads(out.read_text())
    except (OSError, ValueError):
        tail = (work / "part.log").read_text(errors="replace")[-3000:]
        result = {"counts": {}, "error": f"the part exited {proc.returncode} without a result: {tail}"}
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=PARTS)
    parser.add_argument("--column", required=True)
    parser.add_argument("--size", required=True)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    column = Column.from_json(json.loads(args.column))
    result: dict[str, Any]
    try:
        host.enter_host()
        module = importlib.import_module(f"tests.reliability.{args.part}")
        result = module.run(column, args.work, json.loads(args.size))
    except Exception:
        result = {"counts": {}, "error": traceback.format_exc()[-4000:]}
    args.out.write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
