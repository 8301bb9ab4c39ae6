"""loopback: ADD brings lo up, DEL brings it down, CHECK verifies; every spec version."""

from __future__ import annotations

from pathlib import Path

import pytest

from cni_plugins.spec.version import SUPPORTED_VERSIONS
from tests.integration.conftest import Runner
from tests.integration.nsutil import Namespaces, links, path


@pytest.fixture
def plugin(launcher_bin: Path, host_ns: str) -> Runner:
    """The plugins under both launchers (native, and the Python one it stands in for)."""
    return Runner(launcher_bin, host_ns)


def lo_up(ns: str) -> bool:
    return "UP" in links(ns)["lo"]["flags"]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_check_del(plugin: Runner, namespaces: Namespaces, version: str) -> None:
    ctr = namespaces.make("lo")
    conf = {"cniVersion": version, "name": "lonet", "type": "loopback"}
    from tests.integration.nsutil import sh

    sh("ip", "link", "set", "lo", "down", ns=ctr)
    out = plugin("loopback", "ADD", conf, netns=ctr, ifname="lo").ok()
    assert lo_up(ctr)
    assert out["cniVersion"] == version
    if version in ("0.1.0", "0.2.0"):
        assert out["ip4"]["ip"] == "127.0.0.1/8"
    else:
        assert out["interfaces"] == [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": path(ctr)}]
        assert [ip["address"] for ip in out["ips"]] == ["127.0.0.1/8", "::1/128"]
    if version >= "0.4.0":
        plugin("loopback", "CHECK", conf, netns=ctr, ifname="lo").ok()
    plugin("loopback", "DEL", conf, netns=ctr, ifname="lo").ok()
    assert not lo_up(ctr)
    if version >= "0.4.0":
        bad = plugin("loopback", "CHECK", conf, netns=ctr, ifname="lo")
        assert bad.rc == 1 and "down" in bad.json["msg"]
    plugin("loopback", "DEL", conf, netns=ctr, ifname="lo").ok()  # DEL again: still fine


def test_prev_result_passes_through(plugin: Runner, container_ns: str) -> None:
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/x"}],
        "ips": [{"interface": 0, "address": "10.1.0.5/24"}],
        "dns": {},
    }
    conf = {"cniVersion": "1.0.0", "name": "lonet", "type": "loopback", "prevResult": prev}
    assert plugin("loopback", "ADD", conf, netns=container_ns, ifname="lo").ok() == prev
    assert lo_up(container_ns)


def test_del_succeeds_when_namespace_is_gone(plugin: Runner, namespaces: Namespaces) -> None:
    ctr = namespaces.make("gone")
    conf = {"cniVersion": "1.0.0", "name": "lonet", "type": "loopback"}
    plugin("loopback", "ADD", conf, netns=ctr, ifname="lo").ok()
    from tests.integration.nsutil import sh

    sh("ip", "netns", "del", ctr)
    plugin("loopback", "DEL", conf, netns=ctr, ifname="lo").ok()
    plugin("loopback", "DEL", conf, netns="", ifname="lo").ok()  # containerd sends no CNI_NETNS on DEL
