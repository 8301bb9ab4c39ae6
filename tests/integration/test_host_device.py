"""host-device: a host link lent to a container and given back, against real namespaces.

The host is ``host_ns``; the lent device is one end of a veth pair made there (``hostdev0``,
MAC 02:11:22:33:44:55), its peer in a third namespace with 10.77.0.1/24, so the test can
ping through the device once it is in the container.

What this machine cannot show: the kernel giving a lent link back. A namespace that dies
destroys its virtual links (veth, tap, macvlan, ifb...) and pushes only the others (a NIC
without rtnetlink ops, a CAN device) to the *initial* namespace, named as in the container
or ``dev<ifindex>`` when that name is taken there, alias kept. This kernel has no such
device a test could make (no netdevsim, no CAN; only the VM's own NIC), and the device
would land in the machine's own namespace, which tests never touch. So
``test_del_gives_back_what_the_kernel_returned`` makes that end state itself, with the
same move the kernel makes (into the host namespace, the container name or ``dev<N>``),
deletes the container's namespace, and checks that DEL finds the link and renames it back.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.spec.version import SUPPORTED_VERSIONS
from tests.integration.conftest import Runner
from tests.integration.nsutil import Namespaces, addrs, links, path, ping, run_plugin, sh

REFERENCE = Path("/usr/lib/cni")
MAC = "02:11:22:33:44:55"
SUBNET = "10.77.0.0/24"
PEER_IP = "10.77.0.1"


@pytest.fixture
def peer(host_ns: str, namespaces: Namespaces) -> str:
    """The lent device's other end: a namespace with ``peer0`` (10.77.0.1/24), up."""
    ns = namespaces.make("peer")
    make_device(host_ns, ns)
    return ns


def make_device(host: str, peer: str, name: str = "hostdev0", mac: str = MAC) -> None:
    sh("ip", "link", "add", name, "address", mac, "type", "veth", "peer", "name", "peer0", "netns", peer, ns=host)
    sh("ip", "link", "set", name, "up", ns=host)
    sh("ip", "addr", "add", f"{PEER_IP}/24", "dev", "peer0", ns=peer)
    sh("ip", "link", "set", "peer0", "up", ns=peer)


