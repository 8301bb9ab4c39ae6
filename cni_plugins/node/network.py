"""The records a pod network keeps in etcd, under its prefix (flannel's layout and field names,
so its tooling reads them)::

    <prefix>/network/config                       {"Network": "10.244.0.0/16", "SubnetLen": 24,
                                                   "SubnetMin": "10.244.1.0", "SubnetMax": "10.244.255.0",
                                                   "Backend": {"Type": "vxlan", "VNI": 1, "Port": 8472}}
    <prefix>/network/subnets/10.244.1.0-24        {"PublicIP": "192.168.0.11", "BackendType": "vxlan",
                                                   "BackendData": {"VNI": 1, "VtepMAC": "02:.."},
                                                   "Node": "node-1"}      bound to the node's etcd lease

``routed`` is flannel's ``host-gw``: a route per remote subnet via the remote node's address,
for nodes on one L2 segment. ``vxlan`` is an overlay device per node (IPv4 underlay).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

ROUTED, VXLAN = "routed", "vxlan"
BACKENDS = (ROUTED, VXLAN)
DEFAULT_VNI = 1
DEFAULT_PORT = 8472  # the kernel's default, flannel's too (IANA's 4789 is another choice)
VXLAN_OVERHEAD = 50  # outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14)


class ConfigError(ValueError):
    """A network config or lease record that cannot be used; the message says which field."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkConfig:
    network: ipaddress.IPv4Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Network
    subnet_max: ipaddress.IPv4Network
    backend: str
    vni: int = DEFAULT_VNI
    port: int = DEFAULT_PORT

    @classmethod
    def build(
        cls,
        network: str,
        *,
        subnet_len: int = 0,
        subnet_min: str = "",
        subnet_max: str = "",
        backend: str = VXLAN,
        vni: int = DEFAULT_VNI,
        port: int = DEFAULT_PORT,
    ) -> NetworkConfig:
        """flannel's defaults: /24 subnets of a /22 or larger network (else its length + 2), from
        the second subnet (the first holds the network's own address) to the last."""
        try:
            net = ipaddress.IPv4Network(network)
        except ValueError as exc:
            raise ConfigError(f"Network: {network!r} is not an IPv4 network ({exc})") from None
        if net.prefixlen > 28:
            raise ConfigError(f"Network: {net} is too small, give a /28 or larger")
        length = subnet_len or (24 if net.prefixlen <= 22 else net.prefixlen + 2)
        if not net.prefixlen < length <= 30:
            raise ConfigError(f"SubnetLen: {length} must be longer than the network's /{net.prefixlen} and at most 30")
        subnets = list(net.subnets(new_prefix=length)) if length - net.prefixlen <= 16 else []
        if not subnets:
            raise ConfigError(f"SubnetLen: {length} makes more than 65536 subnets of {net}")

        def bound(text: str, default: ipaddress.IPv4Network, key: str) -> ipaddress.IPv4Network:
            if not text:
                return default
            try:
                sub = ipaddress.IPv4Network(f"{text}/{length}")
            except ValueError:
                raise ConfigError(f"{key}: {text!r} is not the start of a /{length} subnet") from None
            if not sub.subnet_of(net):
                raise ConfigError(f"{key}: {sub} is not in {net}")
            return sub

        low = bound(subnet_min, subnets[1] if len(subnets) > 1 else subnets[0], "SubnetMin")
        high = bound(subnet_max, subnets[-1], "SubnetMax")
        if low.network_address > high.network_address:
            raise ConfigError(f"SubnetMin {low} is after SubnetMax {high}")
        if backend not in BACKENDS:
            raise ConfigError(f"Backend.Type: {backend!r} is not one of {', '.join(BACKENDS)}")
        if not 0 < vni < 1 << 24:
            raise ConfigError(f"Backend.VNI: {vni} is not a 24-bit VXLAN network identifier")
        if not 0 < port < 65536:
            raise ConfigError(f"Backend.Port: {port} is not a UDP port")
        return cls(network=net, subnet_len=length, subnet_min=low, subnet_max=high, backend=backend, vni=vni, port=port)

    @classmethod
    def from_json(cls, data: bytes) -> NetworkConfig:
        try:
            raw = json.loads(data)
        except ValueError as exc:
            raise ConfigError(f"not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError("not a JSON object")
        backend = raw.get("Backend") or {}
        if not isinstance(backend, dict):
            raise ConfigError("Backend: not a JSON object")
        fields: dict[str, Any] = {
            "subnet_len": raw.get("SubnetLen", 0),
            "vni": backend.get("VNI", DEFAULT_VNI),
            "port": backend.get("Port", DEFAULT_PORT),
        }
        for key, value in fields.items():
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{key}: expected an integer, got {value!r}")
        texts = {
            "network": raw.get("Network"),
            "subnet_min": raw.get("SubnetMin", ""),
            "subnet_max": raw.get("SubnetMax", ""),
        }
        texts["backend"] = backend.get("Type", VXLAN)
        for key, value in texts.items():
            if not isinstance(value, str):
                raise ConfigError(f"{key}: expected a string, got {value!r}")
        return cls.build(
            str(texts["network"]),
            subnet_len=fields["subnet_len"],
            subnet_min=str(texts["subnet_min"]),
            subnet_max=str(texts["subnet_max"]),
            backend=str(texts["backend"]),
            vni=fields["vni"],
            port=fields["port"],
        )

    def to_json(self) -> bytes:
        backend: dict[str, Any] = {"Type": self.backend}
        if self.backend == VXLAN:
            backend.update(VNI=self.vni, Port=self.port)
        return json.dumps(
            {
                "Network": str(self.network),
                "SubnetLen": self.subnet_len,
                "SubnetMin": str(self.subnet_min.network_address),
                "SubnetMax": str(self.subnet_max.network_address),
                "Backend": backend,
            }
        ).encode()

    def subnets(self) -> Iterator[ipaddress.IPv4Network]:
        """Every subnet a node may lease, in order."""
        step = 1 << (32 - self.subnet_len)
        for start in range(int(self.subnet_min.network_address), int(self.subnet_max.network_address) + 1, step):
            yield ipaddress.IPv4Network((start, self.subnet_len))


@dataclass(frozen=True, slots=True, kw_only=True)
class Lease:
    """One node's subnet, as its record in etcd says."""

    subnet: ipaddress.IPv4Network
    node: str
    public_ip: ipaddress.IPv4Address
    backend: str
    vni: int = 0
    vtep_mac: str = ""
    lease_id: int = 0  # the etcd lease the record is bound to

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The subnet's first address: the remote end of a vxlan route (``via <it> onlink``)."""
        return self.subnet.network_address

    def to_json(self) -> bytes:
        data: dict[str, Any] = {}
        if self.backend == VXLAN:
            data = {"VNI": self.vni, "VtepMAC": self.vtep_mac}
        return json.dumps(
            {"PublicIP": str(self.public_ip), "BackendType": self.backend, "BackendData": data, "Node": self.node}
        ).encode()

    @classmethod
    def from_record(cls, key: bytes, value: bytes, lease_id: int = 0) -> Lease:
        subnet = subnet_of_key(key)
        try:
            raw = json.loads(value)
            data = raw.get("BackendData") or {}
            return cls(
                subnet=subnet,
                node=str(raw.get("Node", "")),
                public_ip=ipaddress.IPv4Address(raw["PublicIP"]),
                backend=str(raw.get("BackendType", "")),
                vni=int(data.get("VNI", 0)),
                vtep_mac=str(data.get("VtepMAC", "")).lower(),
                lease_id=lease_id,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(f"lease record {key.decode(errors='replace')}: {exc!r}") from None


def config_key(prefix: str) -> bytes:
    return f"{prefix}/network/config".encode()


def subnets_prefix(prefix: str) -> bytes:
    return f"{prefix}/network/subnets/".encode()


def subnet_key(prefix: str, subnet: ipaddress.IPv4Network) -> bytes:
    return subnets_prefix(prefix) + f"{subnet.network_address}-{subnet.prefixlen}".encode()


def subnet_of_key(key: bytes) -> ipaddress.IPv4Network:
    name = key.rsplit(b"/", 1)[-1].decode("ascii", "replace")
    try:
        return ipaddress.IPv4Network(name.replace("-", "/"))
    except ValueError:
        raise ConfigError(f"{key.decode(errors='replace')}: not a subnet key") from None


def vtep_mac(node: str, vni: int) -> str:
    """A VTEP MAC that stays the same across agent restarts (locally administered, unicast):
    other nodes' FDB entries stay right while the agent is down."""
    digest = hashlib.sha256(f"cni-py vtep {node} {vni}".encode()).digest()
    return ":".join(f"{b:02x}" for b in (b"\x02" + digest[:5]))
