"""host-local and static through skel.run, in-process: result shape per cniVersion, DNS from
resolvConf, STATUS and GC, static's address sources and CHECK."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.protocol import skel
from cni_plugins.spec.version import SUPPORTED_VERSIONS
from ipam import host_local, static

ENV = {"CNI_CONTAINERID": "ctr1", "CNI_NETNS": "/var/run/netns/none", "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}


def call(plugin: skel.Plugin, command: str, conf: dict[str, Any], **env: str) -> tuple[int, Any, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = skel.run(
        plugin, environ={**ENV, "CNI_COMMAND": command, **env}, stdin=json.dumps(conf).encode(), stdout=out, stderr=err
    )
    return rc, (json.loads(out.getvalue()) if out.getvalue().strip() else None), err.getvalue()


def hl_conf(tmp_path: Path, version: str, **ipam: Any) -> dict[str, Any]:
    return {
        "cniVersion": version,
        "name": "unitnet",
        "type": "bridge",
        "ipam": {"type": "host-local", "dataDir": str(tmp_path), **ipam},
    }


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_host_local_result_shape(tmp_path: Path, version: str) -> None:
    ranges = [[{"subnet": "10.1.0.0/24"}]] + ([[{"subnet": "fd00::/64"}]] if version >= "0.3.0" else [])
    rc, out, err = call(
        host_local.PLUGIN, "ADD", hl_conf(tmp_path, version, ranges=ranges, routes=[{"dst": "0.0.0.0/0"}])
    )
    assert rc == 0, (out, err)
    assert out["cniVersion"] == version and "interfaces" not in out
    if version < "0.3.0":
        assert out["ip4"] == {"ip": "10.1.0.2/24", "gateway": "10.1.0.1", "routes": [{"dst": "0.0.0.0/0"}]}
    else:
        expected = [{"address": "10.1.0.2/24", "gateway": "10.1.0.1"}, {"address": "fd00::2/64", "gateway": "fd00::1"}]
        if version < "1.0.0":
            expected = [{"version": "4", **expected[0]}, {"version": "6", **expected[1]}]
        assert out["ips"] == expected  # no "interface" index in an IPAM result
        assert out["routes"] == [{"dst": "0.0.0.0/0"}]
    if version >= "0.4.0":
        assert call(host_local.PLUGIN, "CHECK", hl_conf(tmp_path, version, ranges=ranges))[0] == 0
    assert call(host_local.PLUGIN, "DEL", hl_conf(tmp_path, version, ranges=ranges))[0] == 0
    assert [p.name for p in (tmp_path / "unitnet").iterdir() if p.name[0].isdigit()] == []


def test_host_local_dns_from_resolv_conf(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        "# comment\n; other\nnameserver 10.0.0.53\nnameserver fd00::53\n"
        "domain example.com\nsearch a.example b.example\noptions ndots:2 edns0\nbogus\n"
    )
    rc, out, _ = call(
        host_local.PLUGIN, "ADD", hl_conf(tmp_path, "1.0.0", subnet="10.1.0.0/24", resolvConf=str(resolv))
    )
    assert rc == 0
    assert out["dns"] == {
        "nameservers": ["10.0.0.53", "fd00::53"],
        "domain": "example.com",
        "search": ["a.example", "b.example"],
        "options": ["ndots:2", "edns0"],
    }
    rc, out, _ = call(
        host_local.PLUGIN,
        "ADD",
        hl_conf(tmp_path, "1.0.0", subnet="10.1.0.0/24", resolvConf=str(tmp_path / "missing")),
        CNI_CONTAINERID="c2",
    )
    assert rc == 1 and out["code"] == 5 and "ipam.resolvConf" in out["msg"]


def test_host_local_status(tmp_path: Path) -> None:
    env = {"CNI_CONTAINERID": "", "CNI_IFNAME": "", "CNI_NETNS": ""}
    assert (
        call(host_local.PLUGIN, "STATUS", hl_conf(tmp_path / "not-yet", "1.1.0", subnet="10.1.0.0/24"), **env)[0] == 0
    )
    assert not (tmp_path / "not-yet").exists()  # STATUS creates nothing
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc, out, _ = call(host_local.PLUGIN, "STATUS", hl_conf(blocker, "1.1.0", subnet="10.1.0.0/24"), **env)
    assert rc == 1 and out["code"] == 50 and "not usable" in out["msg"]


def test_host_local_gc_without_valid_attachments_does_nothing(tmp_path: Path) -> None:
    conf = hl_conf(tmp_path, "1.1.0", subnet="10.1.0.0/24")
    assert call(host_local.PLUGIN, "ADD", conf)[0] == 0
    rc, _, err = call(host_local.PLUGIN, "GC", conf)
    assert rc == 0 and "cni.dev/valid-attachments" in err
    assert (tmp_path / "unitnet" / "10.1.0.2").exists()
    rc, _, _ = call(host_local.PLUGIN, "GC", {**conf, "cni.dev/valid-attachments": []})
    assert rc == 0 and not (tmp_path / "unitnet" / "10.1.0.2").exists()


def static_conf(version: str = "1.0.0", **top: Any) -> dict[str, Any]:
    ipam = {
        "type": "static",
        "addresses": [{"address": "10.10.0.5/24", "gateway": "10.10.0.1"}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {"nameservers": ["10.10.0.53"]},
    }
    return {"cniVersion": version, "name": "st", "type": "bridge", "ipam": ipam, **top}


def ips(out: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(ip["address"], ip.get("gateway")) for ip in out["ips"]]


def test_static_config_addresses_routes_dns() -> None:
    rc, out, _ = call(static.PLUGIN, "ADD", static_conf())
    assert rc == 0
    assert ips(out) == [("10.10.0.5/24", "10.10.0.1")]
    assert out["routes"] == [{"dst": "0.0.0.0/0"}] and out["dns"] == {"nameservers": ["10.10.0.53"]}
    assert "interfaces" not in out and "interface" not in out["ips"][0]


SOURCES = [
    ("config-only", {}, "", [("10.10.0.5/24", "10.10.0.1")]),
    (
        "cni-args-appended-with-gateway",
        {},
        "IP=10.20.0.5/24, 10.30.0.5/24;GATEWAY=10.20.0.1,10.10.0.254",
        [("10.10.0.5/24", "10.10.0.1"), ("10.20.0.5/24", "10.20.0.1"), ("10.30.0.5/24", None)],
    ),
    ("args-replace", {"args": {"cni": {"ips": ["10.40.0.5/24"]}}}, "IP=10.20.0.5/24", [("10.40.0.5/24", None)]),
    (
        "capability-wins",
        {"runtimeConfig": {"ips": ["10.50.0.5/24", "fd00::5/64"]}, "args": {"cni": {"ips": ["10.40.0.5/24"]}}},
        "IP=10.20.0.5/24",
        [("10.50.0.5/24", None), ("fd00::5/64", None)],
    ),
]


@pytest.mark.parametrize("top,cni_args,expected", [s[1:] for s in SOURCES], ids=[s[0] for s in SOURCES])
def test_static_one_source_in_priority_order(
    top: dict[str, Any], cni_args: str, expected: list[tuple[str, str | None]]
) -> None:
    rc, out, err = call(static.PLUGIN, "ADD", static_conf(**top), **({"CNI_ARGS": cni_args} if cni_args else {}))
    assert rc == 0, (out, err)
    assert ips(out) == expected


STATIC_BAD = [
    (
        "bad-cidr",
        static_conf(ipam={"type": "static", "addresses": [{"address": "10.10.0.5"}]}),
        "",
        7,
        "ipam.addresses[0].address",
    ),
    (
        "bad-gateway",
        static_conf(ipam={"type": "static", "addresses": [{"address": "10.10.0.5/24", "gateway": "x"}]}),
        "",
        7,
        "ipam.addresses[0].gateway",
    ),
    ("capability-not-cidr", static_conf(runtimeConfig={"ips": ["10.1.1.1"]}), "", 7, "runtimeConfig.ips[0]"),
    ("cni-args-not-cidr", static_conf(), "IP=10.1.1.1", 7, "CNI_ARGS IP"),
    ("cni-args-bad-gateway", static_conf(), "IP=10.1.1.1/24;GATEWAY=nope", 7, "CNI_ARGS GATEWAY"),
    ("cni-args-unknown-key", static_conf(), "FOO=1", 4, "FOO"),
    (
        "two-v4-on-0.2.0",
        static_conf(
            "0.2.0", ipam={"type": "static", "addresses": [{"address": "10.1.0.5/24"}, {"address": "10.2.0.5/24"}]}
        ),
        "",
        7,
        "does not support more than 1 address per family",
    ),
    ("no-ipam", {"cniVersion": "1.0.0", "name": "st", "type": "bridge"}, "", 7, "missing 'ipam'"),
]


@pytest.mark.parametrize("conf,cni_args,code,words", [s[1:] for s in STATIC_BAD], ids=[s[0] for s in STATIC_BAD])
def test_static_bad_input(conf: dict[str, Any], cni_args: str, code: int, words: str) -> None:
    rc, out, err = call(static.PLUGIN, "ADD", conf, **({"CNI_ARGS": cni_args} if cni_args else {}))
    assert rc == 1 and out["code"] == code and words in out["msg"] + out.get("details", ""), out
    assert "Traceback" not in err


def test_static_del_noop_and_check_against_prev_result() -> None:
    assert call(static.PLUGIN, "DEL", static_conf()) == (0, None, "")
    good = {"cniVersion": "1.0.0", "ips": [{"address": "10.10.0.5/24", "gateway": "10.10.0.1"}]}
    assert call(static.PLUGIN, "CHECK", static_conf(prevResult=good))[0] == 0
    rc, out, _ = call(
        static.PLUGIN,
        "CHECK",
        static_conf(prevResult={**good, "ips": [{"address": "10.10.0.5/24", "gateway": "10.10.0.2"}]}),
    )
    assert rc == 1 and "Failed to match addr 10.10.0.5" in out["msg"]
    rc, out, _ = call(static.PLUGIN, "CHECK", static_conf(prevResult={**good, "ips": [{"address": "10.10.0.6/24"}]}))
    assert rc == 1 and "10.10.0.5/24 is not in prevResult" in out["msg"]
    rc, out, _ = call(static.PLUGIN, "CHECK", static_conf())
    assert rc == 1 and "prevResult" in out["msg"]
