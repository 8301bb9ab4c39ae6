"""bandwidth's and sbr's option parsing without a kernel: where the limits come from, what is
refused and how the error names the key, the ifb's name and alias, sbr's choice of addresses
and tables."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from cni_plugins.kernel.netlink import RouteEntry
from cni_plugins.kernel.tc import U32Key
from cni_plugins.plugins import bandwidth, sbr
from cni_plugins.protocol.skel import CmdArgs
from cni_plugins.spec.errors import InvalidNetworkConfig
from cni_plugins.spec.types import IPConfig, Result
from cni_plugins.spec.version import result_from_json
from conf.cni_args import CniArgs
from conf.netconf import NetConf


def cmd(plugin: str, **conf: Any) -> CmdArgs:
    data = json.dumps({"cniVersion": "1.0.0", "name": "bwnet", "type": plugin, **conf}).encode()
    return CmdArgs(
        command="ADD",
        container_id="cid1",
        netns="/x",
        ifname="eth0",
        cni_args=CniArgs(),
        path=(),
        conf=NetConf.from_bytes(data),
        environ={},
    )


def test_static_limits_win_over_the_capability_even_when_only_a_subnet_is_given() -> None:
    runtime = {"bandwidth": {"ingressRate": 4000, "ingressBurst": 40}}
    conf = bandwidth.BandwidthConf.from_json(cmd("bandwidth", egressRate=8000, egressBurst=80, runtimeConfig=runtime))
    assert (conf.ingress.rate, conf.egress.rate, conf.egress.burst) == (0, 8000, 80)
    conf = bandwidth.BandwidthConf.from_json(cmd("bandwidth", runtimeConfig=runtime))
    assert (conf.ingress.rate, conf.ingress.burst, conf.ingress.where) == (4000, 40, "runtimeConfig.bandwidth.ingress")
    only_subnets = cmd("bandwidth", unshapedSubnets=["10.0.0.0/8"], runtimeConfig=runtime)
    assert not bandwidth.BandwidthConf.from_json(only_subnets).shapes  # the reference's precedence
    keys_as_go_matches_them = cmd("bandwidth", IngressRate=8000, INGRESSBURST=80)
    assert bandwidth.BandwidthConf.from_json(keys_as_go_matches_them).ingress.rate == 8000


@pytest.mark.parametrize(
    "opts, words",
    [
        ({"ingressRate": 1000}, ["ingressBurst", "if rate is set, burst must also be set"]),
        ({"egressBurst": 1000}, ["egressRate", "if burst is set, rate must also be set"]),
        ({"egressRate": 1, "egressBurst": 8 * (2**32 - 1)}, ["egressBurst", "4GB"]),
        ({"ingressRate": -1, "ingressBurst": 8}, ["ingressRate", "-1"]),
        ({"ingressRate": 1.5, "ingressBurst": 8}, ["ingressRate", "integer"]),
        ({"runtimeConfig": {"bandwidth": {"ingressRate": 8}}}, ["runtimeConfig.bandwidth.ingressBurst"]),
        ({"runtimeConfig": {"bandwidth": []}}, ["runtimeConfig.bandwidth", "object"]),
        ({"shapedSubnets": ["10.0.0.0/8"], "unshapedSubnets": ["fd00::/8"]}, ["both"]),
        ({"shapedSubnets": "10.0.0.0/8"}, ["shapedSubnets", "list"]),
        ({"shapedSubnets": ["10.0.0.0/33"]}, ["shapedSubnets[0]", "10.0.0.0/33"]),
    ],
)
def test_refused(opts: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(InvalidNetworkConfig) as err:
        bandwidth.BandwidthConf.from_json(cmd("bandwidth", **opts))
    assert all(w in err.value.msg for w in words), err.value.msg


def test_buffer_limits() -> None:
    conf = bandwidth.BandwidthConf.from_json(cmd("bandwidth", ingressRate=8_000_000, ingressBurst=800_000))
    assert conf.ingress.buffer(15.625) == 1_562_500
    for rate, burst, word in ((7, 8, "1 byte/s"), (8, 2**31, "longer than the kernel")):
        limit = bandwidth.Limit(rate=rate, burst=burst, where="ingress")
        with pytest.raises(InvalidNetworkConfig, match=word):
            limit.buffer(15.625)


def test_ifb_name_and_alias() -> None:
    assert bandwidth.ifb_name("bwnet", "cid1") == "bwp9aa1ffe1e8dd"  # as the reference named it
    assert bandwidth.ifb_alias("bwnet") == "cni-py bandwidth bwnet"
    long = bandwidth.ifb_alias("n" * 255)
    assert long.startswith("cni-py bandwidth sha256:") and len(long) <= 255


def test_subnet_keys() -> None:
    net = ipaddress.ip_network
    assert bandwidth.subnet_keys(net("10.1.0.0/16"), source=False) == (U32Key(0xFFFF0000, 0x0A010000, 16),)
    assert bandwidth.subnet_keys(net("10.1.0.0/16"), source=True)[0].off == 12
    v6 = bandwidth.subnet_keys(net("fd00:1:2::/48"), source=False)
    assert [(k.off, k.mask) for k in v6] == [(24, 0xFFFFFFFF), (28, 0xFFFF0000)]
    assert bandwidth.subnet_keys(net("0.0.0.0/0"), source=False) == ()  # no key: u32 matches everything


def prev(ips: list[dict[str, Any]], interfaces: list[dict[str, Any]]) -> Result:
    return result_from_json({"cniVersion": "1.0.0", "interfaces": interfaces, "ips": ips})


def test_sbr_addresses_of_the_interface() -> None:
    result = prev(
        [
            {"address": "10.0.0.2/24", "interface": 1},
            {"address": "10.1.0.2/24", "interface": 0},
            {"address": "fd00::2/64"},
        ],
        [{"name": "eth0"}, {"name": "net1"}],
    )
    assert [str(ip.address) for ip in sbr.ips_on(result, "net1")] == ["10.0.0.2/24", "fd00::2/64"]
    with pytest.raises(InvalidNetworkConfig, match="no IP address on interface eth9"):
        sbr.ips_on(prev([{"address": "10.0.0.2/24", "interface": 0}], [{"name": "eth0"}]), "eth9")
    with pytest.raises(InvalidNetworkConfig, match="No IP addresses supplied on interface: net1"):
        sbr.ips_on(prev([], [{"name": "net1"}]), "net1")


@pytest.mark.parametrize(
    "value, expect", [(None, None), (500, 500), (2**32 - 1, 2**32 - 1), ("100", "integer"), (0, "0"), (2**32, "out")]
)
def test_sbr_table(value: Any, expect: int | str | None) -> None:
    args = cmd("sbr") if value is None else cmd("sbr", table=value)
    if expect is None or isinstance(expect, int):
        assert sbr.SbrConf.from_json(args).table == expect
        return
    with pytest.raises(InvalidNetworkConfig, match=expect):
        sbr.SbrConf.from_json(args)


def route(dst: str, gw: str | None = None, src: str | None = None) -> RouteEntry:
    return RouteEntry(
        dst=ipaddress.ip_network(dst),
        gw=ipaddress.ip_address(gw) if gw else None,
        oif=3,
        scope=0,
        table=254,
        priority=None,
        src=ipaddress.ip_address(src) if src else None,
    )


def test_sbr_copies_a_route_by_the_references_test_within_its_family() -> None:
    ip = IPConfig(address=ipaddress.ip_interface("10.97.0.2/24"), gateway=ipaddress.ip_address("10.97.0.1"))
    assert sbr.copies_to(route("0.0.0.0/0", gw="10.97.0.1"), ip)
    assert sbr.copies_to(route("10.97.0.0/24", src="10.97.0.2"), ip)
    assert sbr.copies_to(route("192.0.2.0/24"), ip)  # generic: no source, no gateway
    assert not sbr.copies_to(route("192.0.2.0/24", gw="10.98.0.1"), ip)
    assert not sbr.copies_to(route("fe80::/64"), ip)  # the reference copied this one into the IPv4 table


def test_sbr_next_free_table() -> None:
    assert sbr.next_free({100, 101, 103}, 100) == 102
    assert sbr.next_free(set(), 253) == 256  # default, main and local are never chosen
