"""Reservations in etcd, for ``cluster-ipam``: the ``Store`` the allocator needs, shared by
every node of a cluster, with no lock of our own: every change is one compare-and-swap
transaction.

Keys, under ``<prefix>/ipam/<network>/``::

    ips/10.1.0.5                     "<containerID>\\r\\n<ifname>"  (host-local's file content: the same identity)
    owners/<containerID>/<ifname>/10.1.0.5   "<node>"   (which node's runtime holds it; DEL, CHECK, GC read this)
    last_reserved_ip.10.1.0.2-10.1.255.254   "10.1.0.5"  (a range set's round-robin cursor)

- **Reserve**: one txn, ``create_revision(ips/<ip>) == 0`` → put the address and its owner
  entry together; else read the address back. Two nodes racing for one address: one txn
  wins, the other moves on to the next candidate. A txn retried after a lost answer finds
  the address holding its own owner, and takes that as done.
- **Release**: ``value(ips/<ip>) == <owner>`` → delete both keys; else only the owner entry
  (the address was released and taken by someone else meanwhile).
- A cursor is named after its range set's ranges (host-local names it by the set's index):
  nodes that share a pool share its cursor, and nodes that each allocate from a subnet of
  their own under one network name (a node's conflist with cluster-ipam) keep their own,
  so neither restarts the other's round-robin from its range's start. It is written once
  at the end of an ADD; a lost update between two nodes only moves where the next search
  starts.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterator, Sequence

from cni_plugins.etcd.client import (
    Client,
    EtcdError,
    Unavailable,
    created_at,
    delete_op,
    modified_at,
    prefix_end,
    put_op,
    range_op,
    value_is,
)
from cni_plugins.spec.errors import IOFailure, TryAgainLater
from cni_plugins.spec.types import IPAddress
from ipam.store import Key, parse_owner, sort_key, validate_component

LAST_RESERVED = "last_reserved_ip."
RELEASE_RETRIES = 5


@contextlib.contextmanager
def etcd_errors(what: str) -> Iterator[None]:
    """etcd's errors as CNI errors: unreachable is 11 (try again later), the rest 5."""
    try:
        yield
    except Unavailable as exc:
        raise TryAgainLater(f"{what}: {exc.msg}", "check that etcd runs and this node reaches it") from None
    except EtcdError as exc:
        raise IOFailure(f"{what}: etcd: {exc.msg}", f"gRPC code {exc.grpc_code}" if exc.grpc_code else "") from None


