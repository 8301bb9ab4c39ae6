"""Keys match as the reference's Go decoder matches them: exact, else ignoring case.

Each plugin's config is parsed once as documented (camelCase) and again with every key
respelled (all lower case, Go field names as runtimes marshal them, all upper case, swapped
case); both must give the same typed config. Every option is set to a value other than its
default, so a key that is not found changes the result. Keys of maps (``sysctl``) are
compared as written, as Go compares map keys.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from cni_plugins.plugins.firewall import FirewallConf
from cni_plugins.plugins.macvlan import MacvlanConf
from cni_plugins.plugins.portmap import PortMapConf
from cni_plugins.plugins.ptp import VethConf
from cni_plugins.plugins.tuning import TuningConf
from cni_plugins.protocol.skel import CmdArgs
from conf.bridge import BridgeConf
from conf.cni_args import CniArgs
from conf.gojson import fold, loads
from conf.netconf import NetConf
from ipam.config import IPAMConf
from ipam.static import StaticConf

MAPS = frozenset({"sysctl"})  # map-typed options: their own keys are data, not field names

STYLES: dict[str, Callable[[str], str]] = {
    "lower": str.lower,
    "go-field": lambda k: k[:1].upper() + k[1:],
    "upper": str.upper,
    "swapcase": str.swapcase,
}

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "cni0", "mac": "0a:58:0a:00:00:01"},
        {"name": "veth1", "mac": "0a:58:0a:00:00:02"},
        {"name": "eth0", "mac": "0a:58:0a:00:00:03", "sandbox": "/var/run/netns/c1", "mtu": 1400},
    ],
    "ips": [
        {"address": "10.0.0.5/24", "gateway": "10.0.0.1", "interface": 2},
        {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 2},
    ],
    "routes": [
        {"dst": "0.0.0.0/0", "gw": "10.0.0.1", "mtu": 1300, "advmss": 1200, "priority": 10, "table": 100, "scope": 0}
    ],
    "dns": {"nameservers": ["10.0.0.53"], "domain": "example.org", "search": ["example.org"], "options": ["ndots:2"]},
}
PORT_MAPPINGS = [
    {"hostPort": 8080, "containerPort": 80, "protocol": "udp", "hostIP": "192.0.2.1"},
    {"hostPort": 8443, "containerPort": 443, "protocol": "tcp"},
]
RUNTIME = {"portMappings": PORT_MAPPINGS, "ips": ["10.0.0.9/24"], "mac": "0a:58:0a:00:00:99"}
ARGS = {"cni": {"ips": ["10.0.0.7/24"], "mac": "0a:58:0a:00:00:77"}}
DNS = {"nameservers": ["10.0.0.53"], "domain": "example.org", "search": ["example.org"], "options": ["ndots:2"]}


def netconf(obj: dict[str, Any]) -> NetConf:
    return NetConf.from_bytes(json.dumps(obj).encode())


def cmd(obj: dict[str, Any]) -> CmdArgs:
    return CmdArgs(
        command="ADD",
        container_id="c1",
        netns="/var/run/netns/c1",
        ifname="eth0",
        cni_args=CniArgs(),
        path=(),
        conf=netconf(obj),
        environ={},
    )


def base(ptype: str, **options: Any) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "net1", "type": ptype, **options}


# (case, config, parse): the parse returns everything the plugin reads from the config.
CASES: list[tuple[str, dict[str, Any], Callable[[dict[str, Any]], Any]]] = [
    (
        "bridge",
        base(
            "bridge",
            bridge="br-test",
            isDefaultGateway=True,
            forceAddress=True,
            ipMasq=True,
            ipMasqBackend="nftables",
            mtu=1400,
            hairpinMode=True,
            promiscMode=True,
            vlan=100,
            vlanTrunk=[{"id": 5}, {"minID": 10, "maxID": 12}],
            preserveDefaultVlan=False,
            macspoofchk=True,
            enabledad=True,
            disableIPv6=True,
            disableContainerInterface=True,
            portIsolation=True,
            dns=DNS,
            ipam={"type": "host-local"},
            runtimeConfig={"mac": "0a:58:0a:00:00:99"},
        ),
        lambda o: BridgeConf.from_json(netconf(o), CniArgs()),
    ),
    ("bridge-gateway", base("bridge", isGateway=True), lambda o: BridgeConf.from_json(netconf(o), CniArgs())),
    (
        "ptp",
        base("ptp", ipMasq=True, ipMasqBackend="iptables", mtu=1400, dns=DNS, ipam={"type": "host-local"}),
        lambda o: VethConf.from_json(cmd(o)),
    ),
    (
        "macvlan",
        base(
            "macvlan",
            master="uplink0",
            mode="vepa",
            mtu=1400,
            mac="0a:58:0a:00:00:42",
            linkInContainer=True,
            bcqueuelen=500,
            dns=DNS,
            ipam={"type": "static"},
        ),
        lambda o: MacvlanConf.from_json(cmd(o)),
    ),
    (
        "tuning",
        base(
            "tuning",
            sysctl={"net.ipv4.conf.IFNAME.arp_notify": "1"},
            mac="0a:58:0a:00:00:42",
            mtu=1400,
            promisc=True,
            allmulti=True,
            txQLen=500,
            dataDir="/run/cni/tuning-test",
            args={"cni": {"sysctl": {"net.core.somaxconn": "500"}}},
        ),
        lambda o: TuningConf.from_json(cmd(o)),
    ),
    (
        "portmap",
        base(
            "portmap",
            snat=False,
            masqAll=True,
            exclusiveHostPorts=True,
            backend="nftables",
            conditionsV4=["ip saddr 192.0.2.0/24"],
            conditionsV6=["ip6 saddr 2001:db8::/64"],
            runtimeConfig=RUNTIME,
            prevResult=PREV,
        ),
        lambda o: PortMapConf.from_netconf(netconf(o), "eth0"),
    ),
    (
        "firewall",
        base(
            "firewall",
            backend="iptables",
            iptablesAdminChainName="ADMIN-X",
            ingressPolicy="same-bridge",
            iptablesAcceptMark="0x100",
            prevResult=PREV,
        ),
        lambda o: FirewallConf.from_netconf(netconf(o)),
    ),
    (
        "host-local",
        base(
            "bridge",
            ipam={
                "type": "host-local",
                "ranges": [
                    [
                        {
                            "subnet": "10.0.0.0/24",
                            "rangeStart": "10.0.0.10",
                            "rangeEnd": "10.0.0.20",
                            "gateway": "10.0.0.254",
                        }
                    ]
                ],
                "routes": [{"dst": "192.0.2.0/24", "gw": "10.0.0.254"}],
                "dataDir": "/run/cni/host-local-test",
                "resolvConf": "/etc/resolv.conf",
            },
            args={"cni": {"ips": ["10.0.0.12"]}},
        ),
        lambda o: IPAMConf.from_netconf(netconf(o), CniArgs()),
    ),
    (
        "host-local-legacy-and-ipRanges",
        base(
            "bridge",
            ipam={
                "type": "host-local",
                "subnet": "10.1.0.0/24",
                "rangeStart": "10.1.0.10",
                "rangeEnd": "10.1.0.20",
                "gateway": "10.1.0.1",
            },
            runtimeConfig={
                "ipRanges": [
                    [{"subnet": "10.2.0.0/24", "rangeStart": "10.2.0.5", "rangeEnd": "10.2.0.6", "gateway": "10.2.0.1"}]
                ],
                "ips": ["10.2.0.6"],
            },
        ),
        lambda o: IPAMConf.from_netconf(netconf(o), CniArgs()),
    ),
    (
        "static",
        base(
            "macvlan",
            ipam={
                "type": "static",
                "addresses": [{"address": "10.0.0.5/24", "gateway": "10.0.0.1"}],
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}],
                "dns": DNS,
            },
        ),
        lambda o: StaticConf.from_args(cmd(o)),
    ),
    (
        "static-capability",
        base("macvlan", ipam={"type": "static"}, runtimeConfig={"ips": ["10.0.0.9/24"]}),
        lambda o: StaticConf.from_args(cmd(o)),
    ),
    (
        "static-args",
        base("macvlan", ipam={"type": "static"}, args={"cni": {"ips": ["10.0.0.7/24"]}}),
        lambda o: StaticConf.from_args(cmd(o)),
    ),
    (
        "netconf",
        base(
            "bridge",
            dns=DNS,
            prevResult=PREV,
            runtimeConfig=RUNTIME,
            args=ARGS,
            ipam={"type": "host-local"},
            **{"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]},
        ),
        lambda o: _shared(netconf(o)),
    ),
]


def _shared(conf: NetConf) -> tuple[Any, ...]:
    return (
        conf.cni_version,
        conf.name,
        conf.type,
        conf.ipam_type,
        conf.dns,
        conf.prev_result,
        conf.runtime_config.port_mappings,
        conf.runtime_config.ips,
        conf.runtime_config.mac,
        conf.args.ips,
        conf.args.mac,
        conf.valid_attachments,
    )


def respell(obj: Any, style: Callable[[str], str], *, in_map: bool = False) -> Any:
    """Every key of every object in another spelling, map keys left as written."""
    if isinstance(obj, dict):
        return {(k if in_map else style(k)): respell(v, style, in_map=k in MAPS) for k, v in obj.items()}
    if isinstance(obj, list):
        return [respell(v, style) for v in obj]
    return obj


def defaults_differ(obj: dict[str, Any], parse: Callable[[dict[str, Any]], Any]) -> list[str]:
    """Top-level options whose removal changes nothing: the table would not see them missed."""
    whole = parse(obj)
    same = []
    for key in obj:
        if key in ("cniVersion", "name", "type", "ipam"):
            continue
        if parse({k: v for k, v in obj.items() if k != key}) == whole:
            same.append(key)
    return same


@pytest.mark.parametrize("style", list(STYLES))
@pytest.mark.parametrize("case, obj, parse", CASES, ids=[c[0] for c in CASES])
def test_every_option_in_every_spelling(
    case: str, obj: dict[str, Any], parse: Callable[[dict[str, Any]], Any], style: str
) -> None:
    assert parse(respell(obj, STYLES[style])) == parse(obj)


@pytest.mark.parametrize("case, obj, parse", CASES, ids=[c[0] for c in CASES])
def test_every_option_of_the_table_matters(
    case: str, obj: dict[str, Any], parse: Callable[[dict[str, Any]], Any]
) -> None:
    assert defaults_differ(obj, parse) == []


def test_cri_port_mapping_with_go_field_names() -> None:
    """What containerd's CRI plugin sends (go-cni's PortMapping has no JSON tags)."""
    cri = {"HostPort": 18190, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}
    conf = netconf(base("portmap", runtimeConfig={"portMappings": [cri]}, prevResult=PREV))
    (pm,) = conf.runtime_config.port_mappings
    assert (pm.host_port, pm.container_port, pm.protocol, pm.host_ip) == (18190, 80, "tcp", "")


def test_cri_ip_ranges_with_go_field_names() -> None:
    """go-cni's IPRanges has no JSON tags either: host-local must still read them."""
    ranges = [[{"Subnet": "10.9.0.0/24", "RangeStart": "10.9.0.10", "RangeEnd": "10.9.0.11", "Gateway": "10.9.0.1"}]]
    conf = IPAMConf.from_netconf(
        netconf(base("bridge", ipam={"type": "host-local"}, runtimeConfig={"ipRanges": ranges})), CniArgs()
    )
    (r,) = conf.range_sets[0].ranges
    assert (str(r.subnet), str(r.range_start), str(r.range_end), str(r.gateway)) == (
        "10.9.0.0/24",
        "10.9.0.10",
        "10.9.0.11",
        "10.9.0.1",
    )


def test_the_last_spelling_wins_as_in_go() -> None:
    """Go fills a field once per matching key, in document order: the last one stays."""
    assert loads('{"hostPort": 1, "HostPort": 2}')["hostPort"] == 2
    assert loads('{"HostPort": 2, "hostPort": 1}')["HOSTPORT"] == 1
    assert loads('{"a": 1, "A": 2, "a": 3}').get("a") == 3


def test_keys_stay_as_written() -> None:
    obj = loads('{"HostPort": 1, "sysctl": {"net.X": "1", "net.x": "2"}}')
    assert json.dumps(obj) == '{"HostPort": 1, "sysctl": {"net.X": "1", "net.x": "2"}}'
    assert list(obj["Sysctl"].items()) == [("net.X", "1"), ("net.x", "2")]  # a map keeps both keys
    assert "hostport" in obj and "port" not in obj and obj.get("missing", 7) == 7


def test_go_folds_long_s_and_kelvin_sign() -> None:
    assert fold("\u017fubnet") == fold("Subnet") and fold("\u212aey") == fold("key")
    assert loads('{"\u017fnat": false}').get("snat") is False
    assert fold("\u00e9") != fold("e")  # no other rune folds to ASCII
