"""``cluster-ipam``: host-local's ranges and rules, with the reservations in etcd, so that an
address is unique across every node that shares the network (a macvlan network spanning
hosts, or a pod network whose nodes take from one pool).

Config: host-local's (``ranges``, the legacy ``subnet``/``rangeStart``/``rangeEnd``/
``gateway``, ``routes``, ``resolvConf``, requested addresses from ``CNI_ARGS IP=``,
``args.cni.ips`` and the ``ips`` capability; ``dataDir`` is not used), plus::

    "etcd": {"endpoints": [...], "prefix": "/cni-py", "caFile", "certFile", "keyFile", "timeout": 5}
    "nodeName": "node-1"      (default: this host's name; GC releases only this node's reservations)

Verbs: ADD takes one address per range set with compare-and-swap transactions
(``ipam.store.etcd``); DEL releases what the container + interface holds (nothing held:
success); CHECK verifies the reservation and the prevResult's addresses; GC (1.1.0) releases
this node's reservations of attachments not in ``cni.dev/valid-attachments``; STATUS asks
etcd and answers code 50 when it does not answer within ``timeout``. When etcd cannot be
reached, ADD, DEL, CHECK and GC fail with code 11 (try again later) after at most
``timeout`` seconds, and change nothing.

The connection to etcd is kept by the process (``cni_plugins.etcd.client.shared``): in a
warm helper's worker, later calls reuse it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from cni_plugins.etcd import client as etcd
from cni_plugins.etcd.config import options_from_json
from cni_plugins.protocol import log, skel
from cni_plugins.protocol.skel import CmdArgs, Plugin
from cni_plugins.spec.errors import CNIError, InvalidNetworkConfig, PluginNotAvailable
from cni_plugins.spec.types import DNS, Result
from conf.fields import dict_field, str_field
from conf.netconf import NetConf
from ipam import allocator
from ipam.config import IPAMConf
from ipam.host_local import parse_resolv_conf
from ipam.store import Key, validate_component
from ipam.store.etcd import EtcdStore

NAME = "cluster-ipam"


@dataclass(frozen=True, slots=True, kw_only=True)
class EtcdConf:
    """What every verb needs: where the reservations are and who this node is."""

    etcd: etcd.Options
    node: str

    @classmethod
    def from_netconf(cls, conf: NetConf) -> EtcdConf:
        ipam = conf.ipam
        if not ipam:
            raise InvalidNetworkConfig("IPAM config missing 'ipam' key", f'add an "ipam" object with "type": "{NAME}"')
        raw = dict_field(ipam, "etcd", "ipam")
        if not raw:
            raise InvalidNetworkConfig(
                "ipam.etcd: missing", 'give where etcd is: "etcd": {"endpoints": ["http://10.0.0.10:2379"]}'
            )
        node = str_field(ipam, "nodeName", "", "ipam") or os.uname().nodename
        try:
            validate_component(node, "network name")
        except CNIError:
            raise InvalidNetworkConfig(
                f"ipam.nodeName: {node!r} cannot be a node name", "use the node's host name, without '/'"
            ) from None
        return cls(etcd=options_from_json(raw, "ipam.etcd"), node=node)

    def store(self, network: str, cursors: tuple[str, ...] = ()) -> EtcdStore:
        client = etcd.shared(self.etcd)
        client.deadline = time.monotonic() + self.etcd.timeout  # the whole call, retries included
        label = f"{NAME}: network {network} (etcd {self.etcd.describe()})"
        return EtcdStore(client, self.etcd.prefix, network, self.node, label, cursors)


def _key(args: CmdArgs) -> Key:
    validate_component(args.container_id, "container ID")
    validate_component(args.ifname, "interface name")
    return Key(args.container_id, args.ifname)


def cmd_add(args: CmdArgs) -> Result:
    where = EtcdConf.from_netconf(args.conf)
    conf = IPAMConf.from_netconf(args.conf, args.cni_args)
    key = _key(args)
    dns = parse_resolv_conf(conf.resolv_conf) if conf.resolv_conf else DNS()
    cursors = tuple(",".join(map(str, rs.ranges)) for rs in conf.range_sets)  # named by their ranges
    with where.store(conf.name, cursors) as store:
        ips = allocator.allocate_all(store, conf.range_sets, key, conf.requested)
    return Result(ips=ips, routes=conf.routes, dns=dns)


def cmd_del(args: CmdArgs) -> None:
    """Only ``ipam.etcd`` and ``nodeName`` are read: what the attachment holds is found by
    its key."""
    where = EtcdConf.from_netconf(args.conf)
    key = _key(args)
    released = allocator.release(where.store(args.conf.name), key)
    log.debug(f"released {', '.join(map(str, released)) or 'nothing'} for {key.container_id}/{key.ifname}")


def cmd_check(args: CmdArgs) -> None:
    where = EtcdConf.from_netconf(args.conf)
    conf = IPAMConf.from_netconf(args.conf, args.cni_args)
    key = _key(args)
    held = where.store(conf.name).held_by(key)
    if not held:
        raise CNIError(
            f"{NAME}: failed to find address added by container {key.container_id}",
            f"no reservation for interface {key.ifname} on network {conf.name} in etcd",
        )
    allocator.check_prev_result(NAME, conf.range_sets, key, held, args.conf.prev_result)


def cmd_gc(args: CmdArgs) -> None:
    where = EtcdConf.from_netconf(args.conf)
    valid = args.conf.valid_attachments
    if valid is None:
        log.note("GC without cni.dev/valid-attachments: nothing released")
        return
    stale = where.store(args.conf.name).gc(frozenset(Key(a.container_id, a.ifname) for a in valid))
    if stale:
        log.note(f"GC released {', '.join(map(str, stale))} on network {args.conf.name} for node {where.node}")


def cmd_status(args: CmdArgs) -> None:
    where = EtcdConf.from_netconf(args.conf)
    client = etcd.shared(where.etcd)
    client.deadline = time.monotonic() + where.etcd.timeout
    try:
        client.status()
    except etcd.EtcdError as exc:
        raise PluginNotAvailable(
            f"{NAME}: etcd at {where.etcd.describe()} does not answer: {exc.msg}",
            "start etcd or fix ipam.etcd.endpoints; no address can be allocated until it answers",
        ) from None


PLUGIN = Plugin(
    name=NAME,
    add=cmd_add,
    delete=cmd_del,
    check=cmd_check,
    status=cmd_status,
    gc=cmd_gc,
    cni_args=frozenset({"IP"}),
    about="CNI cluster-wide IPAM plugin, reservations in etcd (cni-py)",
)


def main() -> None:
    skel.main(PLUGIN)
