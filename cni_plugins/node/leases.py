"""A node's subnet lease: a record under ``<prefix>/network/subnets/`` bound to an etcd lease
with a TTL that the node's agent renews. When the node stops renewing for longer than the
TTL, etcd deletes the record and the subnet is free for another node.

Claiming is one transaction on ``version(key) == 0``: two nodes racing for one subnet, one
wins. A restarted agent finds its node's record still alive and takes over its etcd lease,
so the subnet, the routes pointing at it and the pods on it stay as they were.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import replace

from cni_plugins.etcd.client import Client, EtcdError, created_at, prefix_end, put_op
from cni_plugins.node.network import ConfigError, Lease, NetworkConfig, config_key, subnet_key, subnets_prefix
from cni_plugins.protocol import log

SPREAD = 16  # a fresh node picks at random among the first free subnets: racing nodes rarely collide
CLAIM_ATTEMPTS = 10


class NoSubnet(Exception):
    """Every subnet of the cluster CIDR is leased."""


def read_config(client: Client, prefix: str) -> NetworkConfig | None:
    kv = client.get(config_key(prefix))
    return None if kv is None else NetworkConfig.from_json(kv.value)


def write_config(client: Client, prefix: str, config: NetworkConfig, *, replace_existing: bool) -> bool:
    """Store the cluster's network config; False when one exists and ``replace_existing`` is off."""
    key = config_key(prefix)
    if replace_existing:
        client.put(key, config.to_json())
        return True
    return client.txn([created_at(key, 0)], [put_op(key, config.to_json())], []).succeeded


def leases(client: Client, prefix: str) -> tuple[dict[ipaddress.IPv4Network, Lease], int]:
    """Every node's lease, and the revision they were read at."""
    start = subnets_prefix(prefix)
    kvs, revision = client.range(start, prefix_end(start))
    out = {}
    for kv in kvs:
        try:
            lease = Lease.from_record(kv.key, kv.value, kv.lease)
        except ConfigError as exc:
            log.warning(f"ignoring {exc}")
            continue
        out[lease.subnet] = lease
    return out, revision


def acquire(
    client: Client,
    prefix: str,
    config: NetworkConfig,
    wanted: Lease,
    ttl: int,
    preferred: ipaddress.IPv4Network | None = None,
) -> Lease:
    """This node's lease: its live record taken over (same subnet, same etcd lease), else the
    ``preferred`` subnet if it is free, else a free one. ``wanted`` carries everything but the
    subnet and the etcd lease."""
    current, _ = leases(client, prefix)
    for lease in current.values():
        if lease.node != wanted.node or not lease.subnet.subnet_of(config.network):
            continue
        preferred = preferred or lease.subnet  # should it expire before the keepalive below
        if lease.lease_id and client.keepalive(lease.lease_id) > 0:
            mine = replace(wanted, subnet=lease.subnet, lease_id=lease.lease_id)
            if mine.to_json() != lease.to_json():  # a new address or MAC: say so, on the same lease
                client.put(subnet_key(prefix, lease.subnet), mine.to_json(), lease=lease.lease_id)
            log.note(f"kept subnet {lease.subnet} (etcd lease {lease.lease_id:x})")
            return mine
    lease_id, _granted = client.grant(ttl)
    try:
        for _ in range(CLAIM_ATTEMPTS):
            free = [s for s in config.subnets() if s not in current]
            if not free:
                raise NoSubnet(f"every /{config.subnet_len} of {config.network} is leased ({len(current)} nodes)")
            pick = preferred if preferred in free else random.choice(free[:SPREAD])
            mine = replace(wanted, subnet=pick, lease_id=lease_id)
            key = subnet_key(prefix, pick)
            if client.txn([created_at(key, 0)], [put_op(key, mine.to_json(), lease=lease_id)], []).succeeded:
                log.note(f"leased subnet {pick} (etcd lease {lease_id:x}, TTL {ttl} s)")
                return mine
            current, _ = leases(client, prefix)  # another node took it meanwhile
        raise NoSubnet(f"could not claim a subnet of {config.network} in {CLAIM_ATTEMPTS} attempts")
    except BaseException:
        try:
            client.revoke(lease_id)
        except EtcdError:
            pass  # it expires by itself
        raise


def renew(client: Client, lease: Lease) -> bool:
    """Renew; False when the lease has expired (the record is gone: acquire again)."""
    return client.keepalive(lease.lease_id) > 0


def release(client: Client, lease: Lease) -> None:
    """Give the subnet back now (its record goes with the etcd lease)."""
    client.revoke(lease.lease_id)
