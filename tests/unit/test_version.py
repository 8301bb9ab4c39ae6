"""Result conversion between spec versions, with the reference's rules."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cni_plugins.spec.errors import CNIError
from cni_plugins.spec.version import (
    SUPPORTED_VERSIONS,
    convert,
    parse_version,
    result_from_json,
    result_to_json,
)

RESULT_1X: dict[str, Any] = {
    "cniVersion": "1.1.0",
    "interfaces": [
        {"name": "cni0", "mac": "76:e8:b5:d2:7e:3f"},
        {"name": "veth2cce48cc", "mac": "ba:5a:8b:b4:96:46", "mtu": 1400},
        {
            "name": "eth0",
            "mac": "f2:15:fb:86:df:b1",
            "sandbox": "/var/run/netns/a",
            "socketPath": "/x.sock",
            "pciID": "0000:01:00.0",
        },
    ],
    "ips": [
        {"interface": 2, "address": "10.99.0.2/24", "gateway": "10.99.0.1"},
        {"interface": 2, "address": "10.99.0.3/24"},
        {"interface": 2, "address": "fd00::2/64", "gateway": "fd00::1"},
    ],
    "routes": [
        {"dst": "0.0.0.0/0"},
        {
            "dst": "192.168.0.0/16",
            "gw": "10.99.0.254",
            "mtu": 1300,
            "advmss": 1200,
            "priority": 5,
            "table": 100,
            "scope": 0,
        },
        {"dst": "::/0", "gw": "fd00::1"},
    ],
    "dns": {"nameservers": ["10.0.0.53"], "domain": "example", "search": ["a.example"], "options": ["ndots:2"]},
}


def test_1x_round_trip_is_exact() -> None:
    assert result_to_json(result_from_json(RESULT_1X), "1.1.0") == RESULT_1X
    out = result_to_json(result_from_json(RESULT_1X), "1.0.0")
    assert out == {**RESULT_1X, "cniVersion": "1.0.0"}


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_down_to_04x_adds_version_and_drops_11_fields(version: str) -> None:
    out = convert(RESULT_1X, version)
    assert out["cniVersion"] == version
    assert [ip["version"] for ip in out["ips"]] == ["4", "4", "6"]
    assert list(out["ips"][0]) == ["version", "interface", "address", "gateway"]  # the reference's key order
    assert out["interfaces"][1] == {"name": "veth2cce48cc", "mac": "ba:5a:8b:b4:96:46"}
    assert out["interfaces"][2] == {"name": "eth0", "mac": "f2:15:fb:86:df:b1", "sandbox": "/var/run/netns/a"}
    assert out["routes"][1] == {"dst": "192.168.0.0/16", "gw": "10.99.0.254"}
    # and back up: nothing but the 1.1 fields is lost
    back = convert(out, "1.1.0")
    expected = copy.deepcopy(RESULT_1X)
    expected["interfaces"][1].pop("mtu")
    for k in ("socketPath", "pciID"):
        expected["interfaces"][2].pop(k)
    expected["routes"][1] = {"dst": "192.168.0.0/16", "gw": "10.99.0.254"}
    assert back == expected


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0"])
def test_down_to_020_keeps_first_address_per_family(version: str) -> None:
    out = convert(RESULT_1X, version)
    assert out == {
        "cniVersion": version,
        "ip4": {
            "ip": "10.99.0.2/24",
            "gateway": "10.99.0.1",
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.99.0.254"}],
        },
        "ip6": {"ip": "fd00::2/64", "gateway": "fd00::1", "routes": [{"dst": "::/0", "gw": "fd00::1"}]},
        "dns": RESULT_1X["dns"],
    }
    up = convert(out, "1.0.0")
    assert up == {
        "cniVersion": "1.0.0",
        "ips": [{"address": "10.99.0.2/24", "gateway": "10.99.0.1"}, {"address": "fd00::2/64", "gateway": "fd00::1"}],
        "routes": [
            {"dst": "0.0.0.0/0"},
            {"dst": "192.168.0.0/16", "gw": "10.99.0.254"},
            {"dst": "::/0", "gw": "fd00::1"},
        ],
        "dns": RESULT_1X["dns"],
    }
    assert convert(up, version) == out  # 0.2 -> 1.0 -> 0.2 is lossless


def test_down_to_020_without_ip_fails() -> None:
    with pytest.raises(CNIError) as exc:
        convert({"cniVersion": "1.0.0", "interfaces": [{"name": "lo"}]}, "0.2.0")
    assert exc.value.code == 1


@pytest.mark.parametrize("src", SUPPORTED_VERSIONS)
@pytest.mark.parametrize("dst", SUPPORTED_VERSIONS)
def test_every_pair_converts_and_is_stable(src: str, dst: str) -> None:
    start = convert(RESULT_1X, src)
    once = convert(start, dst)
    assert once["cniVersion"] == dst
    assert convert(convert(once, src), dst) == once  # converting again changes nothing more


def test_empty_dns_is_printed_as_empty_object() -> None:
    out = convert({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]}, "1.0.0")
    assert out["dns"] == {}


def test_parse_version() -> None:
    assert parse_version("0.4") == (0, 4, 0)
    assert parse_version("1.1.0") > parse_version("1.0.0")
    with pytest.raises(CNIError):
        parse_version("1.x")
