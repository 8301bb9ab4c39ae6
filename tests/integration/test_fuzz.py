"""The reliability suite's fuzzer, short: hypothesis-made requests to every plugin type,
exec'd with the warm helper and without it, each answered by a CNI error JSON or a valid
result, no traceback, within 5 s, nothing changed outside the case's namespace and data
dir; and the named hostile inputs one by one (tests/reliability/fuzz.py says what each is).

Each run is a part of the suite (``tests/reliability/part.py``): a process in a network and
mount namespace of its own standing for the host, which goes with it. The long run:
``python -m tests.reliability.part fuzz`` with ``{"fuzz_cases": 100000}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.nsutil import Namespaces, path, run_plugin
from tests.reliability import fuzz
from tests.reliability.part import run_part
from tests.reliability.runtime import Column

VERSION = "1.1.0"
CASES_HELPER = 250
CASES_NO_HELPER = 25
# without the helper every call pays a Python start: the podman chain and its IPAM only
TYPES_NO_HELPER = ["bridge", "host-local", "portmap", "firewall"]
PART_TIMEOUT = 600
# every count the fuzzer keeps that is a problem; anything else it counts is a tally
PROBLEMS = (
    "traceback",
    "hung (killed)",
    "over 5 s",
    "stdout is not JSON",
    "error without a CNI error JSON",
    "error JSON without a spec code and a message",
    "error JSON with other keys",
    "ADD succeeded without a valid result",
    "VERSION without the versions",
    "changed by an error",
    "left after ADD and DEL",
    "changed outside its namespace and data dir",
    "DEL after a successful ADD failed",
)

# named cases our plugins accept (the reference accepts them too); everything else must be
# refused with this code
ACCEPTED = {
    "containerid-long",  # IDs have no length limit in the spec or libcni
    "json-10mb",
    "json-10mb-array",
    "firewall-bridge-nft",  # a name that cannot be a bridge: no per-bridge entry, as checked below
    "firewall-bridge-dotdot",
    "firewall-bridge-long",
    "firewall-bridge-brace",
    "tuning-sysctl-global",  # a sysctl of the container's namespace, which is the container's
    "netns-own-del-loopback",  # DEL succeeds and leaves the caller's own namespace alone
    "netns-own-del-bridge",
}
CODES = {
    "containerid-": 4,
    "ifname-": 4,
    "netname-": 7,
    "datadir-": 7,
    "bridge-name-": 7,
    "nul-in-": 7,
    "nul-raw-stdin": 6,
    "non-utf8-stdin": 6,
    "non-utf8-env": 4,
    "lone-surrogate": 7,
    "json-1000-deep-prevResult": 6,
    "json-5000-deep-prevResult": 6,
    "json-5000-deep-top": 6,
    "json-": 7,
    "portmap-": 7,
    "firewall-": 6,
    "firewall-admin-chain-nft": 7,
    "tuning-": 7,
    "netns-": 8,
    "cni-path-without-ipam": 7,  # and no bridge made: it is looked for before the bridge is
    "result-0.2.0-without-ip": 1,  # and the links it made are removed again
}


def expected_code(case_id: str) -> int:
    """The code of the longest prefix (or the exact id) in CODES."""
    best = max((p for p in CODES if case_id.startswith(p)), key=len)
    return CODES[best]


@pytest.fixture(scope="module")
def helper_column(cni_bin: Path, cni_run_dir: Path) -> Iterator[Column]:
    """Ours with the helper, which a first call (from a namespace of this test) has started:
    the part's namespaces are not the helper's."""
    conf = {"cniVersion": VERSION, "name": "fzwarm", "type": "loopback"}
    namespaces = Namespaces()
    try:
        ctr = namespaces.make("fzwarm")
        run_plugin(cni_bin, "loopback", "ADD", conf, netns=path(ctr), ifname="lo").ok()
        yield Column("ours", str(cni_bin), VERSION, str(cni_run_dir))
    finally:
        namespaces.cleanup()


@pytest.fixture(scope="module")
def named(helper_column: Column, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = run_part("fuzz", helper_column, {"fuzz_named": []}, tmp_path_factory.mktemp("fuzz-named"), PART_TIMEOUT)
    assert not result.get("error"), result["error"]
    cases: dict[str, Any] = result["named"]
    return cases


def _problems(result: dict[str, Any]) -> dict[str, Any]:
    counts = result["counts"]
    return {
        label: result.get("examples", {}).get(label, counts[label]) for label in counts if label.startswith(PROBLEMS)
    }


def test_fuzz_with_helper(helper_column: Column, tmp_path: Path) -> None:
    result = run_part("fuzz", helper_column, {"fuzz_cases": CASES_HELPER, "seed": 21}, tmp_path, PART_TIMEOUT)
    assert not result.get("error"), result["error"]
    assert result["counts"]["cases"] == CASES_HELPER
    assert not _problems(result), _problems(result)
    assert set(result["per type"]) == set(result["types"]), "a type got no case"
    assert result["counts"].get("ADDs that succeeded", 0) > 0, "no case got as far as a working ADD"


def test_fuzz_without_helper(cni_bin_no_helper: Path, tmp_path: Path) -> None:
    column = Column("ours-no-helper", str(cni_bin_no_helper), VERSION)
    size = {"fuzz_cases": CASES_NO_HELPER, "seed": 22, "fuzz_types": TYPES_NO_HELPER}
    result = run_part("fuzz", column, size, tmp_path, PART_TIMEOUT)
    assert not result.get("error"), result["error"]
    assert result["counts"]["cases"] == CASES_NO_HELPER
    assert not _problems(result), _problems(result)


@pytest.mark.parametrize("case_id", [c.id for c in fuzz.named_cases()])
def test_named(named: dict[str, Any], case_id: str) -> None:
    got = named[case_id]
    assert not got["problems"], got
    assert got["changed"] == {}, f"{case_id} changed {got['changed']}"
    if case_id in ACCEPTED:
        assert got["rc"] == 0, got
        assert got["cleanup DEL rc"] in (0, None), got  # None: the case was a DEL
        if case_id.startswith("firewall-bridge-"):
            entries = [e for k, v in got["added by the ADD"].items() if k.startswith("nft") for e in v]
            assert not [e for e in entries if "fzbr9" in e or "br}0" in e or "flush" in e or "bbbb" in e], entries
    else:
        assert got["rc"] != 0, got
        assert got["code"] == expected_code(case_id), got
