"""``cni_plugins.kernel.sysctl`` against real namespaces: through the private procfs instance, and
through /proc/sys where the kernel refuses one; each value read back with sysctl(8)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from cni_plugins.kernel import netns, sysctl
from cni_plugins.spec.errors import InternalError
from tests.integration.nsutil import path, sh


@pytest.fixture(params=["private", "proc"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    sysctl.release()
    if request.param == "proc":
        monkeypatch.setattr(sysctl._Instance, "unavailable", True)
    yield str(request.param)
    sysctl.release()


def test_per_namespace_values_read_and_written(way: str, host_ns: str, container_ns: str) -> None:
    sh("ip", "link", "add", "cnits0", "type", "veth", "peer", "name", "cnits1", ns=host_ns)
    host_lo_dad = sh("sysctl", "-n", "net.ipv6.conf.lo.accept_dad", ns=host_ns).stdout.strip()
    with netns.entered(path(host_ns)):
        sysctl.write(sysctl.iface_key(6, "cnits0", "disable_ipv6"), "1")
        sysctl.write(sysctl.iface_key(4, "cnits0", "arp_notify"), "1")
        assert sysctl.read(sysctl.iface_key(6, "cnits0", "disable_ipv6")) == "1"
    with netns.entered(path(container_ns)):  # same instance, another namespace: its own values
        assert sysctl.read(sysctl.iface_key(4, "lo", "arp_notify")) == "0"
        sysctl.write("net.ipv6.conf.lo.accept_dad", "0")
    assert (sysctl._Instance.fd is not None) == (way == "private")
    assert sh(
        "sysctl", "-n", "net.ipv6.conf.cnits0.disable_ipv6", "net.ipv4.conf.cnits0.arp_notify", ns=host_ns
    ).stdout.split() == ["1", "1"]
    assert sh("sysctl", "-n", "net.ipv6.conf.lo.accept_dad", ns=container_ns).stdout.strip() == "0"
    assert (
        host_lo_dad != "0"
        and sh("sysctl", "-n", "net.ipv6.conf.lo.accept_dad", ns=host_ns).stdout.strip() == host_lo_dad
    )


def test_errors_name_the_key(way: str, host_ns: str) -> None:
    with netns.entered(path(host_ns)):
        with pytest.raises(InternalError) as missing:
            sysctl.write(sysctl.iface_key(6, "nosuchlink", "accept_ra"), "0")
        assert missing.value.msg == "set sysctl net/ipv6/conf/nosuchlink/accept_ra=0: No such file or directory"
        with pytest.raises(InternalError) as unreadable:
            sysctl.read("net/ipv4/nosuchkey")
        assert unreadable.value.msg == "read sysctl net/ipv4/nosuchkey: No such file or directory"
        with pytest.raises(InternalError) as text:
            sysctl.write("net.ipv4.conf.lo.arp_notify", "é")
        assert "not an ASCII value" in text.value.msg
        with pytest.raises(InternalError):
            sysctl.read("net/../../etc/passwd")


def test_release_closes_the_instance_and_the_next_access_makes_another(host_ns: str) -> None:
    sysctl.release()
    with netns.entered(path(host_ns)):
        sysctl.read("net.ipv4.ip_forward")
        first = sysctl._Instance.fd
        assert first is not None, "this kernel should allow a private procfs (Linux 5.2+, root)"
        sysctl.release()
        with pytest.raises(OSError):
            os.fstat(first)
        sysctl.read("net.ipv4.ip_forward")
        assert sysctl._Instance.fd is not None
    sysctl.release()
