"""The libcni-compatible pieces that need no kernel: cache format, cnitool's container ID, config building."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from cni_plugins.runtime import cache
from cni_plugins.runtime.cnitool import UsageError, container_id_for, parse_cni_args
from cni_plugins.runtime.runner import CNIRunner, RuntimeConf
from conf.cni_args import CniArgs
from conf.loader import conflist_from_object


def test_cnitool_container_id_matches_reference_derivation() -> None:
    # reference: fmt.Sprintf("cnitool-%x", sha512.Sum512([]byte(netns))[:10])
    digest = hashlib.sha512(b"/var/run/netns/test").digest()[:10]
    assert container_id_for("/var/run/netns/test") == "cnitool-" + "".join(f"{b:02x}" for b in digest)
    assert len(container_id_for("/x")) == len("cnitool-") + 20


def test_cnitool_cni_args_rules() -> None:
    assert parse_cni_args("A=1;B=2") == (("A", "1"), ("B", "2"))
    for bad in ("A=", "=1", "A", "A=1=2"):
        with pytest.raises(UsageError):
            parse_cni_args(bad)


def test_plugin_side_cni_args() -> None:
    args = CniArgs.parse("IgnoreUnknown=1;IP=10.0.0.9;;")
    assert args.ignore_unknown and args.get("IP") == "10.0.0.9"


def test_cache_file_is_libcni_format(tmp_path: Path) -> None:
    att = cache.CachedAttachment(
        container_id="c1",
        ifname="eth0",
        network_name="net",
        netns="/var/run/netns/x",
        cni_args=(("K", "V"),),
        capability_args={"portMappings": []},
        config=b'{"name":"net"}',
        result={"cniVersion": "1.0.0"},
    )
    cache.write(str(tmp_path), att)
    path = tmp_path / "results" / "net-c1-eth0"
    obj = json.loads(path.read_text())
    assert obj["kind"] == "cniCacheV1" and obj["containerId"] == "c1" and obj["ifName"] == "eth0"
    assert base64.b64decode(obj["config"]) == b'{"name":"net"}'
    assert obj["cniArgs"] == [["K", "V"]] and obj["networkName"] == "net" and obj["result"] == {"cniVersion": "1.0.0"}
    assert oct(path.stat().st_mode & 0o777) == "0o600" and oct(path.parent.stat().st_mode & 0o777) == "0o700"
    assert cache.read(str(tmp_path), "net", "c1", "eth0") == att
    assert [a.container_id for a in cache.attachments(str(tmp_path), "net")] == ["c1"]
    cache.delete(str(tmp_path), "net", "c1", "eth0")
    cache.delete(str(tmp_path), "net", "c1", "eth0")  # idempotent
    assert cache.read(str(tmp_path), "net", "c1", "eth0") is None


def test_legacy_cache_file_is_a_bare_result(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "net-c1-eth0").write_text('{"cniVersion":"0.4.0","ips":[]}')
    att = cache.read(str(tmp_path), "net", "c1", "eth0")
    assert att is not None and att.result == {"cniVersion": "0.4.0", "ips": []}


def test_capability_args_injected_only_where_declared() -> None:
    obj = {
        "cniVersion": "1.0.0",
        "name": "n",
        "plugins": [{"type": "bridge"}, {"type": "portmap", "capabilities": {"portMappings": True, "ips": False}}],
    }
    netlist = conflist_from_object(obj, json.dumps(obj).encode(), "test")
    runner = CNIRunner(["/nowhere"], "/nowhere")
    rt = RuntimeConf(
        container_id="c", netns="/x", capability_args={"portMappings": [{"hostPort": 1}], "ips": ["10.0.0.1"]}
    )
    first = runner._build(netlist, netlist.plugins[0], None, rt)
    second = runner._build(netlist, netlist.plugins[1], {"cniVersion": "1.0.0"}, rt)
    assert "runtimeConfig" not in first and "prevResult" not in first
    assert first["name"] == "n" and first["cniVersion"] == "1.0.0"
    assert second["runtimeConfig"] == {"portMappings": [{"hostPort": 1}]}
    assert second["prevResult"] == {"cniVersion": "1.0.0"}
