"""dhcp IPAM and its daemon against a real DHCP server, with macvlan containers.

The LAN: busybox ``udhcpd`` on a bridge in a namespace of its own; a namespace standing for
the host, whose ``lan0`` (a port of that bridge, with the host's own address 10.57.0.2) is
the macvlan master; our daemon runs in the host namespace on a socket of the test's own
(never the machine's /run/cni/dhcp.sock), started as the reference's is started:
``<CNI bin dir>/dhcp daemon -socketpath ...``. What the server granted and released is read
from its lease file (``dumpleases``), how often it was asked from its log.

Every daemon and server a test starts is stopped when it ends, also when it fails (the
fixtures), and every daemon must leave neither its socket nor its pidfile behind.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.spec.version import SUPPORTED_VERSIONS
from ipam import dhcp_rpc
from tests.integration.conftest import Runner
from tests.integration.nsutil import Namespaces, addrs, links, path, poll, run_plugin, sh
from tests.integration.runtimes import need

REFERENCE = Path("/usr/lib/cni")
SERVER_IP, HOST_IP = "10.57.0.1", "10.57.0.2"
UDHCPD = """\
start 10.57.0.100
end 10.57.0.150
interface br0
lease_file {dir}/udhcpd.leases
pidfile {dir}/udhcpd.pid
option subnet 255.255.255.0
option router 10.57.0.1
option lease {lease}
"""


class Lan:
    """A DHCP server and the host's link to it (see the module docstring)."""

    def __init__(self, namespaces: Namespaces, tmp_path: Path, lease: int, extra: str = "") -> None:
        need("busybox")
        self.dir = tmp_path / "lan"
        self.dir.mkdir()
        self.server_ns = namespaces.make("dhsrv")
        self.host = namespaces.make("dhhost")
        sh("ip", "link", "add", "br0", "type", "bridge", ns=self.server_ns)
        sh("ip", "addr", "add", f"{SERVER_IP}/24", "dev", "br0", ns=self.server_ns)
        sh("ip", "link", "set", "br0", "up", ns=self.server_ns)
        sh("ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lanp", "netns", self.server_ns, ns=self.host)
        sh("ip", "link", "set", "lanp", "master", "br0", "up", ns=self.server_ns)
        sh("ip", "link", "set", "lan0", "up", ns=self.host)
        sh("ip", "addr", "add", f"{HOST_IP}/24", "dev", "lan0", ns=self.host)
        (self.dir / "udhcpd.conf").write_text(UDHCPD.format(dir=self.dir, lease=lease) + extra)
        (self.dir / "udhcpd.leases").touch()
        self.log = self.dir / "udhcpd.log"
        self.server: subprocess.Popen[bytes] | None = None
        self.start_server()

    def start_server(self) -> None:
        with open(self.log, "ab") as log:
            self.server = subprocess.Popen(
                # -a: a short ARP check of each offered address, so that an offer takes 0.1 s, not 2 s
                [
                    "ip",
                    "netns",
                    "exec",
                    self.server_ns,
                    "busybox",
                    "udhcpd",
                    "-f",
                    "-a",
                    "100",
                    str(self.dir / "udhcpd.conf"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        assert poll(lambda: "started" in self.log.read_text(), timeout=5), self.log.read_text()

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            self.server.wait(timeout=10)
        self.server = None

    def leases(self) -> dict[str, tuple[str, str]]:
        """MAC -> (address, seconds left or 'expired'), as the server holds them now."""
        assert self.server is not None
        leases = self.dir / "udhcpd.leases"
        before = leases.stat().st_mtime_ns
        self.server.send_signal(signal.SIGUSR1)  # udhcpd writes its lease file
        poll(lambda: leases.stat().st_mtime_ns != before, timeout=2)
        time.sleep(0.05)
        out = sh("busybox", "dumpleases", "-d", "-f", str(leases), check=False).stdout
        rows = [line.split() for line in out.splitlines()[1:] if line.strip()]
        return {row[0]: (row[1], row[-1]) for row in rows}

    def count(self, what: str) -> int:
        """How many times the server sent ``what`` (OFFER, ACK, NAK)."""
        return len(re.findall(rf"sending {what}\b", self.log.read_text()))

    def close(self) -> None:
        self.stop_server()


@pytest.fixture
def lan_factory(namespaces: Namespaces, tmp_path: Path) -> Iterator[Callable[..., Lan]]:
    """``make(lease=60, extra="")``: a LAN whose server grants ``lease`` s, ``extra`` added to
    its configuration."""
    made: list[Lan] = []

    def make(lease: int = 60, extra: str = "") -> Lan:
        made.append(Lan(namespaces, tmp_path, lease, extra))
        return made[-1]

    yield make
    for lan in made:
        lan.close()


@pytest.fixture
def lan(lan_factory: Callable[..., Lan]) -> Lan:
    return lan_factory(60)


OURS = [sys.executable, "-m", "cni_plugins.install", "dhcp", "daemon"]


class Daemon:
    """A DHCP daemon run in ``ns``: ours (``cni-plugins dhcp daemon``) or the reference's."""

    def __init__(
        self,
        ours: bool,
        ns: str,
        sock: Path,
        *flags: str,
        socketpath: bool = True,
        log_file: Path | None = None,
        command: list[str] | None = None,
    ) -> None:
        """``socketpath=False``: no -socketpath flag (``sock`` is where the daemon listens then);
        ``command``: how ours is started (default ``cni-plugins dhcp daemon``)."""
        self.sock, self.pidfile, self.log = sock, sock.with_suffix(".pid"), log_file or sock.with_suffix(".log")
        self.ours = ours
        self.clean_exit = True  # ours, stopped by SIGTERM: exits 0, its socket and pidfile removed
        where = ["-socketpath", str(sock)] if socketpath else []
        argv = [*((command or OURS) if ours else [str(REFERENCE / "dhcp"), "daemon"]), *where, *flags]
        if self.ours:
            argv += ["-pidfile", str(self.pidfile)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=log, stderr=subprocess.STDOUT)
        if not poll(lambda: self.listening() or self.proc.poll() is not None, timeout=20) or not self.listening():
            raise AssertionError(f"the daemon did not start: {self.log.read_text()}")

    def listening(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(self.sock))
            except OSError:
                return False
        return True

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status(self) -> dict[str, Any]:
        reply = dhcp_rpc.call(str(self.sock), "DHCP.Status", dhcp_rpc.cmd_args("", "", "", "", "", b""), timeout=10)
        status: dict[str, Any] = json.loads(reply["JSON"])
        return status

    def lease(self, client_id: str) -> dict[str, Any] | None:
        return next((x for x in self.status()["leases"] if x["clientID"] == client_id), None)

    def cpu_ticks(self) -> int:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"the daemon ignored SIGTERM: {self.log.read_text()}") from None
        return self.proc.returncode


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """``start(ns, *flags, ours=True, listens=None)``: a daemon on a socket of its own (or, with
    ``listens``, one that listens there without -socketpath), stopped (SIGTERM) at the end;
    ours must then have removed its socket and pidfile."""
    started: list[Daemon] = []

    def start(
        ns: str, *flags: str, ours: bool = True, listens: Path | None = None, command: list[str] | None = None
    ) -> Daemon:
        own = tmp_path / f"dhcp{len(started)}.sock"
        log_file = own.with_suffix(".log")
        started.append(
            Daemon(ours, ns, listens or own, *flags, socketpath=listens is None, log_file=log_file, command=command)
        )
        return started[-1]

    yield start
    for daemon in started:
        rc = daemon.stop()
        if daemon.log.read_text().find("Traceback") >= 0:
            raise AssertionError(f"the daemon logged a traceback: {daemon.log.read_text()}")
        if daemon.ours and daemon.clean_exit:
            assert rc == 0 and not daemon.sock.exists() and not daemon.pidfile.exists(), daemon.log.read_text()


def conf(sock: Path, version: str = "1.0.0", **ipam: Any) -> dict[str, Any]:
    return {
        "cniVersion": version,
        "name": "dhnet",
        "type": "macvlan",
        "master": "lan0",
        "ipam": {"type": "dhcp", "daemonSocketPath": str(sock), **ipam},
    }


def with_prev(c: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    return {**c, "prevResult": result}


def host_plugin(cni_bin: Path, lan: Lan) -> Runner:
    return Runner(cni_bin, lan.host)


def mac_of(ns: str, ifname: str = "eth0") -> str:
    return str(links(ns)[ifname]["address"])


# ---------------------------------------------------------------- the lease's life


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_check_del_every_version(
    cni_bin: Path, lan: Lan, daemon_factory: Callable[..., Daemon], namespaces: Namespaces, version: str
) -> None:
    daemon = daemon_factory(lan.host)
    plugin, ctr = host_plugin(cni_bin, lan), namespaces.make("dhctr")
    c = conf(daemon.sock, version, provide=[{"option": "host-name", "fromArg": "K8S_POD_NAME"}])
    out = plugin("macvlan", "ADD", c, netns=ctr, cni_args="IgnoreUnknown=1;K8S_POD_NAME=web-1").ok()
    mac = mac_of(ctr)
    address, left = lan.leases()[mac]
    assert int(left) > 30 and f"{address}/24" in addrs(ctr, "eth0")
    assert f"default via {SERVER_IP} dev eth0" in sh("ip", "route", ns=ctr).stdout
    assert out["cniVersion"] == version
    if version < "0.3.0":
        routes = [{"dst": "0.0.0.0/0", "gw": SERVER_IP}]
        assert out["ip4"] == {"ip": f"{address}/24", "gateway": SERVER_IP, "routes": routes}
    else:
        ip = {"interface": 0, "address": f"{address}/24", "gateway": SERVER_IP}
        assert out["ips"] == [ip if version >= "1.0.0" else {"version": "4", **ip}]
        assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": SERVER_IP}] and out["dns"] == {}
    held = daemon.lease("ctr1/dhnet/eth0")
    assert held is not None and held["state"] == "bound" and held["address"] == f"{address}/24"
    assert "web-1" in (lan.dir / "udhcpd.leases").read_bytes().decode("latin-1")  # host-name from CNI_ARGS
    if version >= "0.4.0":
        plugin("macvlan", "CHECK", with_prev(c, out), netns=ctr).ok()
    plugin("macvlan", "DEL", with_prev(c, out) if version >= "0.4.0" else c, netns=ctr).ok()
    assert lan.leases()[mac] == (address, "expired")  # released: DHCPRELEASE on the link, before it went
    assert "eth0" not in links(ctr) and daemon.status()["leases"] == []
    plugin("macvlan", "DEL", c, netns=ctr).ok()
    assert lan.count("OFFER") == 1  # CHECK took no new lease


def test_renews_before_expiry(
    cni_bin: Path, lan_factory: Callable[..., Lan], daemon_factory: Callable[..., Daemon], namespaces: Namespaces
) -> None:
    lan = lan_factory(4)  # T1 2 s, T2 3.5 s
    daemon = daemon_factory(lan.host)
    ctr = namespaces.make("dhctr")
    host_plugin(cni_bin, lan)("macvlan", "ADD", conf(daemon.sock), netns=ctr).ok()
    mac = mac_of(ctr)
    address, _ = lan.leases()[mac]
    time.sleep(6)  # one and a half leases: held only if renewed
    seen: list[dict[str, Any] | None] = []

    def bound() -> bool:  # a renewal falls due every 2 s: wait out one in flight
        seen.append(daemon.lease("ctr1/dhnet/eth0"))
        return (seen[-1] or {}).get("state") == "bound"

    poll(bound, timeout=3)
    lease = seen[-1]
    assert lease is not None and lease["state"] == "bound" and lease["renewals"] >= 2, seen
    assert lan.leases()[mac][0] == address and lan.leases()[mac][1] != "expired"
    assert lan.count("OFFER") == 1 and lan.count("ACK") >= 3  # renewals are REQUESTs, not new leases
    assert f"{address}/24" in addrs(ctr, "eth0")


def test_server_gone_during_a_lease(
    cni_bin: Path, lan_factory: Callable[..., Lan], daemon_factory: Callable[..., Daemon], namespaces: Namespaces
) -> None:
    """Renewals go unanswered: the daemon asks again spaced out (never in a loop), and at the
    lease's end sets the link down, as the reference does; DEL then still succeeds."""
    lan = lan_factory(4)
    daemon = daemon_factory(lan.host, "-timeout", "1s")
    ctr = namespaces.make("dhctr")
    plugin = host_plugin(cni_bin, lan)
    out = plugin("macvlan", "ADD", conf(daemon.sock), netns=ctr).ok()
    lan.stop_server()
    ticks = daemon.cpu_ticks()
    assert poll(lambda: (daemon.lease("ctr1/dhnet/eth0") or {}).get("state") == "expired", timeout=8)
    assert "UP" not in links(ctr)["eth0"]["flags"]
    lease = daemon.lease("ctr1/dhnet/eth0")
    assert lease is not None and 2 <= lease["exchanges"] <= 6, lease  # acquisition + a few spaced attempts
    assert daemon.cpu_ticks() - ticks < 50  # < 0.5 s of CPU over the lease's end: no spinning
    plugin("macvlan", "DEL", with_prev(conf(daemon.sock), out), netns=ctr).ok()
    assert daemon.status()["leases"] == []


def test_repeated_add_and_check_keep_one_lease(
    cni_bin: Path, lan: Lan, daemon_factory: Callable[..., Daemon], namespaces: Namespaces
) -> None:
    daemon = daemon_factory(lan.host)
    ctr = namespaces.make("dhctr")
    plugin = host_plugin(cni_bin, lan)
    c = conf(daemon.sock)
    out = plugin("macvlan", "ADD", c, netns=ctr).ok()
    fds = daemon.fds()
    again = plugin("dhcp", "ADD", c, netns=ctr).ok()  # IPAM ADD once more on the same link
    assert again["ips"][0]["address"] == out["ips"][0]["address"]
    for _ in range(3):
        plugin("macvlan", "CHECK", with_prev(c, out), netns=ctr).ok()
    plugin("dhcp", "CHECK", with_prev(c, out), netns=ctr).ok()
    lease = daemon.lease("ctr1/dhnet/eth0")
    assert lease is not None and lease["exchanges"] == 1 and lan.count("OFFER") == 1
    # CHECK compares the lease with prevResult.
    wrong = {**out, "ips": [{"interface": 0, "address": "10.57.0.99/24", "gateway": SERVER_IP}]}
    res = plugin("dhcp", "CHECK", with_prev(c, wrong), netns=ctr)
    assert res.rc == 1 and "not an address of prevResult" in res.json["msg"], res.stdout
    # A new container with the same ID (its namespace made again) gets a lease on its new link.
    plugin("macvlan", "DEL", with_prev(c, out), netns=ctr).ok()
    for _ in range(4):
        plugin("macvlan", "ADD", c, netns=ctr).ok()
        plugin("macvlan", "DEL", c, netns=ctr).ok()
    assert daemon.fds() == fds and daemon.status()["leases"] == []  # nothing leaks per lease


def test_release_after_the_link_is_gone(
    cni_bin: Path, lan: Lan, daemon_factory: Callable[..., Daemon], namespaces: Namespaces
) -> None:
    """The reference's bridge deletes the container's link before its IPAM DEL: the release
    then goes from the host to the server (the v1.1.1 daemon sent none). Meanwhile the lease's
    thread ends when it finds the link gone, without spinning."""
    daemon = daemon_factory(lan.host)
    ctr = namespaces.make("dhctr")
    plugin = host_plugin(cni_bin, lan)
    c = conf(daemon.sock)
    plugin("macvlan", "ADD", c, netns=ctr, container_id="gone").ok()
    mac = mac_of(ctr)
    sh("ip", "link", "del", "eth0", ns=ctr)
    res = plugin("dhcp", "DEL", c, netns=ctr, container_id="gone")
    assert res.rc == 0, res.stdout
    assert lan.leases()[mac][1] == "expired"
    assert "from the host (eth0 is gone)" in daemon.log.read_text()
    # DEL of a container whose namespace is gone too (empty CNI_NETNS), and again.
    plugin("macvlan", "ADD", c, netns=ctr, container_id="nsgone").ok()
    mac = mac_of(ctr)
    sh("ip", "link", "del", "eth0", ns=ctr)
    plugin("dhcp", "DEL", c, netns="", container_id="nsgone").ok()
    plugin("dhcp", "DEL", c, netns="", container_id="nsgone").ok()
    assert lan.leases()[mac][1] == "expired" and daemon.status()["leases"] == []


def test_link_gone_ends_the_lease_thread(
    cni_bin: Path, lan_factory: Callable[..., Lan], daemon_factory: Callable[..., Daemon], namespaces: Namespaces
) -> None:
    lan = lan_factory(4)
    daemon = daemon_factory(lan.host)
    ctr = namespaces.make("dhctr")
    host_plugin(cni_bin, lan)("macvlan", "ADD", conf(daemon.sock), netns=ctr).ok()
    sh("ip", "link", "del", "eth0", ns=ctr)
    ticks = daemon.cpu_ticks()
    assert poll(lambda: (daemon.lease("ctr1/dhnet/eth0") or {}).get("state") == "gone", timeout=6)
    time.sleep(2)  # past the lease's renewal and rebinding times
    assert daemon.cpu_ticks() - ticks < 50 and lan.count("ACK") == 1
    assert daemon.log.read_text().count("is gone: lease maintenance ends") == 1


def test_no_server_a_clear_error_in_bounded_time(
    cni_bin: Path, lan: Lan, daemon_factory: Callable[..., Daemon], namespaces: Namespaces
) -> None:
    lan.stop_server()
    daemon = daemon_factory(lan.host, "-timeout", "1s", "-resendtimeout", "3s")
    ctr = namespaces.make("dhctr")
    start = time.monotonic()
    res = host_plugin(cni_bin, lan)("macvlan", "ADD", conf(daemon.sock), netns=ctr)
    elapsed = time.monotonic() - start
    assert res.rc == 1 and res.json["code"] == 11, res.stdout
    assert "no DHCP lease for eth0" in res.json["msg"] and "DHCPOFFER" in res.json["msg"]
    assert "check that a DHCP server answers" in res.json["msg"]
    assert 0.9 < elapsed < 8, elapsed  # one 1 s exchange at least; gives up before a retry ends past 3 s
    assert "eth0" not in links(ctr) and daemon.status()["leases"] == []  # the ADD was undone


def test_failed_add_after_the_lease_releases_it(
    cni_bin: Path, lan_factory: Callable[..., Lan], daemon_factory: Callable[..., Daemon], namespaces: Namespaces
) -> None:
    """The server grants a lease whose classless static route goes via a gateway the
    container cannot reach: macvlan fails configuring it, after the lease was taken. The ADD
    is undone: the lease is released at the server, the daemon holds none, the link is gone."""
    lan = lan_factory(60, "option staticroutes 10.250.0.0/16 10.127.0.1\n")
    daemon = daemon_factory(lan.host)
    ctr = namespaces.make("dhctr")
    res = host_plugin(cni_bin, lan)("macvlan", "ADD", conf(daemon.sock, request=[{"option": "121"}]), netns=ctr)
    assert res.rc == 1 and "10.250.0.0/16" in res.json["msg"], res.stdout
    assert "Traceback" not in res.stderr
    assert lan.count("ACK") == 1  # the lease was granted before the failure
    leases = lan.leases()
    assert len(leases) == 1 and all(left == "expired" for _, left in leases.values()), leases
    assert "eth0" not in links(ctr) and daemon.status()["leases"] == []


def test_gc_releases_what_is_not_valid(
    cni_bin: Path, lan: Lan, daemon_factory: Callable[..., Daemon], namespaces: Namespaces
) -> None:
    daemon = daemon_factory(lan.host)
    plugin = host_plugin(cni_bin, lan)
    a, b = namespaces.make("dha"), namespaces.make("dhb")
    c = conf(daemon.sock, "1.1.0")
    plugin("macvlan", "ADD", c, netns=a, container_id="a").ok()
    plugin("macvlan", "ADD", c, netns=b, container_id="b").ok()
    mac_a, mac_b = mac_of(a), mac_of(b)
    other = {**conf(daemon.sock, "1.1.0"), "name": "othernet"}
    gc = {**c, "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}
    plugin("macvlan", "GC", gc, netns="", container_id="").ok()
    assert [x["clientID"] for x in daemon.status()["leases"]] == ["a/dhnet/eth0"]
    leases = lan.leases()
    assert leases[mac_b][1] == "expired" and leases[mac_a][1] != "expired"
    plugin("dhcp", "GC", {**other, "cni.dev/valid-attachments": []}, netns="", container_id="").ok()
    assert len(daemon.status()["leases"]) == 1  # another network's GC leaves this one's leases


def test_status(cni_bin: Path, lan: Lan, daemon_factory: Callable[..., Daemon], tmp_path: Path) -> None:
    plugin = host_plugin(cni_bin, lan)
    res = plugin("dhcp", "STATUS", conf(tmp_path / "none.sock", "1.1.0"), netns="", container_id="")
    assert res.rc == 1 and res.json["code"] == 50 and "DHCP daemon is not available" in res.json["msg"]
    daemon = daemon_factory(lan.host)
    plugin("dhcp", "STATUS", conf(daemon.sock, "1.1.0"), netns="", container_id="").ok()
    plugin("macvlan", "STATUS", conf(daemon.sock, "1.1.0"), netns="", container_id="").ok()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "ipam, cni_args, code, message",
    [
        (
            {"provide": [{"option": "bogus", "value": "x"}]},
            "",
            7,
            "ipam.provide[0].option: 'bogus' is not a DHCP option",
        ),
        ({"provide": [{"option": "12", "value": "x" * 300}]}, "", 7, "ipam.provide[0].value: 300 bytes is too long"),
        (
            {"provide": [{"option": "12", "fromArg": "N"}]},
            "IgnoreUnknown=1;N=" + "y" * 300,
            7,
            "the value of CNI_ARGS N is too long",
        ),
        ({"request": [{"option": "domain-name-servers"}]}, "", 7, "ipam.request[0].option"),
        ({"priority": "high"}, "", 7, "ipam.priority: expected an integer"),
        ({"daemonSocketPath": ["x"]}, "", 7, "ipam.daemonSocketPath: expected a string"),
    ],
)
def test_bad_input(
    cni_bin: Path,
    lan: Lan,
    daemon_factory: Callable[..., Daemon],
    namespaces: Namespaces,
    ipam: dict[str, Any],
    cni_args: str,
    code: int,
    message: str,
) -> None:
    daemon = daemon_factory(lan.host)
    ctr = namespaces.make("dhctr")
    c = conf(daemon.sock)
    c["ipam"].update(ipam)
    res = host_plugin(cni_bin, lan)("macvlan", "ADD", c, netns=ctr, cni_args=cni_args)
    assert res.rc == 1 and res.json["code"] == code and message in res.json["msg"], res.stdout
    assert "Traceback" not in res.stderr
    assert "eth0" not in links(ctr) and daemon.status()["leases"] == [] and lan.count("OFFER") == 0


def test_bad_attachments(
    cni_bin: Path, lan: Lan, daemon_factory: Callable[..., Daemon], namespaces: Namespaces, tmp_path: Path
) -> None:
    daemon = daemon_factory(lan.host)
    ctr = namespaces.make("dhctr")
    plugin = host_plugin(cni_bin, lan)
    c = conf(daemon.sock)
    no_ipam = {k: v for k, v in c.items() if k != "ipam"}
    res = plugin("dhcp", "ADD", no_ipam, netns=ctr)
    assert res.rc == 1 and res.json["code"] == 7 and "IPAM config missing 'ipam' key" in res.json["msg"]
    res = plugin("dhcp", "ADD", c, netns=ctr, ifname="eth9")
    assert res.rc == 1 and 'error looking up "eth9"' in res.json["msg"] and "Link not found" in res.json["msg"]
    res = plugin("dhcp", "ADD", c, netns="/var/run/netns/cnitest-none-such")
    assert res.rc == 1 and res.json["code"] == 8 and "failed to open netns" in res.json["msg"], res.stdout
    res = plugin("macvlan", "ADD", conf(tmp_path / "none.sock"), netns=ctr)
    assert (
        res.rc == 1
        and "error dialing DHCP daemon" in res.json["msg"]
        and "cni-plugins dhcp daemon" in res.json.get("details", "")
    )
    assert "eth0" not in links(ctr) and daemon.status()["leases"] == [] and lan.count("OFFER") == 0


@pytest.mark.parametrize(
    "stdin",
    [
        {"cniVersion": "1.0.0", "name": "dhnet", "type": "macvlan", "ipam": "garbage"},
        {"cniVersion": "1.0.0", "name": "dhnet", "type": "macvlan", "ipam": {"type": "dhcp", "daemonSocketPath": 7}},
        {"cniVersion": "1.0.0", "name": "dhnet", "type": "macvlan"},
    ],
)
def test_del_never_fails_on_its_input(cni_bin: Path, lan: Lan, stdin: dict[str, Any]) -> None:
    """What it cannot read it does without: the default socket, where no daemon of this test
    listens (the machine's own daemon, if any, holds no lease of this test's container IDs)."""
    res = host_plugin(cni_bin, lan)("dhcp", "DEL", stdin, netns="", container_id="cnitest-dhcp-unreadable")
    assert res.rc == 0, res.stdout


def test_del_without_a_daemon(cni_bin: Path, lan: Lan, tmp_path: Path) -> None:
    """Leases live in the daemon's memory: no daemon, no lease to release."""
    res = host_plugin(cni_bin, lan)("dhcp", "DEL", conf(tmp_path / "none.sock"), netns="")
    assert res.rc == 0 and "no DHCP daemon listens" in res.stderr, res.stdout + res.stderr


# ---------------------------------------------------------------- the daemon itself


def test_daemon_socket_and_pidfile(
    cni_bin: Path, lan: Lan, daemon_factory: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemon_factory(lan.host)
    assert daemon.pidfile.read_text() == str(daemon.pid)
    # A second daemon on the same socket is refused; the first one keeps serving.
    second = subprocess.run([*OURS, "-socketpath", str(daemon.sock)], capture_output=True, text=True, timeout=20)
    assert second.returncode == 1 and "another DHCP daemon" in second.stderr
    assert daemon.status()["pid"] == daemon.pid
    shown = subprocess.run(
        [*OURS[:-1], "status", "--socket", str(daemon.sock), "--json"], capture_output=True, text=True, timeout=20
    )
    assert shown.returncode == 0 and json.loads(shown.stdout)["pid"] == daemon.pid
    none = subprocess.run([*OURS[:-1], "status", "--socket", str(tmp_path / "no.sock")], capture_output=True, text=True)
    assert none.returncode == 3 and "no DHCP daemon of ours answers" in none.stdout
    bad = subprocess.run(
        [*OURS, "-socketpath", str(tmp_path / "x.sock"), "-pidfile", "rel.pid"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert bad.returncode == 1 and 'Error writing pidfile "rel.pid": path not absolute' in bad.stderr.replace("'", '"')
    # A socket file left by a daemon killed without cleanup is replaced.
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.proc.wait()
    daemon.clean_exit = False
    assert daemon.sock.exists()
    os.unlink(daemon.pidfile)
    again = Daemon(True, lan.host, daemon.sock)
    try:
        assert "removing the stale socket" in again.log.read_text() and again.status()["pid"] == again.pid
    finally:
        assert again.stop() == 0
    assert not daemon.sock.exists()


def test_started_as_the_reference_is(
    launcher_bin: Path, lan: Lan, daemon_factory: Callable[..., Daemon], namespaces: Namespaces
) -> None:
    """``<CNI bin dir>/dhcp daemon``, as units and scripts written for the reference start it,
    through either launcher: our daemon serves, and stops cleanly on SIGTERM."""
    daemon = daemon_factory(lan.host, command=[str(launcher_bin / "dhcp"), "daemon"])
    assert daemon.status()["pid"] == daemon.pid and daemon.pidfile.read_text() == str(daemon.pid)  # exec'd, no fork
    ctr = namespaces.make("dhctr")
    plugin = host_plugin(launcher_bin, lan)
    out = plugin("macvlan", "ADD", conf(daemon.sock), netns=ctr).ok()
    assert daemon.lease("ctr1/dhnet/eth0") is not None
    plugin("macvlan", "DEL", with_prev(conf(daemon.sock), out), netns=ctr).ok()
    assert daemon.status()["leases"] == []


def test_hostprefix_serves_the_default_socket_under_it(
    cni_bin: Path, lan: Lan, daemon_factory: Callable[..., Daemon], namespaces: Namespaces, tmp_path: Path
) -> None:
    """``-hostprefix``, for a daemon in a container that sees the host's root there: without
    -socketpath it listens on the reference's default socket, /run/cni/dhcp.sock, under the
    prefix (the machine's own /run/cni is never touched), and opens CNI_NETNS under the prefix
    too: here the container's netns is bind-mounted at a path that exists only there."""
    prefix = tmp_path / "hostroot"
    ctr = namespaces.make("dhctr")
    sh("ip", "link", "add", "eth0", "link", "lan0", "type", "macvlan", "mode", "bridge", ns=lan.host)
    sh("ip", "link", "set", "eth0", "netns", path(ctr), ns=lan.host)
    netns = f"/containers/{ctr}/net"
    seen = prefix / netns.lstrip("/")
    seen.parent.mkdir(parents=True)
    seen.touch()
    sh("mount", "--bind", path(ctr), str(seen))
    try:
        sock = prefix / "run" / "cni" / "dhcp.sock"
        daemon = daemon_factory(lan.host, "-hostprefix", str(prefix), listens=sock)
        assert not os.path.exists(netns)
        plugin, c = host_plugin(cni_bin, lan), conf(sock)
        out = plugin("dhcp", "ADD", c, netns=netns).ok()
        mac, address = mac_of(ctr), out["ips"][0]["address"]
        held = daemon.lease("ctr1/dhnet/eth0")
        assert held is not None and held["state"] == "bound" and held["address"] == address
        assert lan.leases()[mac][0] == address.split("/")[0]
        plugin("dhcp", "DEL", c, netns=netns).ok()
        assert lan.leases()[mac][1] == "expired" and daemon.status()["leases"] == []
    finally:
        sh("umount", "-l", str(seen), check=False)


def test_broadcast_flag(cni_bin: Path, lan: Lan, daemon_factory: Callable[..., Daemon], namespaces: Namespaces) -> None:
    """``-broadcast`` sets the BOOTP broadcast flag on what the daemon sends (counted by an
    nftables rule on the server's side); without it the flag is clear."""
    bootp_flags = "udp dport 67 @ih,80,16"
    sh(
        "nft",
        "-f",
        "-",
        ns=lan.server_ns,
        input="add table inet dhtest\n"
        "add chain inet dhtest in { type filter hook input priority 0; }\n"
        f"add rule inet dhtest in {bootp_flags} 0x8000 counter\n"
        f"add rule inet dhtest in {bootp_flags} 0x0000 counter\n",
    )

    def counted() -> tuple[int, int]:
        rules = json.loads(sh("nft", "-j", "list", "chain", "inet", "dhtest", "in", ns=lan.server_ns).stdout)
        packets = [
            e["counter"]["packets"]
            for i in rules["nftables"]
            if "rule" in i
            for e in i["rule"]["expr"]
            if "counter" in e
        ]
        return packets[0], packets[1]

    plugin = host_plugin(cni_bin, lan)
    for flags, ctr_id in ((("-broadcast",), "bcast"), ((), "ucast")):
        daemon = daemon_factory(lan.host, *flags)
        ctr = namespaces.make(f"dh{ctr_id}")
        before = counted()
        out = plugin("macvlan", "ADD", conf(daemon.sock), netns=ctr, container_id=ctr_id).ok()
        plugin("macvlan", "DEL", with_prev(conf(daemon.sock), out), netns=ctr, container_id=ctr_id).ok()
        after = counted()
        flagged, clear = after[0] - before[0], after[1] - before[1]
        # DISCOVER and REQUEST (and the RELEASE, which carries no flag)
        assert (flagged >= 2 and clear <= 1) if flags else (flagged == 0 and clear >= 2), (flags, before, after)


# ---------------------------------------------------------------- the reference's binary


def test_reference_plugins_with_our_daemon(
    cni_bin: Path, lan: Lan, daemon_factory: Callable[..., Daemon], namespaces: Namespaces
) -> None:
    need(str(REFERENCE / "dhcp"), str(REFERENCE / "macvlan"))
    daemon = daemon_factory(lan.host)
    ctr = namespaces.make("dhctr")
    theirs, ours = Runner(REFERENCE, lan.host), host_plugin(cni_bin, lan)
    c = conf(daemon.sock, "0.4.0")
    out = theirs("macvlan", "ADD", c, netns=ctr).ok()
    mac, address = mac_of(ctr), out["ips"][0]["address"]
    assert lan.leases()[mac][0] == address.split("/")[0] and f"{address}" in addrs(ctr, "eth0")
    theirs("macvlan", "CHECK", with_prev(c, out), netns=ctr).ok()  # the reference's CHECK calls Allocate
    theirs("dhcp", "ADD", c, netns=ctr).ok()
    assert lan.count("OFFER") == 1  # neither made a second lease
    ours("macvlan", "DEL", with_prev(c, out), netns=ctr).ok()  # our DEL after their ADD
    assert lan.leases()[mac][1] == "expired" and daemon.status()["leases"] == []
    out = ours("macvlan", "ADD", c, netns=ctr).ok()  # and their DEL after our ADD
    mac = mac_of(ctr)
    theirs("macvlan", "DEL", with_prev(c, out), netns=ctr).ok()
    assert lan.leases()[mac][1] == "expired" and daemon.status()["leases"] == []


def test_our_plugins_with_the_reference_daemon(
    cni_bin: Path, lan: Lan, daemon_factory: Callable[..., Daemon], namespaces: Namespaces
) -> None:
    need(str(REFERENCE / "dhcp"))
    daemon = daemon_factory(lan.host, ours=False)
    ctr = namespaces.make("dhctr")
    plugin = host_plugin(cni_bin, lan)
    c = conf(daemon.sock, "1.0.0")
    out = plugin("macvlan", "ADD", c, netns=ctr).ok()
    mac, address = mac_of(ctr), out["ips"][0]["address"]
    assert lan.leases()[mac][0] == address.split("/")[0]
    # Its daemon has no Check (and its Allocate would start a second lease): CHECK asks nothing more.
    res = plugin("macvlan", "CHECK", with_prev(c, out), netns=ctr)
    assert res.rc == 0 and "cannot tell which lease it holds" in res.stderr, res.stdout
    assert lan.count("OFFER") == 1
    plugin("macvlan", "DEL", with_prev(c, out), netns=ctr).ok()
    assert lan.leases()[mac][1] == "expired"
    gc = {**conf(daemon.sock, "1.1.0"), "cni.dev/valid-attachments": []}
    plugin("dhcp", "GC", gc, netns="", container_id="").ok()  # it has no GC: nothing to do
    plugin("dhcp", "STATUS", conf(daemon.sock, "1.1.0"), netns="", container_id="").ok()


def test_our_helper_free_install_too(
    cni_bin_no_helper: Path, lan: Lan, daemon_factory: Callable[..., Daemon], namespaces: Namespaces
) -> None:
    daemon = daemon_factory(lan.host)
    ctr = namespaces.make("dhctr")
    res = run_plugin(cni_bin_no_helper, "macvlan", "ADD", conf(daemon.sock), netns=path(ctr), host_ns=lan.host)
    out = res.ok()
    run_plugin(
        cni_bin_no_helper, "macvlan", "DEL", with_prev(conf(daemon.sock), out), netns=path(ctr), host_ns=lan.host
    ).ok()
    assert daemon.status()["leases"] == []


# ---------------------------------------------------------------- systemd


def unit_settings(unit: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in unit.read_text().splitlines() if "=" in line and line[0] != "#")


def test_systemd_units(tmp_path: Path) -> None:
    """``install --systemd`` writes the reference's unit names beside the helper's; systemd
    accepts them, and the service's ExecStart= serves on the socket systemd passes (run under
    systemd-socket-activate: systemd need not be PID 1 here), says READY=1 and leaves the
    socket to its owner."""
    need("systemd-analyze", "systemd-socket-activate")
    bin_dir, unit_dir, run_dir = tmp_path / "bin", tmp_path / "units", tmp_path / "run"
    out = subprocess.run(
        [
            *OURS[:-2],
            "install",
            "--dir",
            str(bin_dir),
            "--run-dir",
            str(run_dir),
            "--systemd",
            "--unit-dir",
            str(unit_dir),
            "dhcp",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "systemctl enable --now cni-dhcp.socket cni-dhcp.service" in out.stderr
    socket_unit, service = unit_dir / "cni-dhcp.socket", unit_dir / "cni-dhcp.service"
    helper_units = {"cni-py-helper.socket", "cni-py-helper.service"}
    assert {p.name for p in unit_dir.iterdir()} == {socket_unit.name, service.name, *helper_units}
    verify = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(socket_unit), str(service)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stderr
    assert unit_settings(socket_unit)["ListenStream"] == "/run/cni/dhcp.sock"
    settings = unit_settings(service)
    assert settings["Type"] == "notify" and settings["Requires"] == "cni-dhcp.socket"
    argv = [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(settings["ExecStart"])]
    assert argv[0] == sys.executable and "'-socketpath', '/run/cni/dhcp.sock'" in argv[-1]
    sock, notify_path = tmp_path / "act" / "dhcp.sock", tmp_path / "notify"
    sock.parent.mkdir(mode=0o700)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(30)
        proc = subprocess.Popen(
            ["systemd-socket-activate", "-l", str(sock), "-E", f"NOTIFY_SOCKET={notify_path}", "--", *argv],
            stderr=subprocess.PIPE,
        )
        try:
            assert poll(sock.exists, timeout=20)
            inode = sock.stat().st_ino
            reply = dhcp_rpc.call(str(sock), "DHCP.Status", dhcp_rpc.cmd_args("", "", "", "", "", b""), timeout=20)
            assert json.loads(reply["JSON"])["pid"] == proc.pid  # the activator exec'd the daemon
            assert "READY=1" in notify.recv(4096).decode()
            proc.terminate()
            assert proc.wait(timeout=30) == 0
            assert "STOPPING=1" in notify.recv(4096).decode()
            assert sock.exists() and sock.stat().st_ino == inode  # systemd's socket: its owner removes it
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()
