"""firewall plugin: options (reference-compatible), builders, iptables-nft FORWARD integration and
the handlers on FakeNft (no root)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from cni_plugins.plugins import firewall, nft_state
from cni_plugins.protocol import skel
from cni_plugins.spec.errors import InvalidNetworkConfig
from conf.netconf import NetConf
from firewall.rules import forward
from tests.fakes.nft import FakeNft

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "cni0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/x"}],
    "ips": [{"address": "10.88.0.5/16", "interface": 2}, {"address": "fd00::5/64", "interface": 2}],
}


def conf(**options: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"cniVersion": "1.0.0", "name": "net1", "type": "firewall", "prevResult": PREV}
    base.update(options)
    return base


def parse(obj: dict[str, Any]) -> firewall.FirewallConf:
    return firewall.FirewallConf.from_netconf(NetConf.from_bytes(json.dumps(obj).encode()))


def test_defaults() -> None:
    c = parse(conf())
    assert (c.backend, c.admin_chain, c.ingress_policy, c.accept_mark, c.bridge) == (
        "",
        "CNI-ADMIN",
        "open",
        0x10000000,
        "cni0",
    )
    assert [str(a) for a in c.addresses] == ["10.88.0.5", "fd00::5"]


@pytest.mark.parametrize("backend", ["", "iptables", "firewalld", "nftables"])
def test_reference_backends_are_accepted(backend: str) -> None:
    assert parse(conf(backend=backend, firewalldZone="trusted")).backend == backend


def test_options_are_checked() -> None:
    assert parse(conf(iptablesAdminChainName="MY-ADMIN")).admin_chain == "MY-ADMIN"
    for bad in ("-X", "a b", "x" * 29, "ACCEPT", "CNI-FORWARD", 'a"b'):
        with pytest.raises(InvalidNetworkConfig, match="iptablesAdminChainName"):
            parse(conf(iptablesAdminChainName=bad))
    with pytest.raises(InvalidNetworkConfig, match="unknown ingress policy"):
        parse(conf(ingressPolicy="closed"))
    assert parse(conf(iptablesAcceptMark="0x20000")).accept_mark == 0x20000
    assert parse(conf(iptablesAcceptMark=64)).accept_mark == 64
    for bad_mark in (0, "zero", 2**32, True):
        with pytest.raises(InvalidNetworkConfig, match="iptablesAcceptMark"):
            parse(conf(iptablesAcceptMark=bad_mark))


def test_forward_chain_marks_what_it_accepts_after_the_admin_chain_and_isolation() -> None:
    cmds = forward.base_commands("CNI-ADMIN", 0x10000000)
    rules = [c["add"]["rule"]["expr"] for c in cmds if c.get("add", {}).get("rule", {}).get("chain") == "forward"]
    assert rules[0] == [{"jump": {"target": "CNI-ADMIN"}}] and rules[1] == [{"jump": {"target": "isolation"}}]
    mark_set = {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 0x10000000]}}}
    assert rules[2] == [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@accept4"}},
        {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}},
        mark_set,
        {"accept": None},
    ]
    assert rules[4] == [
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@accept4"}},
        mark_set,
        {"accept": None},
    ]
    assert len(rules) == 8
    iso = [c["add"]["rule"]["expr"] for c in cmds if c.get("add", {}).get("rule", {}).get("chain") == "isolation"]
    assert iso[1] == [
        {
            "vmap": {
                "key": {"concat": [{"meta": {"key": "iifname"}}, {"meta": {"key": "oifname"}}]},
                "data": "@bridge_pairs",
            }
        }
    ]
    assert not any(
        "flush" in c and c["flush"]["chain"]["name"] == "CNI-ADMIN" for c in cmds
    )  # the admin chain is yours


def test_bridge_policy_entries() -> None:
    assert forward.bridge_commands_and_group("br0", "open") == ([], None)
    extra, group = forward.bridge_commands_and_group("br0", "isolated")
    assert extra == [
        {"add": {"element": {"family": "inet", "table": "cni_py_firewall", "name": "policy_bridges", "elem": ["br0"]}}}
    ]
    assert (
        group is not None
        and group.entries[0].key == {"concat": ["br0", "br0"]}
        and group.entries[0].data == {"bridge_pairs": {"drop": None}}
    )
    _, same = forward.bridge_commands_and_group("br0", "same-bridge")
    assert same is not None and same.entries[0].data == {"bridge_pairs": {"return": None}}


def test_iptables_rules_are_added_once_around_existing_reference_rules() -> None:
    empty = forward.IptablesState(family="ip", forward=[], cni_forward=None)
    cmds = forward.iptables_commands(empty, "CNI-ADMIN", 0x10)
    verbs = [
        (next(iter(c)), c[next(iter(c))].get("rule", {}).get("chain") or c[next(iter(c))]["chain"]["name"])
        for c in cmds
    ]
    assert verbs == [
        ("add", "CNI-FORWARD"),
        ("add", "CNI-ADMIN"),
        ("insert", "FORWARD"),
        ("insert", "CNI-FORWARD"),
        ("insert", "CNI-FORWARD"),
    ]
    # the reference left its FORWARD jump and admin jump (xt comment matches), and per-address rules
    ref_admin = {
        "handle": 7,
        "expr": [{"xt": {"type": "match", "name": "comment"}}, {"counter": None}, {"jump": {"target": "CNI-ADMIN"}}],
    }
    ref_rule = {
        "handle": 8,
        "expr": [
            {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "10.0.0.2"}},
            {"accept": None},
        ],
    }
    state = forward.IptablesState(
        family="ip",
        forward=[{"handle": 3, "expr": [{"jump": {"target": "CNI-FORWARD"}}]}],
        cni_forward=[ref_admin, ref_rule],
    )
    cmds = forward.iptables_commands(state, "CNI-ADMIN", 0x10)
    assert cmds[2:] == [{"add": forward.mark_rule("ip", 0x10, handle=7)}]  # right after the admin jump
    assert forward.iptables_problems(state, "CNI-ADMIN", 0x10) == [
        "iptables (ip filter): CNI-FORWARD does not accept mark 0x10"
    ]
    ours = forward.mark_rule("ip", 0x10)["rule"]
    dup = forward.IptablesState(
        family="ip", forward=state.forward, cni_forward=[ref_admin, ours | {"handle": 9}, ours | {"handle": 10}]
    )
    assert forward.iptables_commands(dup, "CNI-ADMIN", 0x10)[2:] == [
        {"delete": {"rule": {"family": "ip", "table": "filter", "chain": "CNI-FORWARD", "handle": 10}}}
    ]
    done = forward.IptablesState(family="ip", forward=state.forward, cni_forward=[ref_admin, ours | {"handle": 9}])
    assert forward.iptables_commands(done, "CNI-ADMIN", 0x10) == []  # all in place: nothing sent


class Harness:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, iptables: bool = True) -> None:
        self.nft = FakeNft()
        if iptables:  # what `iptables -P FORWARD DROP` leaves behind on iptables-nft
            self.nft.run(
                [
                    {"add": {"table": {"family": "ip", "name": "filter"}}},
                    {
                        "add": {
                            "chain": {
                                "family": "ip",
                                "table": "filter",
                                "name": "FORWARD",
                                "type": "filter",
                                "hook": "forward",
                                "prio": 0,
                                "policy": "drop",
                            }
                        }
                    },
                ],
                what="setup",
            )
        monkeypatch.setattr(nft_state, "host_nft", lambda: self.nft)
        self.stderr = io.StringIO()

    def run(self, command: str, obj: dict[str, Any], cid: str = "ctr1") -> tuple[int, Any]:
        out = io.StringIO()
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": "/var/run/netns/none",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": "/x",
        }
        rc = skel.run(firewall.PLUGIN, environ=env, stdin=json.dumps(obj).encode(), stdout=out, stderr=self.stderr)
        return rc, json.loads(out.getvalue()) if out.getvalue().strip() else None

    def accepted(self, v: int = 4) -> list[str]:
        return sorted(json.loads(k) for k in self.nft.elements("inet", "cni_py_firewall", f"accept{v}"))

    def chain(self, name: str, family: str = "ip", table: str = "filter") -> list[Any]:
        return [r["rule"] for r in self.nft.list_chain(family, table, name) or []]


def test_add_check_del(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch)
    rc, out = h.run("ADD", conf(backend="firewalld"))
    assert rc == 0 and out["ips"][0]["address"] == "10.88.0.5/16"
    assert "backend firewalld asked for; served by nftables" in h.stderr.getvalue()
    assert len(h.nft.batches) == 2 and h.accepted(4) == ["10.88.0.5"] and h.accepted(6) == ["fd00::5"]
    assert [r["comment"] for r in h.chain("FORWARD")] == [forward.FORWARD_COMMENT]
    assert [r["comment"] for r in h.chain("CNI-FORWARD")] == [forward.ADMIN_COMMENT, forward.MARK_COMMENT]
    assert h.chain("CNI-FORWARD", "ip6") == []  # no ip6 filter table: nothing there
    assert h.run("ADD", conf())[0] == 0  # again: converges, no duplicates
    assert len(h.chain("CNI-FORWARD")) == 2 and len(h.chain("FORWARD")) == 1
    assert h.run("CHECK", conf())[0] == 0
    assert h.run("DEL", conf())[0] == 0
    assert h.accepted(4) == [] and h.accepted(6) == []
    rc, err = h.run("CHECK", conf())
    assert rc == 1 and "accept entry for 10.88.0.5: missing" in err["msg"]
    assert h.run("DEL", conf())[0] == 0
    assert h.run("DEL", {k: v for k, v in conf().items() if k != "prevResult"})[0] == 0


def test_check_names_missing_iptables_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch)
    h.run("ADD", conf())
    h.nft.run(
        [{"flush": {"chain": {"family": "ip", "table": "filter", "name": "FORWARD"}}}], what="admin flushes FORWARD"
    )
    rc, err = h.run("CHECK", conf())
    assert rc == 1 and "FORWARD does not jump to CNI-FORWARD" in err["msg"]
    h.run("ADD", conf())
    assert h.run("CHECK", conf())[0] == 0


def test_same_address_replacement_and_late_del(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, iptables=False)
    assert h.run("ADD", conf(), "old")[0] == 0 and h.run("ADD", conf(), "new")[0] == 0
    assert h.run("DEL", conf(), "old")[0] == 0
    assert h.accepted(4) == ["10.88.0.5"] and h.run("CHECK", conf(), "new")[0] == 0
    assert h.run("DEL", {k: v for k, v in conf().items() if k != "prevResult"}, "new")[0] == 0
    assert h.accepted(4) == []


def on_bridge(bridge: str, **options: Any) -> dict[str, Any]:
    prev = dict(PREV, interfaces=[{"name": bridge}, *PREV["interfaces"][1:]])
    return conf(prevResult=prev, **options)


def bridge_elements(h: Harness) -> dict[str, list[str]]:
    return {
        name: sorted(h.nft.elements("inet", "cni_py_firewall", name))
        for name in ("bridge_owners", "bridge_pairs", "policy_bridges")
    }


def test_ingress_policy_per_bridge_newest_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, iptables=False)
    assert h.run("ADD", conf(ingressPolicy="same-bridge"))[0] == 0
    pairs = h.nft.elements("inet", "cni_py_firewall", "bridge_pairs")
    assert [v[1] for v in pairs.values()] == [{"return": None}]
    assert h.run("ADD", conf(ingressPolicy="isolated"), "c2")[0] == 0
    pairs = h.nft.elements("inet", "cni_py_firewall", "bridge_pairs")
    assert [v[1] for v in pairs.values()] == [{"drop": None}]
    assert list(h.nft.elements("inet", "cni_py_firewall", "policy_bridges")) == ['"cni0"']
    assert h.run("CHECK", conf(ingressPolicy="isolated"), "c2")[0] == 0


def test_per_bridge_entries_stay_while_the_bridge_exists_and_go_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """ "lo" stands for a bridge that exists (every namespace has it), "cnipy-gone0" for one
    that was deleted (a reboot): its entries go at the DEL that finds it gone, or at GC."""
    h = Harness(monkeypatch, iptables=False)
    assert h.run("ADD", on_bridge("lo", ingressPolicy="same-bridge"))[0] == 0
    assert h.run("ADD", on_bridge("cnipy-gone0", ingressPolicy="isolated"), "c2")[0] == 0
    assert h.run("ADD", on_bridge("cnipy-gone1", ingressPolicy="isolated"), "c3")[0] == 0
    assert [len(v) for v in bridge_elements(h).values()] == [3, 3, 3]
    assert h.run("DEL", on_bridge("lo"))[0] == 0
    assert h.run("DEL", on_bridge("cnipy-gone0"), "c2")[0] == 0
    assert bridge_elements(h)["policy_bridges"] == ['"cnipy-gone1"', '"lo"']
    assert [len(v) for v in bridge_elements(h).values()] == [2, 2, 2]
    gc = {k: v for k, v in on_bridge("lo").items() if k != "prevResult"}
    gc.update(cniVersion="1.1.0", **{"cni.dev/valid-attachments": []})
    assert h.run("GC", gc)[0] == 0
    assert bridge_elements(h)["policy_bridges"] == ['"lo"']
    assert [len(v) for v in bridge_elements(h).values()] == [1, 1, 1]
    assert "GC removed the entries of bridges that are gone: cnipy-gone1" in h.stderr.getvalue()


@pytest.mark.parametrize("name", ["x/..", "..", "", "a b", "br:0", "b" * 16, "\u00e9" * 8])
def test_a_bridge_name_that_cannot_name_a_link_is_refused(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """prevResult comes from the runtime's cache or a previous plugin: what nftables would
    store for it must be a valid interface name (and it is never stored otherwise)."""
    h = Harness(monkeypatch, iptables=False)
    rc, err = h.run("ADD", on_bridge(name, ingressPolicy="same-bridge"))
    assert rc == 1 and err["code"] == 7 and "cannot be the bridge of ingress policy" in err["msg"], err
    assert bridge_elements(h) == {"bridge_owners": [], "bridge_pairs": [], "policy_bridges": []}
    assert h.run("ADD", on_bridge(name))[0] == 0  # the open policy takes no bridge: nothing stored
    assert bridge_elements(h) == {"bridge_owners": [], "bridge_pairs": [], "policy_bridges": []}
    assert h.run("DEL", on_bridge(name))[0] == 0


def test_a_container_interface_is_not_taken_for_the_bridge(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch, iptables=False)
    prev = dict(PREV, interfaces=[{"name": "eth0", "sandbox": "/var/run/netns/c"}] * 3)
    rc, err = h.run("ADD", conf(prevResult=prev, ingressPolicy="isolated"))
    assert rc == 1 and err["code"] == 7 and "it is in a container" in err["msg"], err


def test_policy_needs_an_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch)
    rc, err = h.run(
        "ADD", conf(ingressPolicy="isolated", prevResult={"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]})
    )
    assert rc == 1 and "interface needs to be set" in err["msg"]


def test_versions_before_0_4_0_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch)
    rc, err = h.run(
        "ADD",
        conf(
            cniVersion="0.3.1", prevResult={"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.0.0.2/24"}]}
        ),
    )
    assert rc == 1 and err["code"] == 1
    assert firewall.PLUGIN.versions == ("0.4.0", "1.0.0", "1.1.0")


def test_gc(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness(monkeypatch)
    h.run("ADD", conf(), "a")
    h.run("ADD", conf(prevResult={"cniVersion": "1.0.0", "ips": [{"address": "10.88.0.9/16"}]}), "b")
    gc = {
        "cniVersion": "1.1.0",
        "name": "net1",
        "type": "firewall",
        "cni.dev/valid-attachments": [{"containerID": "b", "ifname": "eth0"}],
    }
    out = io.StringIO()
    assert (
        skel.run(
            firewall.PLUGIN,
            environ={"CNI_COMMAND": "GC", "CNI_PATH": "/x"},
            stdin=json.dumps(gc).encode(),
            stdout=out,
            stderr=io.StringIO(),
        )
        == 0
    ), out.getvalue()
    assert h.accepted(4) == ["10.88.0.9"] and h.accepted(6) == []
