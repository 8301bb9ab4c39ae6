"""Config files on disk: discovery order, promotion, validation naming file and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cni_plugins.spec.errors import CNIError
from conf.loader import (
    NetworkNotFound,
    NoConfigsFound,
    list_networks,
    load_conflist,
    load_file,
)


def write(d: Path, name: str, obj: object) -> Path:
    p = d / name
    p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return p


def conflist(name: str, **extra: object) -> dict[str, object]:
    return {"cniVersion": "1.0.0", "name": name, "plugins": [{"type": "loopback"}], **extra}


def test_first_conflist_in_lexical_order_wins(tmp_path: Path) -> None:
    write(tmp_path, "20-b.conflist", conflist("net", plugins=[{"type": "second"}]))
    write(tmp_path, "10-a.conflist", conflist("net", plugins=[{"type": "first"}]))
    assert load_conflist(tmp_path, "net").plugins[0].type == "first"


def test_single_conf_is_promoted_to_list(tmp_path: Path) -> None:
    write(tmp_path, "10.conf", {"cniVersion": "0.3.1", "name": "single", "type": "bridge", "bridge": "br9"})
    netlist = load_conflist(tmp_path, "single")
    assert netlist.cni_version == "0.3.1" and len(netlist.plugins) == 1
    assert netlist.plugins[0].raw["bridge"] == "br9"
    assert json.loads(netlist.bytes)["plugins"][0]["type"] == "bridge"


def test_conflist_preferred_over_conf_with_same_name(tmp_path: Path) -> None:
    write(tmp_path, "00.conf", {"cniVersion": "0.3.1", "name": "n", "type": "fromconf"})
    write(tmp_path, "99.conflist", conflist("n", plugins=[{"type": "fromlist"}]))
    assert load_conflist(tmp_path, "n").plugins[0].type == "fromlist"


def test_yaml_for_hand_written_configs(tmp_path: Path) -> None:
    write(
        tmp_path,
        "net.yaml",
        "cniVersion: 1.0.0\nname: yamlnet\nplugins:\n  - type: bridge\n"
        "    bridge: br7\n    capabilities: {portMappings: true}\n",
    )
    netlist = load_conflist(tmp_path, "yamlnet")
    assert netlist.plugins[0].raw["bridge"] == "br7" and netlist.plugins[0].capabilities == {"portMappings": True}
    assert json.loads(netlist.bytes)["name"] == "yamlnet"


def test_subdirectories_and_other_files_ignored(tmp_path: Path) -> None:
    (tmp_path / "x.conflist").mkdir()
    write(tmp_path, "README", "hello")
    with pytest.raises(NoConfigsFound):
        load_conflist(tmp_path, "x")


def test_missing_dir_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(NoConfigsFound):
        load_conflist(tmp_path / "nope", "x")
    write(tmp_path, "a.conflist", conflist("a"))
    with pytest.raises(NetworkNotFound) as exc:
        load_conflist(tmp_path, "b")
    assert '"b"' in exc.value.msg


def test_non_inlined_plugins_appended_unless_disabled(tmp_path: Path) -> None:
    write(tmp_path, "n.conflist", conflist("n"))
    (tmp_path / "n").mkdir()
    write(tmp_path / "n", "10-extra.conf", {"type": "tuning"})
    assert [p.type for p in load_conflist(tmp_path, "n").plugins] == ["loopback", "tuning"]
    write(tmp_path, "n.conflist", conflist("n", loadOnlyInlinedPlugins=True))
    assert [p.type for p in load_conflist(tmp_path, "n").plugins] == ["loopback"]


def test_cni_versions_negotiation(tmp_path: Path) -> None:
    write(tmp_path, "n.conflist", conflist("n", cniVersion="0.4.0", cniVersions=["1.0.0", "1.1.0", "7.0.0"]))
    assert load_conflist(tmp_path, "n").cni_version == "1.1.0"


@pytest.mark.parametrize(
    "obj,words",
    [
        ({"cniVersion": "1.0.0", "plugins": [{"type": "x"}]}, "name"),
        (conflist("bad/name"), "invalid network name"),
        (conflist("n", plugins=[]), "plugins"),
        (conflist("n", plugins="bridge"), "plugins"),
        (conflist("n", plugins=[{"bridge": "x"}]), "plugins[0]: type"),
        (conflist("n", plugins=[{"type": "../bin/sh"}]), "plugins[0]: type"),
        (conflist("n", disableCheck="yes"), "disableCheck"),
        (conflist("n", disableGC=3), "disableGC"),
        (conflist("n", cniVersion="banana"), "cniVersion"),
        (conflist("n", cniVersions="1.0.0"), "cniVersions"),
        (conflist("n", plugins=[{"type": "x", "capabilities": {"portMappings": "yes"}}]), "capabilities"),
        ({"cniVersion": "1.0.0", "name": "n", "loadOnlyInlinedPlugins": True}, "loadOnlyInlinedPlugins"),
    ],
)
def test_validation_errors_name_file_and_field(tmp_path: Path, obj: dict[str, object], words: str) -> None:
    path = write(tmp_path, "bad.conflist", obj)
    with pytest.raises(CNIError) as exc:
        load_file(path)
    assert exc.value.code == 7
    assert str(path) in exc.value.msg and words in exc.value.msg


def test_invalid_json_names_file(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.conflist", "{oops")
    with pytest.raises(CNIError) as exc:
        load_conflist(tmp_path, "x")
    assert str(path) in exc.value.msg and "invalid JSON" in exc.value.msg


def test_flags_accept_bools_and_bool_strings(tmp_path: Path) -> None:
    write(tmp_path, "n.conflist", conflist("n", disableCheck="true", disableGC=True))
    netlist = load_conflist(tmp_path, "n")
    assert netlist.disable_check and netlist.disable_gc


def test_list_networks(tmp_path: Path) -> None:
    write(tmp_path, "a.conflist", conflist("a"))
    write(tmp_path, "b.conf", {"cniVersion": "0.3.1", "name": "b", "type": "bridge"})
    assert sorted(n.name for n in list_networks(tmp_path)) == ["a", "b"]
