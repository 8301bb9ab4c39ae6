"""The shared link/address helpers against real namespaces (in-process, no plugin)."""

from __future__ import annotations

import ipaddress
import os

import pytest

from cni_plugins.kernel import netns
from cni_plugins.kernel.addr import configure_iface
from cni_plugins.kernel.link import attach_to_bridge, ensure_bridge, setup_veth
from cni_plugins.kernel.netlink import LinkExists, Netlink
from cni_plugins.spec.errors import InvalidNetworkConfig
from cni_plugins.spec.types import Interface, IPConfig, Result, Route
from tests.integration.nsutil import addrs, links, path, ping, sh


def test_veth_into_bridge_with_addresses(host_ns: str, container_ns: str) -> None:
    host_fd = netns.open_netns(path(host_ns))
    try:
        with Netlink.open(path(host_ns)) as host, Netlink.open(path(container_ns)) as ctr:
            with netns.entered(path(host_ns)):
                br = ensure_bridge(host, "cnitestbr0", mtu=1400)
            assert br.kind == "bridge" and br.mtu == 1400
            pair = setup_veth(ctr, host, host_fd, "eth0", mtu=1400)
            assert pair.container.name == "eth0" and pair.host.name.startswith("veth") and pair.host.mtu == 1400
            attach_to_bridge(host, pair.host, br)
            host.add_address(br.index, ipaddress.ip_interface("10.77.0.1/24"))
            result = Result(
                interfaces=(
                    Interface(name="cnitestbr0"),
                    Interface(name=pair.host.name),
                    Interface(name="eth0", sandbox=path(container_ns)),
                ),
                ips=(
                    IPConfig(
                        address=ipaddress.ip_interface("10.77.0.2/24"),
                        gateway=ipaddress.ip_address("10.77.0.1"),
                        interface=2,
                    ),
                ),
                routes=(Route(dst=ipaddress.ip_network("0.0.0.0/0")),),
            )
            configure_iface(ctr, path(container_ns), "eth0", result)
            with pytest.raises(LinkExists):
                setup_veth(ctr, host, host_fd, "eth0")
    finally:
        os.close(host_fd)
    assert "eth0" in links(container_ns) and "10.77.0.2/24" in addrs(container_ns, "eth0")
    assert links(host_ns)[pair.host.name]["master"] == "cnitestbr0"
    routes = sh("ip", "route", "show", "default", ns=container_ns).stdout
    assert "via 10.77.0.1 dev eth0" in routes
    assert ping(container_ns, "10.77.0.1")


def test_existing_non_bridge_refused(host_ns: str) -> None:
    sh("ip", "link", "add", "notabridge", "type", "veth", "peer", "name", "nab1", ns=host_ns)
    with Netlink.open(path(host_ns)) as host, netns.entered(path(host_ns)):
        with pytest.raises(InvalidNetworkConfig) as exc:
            ensure_bridge(host, "notabridge")
    assert "not a bridge" in exc.value.msg
