"""The ``bridge`` plugin's options, parsed once into ``BridgeConf`` (names and defaults as the
reference's ``plugins/main/bridge`` NetConf; ``preserveDefaultVlan`` defaults to true there).

``from_json`` checks every value and names its key; combinations the reference refuses only
at ADD are in ``validate_for_add`` so that DEL of such a config still cleans up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cni_plugins.spec.errors import InvalidNetworkConfig, shown
from cni_plugins.spec.names import IFNAME_MAX, interface_name_problem
from cni_plugins.spec.types import DNS
from conf.cni_args import CniArgs
from conf.fields import bool_field, int_field, list_field, parse_mac, str_field
from conf.netconf import NetConf

DEFAULT_BRIDGE = "cni0"
VLAN_MAX = 4094
MASQ_BACKENDS = ("iptables", "nftables")


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgeConf:
    network: str
    bridge: str = DEFAULT_BRIDGE
    is_gateway: bool = False  # isDefaultGateway implies it
    is_default_gateway: bool = False
    force_address: bool = False
    ip_masq: bool = False
    ip_masq_backend: str = ""  # accepted for configs written for the reference; nftables serves it
    mtu: int = 0  # 0: the kernel's choice
    hairpin: bool = False
    promisc: bool = False
    vlan: int = 0
    trunk: tuple[int, ...] = ()
    preserve_default_vlan: bool = True
    macspoofchk: bool = False
    enable_dad: bool = False
    disable_ipv6: bool = False  # ours: IPv6 off in the container when the network has no IPv6 address
    disable_container_interface: bool = False
    port_isolation: bool = False
    mac: str = ""
    ipam_type: str = ""  # '': L2 only
    dns: DNS | None = None  # None: keep IPAM's DNS

    @classmethod
    def from_json(cls, conf: NetConf, cni_args: CniArgs) -> BridgeConf:
        """Every option, checked and named. The MAC comes from, later ones winning,
        CNI_ARGS ``MAC``, ``args.cni.mac`` and ``runtimeConfig.mac``."""
        raw = conf.raw
        bridge = str_field(raw, "bridge", DEFAULT_BRIDGE) or DEFAULT_BRIDGE
        if interface_name_problem(bridge):
            raise InvalidNetworkConfig(
                f"bridge: {shown(bridge)} is not a valid interface name",
                f"use at most {IFNAME_MAX} characters, without '/', ':' or spaces",
            )
        mac_sources = (
            ("CNI_ARGS MAC", cni_args.get("MAC") or ""),
            ("args.cni.mac", conf.args.mac),
            ("runtimeConfig.mac", conf.runtime_config.mac),
        )
        where, mac = next(((w, m) for w, m in reversed(mac_sources) if m), ("mac", ""))
        default_gw = bool_field(raw, "isDefaultGateway", False)
        backend = str_field(raw, "ipMasqBackend", "")
        if backend and backend not in MASQ_BACKENDS:
            raise InvalidNetworkConfig(
                f"ipMasqBackend: {shown(backend)} is not one of 'iptables', 'nftables'",
                "leave it out: masquerade is served by nftables either way",
            )
        return cls(
            network=conf.name,
            bridge=bridge,
            is_gateway=bool_field(raw, "isGateway", False) or default_gw,
            is_default_gateway=default_gw,
            force_address=bool_field(raw, "forceAddress", False),
            ip_masq=bool_field(raw, "ipMasq", False),
            ip_masq_backend=backend,
            mtu=int_field(raw, "mtu", 0, minimum=0),
            hairpin=bool_field(raw, "hairpinMode", False),
            promisc=bool_field(raw, "promiscMode", False),
            vlan=int_field(raw, "vlan", 0, minimum=0, maximum=VLAN_MAX),
            trunk=parse_trunk(list_field(raw, "vlanTrunk")),
            preserve_default_vlan=bool_field(raw, "preserveDefaultVlan", True),
            macspoofchk=bool_field(raw, "macspoofchk", False),
            enable_dad=bool_field(raw, "enabledad", False),
            disable_ipv6=bool_field(raw, "disableIPv6", False),
            disable_container_interface=bool_field(raw, "disableContainerInterface", False),
            port_isolation=bool_field(raw, "portIsolation", False),
            mac=parse_mac(mac, where),
            ipam_type=conf.ipam_type,
            dns=conf.dns if dns_set(raw.get("dns")) else None,
        )

    @classmethod
    def owning_all(cls, conf: NetConf) -> BridgeConf:
        """For a DEL whose options cannot be read: every per-attachment feature on."""
        return cls(network=conf.name, ip_masq=True, macspoofchk=True, ipam_type=conf.ipam_type)

    def validate_for_add(self) -> None:
        """Combinations the reference refuses at ADD."""
        if self.hairpin and self.promisc:
            raise InvalidNetworkConfig(
                "hairpinMode and promiscMode: cannot set hairpin mode and promiscuous mode at the same time",
                "set at most one of them",
            )
        if self.disable_container_interface and self.ipam_type:
            raise InvalidNetworkConfig(
                "disableContainerInterface: cannot use IPAM when the container interface is disabled",
                'remove "ipam" (L2 only) or the flag',
            )
        if self.vlan and self.is_gateway and len(self.vlan_gateway) > IFNAME_MAX:
            raise InvalidNetworkConfig(
                f"bridge: the VLAN gateway link {self.vlan_gateway} would be longer than {IFNAME_MAX} characters",
                "use a shorter bridge name",
            )

    @property
    def vlan_filtering(self) -> bool:
        return bool(self.vlan or self.trunk)

    @property
    def vlan_gateway(self) -> str:
        """The reference's gateway link for ``vlan`` + ``isGateway``."""
        return f"{self.bridge}.{self.vlan}"


def parse_trunk(items: list[Any]) -> tuple[int, ...]:
    """``vlanTrunk``: ``[{id}, {minID, maxID}, ...]`` -> sorted unique VIDs (1-4094)."""
    vids: set[int] = set()
    for i, item in enumerate(items):
        where = f"vlanTrunk[{i}]"
        if not isinstance(item, dict):
            raise InvalidNetworkConfig(
                f'{where}: expected an object like {{"id": 100}} or {{"minID": 200, "maxID": 210}}, got {shown(item)}'
            )
        lo, hi = item.get("minID"), item.get("maxID")
        if (lo is None) != (hi is None):
            missing = "minID" if lo is None else "maxID"
            raise InvalidNetworkConfig(
                f"{where}: minID and maxID should be configured simultaneously, {missing} is missing"
            )
        if lo is not None:
            lo_v, hi_v = (int_field(item, k, 0, where, minimum=1, maximum=VLAN_MAX) for k in ("minID", "maxID"))
            if hi_v < lo_v:
                raise InvalidNetworkConfig(f"{where}: minID {lo_v} is greater than maxID {hi_v}")
            vids.update(range(lo_v, hi_v + 1))
        if item.get("id") is not None:
            vids.add(int_field(item, "id", 0, where, minimum=1, maximum=VLAN_MAX))
    return tuple(sorted(vids))


def dns_set(obj: object) -> bool:
    """The reference's rule for the config's ``dns`` replacing IPAM's: any of the lists given
    (even empty) or a domain."""
    return isinstance(obj, dict) and (
        any(obj.get(k) is not None for k in ("nameservers", "search", "options")) or bool(obj.get("domain"))
    )
