"""Which executable (CNI ``type``) is served by which module. Nothing is imported here."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# CNI type -> module exposing PLUGIN. `ptp` is the reference's name for `veth`.
PLUGINS: dict[str, str] = {
    "loopback": "cni_plugins.plugins.loopback",
    "bridge": "cni_plugins.plugins.bridge",
    "veth": "cni_plugins.plugins.ptp",
    "ptp": "cni_plugins.plugins.ptp",
    "macvlan": "cni_plugins.plugins.macvlan",
    "tuning": "cni_plugins.plugins.tuning",
    "portmap": "cni_plugins.plugins.portmap",
    "firewall": "cni_plugins.plugins.firewall",
    "bandwidth": "cni_plugins.plugins.bandwidth",
    "sbr": "cni_plugins.plugins.sbr",
    "host-device": "cni_plugins.plugins.host_device",
    "tap": "cni_plugins.plugins.tap",
    "host-local": "ipam.host_local",
    "static": "ipam.static",
    "dhcp": "ipam.dhcp",
    "cluster-ipam": "ipam.cluster_ipam",
}


def available() -> list[str]:
    """The plugin types whose module exists in this installation."""
    return sorted(t for t, mod in PLUGINS.items() if importlib.util.find_spec(mod) is not None)


def load(plugin_type: str) -> ModuleType:
    return importlib.import_module(PLUGINS[plugin_type])
