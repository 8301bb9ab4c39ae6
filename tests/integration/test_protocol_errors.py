"""The bad-input table against an installed executable: exact code, a message naming the
field, no traceback, a non-zero exit, and nothing changed in the target namespace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Runner
from tests.integration.nsutil import links, path, sh

GOOD = {"cniVersion": "1.0.0", "name": "errnet", "type": "loopback"}

# (id, env changes, stdin, code, words); "{ctr}" in env values becomes the container ns path
CASES = [
    ("unknown-command", {"CNI_COMMAND": "FROB"}, GOOD, 4, "unknown CNI_COMMAND"),
    ("missing-containerid", {"CNI_CONTAINERID": None}, GOOD, 4, "CNI_CONTAINERID"),
    ("missing-netns", {"CNI_NETNS": None}, GOOD, 4, "CNI_NETNS"),
    ("missing-ifname", {"CNI_IFNAME": None}, GOOD, 4, "CNI_IFNAME"),
    ("missing-cni-path", {"CNI_PATH": None}, GOOD, 4, "CNI_PATH"),
    ("bad-containerid", {"CNI_CONTAINERID": "a b"}, GOOD, 4, "containerID"),
    ("long-ifname", {"CNI_IFNAME": "x" * 16}, GOOD, 4, "too long"),
    ("not-json", {}, b'{"cniVersion": ', 6, "decode network config"),
    ("not-object", {}, b'"loopback"', 6, "JSON object"),
    ("no-name", {}, {"cniVersion": "1.0.0", "type": "loopback"}, 7, "missing network name"),
    ("bad-name", {}, {**GOOD, "name": "a/b"}, 7, "invalid network name"),
    ("bad-version", {}, {**GOOD, "cniVersion": "2.0.0"}, 1, "incompatible CNI versions"),
    ("check-on-0.3.1", {"CNI_COMMAND": "CHECK"}, {**GOOD, "cniVersion": "0.3.1"}, 1, "does not allow CHECK"),
    ("gc-on-1.0.0", {"CNI_COMMAND": "GC"}, GOOD, 1, "does not allow GC"),
    ("status-on-0.4.0", {"CNI_COMMAND": "STATUS"}, {**GOOD, "cniVersion": "0.4.0"}, 1, "does not allow STATUS"),
    ("netns-missing", {"CNI_NETNS": "/var/run/netns/cnitest-no-such-ns"}, GOOD, 8, "does not exist"),
    ("netns-not-a-netns", {"CNI_NETNS": "/etc/hostname"}, GOOD, 8, "not a network namespace"),
    ("bad-prevresult", {}, {**GOOD, "prevResult": {"ips": [{"address": "nope"}]}}, 6, "prevResult.ips[0].address"),
]


@pytest.fixture
def plugin(launcher_bin: Path, host_ns: str) -> Runner:
    """The plugins under both launchers (native, and the Python one it stands in for)."""
    return Runner(launcher_bin, host_ns)


@pytest.mark.parametrize("env,stdin,code,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(
    plugin: Runner, container_ns: str, env: dict[str, str | None], stdin: dict[str, Any] | bytes, code: int, words: str
) -> None:
    sh("ip", "link", "set", "lo", "down", ns=container_ns)
    before = links(container_ns)
    full_env = {"CNI_NETNS": path(container_ns), **env}
    overrides = {k: v for k, v in full_env.items() if k != "CNI_NETNS" and v is not None}
    removed = [k for k, v in full_env.items() if v is None]
    res = plugin(
        "loopback",
        env.get("CNI_COMMAND") or "ADD",
        stdin,
        netns=full_env.get("CNI_NETNS") or "",
        ifname=env.get("CNI_IFNAME", "lo") or "",
        container_id=env.get("CNI_CONTAINERID", "ctr1") or "",
        env={**overrides, **{k: None for k in removed}},
    )
    assert res.rc != 0
    out = json.loads(res.stdout)
    assert out["code"] == code, out
    assert words in out["msg"] + out.get("details", ""), out
    assert set(out) <= {"cniVersion", "code", "msg", "details"}
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
    assert links(container_ns) == before  # nothing changed
