"""portmap: option handling (reference-compatible), builders, and the handlers on FakeNft (no root)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from cni_plugins.plugins import nft_state, portmap
from cni_plugins.protocol import skel
from cni_plugins.spec.errors import InvalidNetworkConfig, UnsupportedField
from conf.netconf import NetConf
from firewall.model import Owner
from firewall.rules import portmap as layout
from tests.fakes.nft import FakeNft

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
        {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
        {"name": "eth0", "sandbox": "/var/run/netns/x"},
    ],
    "ips": [
        {"address": "10.1.0.9/24", "interface": 1},  # host side: skipped
        {"address": "10.88.0.5/16", "interface": 2, "gateway": "10.88.0.1"},
        {"address": "10.88.0.6/16", "interface": 2},  # not the first IPv4
        {"address": "fd00::5/64", "interface": 2},
    ],
}


def conf(**options: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"cniVersion": "1.0.0", "name": "net1", "type": "portmap", "prevResult": PREV}
    base.update(options)
    return base


def parse(obj: dict[str, Any], ifname: str = "eth0", **kw: Any) -> portmap.PortMapConf:
    return portmap.PortMapConf.from_netconf(NetConf.from_bytes(json.dumps(obj).encode()), ifname, **kw)


def pm(host: int, ctr: int, proto: str = "tcp", host_ip: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"hostPort": host, "containerPort": ctr, "protocol": proto}
    if host_ip:
        out["hostIP"] = host_ip
    return out


# ---------------------------------------------------------------- options


def test_defaults_and_container_choice() -> None:
    c = parse(conf())
    assert (c.snat, c.masq_all, c.exclusive_host_ports, c.backend) == (True, False, False, "")
    assert {v: str(a) for v, a in c.containers.items()} == {4: "10.88.0.5/16", 6: "fd00::5/64"}
    assert c.conditions == {4: (), 6: ()}


def test_entries_without_index_are_taken() -> None:
    # (an index out of range is refused earlier, when prevResult is read)
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/x"}],
        "ips": [{"address": "10.0.0.2/24"}, {"address": "fd::2/64"}],
    }
    c = parse(conf(prevResult=prev))
    assert {v: str(a) for v, a in c.containers.items()} == {4: "10.0.0.2/24", 6: "fd::2/64"}
    assert parse(conf(), ifname="eth1").containers == {}


@pytest.mark.parametrize(("key", "hint"), [("markMasqBit", "ct status dnat"), ("externalSetMarkChain", "masqAll")])
def test_iptables_only_options_are_refused_naming_the_equivalent(key: str, hint: str) -> None:
    with pytest.raises(UnsupportedField) as info:
        parse(conf(**{key: 13 if key == "markMasqBit" else "KUBE-MARK-MASQ"}))
    assert key in info.value.msg and hint in info.value.details
    assert parse(conf(**{key: 13}), strict=False).snat  # DEL does not refuse what ADD would have refused


def test_backend_values() -> None:
    assert parse(conf(backend="iptables")).backend == "iptables"
    assert parse(conf(backend="nftables")).backend == "nftables"
    with pytest.raises(InvalidNetworkConfig, match="backend"):
        parse(conf(backend="pf"))


def test_conditions_are_parsed_and_iptables_syntax_refused() -> None:
    c = parse(conf(conditionsV4=["ip", "saddr", "192.0.2.0/24"], conditionsV6=["iifname eth0"]))
    assert c.conditions[4][0]["match"]["right"] == {"prefix": {"addr": "192.0.2.0", "len": 24}}
    with pytest.raises(UnsupportedField):
        parse(conf(conditionsV4=["-s", "192.0.2.0/24"]))


def test_invalid_mappings() -> None:
    with pytest.raises(InvalidNetworkConfig, match="hostPort"):
        parse(conf(runtimeConfig={"portMappings": [pm(0, 80)]}))
    with pytest.raises(InvalidNetworkConfig, match="protocol"):
        parse(conf(runtimeConfig={"portMappings": [pm(80, 80, "icmp")]}))


def test_mappings_by_family() -> None:
    c = parse(
        conf(
            runtimeConfig={
                "portMappings": [
                    pm(80, 8080),
                    pm(81, 81, host_ip="0.0.0.0"),
                    pm(82, 82, host_ip="::"),
                    pm(83, 83, "udp", "192.0.2.1"),
                    pm(84, 84, host_ip="2001:db8::1"),
                ]
            }
        )
    )
    got = {v: [(m.host_port, m.host_ip) for m in ms] for v, ms in c.mappings().items()}
    assert got == {4: [(80, ""), (81, ""), (83, "192.0.2.1")], 6: [(80, ""), (82, ""), (84, "2001:db8::1")]}
    assert c.udp_ports() == [83]
    v4_only = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]}
    assert (
        list(
            parse(
                conf(prevResult=v4_only, runtimeConfig={"portMappings": [pm(84, 84, host_ip="2001:db8::1")]})
            ).mappings()
        )
        == []
    )


# ---------------------------------------------------------------- builders


def test_groups_hold_dnat_and_masquerade_entries() -> None:
    c = parse(conf(runtimeConfig={"portMappings": [pm(8080, 80), pm(8080, 81), pm(53, 53, "udp", "192.0.2.1")]}))
    groups = {g.maps.owners: g for g in c.groups("net1")}
    assert sorted(groups) == ["any4_owners", "any6_owners", "hostip4_owners", "masq4_owners", "masq6_owners"]
    (e,) = groups["any4_owners"].entries  # the duplicate host port: the first mapping wins, as in the reference
    assert e.key == {"concat": ["tcp", 8080]}
    assert e.data == {
        "any4_chain": {"jump": {"target": layout.dnat_chain("net1", layout.KIND["any4"])}},
        "any4_addr": "10.88.0.5",
        "any4_port": 80,
    }
    (h,) = groups["hostip4_owners"].entries
    assert h.key == {"concat": ["192.0.2.1", "udp", 53]}
    assert groups["masq4_owners"].entries[0].data == {"masq4": {"jump": {"target": "hairpin-10_88_0_0-16"}}}
    assert groups["masq6_owners"].entries[0].data == {"masq6": {"jump": {"target": "hairpin-fd00__-64"}}}
    masq_all = {
        g.maps.owners: g for g in parse(conf(masqAll=True, runtimeConfig={"portMappings": [pm(1, 1)]})).groups("n")
    }
    assert masq_all["masq4_owners"].entries[0].data == {"masq4": {"jump": {"target": "masq-all"}}}
    no_snat = {g.maps.owners for g in parse(conf(snat=False, runtimeConfig={"portMappings": [pm(1, 1)]})).groups("n")}
    assert no_snat == {"any4_owners", "any6_owners"}


def test_base_chains_dispatch_through_verdict_maps() -> None:
    cmds = layout.base_commands()
    rules = {
        c["add"]["rule"]["chain"]: c["add"]["rule"]["expr"]
        for c in cmds
        if "rule" in c.get("add", {}) and c["add"]["rule"]["chain"] != "hostports"
    }
    assert rules["prerouting"] == [
        {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["daddr"]}}, "right": "local"}},
        {"jump": {"target": "hostports"}},
    ]
    hostports = [c["add"]["rule"]["expr"] for c in cmds if c.get("add", {}).get("rule", {}).get("chain") == "hostports"]
    assert [r[-1]["vmap"]["data"] for r in hostports] == [
        "@hostip4_chain",
        "@hostip6_chain",
        "@any4_chain",
        "@any6_chain",
    ]
    assert hostports[0][-1]["vmap"]["key"] == {
        "concat": [
            {"payload": {"protocol": "ip", "field": "daddr"}},
            {"meta": {"key": "l4proto"}},
            {"payload": {"protocol": "th", "field": "dport"}},
        ]
    }
    chains = [c["add"]["chain"] for c in cmds if "chain" in c.get("add", {})]
    assert {(ch["name"], ch.get("hook"), ch.get("prio")) for ch in chains if "hook" in ch} == {
        ("prerouting", "prerouting", -100),
        ("output", "output", -100),
        ("postrouting", "postrouting", 100),
    }
    flushed = {c["flush"]["chain"]["name"] for c in cmds if "flush" in c}
    assert flushed == {"hostports", "prerouting", "output", "postrouting", "masq-all"}


def test_network_chain_carries_conditions_then_dnat_through_the_maps() -> None:
    cond = {"match": {"op": "==", "left": {"meta": {"key": "iifname"}}, "right": "eth0"}}
    cmds = layout.network_commands("net1", {4: [cond]})
    rules = {c["add"]["rule"]["chain"]: c["add"]["rule"]["expr"] for c in cmds if "rule" in c.get("add", {})}
    any4 = rules[layout.dnat_chain("net1", layout.KIND["any4"])]
    assert any4[0] == cond
    assert (
        any4[1]["dnat"]["family"] == "ip"
        and any4[1]["dnat"]["addr"]["map"]["data"] == "@any4_addr"
        and any4[1]["dnat"]["port"]["map"]["data"] == "@any4_port"
    )
    assert (
        rules[layout.dnat_chain("net1", layout.KIND["any6"])][0]["dnat"]["family"] == "ip6"
    )  # no V4 condition in V6 chains
    assert layout.hairpin_commands(__import__("ipaddress").ip_network("10.88.0.0/16"))[-1]["add"]["rule"]["expr"][0][
        "match"
    ]["right"] == {"set": [{"prefix": {"addr": "10.88.0.0", "len": 16}}, {"prefix": {"addr": "127.0.0.0", "len": 8}}]}


# ---------------------------------------------------------------- handlers on FakeNft


class Harness:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.nft = FakeNft()
        self.localnet: list[str] = []
        self.udp: list[tuple[list[int], tuple[int, ...]]] = []
        monkeypatch.setattr(nft_state, "host_nft", lambda: self.nft)
        monkeypatch.setattr(portmap, "_enable_localnet", lambda c: self.localnet.append(str(c)))
        monkeypatch.setattr(
            portmap, "_flush_udp", lambda c, versions=None: self.udp.append((c.udp_ports(), versions or ()))
        )

    def run(self, command: str, obj: dict[str, Any], cid: str = "ctr1") -> tuple[int, Any]:
        out = io.StringIO()
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": "/var/run/netns/none",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": "/x",
        }
        rc = skel.run(portmap.PLUGIN, environ=env, stdin=json.dumps(obj).encode(), stdout=out, stderr=io.StringIO())
        return rc, json.loads(out.getvalue()) if out.getvalue().strip() else None

    def held(self, owners: str = "any4_owners") -> dict[int, int]:
        return {
            json.loads(k)["concat"][1]: v[1] for k, v in self.nft.elements("inet", "cni_py_portmap", owners).items()
        }

    def addr(self, name: str = "any4_addr") -> dict[Any, Any]:
        return {json.loads(k)["concat"][-1]: v[1] for k, v in self.nft.elements("inet", "cni_py_portmap", name).items()}


def with_ip(ip: str, **options: Any) -> dict[str, Any]:
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/x"}],
        "ips": [{"address": f"{ip}/24", "interface": 0}],
    }
    return conf(prevResult=prev, **options)


def test_no_mappings_passes_through_without_nftables(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch)
    monkeypatch.setattr(nft_state, "host_nft", lambda: pytest.fail("nftables touched without mappings"))
    rc, out = h.run("ADD", conf())
    assert rc == 0 and out["ips"][1]["address"] == "10.88.0.5/16"
    assert h.run("DEL", conf())[0] == 0 and h.run("CHECK", conf())[0] == 0


def test_add_check_del_one_transaction_each(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch)
    obj = with_ip("10.0.0.2", runtimeConfig={"portMappings": [pm(8080, 80), pm(5353, 53, "udp")]})
    rc, out = h.run("ADD", obj)
    assert rc == 0 and out["ips"][0]["address"] == "10.0.0.2/24"
    assert len(h.nft.batches) == 1 and h.localnet == ["10.0.0.2/24"] and h.udp == [([5353], ())]
    assert h.addr() == {8080: "10.0.0.2", 5353: "10.0.0.2"}
    assert h.run("CHECK", obj)[0] == 0
    assert h.run("DEL", obj)[0] == 0
    assert len(h.nft.batches) == 2 and h.held() == {} and h.addr() == {}
    rc, err = h.run("CHECK", obj)
    assert rc == 1 and "tcp port 8080 on all IPv4 addresses: missing" in err["msg"]
    assert h.run("DEL", obj)[0] == 0  # idempotent


def test_newest_wins_and_the_older_del_leaves_it(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch)
    a, b = (
        with_ip("10.0.0.2", runtimeConfig={"portMappings": [pm(8080, 80)]}),
        with_ip("10.0.0.3", runtimeConfig={"portMappings": [pm(8080, 80)]}),
    )
    assert h.run("ADD", a, "ctr-a")[0] == 0 and h.run("ADD", b, "ctr-b")[0] == 0
    assert h.addr() == {8080: "10.0.0.3"} and h.held() == {
        8080: Owner(network="net1", container_id="ctr-b", ifname="eth0").mark
    }
    assert h.run("DEL", a, "ctr-a")[0] == 0
    assert h.addr() == {8080: "10.0.0.3"}
    assert h.run("CHECK", b, "ctr-b")[0] == 0
    rc, err = h.run("CHECK", a, "ctr-a")
    assert rc == 1 and "held by another attachment" in err["msg"]


def test_exclusive_host_ports_refuses_naming_the_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch)
    a = with_ip("10.0.0.2", runtimeConfig={"portMappings": [pm(8080, 80)]})
    b = with_ip("10.0.0.3", exclusiveHostPorts=True, runtimeConfig={"portMappings": [pm(9090, 90), pm(8080, 80)]})
    assert h.run("ADD", a, "ctr-a")[0] == 0
    rc, err = h.run("ADD", b, "ctr-b")
    assert (
        rc == 1
        and err["msg"] == "host tcp port 8080 on all IPv4 addresses is already mapped by net:net1 if:eth0 id:ctr-a"
    )
    assert h.addr() == {8080: "10.0.0.2"}  # nothing of b's batch was applied
    assert h.run("ADD", b | {"runtimeConfig": {"portMappings": [pm(9090, 90)]}}, "ctr-b")[0] == 0
    assert (
        h.run("ADD", b | {"runtimeConfig": {"portMappings": [pm(9090, 91)]}}, "ctr-b")[0] == 0
    )  # its own port: converges
    assert h.addr("any4_port") == {8080: 80, 9090: 91}


def test_del_without_prev_result_finds_entries_by_owner(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch)
    a, b = (
        with_ip("10.0.0.2", runtimeConfig={"portMappings": [pm(8080, 80)]}),
        with_ip("10.0.0.3", runtimeConfig={"portMappings": [pm(8081, 80)]}),
    )
    h.run("ADD", a, "ctr-a")
    h.run("ADD", b, "ctr-b")
    no_prev = {k: v for k, v in a.items() if k != "prevResult"}
    assert h.run("DEL", no_prev, "ctr-a")[0] == 0
    assert h.addr() == {8081: "10.0.0.3"}
    assert h.udp[-1] == ([], (4, 6))


def test_gc_drops_entries_of_invalid_attachments(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch)
    h.run("ADD", with_ip("10.0.0.2", runtimeConfig={"portMappings": [pm(8080, 80)]}), "ctr-a")
    h.run("ADD", with_ip("10.0.0.3", runtimeConfig={"portMappings": [pm(8081, 80)]}), "ctr-b")
    gc = {
        "cniVersion": "1.1.0",
        "name": "net1",
        "type": "portmap",
        "cni.dev/valid-attachments": [{"containerID": "ctr-b", "ifname": "eth0"}],
    }
    out = io.StringIO()
    env = {"CNI_COMMAND": "GC", "CNI_PATH": "/x"}
    assert (
        skel.run(portmap.PLUGIN, environ=env, stdin=json.dumps(gc).encode(), stdout=out, stderr=io.StringIO()) == 0
    ), out.getvalue()
    assert h.addr() == {8081: "10.0.0.3"}
    assert [json.loads(k) for k in h.nft.elements("inet", "cni_py_portmap", "masq4_owners")] == ["10.0.0.3"]


def test_missing_prev_result_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch)
    rc, err = h.run("ADD", {"cniVersion": "1.0.0", "name": "n", "type": "portmap"})
    assert rc == 1 and err["code"] == 7 and "chained" in err["msg"]
