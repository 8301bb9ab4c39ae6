"""host-local config canonicalisation: every input form -> range sets, and every bad input ->
code 7 naming the key path."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from cni_plugins.spec.errors import CNIError
from conf.cni_args import CniArgs
from conf.netconf import NetConf
from ipam.config import DEFAULT_DATA_DIR, IPAMConf


def conf(ipam: dict[str, Any] | None, *, version: str = "1.0.0", cni_args: str = "", **top: Any) -> IPAMConf:
    raw: dict[str, Any] = {"cniVersion": version, "name": "net1", "type": "bridge", **top}
    if ipam is not None:
        raw["ipam"] = {"type": "host-local", **ipam}
    return IPAMConf.from_netconf(NetConf.from_bytes(json.dumps(raw).encode()), CniArgs.parse(cni_args))


def sets(c: IPAMConf) -> list[list[tuple[str, str, str, str]]]:
    return [
        [(str(r.subnet), str(r.range_start), str(r.range_end), str(r.gateway)) for r in rs.ranges]
        for rs in c.range_sets
    ]


IP = ipaddress.ip_address

GOOD = [
    ("legacy-subnet-v4", {"subnet": "10.1.0.0/24"}, {}, [[("10.1.0.0/24", "10.1.0.1", "10.1.0.254", "10.1.0.1")]]),
    (
        "legacy-with-range",
        {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.20", "gateway": "10.1.0.254"},
        {},
        [[("10.1.0.0/24", "10.1.0.10", "10.1.0.20", "10.1.0.254")]],
    ),
    (
        "v6-end-is-last-address",
        {"ranges": [[{"subnet": "fd00::/120"}]]},
        {},
        [[("fd00::/120", "fd00::1", "fd00::ff", "fd00::1")]],
    ),
    (
        "dual-stack",
        {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]},
        {},
        [
            [("10.1.0.0/24", "10.1.0.1", "10.1.0.254", "10.1.0.1")],
            [("fd00::/64", "fd00::1", "fd00::ffff:ffff:ffff:ffff", "fd00::1")],
        ],
    ),
    (
        "pool-of-two",
        {"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "10.2.0.0/24"}]]},
        {},
        [
            [
                ("10.1.0.0/24", "10.1.0.1", "10.1.0.254", "10.1.0.1"),
                ("10.2.0.0/24", "10.2.0.1", "10.2.0.254", "10.2.0.1"),
            ]
        ],
    ),
    (
        "legacy-prepended-to-ranges",
        {"subnet": "10.1.0.0/24", "ranges": [[{"subnet": "fd00::/64"}]]},
        {},
        [
            [("10.1.0.0/24", "10.1.0.1", "10.1.0.254", "10.1.0.1")],
            [("fd00::/64", "fd00::1", "fd00::ffff:ffff:ffff:ffff", "fd00::1")],
        ],
    ),
    (
        "ipRanges-prepended",
        {"ranges": [[{"subnet": "10.1.0.0/24"}]]},
        {"runtimeConfig": {"ipRanges": [[{"subnet": "10.5.0.0/30"}]]}},
        [
            [("10.5.0.0/30", "10.5.0.1", "10.5.0.2", "10.5.0.1")],
            [("10.1.0.0/24", "10.1.0.1", "10.1.0.254", "10.1.0.1")],
        ],
    ),
]


@pytest.mark.parametrize("ipam,top,expected", [c[1:] for c in GOOD], ids=[c[0] for c in GOOD])
def test_canonical_range_sets(ipam: dict[str, Any], top: dict[str, Any], expected: Any) -> None:
    c = conf(ipam, **top)
    assert sets(c) == expected
    assert c.data_dir == DEFAULT_DATA_DIR and c.name == "net1"
    assert c.requested == (None,) * len(expected)


def test_options_routes_datadir_resolvconf() -> None:
    c = conf(
        {
            "subnet": "10.1.0.0/24",
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.1.0.254"}],
            "dataDir": "/run/cni//ipam/",
            "resolvConf": "/etc/resolv.conf",
        }
    )
    assert [str(r.dst) for r in c.routes] == ["0.0.0.0/0", "10.9.0.0/16"] and str(c.routes[1].gw) == "10.1.0.254"
    assert c.data_dir == "/run/cni/ipam" and c.resolv_conf == "/etc/resolv.conf"


def test_requested_ips_from_all_sources_are_matched_to_range_sets() -> None:
    c = conf(
        {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]},
        cni_args="IP=10.1.0.7",
        args={"cni": {"ips": ["fd00::7"]}},
    )
    assert c.requested == (IP("10.1.0.7"), IP("fd00::7"))
    c = conf({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]}, cni_args="IP=10.1.0.7, fd00::9")
    assert c.requested == (IP("10.1.0.7"), IP("fd00::9"))
    c = conf({"subnet": "10.1.0.0/24"}, runtimeConfig={"ips": ["10.1.0.9/24"]})
    assert c.requested == (IP("10.1.0.9"),)


BAD: list[tuple[str, Any, dict[str, Any], str, str, str]] = [
    # (id, ipam, top-level extras, cni_args, version, words)
    ("no-ipam", None, {}, "", "1.0.0", "missing 'ipam'"),
    ("no-ranges", {}, {}, "", "1.0.0", "no IP ranges"),
    ("malformed-cidr", {"subnet": "10.1.0.0/33"}, {}, "", "1.0.0", "ipam.subnet: '10.1.0.0/33' is not a valid CIDR"),
    ("not-cidr", {"ranges": [[{"subnet": "banana"}]]}, {}, "", "1.0.0", "ipam.ranges[0][0].subnet"),
    ("no-prefix", {"subnet": "10.1.0.0"}, {}, "", "1.0.0", "ipam.subnet: '10.1.0.0' has no prefix"),
    ("host-bits", {"subnet": "10.1.0.5/24"}, {}, "", "1.0.0", "host bits"),
    ("too-small-31", {"subnet": "10.1.0.0/31"}, {}, "", "1.0.0", "too small"),
    ("too-small-32", {"subnet": "10.1.0.0/32"}, {}, "", "1.0.0", "too small"),
    ("too-small-127", {"ranges": [[{"subnet": "fd00::/127"}]]}, {}, "", "1.0.0", "too small"),
    ("too-small-128", {"ranges": [[{"subnet": "fd00::/128"}]]}, {}, "", "1.0.0", "too small"),
    (
        "start-outside",
        {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/24", "rangeStart": "10.9.0.5"}]]},
        {},
        "",
        "1.0.0",
        "ipam.ranges[1][0].rangeStart: 10.9.0.5 is not in subnet 10.2.0.0/24",
    ),
    (
        "end-outside",
        {"subnet": "10.1.0.0/24", "rangeEnd": "10.1.1.5"},
        {},
        "",
        "1.0.0",
        "ipam.rangeEnd: 10.1.1.5 is not in subnet",
    ),
    (
        "gateway-outside",
        {"ranges": [[{"subnet": "10.1.0.0/24", "gateway": "10.2.0.1"}]]},
        {},
        "",
        "1.0.0",
        "ipam.ranges[0][0].gateway",
    ),
    ("gateway-other-family", {"subnet": "10.1.0.0/24", "gateway": "fd00::1"}, {}, "", "1.0.0", "ipam.gateway"),
    (
        "start-after-end",
        {"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.50", "rangeEnd": "10.1.0.40"},
        {},
        "",
        "1.0.0",
        "after rangeEnd",
    ),
    (
        "overlapping-sets",
        {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.0/16"}]]},
        {},
        "",
        "1.0.0",
        "overlaps with range set 0",
    ),
    (
        "overlap-in-set",
        {"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "10.1.0.0/25"}]]},
        {},
        "",
        "1.0.0",
        "ipam.ranges[0][1]: subnet 10.1.0.0/25",
    ),
    (
        "mixed-family-set",
        {"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/64"}]]},
        {},
        "",
        "1.0.0",
        "mixed address families",
    ),
    ("empty-set", {"ranges": [[]]}, {}, "", "1.0.0", "ipam.ranges[0]: empty range set"),
    ("set-not-list", {"ranges": [{"subnet": "10.1.0.0/24"}]}, {}, "", "1.0.0", "ipam.ranges[0]: expected a list"),
    (
        "two-v4-before-0.3.0",
        {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/24"}]]},
        {},
        "",
        "0.2.0",
        "does not support more than 1 address per family",
    ),
    (
        "bad-ipRanges",
        {"subnet": "10.1.0.0/24"},
        {"runtimeConfig": {"ipRanges": [[{"subnet": "nope"}]]}},
        "",
        "1.0.0",
        "runtimeConfig.ipRanges[0][0].subnet",
    ),
    (
        "requested-outside",
        {"subnet": "10.1.0.0/24"},
        {},
        "IP=10.7.0.5",
        "1.0.0",
        "CNI_ARGS IP: requested IP 10.7.0.5 is not in any range set",
    ),
    (
        "requested-garbage",
        {"subnet": "10.1.0.0/24"},
        {"args": {"cni": {"ips": ["ten"]}}},
        "",
        "1.0.0",
        "args.cni.ips[0]: cannot understand ip",
    ),
    (
        "requested-gateway",
        {"subnet": "10.1.0.0/24"},
        {"runtimeConfig": {"ips": ["10.1.0.1"]}},
        "",
        "1.0.0",
        "subnet's gateway",
    ),
    (
        "requested-broadcast",
        {"subnet": "10.1.0.0/24", "rangeEnd": "10.1.0.255"},
        {},
        "IP=10.1.0.255",
        "1.0.0",
        "broadcast",
    ),
    ("requested-two-in-one-set", {"subnet": "10.1.0.0/24"}, {}, "IP=10.1.0.5,10.1.0.6", "1.0.0", "both in range set 0"),
    ("bad-route", {"subnet": "10.1.0.0/24", "routes": [{"dst": "x"}]}, {}, "", "1.0.0", "ipam.routes[0].dst"),
    (
        "relative-datadir",
        {"subnet": "10.1.0.0/24", "dataDir": "var/lib/x"},
        {},
        "",
        "1.0.0",
        "ipam.dataDir: 'var/lib/x' is not an absolute path",
    ),
    ("dotdot-datadir", {"subnet": "10.1.0.0/24", "dataDir": "/var/lib/cni/../../etc"}, {}, "", "1.0.0", "ipam.dataDir"),
    ("nul-datadir", {"subnet": "10.1.0.0/24", "dataDir": "/var/lib/\u0000x"}, {}, "", "1.0.0", "NUL"),
    ("datadir-not-string", {"subnet": "10.1.0.0/24", "dataDir": 5}, {}, "", "1.0.0", "ipam.dataDir: expected a string"),
]


@pytest.mark.parametrize("ipam,top,cni_args,version,words", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config_is_code_7_naming_the_field(
    ipam: Any, top: dict[str, Any], cni_args: str, version: str, words: str
) -> None:
    with pytest.raises(CNIError) as info:
        conf(ipam, version=version, cni_args=cni_args, **top)
    assert info.value.code == 7, info.value.msg
    assert words in info.value.msg + info.value.details
