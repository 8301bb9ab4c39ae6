"""host-device's and tap's option parsing, and host-device's sysfs lookups on a sysfs-shaped tree.

The kernel side of both plugins is in tests/integration/test_host_device.py and test_tap.py;
here only what needs no kernel: which selector applies, how option errors read, which tap
flags the reference's two creation paths give, and where PCI and auxiliary-bus devices list
their links (no PCI bus exists on the test machine).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.kernel import hostdev, tuntap
from cni_plugins.kernel.hostdev import Selector
from cni_plugins.kernel.netlink import Link
from cni_plugins.plugins.host_device import HostDeviceConf
from cni_plugins.plugins.tap import TapConf
from cni_plugins.protocol.skel import CmdArgs
from cni_plugins.spec.errors import InvalidNetworkConfig
from conf.cni_args import CniArgs
from conf.netconf import NetConf


def cmd(plugin: str, conf: dict[str, Any], cni_args: str = "") -> CmdArgs:
    data = json.dumps({"cniVersion": "1.0.0", "name": "n", "type": plugin, **conf}).encode()
    return CmdArgs(
        command="ADD",
        container_id="c",
        netns="/x",
        ifname="eth0",
        cni_args=CniArgs.parse(cni_args),
        path=(),
        conf=NetConf.from_bytes(data),
        environ={},
    )


@pytest.mark.parametrize(
    "conf, selector",
    [
        ({"device": "eth1", "hwaddr": "02:00:00:00:00:01"}, Selector(device="eth1")),
        ({"HWAddr": "02-00-00-00-00-0A", "kernelpath": "/sys/devices/x"}, Selector(hwaddr="02:00:00:00:00:0a")),
        (
            {"kernelpath": "/sys/devices/pci0000:00/", "pciBusID": "0000:03:00.0"},
            Selector(kernelpath="/sys/devices/pci0000:00"),
        ),
        ({"pcibusid": "0000:03:00.0"}, Selector(pci="0000:03:00.0")),
        ({"pciBusID": "0000:03:00.0", "runtimeConfig": {"deviceID": "0000:04:00.0"}}, Selector(pci="0000:04:00.0")),
        ({"device": "eth1", "runtimeConfig": {"deviceID": "0000:04:00.0"}}, Selector(device="eth1")),
    ],
)
def test_the_first_selector_applies(conf: dict[str, Any], selector: Selector) -> None:
    assert HostDeviceConf.from_json(cmd("host-device", conf)).selector == selector


@pytest.mark.parametrize(
    "conf, msg",
    [
        ({}, 'specify either "device", "hwaddr", "kernelpath" or "pciBusID"'),
        ({"device": "x" * 16}, "device: 'xxxxxxxxxxxxxxxx': interface name is too long"),
        ({"hwaddr": "02:00"}, "hwaddr: '02:00' is not a MAC address"),
        ({"kernelpath": "/proc/1"}, "kernelpath: '/proc/1' must be an absolute path under /sys/devices/"),
        ({"kernelpath": "/sys/devices/../class"}, "must be an absolute path under /sys/devices/"),
        ({"pciBusID": ".."}, "pciBusID: '..' is not a device id"),
        ({"runtimeConfig": {"deviceID": "a/b"}}, "deviceID: 'a/b' is not a device id"),
        ({"device": ["eth1"]}, "device: expected a string"),
    ],
)
def test_host_device_option_errors(conf: dict[str, Any], msg: str) -> None:
    with pytest.raises(InvalidNetworkConfig) as err:
        HostDeviceConf.from_json(cmd("host-device", conf))
    assert msg in err.value.msg


def make_pci(sysfs: Path, pci: str, netdev: str, *, virtio: bool = False, driver: str = "") -> None:
    base = sysfs / "bus" / "pci" / "devices" / pci
    (base / "virtio3" / "net" / netdev if virtio else base / "net" / netdev).mkdir(parents=True)
    if driver:
        (sysfs / "bus" / "pci" / "drivers" / driver).mkdir(parents=True, exist_ok=True)
        os.symlink(sysfs / "bus" / "pci" / "drivers" / driver, base / "driver")


def test_sysfs_names_for_pci_virtio_and_aux(tmp_path: Path) -> None:
    make_pci(tmp_path, "0000:03:00.0", "ens3", driver="ixgbe")
    make_pci(tmp_path, "0000:00:04.0", "eth5", virtio=True)
    (tmp_path / "bus" / "auxiliary" / "devices" / "mlx5_core.sf.4" / "net" / "enp3s0f0s4").mkdir(parents=True)
    assert hostdev.sysfs_names(Selector(pci="0000:03:00.0"), str(tmp_path)) == ["ens3"]
    assert hostdev.sysfs_names(Selector(pci="0000:00:04.0"), str(tmp_path)) == ["eth5"]
    assert hostdev.sysfs_names(Selector(aux="mlx5_core.sf.4"), str(tmp_path)) == ["enp3s0f0s4"]
    assert hostdev.sysfs_names(Selector(pci="0000:09:00.0"), str(tmp_path)) == []
    assert hostdev.dpdk_driver("0000:03:00.0", str(tmp_path)) == ""


@pytest.mark.parametrize("driver", hostdev.DPDK_DRIVERS)
def test_a_userspace_driver_means_dpdk(tmp_path: Path, driver: str) -> None:
    make_pci(tmp_path, "0000:05:00.1", "x", driver=driver)
    assert hostdev.dpdk_driver("0000:05:00.1", str(tmp_path)) == driver


def link(name: str, alias: str) -> Link:
    return Link(
        index=7,
        name=name,
        kind="",
        mac="02:00:00:00:00:01",
        mtu=1500,
        flags=0,
        operstate="DOWN",
        master=None,
        link=None,
        txqlen=1000,
        info={},
        alias=alias,
    )


@pytest.mark.parametrize(
    "name, alias, returned",
    [
        ("net1", "hostdev0", True),  # its container name was free in the host
        ("dev7", "hostdev0", True),  # it was taken
        ("eth3", "hostdev0", False),  # some other name: not the kernel's doing
        ("net1", "", False),
        ("hostdev0", "hostdev0", False),  # given back by the reference, which keeps the alias
        ("dev7", "uplink to rack 3", False),  # an alias an administrator wrote
    ],
)
def test_returned_links_are_told_apart(name: str, alias: str, returned: bool) -> None:
    assert hostdev.returned(link(name, alias), "net1") is returned


@pytest.mark.parametrize(
    "conf, vnet_hdr, no_pi, multi_queue",
    [
        ({"owner": 0, "group": 0}, True, False, False),  # the reference's netlink path: pi on
        ({"owner": 0, "group": 0, "multiQueue": True}, True, True, True),
        ({"owner": 1000}, False, True, False),  # its `ip tuntap` path
        ({"multiQueue": True}, False, True, True),
        ({}, False, True, False),
    ],
)
def test_tap_flags_follow_the_reference(conf: dict[str, Any], vnet_hdr: bool, no_pi: bool, multi_queue: bool) -> None:
    flags = TapConf.from_json(cmd("tap", conf)).flags
    assert bool(flags & tuntap.IFF_VNET_HDR) is vnet_hdr
    assert bool(flags & tuntap.IFF_NO_PI) is no_pi
    assert bool(flags & tuntap.IFF_MULTI_QUEUE) is multi_queue


def test_tap_options_and_mac_precedence() -> None:
    conf = {"mac": "02:00:00:00:00:01", "mtu": 9000, "selinuxcontext": "system_u:object_r:x", "bridge": "br0"}
    tap = TapConf.from_json(cmd("tap", conf))
    assert (tap.mac, tap.mtu, tap.selinux_context, tap.bridge) == (
        "02:00:00:00:00:01",
        9000,
        "system_u:object_r:x",
        "br0",
    )
    assert TapConf.from_json(cmd("tap", conf, "MAC=02:00:00:00:00:02")).mac == "02:00:00:00:00:02"
    with_rc = {**conf, "runtimeConfig": {"mac": "02:00:00:00:00:03"}}
    assert TapConf.from_json(cmd("tap", with_rc, "MAC=02:00:00:00:00:02")).mac == "02:00:00:00:00:03"


@pytest.mark.parametrize(
    "conf, msg",
    [
        ({"mac": "zz"}, "mac: 'zz' is not a MAC address"),
        ({"mtu": 10}, "mtu: 10 is out of range, must be 0 (the kernel's default) or between 68 and 65535"),
        ({"mtu": 70000}, "mtu: 70000 is out of range"),
        ({"owner": -1}, "owner: -1 is out of range"),
        ({"group": 4294967295}, "group: 4294967295 is out of range"),
        ({"owner": "root"}, "owner: expected an integer"),
        ({"multiQueue": "maybe"}, "multiQueue: expected true or false"),
        ({"bridge": "a b"}, "bridge: 'a b': interface name contains"),
        ({"runtimeConfig": {"mac": "1:2"}}, "runtimeConfig.mac: '1:2' is not a MAC address"),
    ],
)
def test_tap_option_errors(conf: dict[str, Any], msg: str) -> None:
    with pytest.raises(InvalidNetworkConfig) as err:
        TapConf.from_json(cmd("tap", conf))
    assert msg in err.value.msg
