"""The scenario file format: checks, servers, networks, and the errors that name what is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.runtime.scenario_file import (
    Check,
    ScenarioError,
    load,
    nft_comment,
    parse_check,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "text, want",
    [
        ("ping a -> b", dict(kind="ping", family=4, src="a", dst="b", port=None, sees=None, must_fail=False)),
        ("ping6  a->b.gateway", dict(kind="ping", family=6, src="a", dst="b.gateway", port=None)),
        ("tcp host -> localhost:8080", dict(kind="tcp", src="host", dst="localhost", port=8080)),
        ("udp6 outside -> host:53 sees outside", dict(kind="udp", family=6, port=53, sees="outside")),
        ("tcp a -> [fd00::1]:80 fails", dict(family=6, dst="fd00::1", port=80, must_fail=True)),
        ("tcp a -> 10.0.0.1:80", dict(family=4, dst="10.0.0.1", port=80)),
        ("tcp web -> outside:7777 sees host", dict(sees="host", must_fail=False)),
    ],
)
def test_check_lines(text: str, want: dict[str, Any]) -> None:
    check = parse_check(text, "x")
    assert isinstance(check, Check)
    for key, value in want.items():
        assert getattr(check, key) == value, key


@pytest.mark.parametrize(
    "text, says",
    [
        ("curl a -> b", "is not a check"),
        ("ping a b", "is not a check"),
        ("ping a -> b:80", "ping takes no port"),
        ("tcp a -> b", "tcp needs a port"),
        ("ping a -> b sees a", "'sees' needs tcp or udp"),
    ],
)
def test_bad_check_lines(text: str, says: str) -> None:
    with pytest.raises(ScenarioError, match=says):
        parse_check(text, "f.yaml: checks[0]")


BRIDGE = {
    "cniVersion": "1.0.0",
    "name": "n1",
    "plugins": [{"type": "bridge", "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}}],
}


def write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps(doc))
    return path


def test_load_fills_host_local_data_dir(tmp_path: Path) -> None:
    doc = {
        "networks": [{"conflist": BRIDGE}],
        "containers": [{"name": "a", "networks": ["n1"], "serve": ["tcp/80", "udp/53"]}],
        "checks": ["ping a -> a"],
    }
    sc = load(write(tmp_path, doc), tmp_path / "ipam")
    assert sc.name == "s" and sc.containers[0].serve == [("tcp", 80), ("udp", 53)]
    plugin = sc.networks["n1"].plugins[0].raw
    assert plugin["ipam"]["dataDir"] == str(tmp_path / "ipam")
    assert json.loads(sc.networks["n1"].bytes)["plugins"][0]["ipam"]["dataDir"] == str(tmp_path / "ipam")


def test_load_keeps_a_given_data_dir_and_reads_files(tmp_path: Path) -> None:
    conf = json.loads(json.dumps(BRIDGE))
    conf["plugins"][0]["ipam"]["dataDir"] = "/somewhere"
    (tmp_path / "n1.conflist").write_text(json.dumps(conf))
    sc = load(
        write(tmp_path, {"networks": [{"file": "n1.conflist"}], "containers": [], "checks": []}), tmp_path / "ipam"
    )
    assert sc.networks["n1"].plugins[0].raw["ipam"]["dataDir"] == "/somewhere"


@pytest.mark.parametrize(
    "doc, says",
    [
        ({"nets": []}, "unknown key"),
        ({"networks": [{"nope": 1}]}, "give 'file'"),
        ({"networks": [{"conflist": BRIDGE}, {"conflist": BRIDGE}]}, "a second network named 'n1'"),
        ({"networks": [{"conflist": {"name": "x"}}]}, "networks\\[0\\]"),
        ({"containers": [{"name": "Bad_Name"}]}, "needs a name"),
        ({"containers": [{"name": "host"}]}, "is taken"),
        ({"containers": [{"name": "a", "networks": ["zz"]}]}, "unknown network 'zz'"),
        ({"containers": [{"name": "a", "serve": ["http/80"]}]}, "serve\\[0\\]"),
        ({"containers": [{"name": "a", "args": "K"}]}, "is not KEY=VALUE"),
        ({"containers": [{"name": "a"}], "checks": ["ping a -> b"]}, "unknown 'b'"),
        ({"containers": [{"name": "a"}], "checks": ["ping a -> outside"]}, "unknown 'outside'"),
        ({"containers": [{"name": "a"}], "checks": ["tcp a -> localhost:80"]}, "use 'host -> localhost'"),
    ],
)
def test_load_errors_name_the_problem(tmp_path: Path, doc: dict[str, Any], says: str) -> None:
    with pytest.raises(ScenarioError, match=says):
        load(write(tmp_path, doc), tmp_path / "ipam")


def test_shipped_scenarios_load(tmp_path: Path) -> None:
    shipped = sorted((ROOT / "conf" / "scenarios").glob("*.yaml"))
    assert {p.stem for p in shipped} >= {"bridge-portmap", "isolation", "dual-stack", "macvlan"}
    for path in shipped:
        sc = load(path, tmp_path / "ipam")
        assert sc.checks and sc.containers, path
        assert any(c.must_fail for c in sc.checks) or path.stem == "dual-stack", path


def test_nft_comment() -> None:
    assert nft_comment({"elem": {"val": "10.0.0.2", "comment": "x id:c1"}}) == "x id:c1"
    assert nft_comment([{"elem": {"val": "10.0.0.2", "comment": "y"}}, {"goto": "c"}]) == "y"
    assert nft_comment("10.0.0.2") == "" and nft_comment(["10.0.0.2", 1]) == ""
