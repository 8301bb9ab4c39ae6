"""The reliability suite (tests/reliability, docs/reliability.md), short and bounded: each part
on our plugins with the warm helper and without it, in a host stand-in of its own, at sizes
that keep the whole file within about three minutes on two CPUs. ``python -m
tests.reliability`` runs the full sizes and the reference's column.

Every leak count must be 0, every DEL and GC must succeed, every next ADD must work; the
kill part must have landed kills (else it proved nothing) and the disk part must have
failed every ADD on a broken dataDir with a CNI error.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.__main__ import install, stop_helper, summary
from tests.reliability.part import ROOT, run_part
from tests.reliability.runtime import Column

# (part, column) -> sizes; a call without the helper costs ~10x one with it
SIZES: dict[tuple[str, str], dict[str, Any]] = {
    ("kill", "ours"): {"kill_rounds": 20},
    ("kill", "ours-no-helper"): {"kill_rounds": 3},
    ("flood", "ours"): {"flood_runtimes": 4, "flood_containers": 30, "flood_seconds": 10},
    ("flood", "ours-no-helper"): {"flood_runtimes": 3, "flood_containers": 8, "flood_seconds": 4},
    ("reboot", "ours"): {"reboot_containers": 4},
    ("reboot", "ours-no-helper"): {"reboot_containers": 1},
    ("disk", "ours"): {"disk_containers": 2},
    ("disk", "ours-no-helper"): {"disk_containers": 1},
}
MUST_BE_ZERO = ("leaked", "failures", "duplicate addresses", "broken", "harness errors", "succeeded")


@pytest.fixture(scope="module")
def columns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Column]]:
    installed = install(tmp_path_factory.mktemp("reliability"))
    try:
        yield installed
    finally:
        stop_helper(installed["ours"])


@pytest.mark.parametrize(("part", "column"), list(SIZES), ids=[f"{p}-{c}" for p, c in SIZES])
def test_part(part: str, column: str, columns: dict[str, Column], tmp_path: Path) -> None:
    size = {"seed": "7", **SIZES[(part, column)]}
    result = run_part(part, columns[column], size, tmp_path / part, timeout=300)
    assert not result.get("error"), result.get("error")
    counts = summary(result["counts"])
    bad = {k: v for k, v in counts.items() if v and any(word in k for word in MUST_BE_ZERO)}
    assert not bad, f"{bad}; examples: {result.get('examples')}"
    if part == "kill":
        assert counts["kills that landed"] > 0, result.get("kills")
    if part == "flood":
        assert counts["ADDs"] > 0 and counts["DELs"] > 0, counts
    if part == "disk":
        assert counts["ADDs"] > 0, counts
    if part == "reboot":
        assert counts["containers"] > 0, counts


SEEN = """
import json, os, sys
from pathlib import Path
from tests.reliability import host
data = Path(sys.argv[1])
(data / "net").mkdir(parents=True)
base = host.snapshot([data])
host.sh("ip", "link", "add", "relseen0", "type", "veth", "peer", "name", "relseen1")
host.sh("nft", "add table inet relseen; add set inet relseen s { type ipv4_addr; }")
host.sh("nft", "add element inet relseen s { 10.9.9.9 }")
host.sh("nft", "add chain inet relseen c; add rule inet relseen c ip saddr 10.9.9.9 accept")
host.sh("iptables-nft", "-A", "FORWARD", "-s", "10.9.9.8", "-j", "ACCEPT")
(data / "net" / "10.9.9.9").write_text("c\\r\\neth0")
(data / "net" / ".tmp.1.2").write_text("")
print(json.dumps({k: len(v) for k, v in host.leaks(base, host.snapshot([data])).items()}))
"""


def test_leaks_are_seen(tmp_path: Path) -> None:
    """What the parts count as leaks is seen: a veth pair, a set element, a rule, an
    iptables rule, a chain, a reservation and a temporary file, made in a host stand-in."""
    proc = subprocess.run(
        ["unshare", "--net", "--mount", "--", sys.executable, "-c", SEEN, str(tmp_path / "ipam")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert found == {
        "links": 2,
        "nft elements": 1,
        "nft rules": 1,
        "iptables rules": 1,
        "chains": 2,
        "reservations": 1,
        "temp files": 1,
    }, found
