"""conditionsV4/V6: nft-syntax text parsed into a restricted set of match expressions."""

from __future__ import annotations

from typing import Any

import pytest

from cni_plugins.spec.errors import InvalidNetworkConfig, UnsupportedField
from firewall.rules.conditions import IptablesSyntax, is_iptables_syntax, parse

SADDR4 = {"payload": {"protocol": "ip", "field": "saddr"}}


def m(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


@pytest.mark.parametrize(
    ("items", "version", "expected"),
    [
        (["ip saddr 192.0.2.0/24"], 4, [m(SADDR4, {"prefix": {"addr": "192.0.2.0", "len": 24}})]),
        (["ip", "saddr", "!=", "192.0.2.7"], 4, [m(SADDR4, "192.0.2.7", "!=")]),
        (["ip daddr 10.0.0.1/32"], 4, [m({"payload": {"protocol": "ip", "field": "daddr"}}, "10.0.0.1")]),
        (
            ["ip saddr { 10.0.0.0/8, 192.0.2.1 }"],
            4,
            [m(SADDR4, {"set": [{"prefix": {"addr": "10.0.0.0", "len": 8}}, "192.0.2.1"]})],
        ),
        (
            ["ip6 saddr fd00::/8"],
            6,
            [m({"payload": {"protocol": "ip6", "field": "saddr"}}, {"prefix": {"addr": "fd00::", "len": 8}})],
        ),
        (
            ['iifname "eth0"', "oifname", "!=", "lo"],
            4,
            [m({"meta": {"key": "iifname"}}, "eth0"), m({"meta": {"key": "oifname"}}, "lo", "!=")],
        ),
        (["meta iifname { eth*, wlan0 }"], 6, [m({"meta": {"key": "iifname"}}, {"set": ["eth*", "wlan0"]})]),
        (["meta mark 0x10"], 4, [m({"meta": {"key": "mark"}}, 16)]),
        (["mark != 7"], 4, [m({"meta": {"key": "mark"}}, 7, "!=")]),
        (["fib saddr type != local"], 4, [m({"fib": {"result": "type", "flags": ["saddr"]}}, "local", "!=")]),
        ([], 4, []),
    ],
)
def test_valid_conditions(items: list[str], version: int, expected: list[Any]) -> None:
    assert list(parse(items, version, "conditionsV4")) == expected


@pytest.mark.parametrize(
    "items",
    [
        ["ip saddr 1.2.3.4; flush ruleset"],
        ['iifname "eth0" accept'],
        ["ip saddr 1.2.3.4 counter"],
        ["meta mark set 1"],
        ["jump foo"],
        ["ip daddr @someset"],
        ["tcp dport 22"],
        ["ip saddr 10.0.0.1/8"],  # host bits
        ["ip saddr"],
        ["ip protocol tcp"],
        ["iifname eth0/1"],
        ['iifname "a b"'],
        ["iifname averyveryverylongname"],
        ["ip saddr { 1.2.3.4"],
        ["ip saddr { }"],
        ["fib daddr local"],
        ["fib daddr type nowhere"],
        ["meta mark 0x1ffffffff"],
        ['iifname "eth0'],
        ["ip saddr == == 1.2.3.4"],
    ],
)
def test_anything_else_is_refused(items: list[str]) -> None:
    with pytest.raises(InvalidNetworkConfig) as info:
        parse(items, 4, "conditionsV4")
    assert info.value.msg.startswith("conditionsV4: ")


def test_family_mismatch_names_the_other_list() -> None:
    with pytest.raises(InvalidNetworkConfig, match="put it in conditionsV6"):
        parse(["ip6 saddr ::1"], 4, "conditionsV4")
    with pytest.raises(InvalidNetworkConfig, match="put it in conditionsV4"):
        parse(["ip saddr 10.0.0.1"], 6, "conditionsV6")
    with pytest.raises(InvalidNetworkConfig, match="not an IPv4"):
        parse(["ip saddr fd00::1"], 4, "conditionsV4")


@pytest.mark.parametrize("items", [["-s", "10.0.0.0/8"], ["! -i eth0"], ["-m", "comment"]])
def test_iptables_syntax_is_refused_with_the_nft_equivalent(items: list[str]) -> None:
    assert is_iptables_syntax(items)
    with pytest.raises(IptablesSyntax) as info:
        parse(items, 4, "conditionsV4")
    assert isinstance(info.value, UnsupportedField) and info.value.code == 2
    assert "nft syntax" in info.value.details and '["ip", "saddr", "10.0.0.0/8"]' in info.value.details
