"""The per-node agent of a pod network (``cni-plugins node run``): leases the node's subnet,
renews it every TTL/3, watches every node's lease and keeps the kernel in step
(``dataplane``), keeps pod networks apart (``firewall.rules.podnet``), and writes the node's
conflist.

One thread, one loop: renew when due, read the watch until the next thing is due (or half a
second, to notice SIGTERM), reconcile on every change and every ``resync`` seconds in any
case. When etcd goes away the agent keeps what the kernel has and retries; when it comes
back, it reads every lease again and watches from there. A lease lost (etcd expired it while
this node could not renew) is claimed again, the same subnet if it is still free.

Stopping (SIGTERM, SIGINT) leaves everything in place: the lease runs out after its TTL
unless a restarted agent takes it over, which it does when it finds this node's record
alive (same subnet, same etcd lease). Routes, vxlan entries and pods are untouched
meanwhile. ``leave`` gives everything back.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import time
from dataclasses import dataclass, field, replace
from types import FrameType

from cni_plugins.etcd.client import Client, EtcdError, Options, prefix_end
from cni_plugins.etcd.watch import Compacted, Watch
from cni_plugins.kernel.netlink import Netlink
from cni_plugins.node import conflist, leases
from cni_plugins.node.dataplane import Dataplane, Underlay, find_underlay
from cni_plugins.node.network import (
    ConfigError,
    Lease,
    NetworkConfig,
    subnet_key,
    subnet_of_key,
    subnets_prefix,
    vtep_mac,
)
from cni_plugins.protocol import log
from cni_plugins.spec.errors import CNIError
from firewall.nft import LibNftables
from firewall.rules import podnet

DEFAULT_TTL = 60
DEFAULT_STATE_DIR = "/var/lib/cni-py/node"
DEFAULT_CONF_DIR = "/etc/cni/net.d"
TICK = 0.5  # longest wait: how soon a stop is noticed
RETRY = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConf:
    etcd: Options
    node: str
    public_ip: ipaddress.IPv4Address | None = None
    iface: str = ""
    ttl: int = DEFAULT_TTL
    net_name: str = "cluster"
    conf_dir: str = DEFAULT_CONF_DIR
    bridge: str = "cni0"
    ipam: str = conflist.HOST_LOCAL
    data_dir: str = ""
    state_dir: str = DEFAULT_STATE_DIR
    ip_masq: bool = False
    cni_version: str = "1.1.0"
    resync: float = 30.0
    device: str = ""

    @property
    def conf_file(self) -> str:
        return os.path.join(self.conf_dir, f"10-{self.net_name}.conflist")

    @property
    def state_file(self) -> str:
        return os.path.join(self.state_dir, f"{self.net_name}.json")


@dataclass
class Agent:
    conf: AgentConf
    client: Client = field(init=False)
    stopping: bool = False
    config: NetworkConfig | None = None
    underlay: Underlay | None = None
    lease: Lease | None = None
    dataplane: Dataplane | None = None
    peers: dict[ipaddress.IPv4Network, Lease] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.client = Client(self.conf.etcd)

    def stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        self.stopping = True

    # ------------------------------------------------------------ start

    def start(self) -> bool:
        """Everything up to the first sync; False when stopped before etcd answered."""
        while not self.stopping:
            try:
                self.config = leases.read_config(self.client, self.conf.etcd.prefix)
                if self.config is not None:
                    break
                log.warning(
                    f"no network config at {self.conf.etcd.prefix}/network/config in etcd: "
                    "run `cni-plugins node init` once for the cluster; waiting"
                )
            except EtcdError as exc:
                log.warning(f"etcd: {exc.msg}; retrying")
            self._sleep(2.0)
        if self.config is None:
            return False
        with Netlink.open(None, label="node") as nl:
            self.underlay = find_underlay(nl, self.conf.public_ip, self.conf.iface)
        while not self.stopping:
            try:
                self._acquire()
                break
            except EtcdError as exc:
                log.warning(f"etcd: {exc.msg}; retrying")
                self._sleep(RETRY)
        if self.lease is None:
            return False
        self._apply_lease()
        self._resync()
        return True

    def _wanted(self) -> Lease:
        assert self.config is not None and self.underlay is not None
        return Lease(
            subnet=self.config.network,  # replaced by the subnet leased
            node=self.conf.node,
            public_ip=self.underlay.address.ip,
            backend=self.config.backend,
            vni=self.config.vni if self.config.backend == "vxlan" else 0,
            vtep_mac=vtep_mac(self.conf.node, self.config.vni) if self.config.backend == "vxlan" else "",
        )

    def _acquire(self) -> None:
        assert self.config is not None
        self.lease = leases.acquire(
            self.client, self.conf.etcd.prefix, self.config, self._wanted(), self.conf.ttl, self._remembered()
        )
        self._remember()

    def _remembered(self) -> ipaddress.IPv4Network | None:
        try:
            with open(self.conf.state_file, encoding="utf-8") as fh:
                return ipaddress.IPv4Network(json.load(fh)["subnet"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _remember(self) -> None:
        assert self.lease is not None and self.config is not None
        os.makedirs(self.conf.state_dir, 0o755, exist_ok=True)
        tmp = f"{self.conf.state_file}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"subnet": str(self.lease.subnet), "network": str(self.config.network)}, fh)
        os.replace(tmp, self.conf.state_file)

    def _apply_lease(self) -> None:
        """The kernel, the firewall and the conflist for the subnet now leased."""
        assert self.config is not None and self.underlay is not None and self.lease is not None
        self.dataplane = Dataplane(self.config, self.underlay, self.lease, self.conf.device)
        self.dataplane.setup()
        nft = LibNftables()
        nft.run(podnet.base_commands(), what="pod network table")
        present = podnet.present_in(
            nft.list_table(podnet.FAMILY, podnet.TABLE), self.conf.net_name, self.config.network
        )
        nft.run(
            podnet.network_commands(
                self.conf.net_name, self.config.network, masquerade=self.conf.ip_masq, present=present
            ),
            what=f"pod network {self.conf.net_name}",
        )
        node_conf = conflist.NodeConf(
            name=self.conf.net_name,
            bridge=self.conf.bridge,
            subnet=self.lease.subnet,
            mtu=self.dataplane.pod_mtu,
            ipam=self.conf.ipam,
            data_dir=self.conf.data_dir,
            cni_version=self.conf.cni_version,
            node=self.conf.node,
            etcd=self.conf.etcd,
        )
        if conflist.write(self.conf.conf_file, node_conf):
            log.note(f"wrote {self.conf.conf_file}: subnet {self.lease.subnet}, MTU {self.dataplane.pod_mtu}")

    # ------------------------------------------------------------ peers

    def _resync(self) -> int:
        """Read every lease and make the kernel match; the revision read at."""
        self.peers, revision = leases.leases(self.client, self.conf.etcd.prefix)
        self._sync()
        return revision

    def _sync(self) -> None:
        assert self.dataplane is not None
        try:
            changes = self.dataplane.sync(self.peers)
        except CNIError as err:
            log.warning(f"sync: {err.msg}")
            return
        if changes:
            log.note(f"{len(self.peers)} nodes; " + ", ".join(changes))

    def _event(self, key: bytes, value: bytes, lease_id: int, deleted: bool) -> None:
        try:
            subnet = subnet_of_key(key)
        except ConfigError:
            return
        if deleted:
            self.peers.pop(subnet, None)
            return
        try:
            self.peers[subnet] = Lease.from_record(key, value, lease_id)
        except ConfigError as exc:
            log.warning(f"ignoring {exc}")

    # ------------------------------------------------------------ the loop

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self.stop)
        if not self.start():
            return 0
        log.note(f"ready: {self.status_line()}")
        notify("READY=1\nSTATUS=" + self.status_line())
        renew_every = max(self.conf.ttl / 3, 0.3)
        now = time.monotonic()
        next_renew, next_resync, next_watch = now + renew_every, now + self.conf.resync, now
        watch: Watch | None = None
        revision = 0
        try:
            while not self.stopping:
                now = time.monotonic()
                if now >= next_renew:
                    next_renew = now + (renew_every if self._renew() else RETRY)
                if watch is None and now >= next_watch:
                    try:
                        revision = self._resync()
                        start = subnets_prefix(self.conf.etcd.prefix)
                        watch = Watch(self.conf.etcd, start, prefix_end(start), revision + 1)
                    except EtcdError as exc:
                        log.warning(f"watch: {exc.msg}; retrying")
                        next_watch = now + RETRY
                if now >= next_resync:
                    next_resync = now + self.conf.resync
                    try:
                        self._resync()
                    except EtcdError as exc:
                        log.warning(f"resync: {exc.msg}")
                wait = max(min(next_renew, next_resync, now + TICK) - time.monotonic(), 0.0)
                if watch is None:
                    self._sleep(min(wait, max(next_watch - time.monotonic(), 0.0)))
                    continue
                try:
                    events = watch.next(wait)
                except (Compacted, EtcdError) as exc:
                    log.warning(f"watch ended ({exc.msg}); reading every lease again")
                    watch.close()
                    watch, next_watch = None, time.monotonic() + (0 if isinstance(exc, Compacted) else RETRY)
                    continue
                if not events:
                    continue
                own_key = subnet_key(self.conf.etcd.prefix, self.lease.subnet) if self.lease else b""
                for ev in events:
                    self._event(ev.kv.key, ev.kv.value, ev.kv.lease, ev.deleted)
                    if ev.deleted and ev.kv.key == own_key:
                        next_renew = time.monotonic()  # our record is gone: find out at once
                self._sync()
        finally:
            if watch is not None:
                watch.close()
            self.client.close()
        log.note("stopped; routes, vxlan entries and the lease stay until the lease's TTL runs out")
        return 0

    def _renew(self) -> bool:
        assert self.lease is not None
        try:
            if leases.renew(self.client, self.lease):
                return True
            old = self.lease.subnet
            log.warning(f"the lease on {old} expired (etcd could not be reached in time); claiming a subnet again")
            self._acquire()
            if self.lease.subnet != old:
                log.warning(
                    f"subnet {old} went to another node; this node now has {self.lease.subnet}: "
                    "pods with addresses in the old subnet lost cross-node connectivity and must be recreated"
                )
            self._apply_lease()
            self._sync()
            notify("STATUS=" + self.status_line())
            return True
        except EtcdError as exc:
            log.warning(f"renew: {exc.msg}; retrying")
            return False

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, TICK))

    def status_line(self) -> str:
        if self.lease is None or self.config is None:
            return "starting"
        return f"subnet {self.lease.subnet} of {self.config.network}, {self.config.backend}, {len(self.peers)} nodes"

    # ------------------------------------------------------------ leave

    def leave(self) -> None:
        """Give the subnet back and remove routes, the vxlan device, the firewall entries,
        the conflist and the state file."""
        config = leases.read_config(self.client, self.conf.etcd.prefix)
        current, _ = leases.leases(self.client, self.conf.etcd.prefix)
        mine = next((lease for lease in current.values() if lease.node == self.conf.node), None)
        if mine is not None and mine.lease_id:
            leases.release(self.client, mine)
            log.note(f"released subnet {mine.subnet}")
        if config is not None:
            with Netlink.open(None, label="node") as nl:
                try:
                    underlay = find_underlay(nl, self.conf.public_ip, self.conf.iface)
                except CNIError:
                    underlay = None
            if underlay is not None:
                own = mine or replace(self._wanted_for(config, underlay), subnet=config.network)
                Dataplane(config, underlay, own, self.conf.device).teardown()
            nft = LibNftables()
            present = podnet.present_in(nft.list_table(podnet.FAMILY, podnet.TABLE), self.conf.net_name, config.network)
            nft.run(podnet.remove_commands(self.conf.net_name, config.network, present), what="leave")
        for path in (self.conf.conf_file, self.conf.state_file):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.client.close()

    def _wanted_for(self, config: NetworkConfig, underlay: Underlay) -> Lease:
        self.config, self.underlay = config, underlay
        return self._wanted()


def notify(state: str) -> None:
    """Tell systemd (``Type=notify``) when run as its service; nothing otherwise."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.send(state.encode())
    except OSError as exc:
        log.warning(f"sd_notify: {exc}")
