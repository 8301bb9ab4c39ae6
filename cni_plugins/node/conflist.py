"""The node's network config for its runtime (kubelet's containerd or CRI-O, podman, cnitool):
a bridge with the pods of the node's leased subnet, its gateway on the bridge, the MTU the
mode allows, and addresses from host-local (node-local files) or cluster-ipam (etcd)::

    {"cniVersion": "1.1.0", "name": "cluster", "plugins": [
      {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true, "mtu": 1450,
       "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": "/var/lib/cni/networks"}},
      {"type": "portmap", "capabilities": {"portMappings": true}}]}

Egress masquerading is the agent's (``--ip-masq``: only traffic leaving every pod network),
not the bridge's ``ipMasq`` (which would also hide pod addresses from pods on other nodes).
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from typing import Any

from cni_plugins.etcd.client import Options

HOST_LOCAL, CLUSTER_IPAM = "host-local", "cluster-ipam"


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConf:
    name: str
    bridge: str
    subnet: ipaddress.IPv4Network
    mtu: int
    ipam: str = HOST_LOCAL
    data_dir: str = ""
    cni_version: str = "1.1.0"
    node: str = ""
    etcd: Options | None = None

    def to_json(self) -> dict[str, Any]:
        ipam: dict[str, Any] = {
            "type": self.ipam,
            "ranges": [[{"subnet": str(self.subnet)}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        }
        if self.ipam == HOST_LOCAL and self.data_dir:
            ipam["dataDir"] = self.data_dir
        if self.ipam == CLUSTER_IPAM and self.etcd is not None:
            etcd: dict[str, Any] = {
                "endpoints": [str(e) for e in self.etcd.endpoints],
                "prefix": self.etcd.prefix or "/",
                "timeout": self.etcd.timeout,
            }
            for key, value in (
                ("caFile", self.etcd.ca_file),
                ("certFile", self.etcd.cert_file),
                ("keyFile", self.etcd.key_file),
            ):
                if value:
                    etcd[key] = value
            ipam.update(etcd=etcd, nodeName=self.node)
        bridge = {
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": True,
            "ipMasq": False,
            "hairpinMode": True,
            "mtu": self.mtu,
            "ipam": ipam,
        }
        return {
            "cniVersion": self.cni_version,
            "name": self.name,
            "plugins": [bridge, {"type": "portmap", "capabilities": {"portMappings": True}}],
        }


def write(path: str, conf: NodeConf) -> bool:
    """Write the conflist atomically (a runtime never reads half of it); False when it already
    said the same."""
    text = json.dumps(conf.to_json(), indent=2) + "\n"
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == text:
                return False
    except OSError:
        pass
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True
