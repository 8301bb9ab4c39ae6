"""Pod networks that span nodes (the node agent, ``cni_plugins.node``) kept apart, and their
egress masqueraded, on nftables. One table per node, shared by the agents of every pod
network on it; each agent adds and removes only its own network's chains and elements::

    table inet cni_py_node {
        set pod_nets4 { type ipv4_addr; flags interval }          # every pod network's cluster CIDR
        map to_net4   { type ipv4_addr : verdict; flags interval } # cluster CIDR -> jump net-<name>
        map masq4     { type ipv4_addr : verdict; flags interval } # cluster CIDR -> jump masq-<name> (--ip-masq)
        chain forward { type filter hook forward priority filter - 5; policy accept;
            ip daddr vmap @to_net4 }
        chain net-<name> { ip saddr @pod_nets4 ip saddr != <its CIDR> drop }
        chain postrouting { type nat hook postrouting priority srcnat; policy accept;
            ip saddr vmap @masq4 }
        chain masq-<name> { ip daddr != @pod_nets4 masquerade }
    }

Forwarded traffic into a pod network from another pod network is dropped, on whichever
node forwards it: on the sending node (its route to the remote subnet exists for the
network's own pods) and on the receiving one. Traffic from outside every pod network (the
nodes, clients elsewhere) is not touched. Two networks with overlapping CIDRs cannot be
added (nftables refuses overlapping intervals): the agent says so.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from firewall.expr import Table, match, payload
from firewall.nft import Command

FAMILY = "inet"
TABLE = "cni_py_node"
NFT = Table(FAMILY, TABLE)
POD_NETS = "pod_nets4"
TO_NET = "to_net4"
MASQ = "masq4"
FORWARD_PRIORITY = -5
SRCNAT_PRIORITY = 100


def _prefix(cidr: ipaddress.IPv4Network) -> dict[str, Any]:
    return {"prefix": {"addr": str(cidr.network_address), "len": cidr.prefixlen}}


def net_chain(name: str) -> str:
    return f"net-{name}"


def masq_chain(name: str) -> str:
    return f"masq-{name}"


def base_commands() -> list[Command]:
    """The table, its sets and the two hooked chains (constant; safe to run again)."""
    return [
        NFT.add(),
        {"add": NFT.obj("set", name=POD_NETS, type="ipv4_addr", flags=["interval"])},
        {"add": NFT.obj("map", name=TO_NET, type="ipv4_addr", map="verdict", flags=["interval"])},
        {"add": NFT.obj("map", name=MASQ, type="ipv4_addr", map="verdict", flags=["interval"])},
        {
            "add": NFT.obj(
                "chain", name="forward", type="filter", hook="forward", prio=FORWARD_PRIORITY, policy="accept"
            )
        },
        {"flush": NFT.obj("chain", name="forward")},
        NFT.rule("forward", {"vmap": {"key": payload(4, "daddr"), "data": f"@{TO_NET}"}}),
        {
            "add": NFT.obj(
                "chain", name="postrouting", type="nat", hook="postrouting", prio=SRCNAT_PRIORITY, policy="accept"
            )
        },
        {"flush": NFT.obj("chain", name="postrouting")},
        NFT.rule("postrouting", {"vmap": {"key": payload(4, "saddr"), "data": f"@{MASQ}"}}),
    ]


def network_commands(name: str, cidr: ipaddress.IPv4Network, *, masquerade: bool, present: set[str]) -> list[Command]:
    """One network's chains and elements. ``present``: which of ``to_net``, ``masq`` already
    hold this network's element (an element is added once; its chain is rewritten)."""
    chain = net_chain(name)
    out: list[Command] = [
        {"add": NFT.obj("chain", name=chain)},
        {"flush": NFT.obj("chain", name=chain)},
        NFT.rule(
            chain,
            match(payload(4, "saddr"), f"@{POD_NETS}"),
            match(payload(4, "saddr"), _prefix(cidr), "!="),
            {"drop": None},
        ),
        {"add": NFT.obj("element", name=POD_NETS, elem=[_prefix(cidr)])},
    ]
    if "to_net" not in present:
        out.append({"add": NFT.obj("element", name=TO_NET, elem=[[_prefix(cidr), {"jump": {"target": chain}}]])})
    mchain = masq_chain(name)
    if masquerade:
        out += [
            {"add": NFT.obj("chain", name=mchain)},
            {"flush": NFT.obj("chain", name=mchain)},
            NFT.rule(mchain, match(payload(4, "daddr"), f"@{POD_NETS}", "!="), {"masquerade": None}),
        ]
        if "masq" not in present:
            out.append({"add": NFT.obj("element", name=MASQ, elem=[[_prefix(cidr), {"jump": {"target": mchain}}]])})
    elif "masq" in present:
        out += [
            {"delete": NFT.obj("element", name=MASQ, elem=[_prefix(cidr)])},
            {"delete": NFT.obj("chain", name=mchain)},
        ]
    return out


def remove_commands(name: str, cidr: ipaddress.IPv4Network, present: set[str]) -> list[Command]:
    """Everything of one network (``present`` as for ``network_commands``, plus ``pod_nets``
    and the chain names found)."""
    out: list[Command] = []
    if "to_net" in present:
        out.append({"delete": NFT.obj("element", name=TO_NET, elem=[_prefix(cidr)])})
    if "masq" in present:
        out.append({"delete": NFT.obj("element", name=MASQ, elem=[_prefix(cidr)])})
    if "pod_nets" in present:
        out.append({"delete": NFT.obj("element", name=POD_NETS, elem=[_prefix(cidr)])})
    for chain in (net_chain(name), masq_chain(name)):
        if chain in present:
            out.append({"delete": NFT.obj("chain", name=chain)})
    return out


def present_in(table: list[Command], name: str, cidr: ipaddress.IPv4Network) -> set[str]:
    """What of network ``name`` a listing of the table (``NftBackend.list_table``) holds."""
    want = _prefix(cidr)
    found: set[str] = set()
    for item in table:
        if "chain" in item and item["chain"].get("name") in (net_chain(name), masq_chain(name)):
            found.add(item["chain"]["name"])
        for kind, label in (("set", "pod_nets"), ("map", "")):
            obj = item.get(kind)
            if not obj or obj.get("name") not in (POD_NETS, TO_NET, MASQ):
                continue
            for elem in obj.get("elem", []):
                key = elem[0] if isinstance(elem, list) else elem
                if isinstance(key, dict) and "elem" in key:
                    key = key["elem"].get("val")
                if key == want:
                    found.add(label or {TO_NET: "to_net", MASQ: "masq"}[obj["name"]])
    return found