def conf(tmp_path: Path, version: str = "1.0.0", *, ipam: bool = True, **opts: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": version, "name": "hdnet", "type": "host-device", "device": "hostdev0"}
    if ipam:
        out["ipam"] = {
            "type": "host-local",
            "dataDir": str(tmp_path / "ipam"),
            "ranges": [[{"subnet": SUBNET, "rangeStart": "10.77.0.5"}]],
            "routes": [{"dst": "10.78.0.0/16"}],
        }
    out.update(opts)
    return {k: v for k, v in out.items() if v is not None}


def reserved(tmp_path: Path) -> set[str]:
    d = tmp_path / "ipam" / "hdnet"
    out = set()
    for name in os.listdir(d) if d.is_dir() else []:
        try:
            ipaddress.ip_address(name)
        except ValueError:
            continue
        out.add(name)
    return out


def state(ns: str) -> dict[str, tuple[str, str, bool]]:
    """name -> (MAC, alias, up) of every link of ``ns``."""
    return {name: (link["address"], link.get("ifalias", ""), "UP" in link["flags"]) for name, link in links(ns).items()}


def assert_given_back(host: str, ctr: str | None, *, up: bool = False) -> None:
    assert state(host)["hostdev0"] == (MAC, "", up)
    if ctr is not None:
        assert set(links(ctr)) == {"lo"}


def with_prev(c: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    return {**c, "prevResult": result}


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_check_del_every_version(
    plugin: Runner, host_ns: str, container_ns: str, peer: str, tmp_path: Path, version: str
) -> None:
    c = conf(tmp_path, version, dns={"nameservers": ["10.77.0.1"]})
    out = plugin("host-device", "ADD", c, netns=container_ns, ifname="net1").ok()
    assert "hostdev0" not in links(host_ns)
    assert state(container_ns)["net1"] == (MAC, "hostdev0", True)
    assert "10.77.0.5/24" in addrs(container_ns, "net1")
    assert "10.78.0.0/16 via 10.77.0.1 dev net1" in sh("ip", "route", ns=container_ns).stdout
    assert ping(container_ns, PEER_IP)
    assert out["cniVersion"] == version
    if version < "0.3.0":
        assert out["ip4"] == {"ip": "10.77.0.5/24", "gateway": "10.77.0.1", "routes": [{"dst": "10.78.0.0/16"}]}
    else:
        assert out["interfaces"] == [{"name": "net1", "mac": MAC, "sandbox": path(container_ns)}]
        ip = {"interface": 0, "address": "10.77.0.5/24", "gateway": "10.77.0.1"}
        assert out["ips"] == [ip if version >= "1.0.0" else {"version": "4", **ip}]
    assert out["dns"] == {"nameservers": ["10.77.0.1"]}
    if version >= "0.4.0":
        plugin("host-device", "CHECK", with_prev(c, out), netns=container_ns, ifname="net1").ok()
    plugin("host-device", "DEL", c, netns=container_ns, ifname="net1").ok()
    assert_given_back(host_ns, container_ns)
    assert reserved(tmp_path) == set()
    plugin("host-device", "DEL", c, netns=container_ns, ifname="net1").ok()  # again: nothing left to do
    assert_given_back(host_ns, container_ns)


@pytest.mark.parametrize(
    "selector",
    [{"device": "hostdev0"}, {"hwaddr": "02-11-22-33-44-55"}, {"kernelpath": "/sys/devices/virtual"}],
    ids=["device", "hwaddr", "kernelpath"],
)
def test_selectors_without_ipam(
    plugin: Runner, host_ns: str, container_ns: str, peer: str, tmp_path: Path, selector: dict[str, str]
) -> None:
    """``kernelpath``: sysfs as the plugin sees it (here, host_ns's, as ``ip netns exec``
    mounts it) lists the host's virtual links under /sys/devices/virtual/net: lo, which
    cannot move and is skipped, and hostdev0 (its peer is in another namespace)."""
    c = {**conf(tmp_path, ipam=False, device=None), **selector}
    out = plugin("host-device", "ADD", c, netns=container_ns).ok()
    assert out == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": MAC, "sandbox": path(container_ns)}],
        "dns": {},
    }
    assert state(container_ns)["eth0"] == (MAC, "hostdev0", True)
    plugin("host-device", "CHECK", with_prev(c, out), netns=container_ns).ok()
    plugin("host-device", "DEL", with_prev(c, out), netns=container_ns).ok()
    assert_given_back(host_ns, container_ns)


BAD: list[tuple[str, dict[str, Any], int, str]] = [
    ("no selector", {"device": None}, 7, 'specify either "device", "hwaddr", "kernelpath" or "pciBusID"'),
    ("missing device", {"device": "nosuch0"}, 7, "device: no link named 'nosuch0'"),
    ("loopback", {"device": "lo"}, 7, "lo is a loopback interface"),
    ("bad device name", {"device": "a/b"}, 7, "device: 'a/b': interface name contains"),
    ("device not a string", {"device": 5}, 7, "device: expected a string"),
    ("bad hwaddr", {"device": None, "hwaddr": "zz"}, 7, "hwaddr: 'zz' is not a MAC address"),
    ("unknown hwaddr", {"device": None, "hwaddr": "02:00:00:00:00:09"}, 7, "hwaddr: no link with MAC"),
    ("relative kernelpath", {"device": None, "kernelpath": "devices/x"}, 7, "must be an absolute path under /sys/dev"),
    ("kernelpath escapes", {"device": None, "kernelpath": "/sys/devices/../../etc"}, 7, "under /sys/devices/"),
    ("kernelpath no net", {"device": None, "kernelpath": "/sys/devices/system"}, 7, "kernelpath: no network device"),
    ("unknown pciBusID", {"device": None, "pciBusID": "0000:99:00.0"}, 7, "pciBusID: no PCI device '0000:99:00.0'"),
    ("pciBusID path", {"device": None, "pciBusID": "../../etc"}, 7, "pciBusID: '../../etc' is not a device id"),
    (
        "unknown deviceID",
        {"device": None, "runtimeConfig": {"deviceID": "0000:98:00.0"}},
        7,
        "runtimeConfig.deviceID: no PCI device '0000:98:00.0'",
    ),
    ("pre-0.3.0 without IPAM", {"cniVersion": "0.2.0", "ipam": None}, 1, "results must carry an IP address"),
    ("bridge", {"device": "hdbr0"}, 7, "hdbr0 cannot leave its namespace"),
]


@pytest.mark.parametrize("case, changes, code, msg", BAD, ids=[b[0] for b in BAD])
def test_bad_input_changes_nothing(
    plugin: Runner,
    host_ns: str,
    container_ns: str,
    peer: str,
    tmp_path: Path,
    case: str,
    changes: dict[str, Any],
    code: int,
    msg: str,
) -> None:
    sh("ip", "link", "add", "hdbr0", "type", "bridge", ns=host_ns)
    before = state(host_ns), state(container_ns)
    c = {**conf(tmp_path), **changes}
    bad = plugin("host-device", "ADD", {k: v for k, v in c.items() if v is not None}, netns=container_ns)
    assert bad.rc == 1 and bad.json["code"] == code and msg in bad.json["msg"], bad.stdout
    assert "Traceback" not in bad.stderr
    assert (state(host_ns), state(container_ns)) == before and reserved(tmp_path) == set()


def machine_nic() -> tuple[str, str] | None:
    """(PCI address, link name) of a PCI network device of this machine (a virtio NIC lists its
    link under ``virtio<N>/net``), or None."""
    root = Path("/sys/bus/pci/devices")
    for dev in sorted(root.iterdir()) if root.is_dir() else []:
        for net in (dev / "net", *sorted(dev.glob("virtio*/net"))):
            names = sorted(os.listdir(net)) if net.is_dir() else []
            if names:
                return dev.name, names[0]
    return None


@pytest.mark.skipif(machine_nic() is None, reason="this machine has no PCI network device")
@pytest.mark.parametrize("key", ["pciBusID", "deviceID"])
def test_pci_selector_on_this_machines_nic(
    plugin: Runner, host_ns: str, container_ns: str, peer: str, tmp_path: Path, key: str
) -> None:
    """``pciBusID`` and the ``deviceID`` capability resolved through the real sysfs: the
    machine's own NIC is a PCI device (virtio here: its link under ``virtio<N>/net``) bound
    to a kernel driver, so it is not taken for a DPDK device; the plugin runs in host_ns,
    whose sysfs lists no link of it (the NIC is the machine's, which tests never move), so
    ADD refuses with that reason, and nothing changes. The move of a link found in sysfs is
    shown by ``kernelpath`` above; PCI and virtio layouts by the unit tests."""
    nic = machine_nic()
    assert nic is not None
    pci, name = nic
    changes: dict[str, Any] = {"pciBusID": pci} if key == "pciBusID" else {"runtimeConfig": {"deviceID": pci}}
    if key == "deviceID":
        changes["pciBusID"] = "0000:99:00.0"  # the capability wins over the config
    before = state(host_ns), state(container_ns)
    bad = plugin("host-device", "ADD", {**conf(tmp_path, device=None), **changes}, netns=container_ns)
    which = "pciBusID" if key == "pciBusID" else "runtimeConfig.deviceID"
    assert bad.rc == 1 and bad.json["code"] == 7, bad.stdout
    assert f"{which} {pci!r}: the device has no network interface in" in bad.json["msg"], bad.json
    assert "Traceback" not in bad.stderr and "DPDK" not in bad.stderr
    assert (state(host_ns), state(container_ns)) == before and reserved(tmp_path) == set()
    assert name in {p.name for p in Path("/sys/class/net").iterdir()}  # still the machine's


def test_existing_container_name_is_refused_and_kept(
    plugin: Runner, host_ns: str, container_ns: str, peer: str, tmp_path: Path
) -> None:
    sh("ip", "link", "add", "net1", "type", "bridge", ns=container_ns)
    before = state(host_ns), state(container_ns)
    bad = plugin("host-device", "ADD", conf(tmp_path), netns=container_ns, ifname="net1")
    assert bad.rc == 1 and "'net1' already exists" in bad.json["msg"]
    assert (state(host_ns), state(container_ns)) == before and reserved(tmp_path) == set()


def test_failed_add_gives_the_device_back_as_it_was(
    plugin: Runner, host_ns: str, container_ns: str, peer: str, tmp_path: Path
) -> None:
    """The last step (a route via an off-link gateway) fails: the reservation is released and
    the device is back in the host, named, unaliased and up as before."""
    c = conf(tmp_path)
    c["ipam"]["routes"] = [{"dst": "10.251.0.0/16", "gw": "192.0.2.1"}]
    before = state(host_ns)
    bad = plugin("host-device", "ADD", c, netns=container_ns)
    assert bad.rc == 1 and "configure eth0" in bad.json["msg"] and "10.251.0.0/16" in bad.json["msg"]
    assert state(host_ns) == before and set(links(container_ns)) == {"lo"} and reserved(tmp_path) == set()


def test_del_with_unreadable_options_and_without_netns(
    plugin: Runner, host_ns: str, namespaces: Namespaces, peer: str, tmp_path: Path
) -> None:
    """DEL never gets stuck on its input: the link is found by CNI_IFNAME and its alias.
    Then the DELs a runtime sends once the container is gone (no CNI_NETNS, a path that no
    longer exists) succeed and change nothing."""
    ctr = namespaces.make("ctr")
    c = conf(tmp_path)
    out = plugin("host-device", "ADD", c, netns=ctr).ok()
    broken = {
        **c,
        "device": 5,
        "hwaddr": "zz",
        "kernelpath": 7,
        "runtimeConfig": {"deviceID": 5},
        "ipam": {**c["ipam"], "ranges": "bogus"},
        "prevResult": {"ips": "x"},
    }
    plugin("host-device", "DEL", broken, netns=ctr).ok()
    assert_given_back(host_ns, ctr)
    assert reserved(tmp_path) == set()
    plugin("host-device", "ADD", c, netns=ctr, container_id="again").ok()
    sh("ip", "netns", "del", ctr)  # the veth dies with it; a NIC would return to the initial namespace
    plugin("host-device", "DEL", with_prev(c, out), netns=path(ctr), container_id="again").ok()
    plugin("host-device", "DEL", c, netns="", container_id="again").ok()
    assert reserved(tmp_path) == set() and "hostdev0" not in links(host_ns)


def test_del_leaves_a_link_it_did_not_lend(plugin: Runner, host_ns: str, container_ns: str, tmp_path: Path) -> None:
    """After an ADD that failed because eth0 existed, the runtime's DEL must not take eth0."""
    sh("ip", "link", "add", "eth0", "type", "bridge", ns=container_ns)
    plugin("host-device", "DEL", conf(tmp_path), netns=container_ns).ok()
    assert "eth0" in links(container_ns)


@pytest.mark.parametrize("clash", [False, True], ids=["container-name", "dev-N"])
def test_del_gives_back_what_the_kernel_returned(
    plugin: Runner, host_ns: str, namespaces: Namespaces, peer: str, tmp_path: Path, clash: bool
) -> None:
    """The state a dying namespace leaves a physical lent link in, made by hand (see the module
    docstring): in the host under its container name, or ``dev<ifindex>`` when the host has
    that name, alias kept. DEL without a namespace renames it back and clears the alias; an
    ADD before that DEL finds it by its alias."""
    ctr = namespaces.make("ctr")
    c = conf(tmp_path)
    plugin("host-device", "ADD", c, netns=ctr, ifname="net1").ok()
    name = "net1"
    if clash:
        sh("ip", "link", "add", "net1", "type", "bridge", ns=host_ns)
        name = f"dev{links(ctr)['net1']['ifindex']}"
        sh("ip", "link", "set", "net1", "down", ns=ctr)
        sh("ip", "link", "set", "net1", "name", name, ns=ctr)
    sh("ip", "link", "set", name, "netns", host_ns, ns=ctr)
    sh("ip", "netns", "del", ctr)
    assert state(host_ns)[name][:2] == (MAC, "hostdev0")
    if clash:  # a new container gets it by its host name before the old one's DEL
        other = namespaces.make("other")
        plugin("host-device", "ADD", c, netns=other, container_id="other").ok()
        assert state(other)["eth0"] == (MAC, "hostdev0", True) and name not in links(host_ns)
        plugin("host-device", "DEL", c, netns=other, container_id="other").ok()
        assert_given_back(host_ns, other)
    plugin("host-device", "DEL", c, netns="", ifname="net1").ok()
    assert_given_back(host_ns, None)
    if clash:
        assert state(host_ns)["net1"][1] == ""  # the host's own net1 is left alone
    assert reserved(tmp_path) == set()


def test_del_refuses_to_clobber_a_host_link_of_that_name(
    plugin: Runner, host_ns: str, container_ns: str, peer: str, tmp_path: Path
) -> None:
    c = conf(tmp_path)
    plugin("host-device", "ADD", c, netns=container_ns).ok()
    sh("ip", "link", "add", "hostdev0", "type", "bridge", ns=host_ns)
    bad = plugin("host-device", "DEL", c, netns=container_ns)
    assert bad.rc == 1 and "the host has a link of that name now" in bad.json["msg"]
    assert state(container_ns)["eth0"] == (MAC, "hostdev0", True)  # still lent, retry-able
    sh("ip", "link", "del", "hostdev0", ns=host_ns)
    plugin("host-device", "DEL", c, netns=container_ns).ok()
    assert_given_back(host_ns, container_ns)


def test_check_detects_drift(plugin: Runner, host_ns: str, container_ns: str, peer: str, tmp_path: Path) -> None:
    c = conf(tmp_path)
    out = plugin("host-device", "ADD", c, netns=container_ns).ok()
    prev = with_prev(c, out)
    sh("ip", "addr", "del", "10.77.0.5/24", "dev", "eth0", ns=container_ns)
    gone = plugin("host-device", "CHECK", prev, netns=container_ns)
    assert gone.rc == 1 and "10.77.0.5/24" in gone.json["msg"]
    sh("ip", "link", "set", "eth0", "alias", "", ns=container_ns)
    sh("ip", "addr", "add", "10.77.0.5/24", "dev", "eth0", ns=container_ns)
    sh("ip", "route", "add", "10.78.0.0/16", "via", PEER_IP, ns=container_ns)
    lost = plugin("host-device", "CHECK", prev, netns=container_ns)
    assert lost.rc == 1 and "no alias" in lost.json["msg"]
    missing = plugin("host-device", "CHECK", c, netns=container_ns)
    assert missing.rc == 1 and "prevResult" in missing.json["msg"]


def test_status_and_gc_delegate_to_ipam(
    plugin: Runner, host_ns: str, container_ns: str, peer: str, tmp_path: Path
) -> None:
    c = conf(tmp_path, "1.1.0")
    plugin("host-device", "STATUS", c).ok()
    plugin("host-device", "ADD", c, netns=container_ns).ok()
    assert reserved(tmp_path) == {"10.77.0.5"}
    plugin("host-device", "GC", {**c, "cni.dev/valid-attachments": [{"containerID": "ctr1", "ifname": "eth0"}]}).ok()
    assert reserved(tmp_path) == {"10.77.0.5"}
    plugin("host-device", "GC", {**c, "cni.dev/valid-attachments": []}).ok()
    assert reserved(tmp_path) == set()


# ---------------------------------------------------------------- the reference's own binary

needs_reference = pytest.mark.skipif(
    not (REFERENCE / "host-device").exists(), reason="reference host-device not installed in /usr/lib/cni"
)


@needs_reference
@pytest.mark.parametrize("version, ipam", [("0.3.1", True), ("1.0.0", True), ("1.0.0", False)])
def test_result_and_link_match_the_reference(
    plugin: Runner, namespaces: Namespaces, tmp_path: Path, version: str, ipam: bool
) -> None:
    seen = {}
    for who in ("reference", "ours"):
        host, ctr, peer = namespaces.make("h"), namespaces.make("c"), namespaces.make("p")
        make_device(host, peer)
        c = conf(tmp_path / who, version, ipam=ipam, dns={"nameservers": ["10.77.0.1"]})
        bin_dir = REFERENCE if who == "reference" else plugin.cni_bin
        out = run_plugin(bin_dir, "host-device", "ADD", c, netns=path(ctr), host_ns=host, ifname="net1").ok()
        out["interfaces"][0]["sandbox"] = "SANDBOX"
        seen[who] = (out, state(ctr), addrs(ctr, "net1"), sh("ip", "route", ns=ctr).stdout, sorted(links(host)))
    assert seen["ours"] == seen["reference"]


@needs_reference
@pytest.mark.parametrize("adder", ["reference", "ours"])
def test_one_lends_the_other_gives_back(
    plugin: Runner, host_ns: str, container_ns: str, peer: str, tmp_path: Path, adder: str
) -> None:
    """Both keep the host name in the alias, so either DEL gives back what the other lent
    (Debian's 1.1.1 leaves the alias set; ours clears it)."""
    c = conf(tmp_path)
    first, second = (REFERENCE, plugin.cni_bin) if adder == "reference" else (plugin.cni_bin, REFERENCE)
    run_plugin(first, "host-device", "ADD", c, netns=path(container_ns), host_ns=host_ns).ok()
    assert state(container_ns)["eth0"] == (MAC, "hostdev0", True) and reserved(tmp_path) == {"10.77.0.5"}
    run_plugin(second, "host-device", "DEL", c, netns=path(container_ns), host_ns=host_ns).ok()
    alias_left = "hostdev0" if second == REFERENCE else ""
    assert state(host_ns)["hostdev0"] == (MAC, alias_left, False) and set(links(container_ns)) == {"lo"}
    assert reserved(tmp_path) == set()