class EtcdStore:
    """One network's reservations. ``node`` is recorded with each reservation this node makes."""

    def __init__(
        self, client: Client, prefix: str, network: str, node: str, label: str = "", cursors: Sequence[str] = ()
    ) -> None:
        """``cursors``: the name of each range set's cursor, by range set index (default: the index)."""
        validate_component(network, "network name")
        self.client = client
        self.label = label or f"network {network}"
        self.node = node
        self.base = f"{prefix}/ipam/{network}/".encode()
        self.cursor_names = tuple(cursors)
        self._cursors: dict[str, IPAddress] | None = None
        self._pending: dict[int, IPAddress] = {}

    def _cursor_name(self, range_id: int) -> str:
        return self.cursor_names[range_id] if range_id < len(self.cursor_names) else str(range_id)

    # ------------------------------------------------------------ keys

    def _ip_key(self, ip: IPAddress) -> bytes:
        return self.base + b"ips/" + str(ip).encode()

    def _owners(self, key: Key) -> bytes:
        return self.base + f"owners/{key.container_id}/{key.ifname}/".encode()

    def _owner_key(self, key: Key, ip: IPAddress) -> bytes:
        return self._owners(key) + str(ip).encode()

    def _io(self, what: str) -> contextlib.AbstractContextManager[None]:
        return etcd_errors(f"{self.label}: {what}")

    # ------------------------------------------------------------ a call

    def __enter__(self) -> EtcdStore:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.flush()

    def flush(self) -> None:
        """Write the cursors moved by this call (one request)."""
        if self._pending:
            ops = [
                put_op(self.base + f"{LAST_RESERVED}{self._cursor_name(i)}".encode(), str(ip).encode())
                for i, ip in self._pending.items()
            ]
            with self._io("move the round-robin cursor"):
                self.client.txn([], ops, [])
            self._pending.clear()

    # ------------------------------------------------------------ Store

    def reserve(self, key: Key, ip: IPAddress) -> bool:
        ip_key = self._ip_key(ip)
        content = key.content()
        with self._io(f"reserve {ip}"):
            answer = self.client.txn(
                [created_at(ip_key, 0)],
                [put_op(ip_key, content), put_op(self._owner_key(key, ip), self.node.encode())],
                [range_op(ip_key)],
            )
        if answer.succeeded:
            return True
        held = answer.kvs(0)
        return bool(held) and held[0].value == content  # our own txn, retried after its answer was lost

    def release_ip(self, ip: IPAddress) -> None:
        """Release ``ip`` whoever holds it (a failed ADD's rollback, GC)."""
        ip_key = self._ip_key(ip)
        for _ in range(RELEASE_RETRIES):
            with self._io(f"release {ip}"):
                kv = self.client.get(ip_key)
                if kv is None:
                    return
                owner = parse_owner(kv.value)
                ops = [delete_op(ip_key)] + ([delete_op(self._owner_key(owner, ip))] if owner is not None else [])
                if self.client.txn([modified_at(ip_key, kv.mod_revision)], ops, []).succeeded:
                    return
        raise TryAgainLater(f"release {ip}: it kept changing under us", "retry")

    def last_reserved(self, range_id: int) -> IPAddress | None:
        if range_id in self._pending:
            return self._pending[range_id]
        if self._cursors is None:
            start = self.base + LAST_RESERVED.encode()
            with self._io("read the round-robin cursors"):
                kvs, _ = self.client.range(start, prefix_end(start))
            self._cursors = {}
            for kv in kvs:
                try:
                    self._cursors[kv.key[len(start) :].decode()] = ipaddress.ip_address(kv.value.decode().strip())
                except (ValueError, UnicodeDecodeError):
                    continue  # garbage: round-robin restarts from the range start, as host-local's
        return self._cursors.get(self._cursor_name(range_id))

    def set_last_reserved(self, range_id: int, ip: IPAddress) -> None:
        self._pending[range_id] = ip

    def held_by(self, key: Key) -> tuple[IPAddress, ...]:
        if not key.ifname:
            return ()  # host-local's old ID-only format: never written here
        start = self._owners(key)
        with self._io(f"look up {key.container_id}/{key.ifname}"):
            kvs, _ = self.client.range(start, prefix_end(start), keys_only=True)
        return tuple(sorted((ip for kv in kvs if (ip := _ip_of(kv.key[len(start) :])) is not None), key=sort_key))

    def release(self, key: Key) -> tuple[IPAddress, ...]:
        released = []
        for ip in self.held_by(key):
            ip_key, owner_key = self._ip_key(ip), self._owner_key(key, ip)
            with self._io(f"release {ip}"):
                answer = self.client.txn(
                    [value_is(ip_key, key.content())], [delete_op(ip_key), delete_op(owner_key)], [delete_op(owner_key)]
                )
            if answer.succeeded:
                released.append(ip)
        return tuple(released)

    def owners(self) -> dict[IPAddress, Key | None]:
        """Every reservation of the network (GC on another node's behalf, tests)."""
        start = self.base + b"ips/"
        with self._io("list reservations"):
            kvs, _ = self.client.range(start, prefix_end(start))
        return {ip: parse_owner(kv.value) for kv in kvs if (ip := _ip_of(kv.key[len(start) :])) is not None}

    # ------------------------------------------------------------ GC

    def gc(self, valid: frozenset[Key]) -> tuple[IPAddress, ...]:
        """Release what this node's runtime reserved for attachments not in ``valid``."""
        start = self.base + b"owners/"
        with self._io("list reservations"):
            kvs, _ = self.client.range(start, prefix_end(start))
        released = []
        for kv in kvs:
            if kv.value.decode("utf-8", "replace") != self.node:
                continue
            parts = kv.key[len(start) :].decode("utf-8", "replace").split("/")
            ip = _ip_of(parts[-1].encode()) if len(parts) == 3 else None
            if ip is None:
                continue
            key = Key(parts[0], parts[1])
            if key in valid:
                continue
            ip_key = self._ip_key(ip)
            with self._io(f"release {ip}"):
                answer = self.client.txn(
                    [value_is(ip_key, key.content())], [delete_op(ip_key), delete_op(kv.key)], [delete_op(kv.key)]
                )
            if answer.succeeded:
                released.append(ip)
        return tuple(sorted(released, key=sort_key))


def _ip_of(raw: bytes) -> IPAddress | None:
    try:
        return ipaddress.ip_address(raw.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
