"""host-local's allocation logic, pure: range sets in, addresses out, over a ``Store``.

No file system calls here (the store has them), so it is tested on ``MemoryStore``. The
rules are the reference's (``backend/allocator/allocator.go``): one address per range set,
round-robin from the one after ``last_reserved_ip.<set>``, the gateway skipped, a second
ADD for the same container and interface refused, a requested address honoured or refused.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cni_plugins.spec.errors import CNIError, InvalidNetworkConfig
from cni_plugins.spec.types import IPAddress, IPConfig, Result
from ipam.ranges import Range, RangeSet
from ipam.store import Key, Store


@dataclass(frozen=True, slots=True, kw_only=True)
class Allocator:
    range_set: RangeSet
    store: Store
    range_id: int

    def allocate(self, key: Key, requested: IPAddress | None = None) -> IPConfig:
        for holder in (key, key.legacy):
            for ip in self.store.held_by(holder):
                if self.range_set.contains(ip):
                    raise InvalidNetworkConfig(
                        f"{ip} has been allocated to {key.container_id}, duplicate allocation is not allowed",
                        f"interface {key.ifname} already holds {ip}: DEL the attachment before adding it again",
                    )
        if requested is not None:
            ip, rng = requested, self._range_for_request(requested)
            if not self.store.reserve(key, ip):
                raise InvalidNetworkConfig(
                    f"requested IP address {ip} is not available in range set {self.range_set}",
                    "another attachment holds it: request a free address or none",
                )
        else:
            ip, rng = self._next_free(key)
        self.store.set_last_reserved(self.range_id, ip)
        return IPConfig(address=ipaddress.ip_interface(f"{ip}/{rng.subnet.prefixlen}"), gateway=rng.gateway)

    def _range_for_request(self, ip: IPAddress) -> Range:
        rng = self.range_set.range_for(ip)
        if rng is None:
            raise InvalidNetworkConfig(f"requested IP address {ip} is not in range set {self.range_set}")
        if ip == rng.gateway:
            raise InvalidNetworkConfig(f"requested ip {ip} is subnet's gateway")
        if rng.reserved(ip):
            raise InvalidNetworkConfig(f"requested ip {ip} is the network or broadcast address of {rng.subnet}")
        return rng

    def _next_free(self, key: Key) -> tuple[IPAddress, Range]:
        for ip, rng in self.range_set.candidates(self.store.last_reserved(self.range_id)):
            if self.store.reserve(key, ip):
                return ip, rng
        raise InvalidNetworkConfig(
            f"no IP addresses available in range set {self.range_set}",
            "every address is taken: release attachments (DEL or GC) or widen the range",
        )


def allocate_all(
    store: Store, range_sets: tuple[RangeSet, ...], key: Key, requested: tuple[IPAddress | None, ...]
) -> tuple[IPConfig, ...]:
    """One address from each range set; on any failure the ones already taken are released."""
    done: list[IPConfig] = []
    for idx, range_set in enumerate(range_sets):
        try:
            done.append(
                Allocator(range_set=range_set, store=store, range_id=idx).allocate(
                    key, requested[idx] if idx < len(requested) else None
                )
            )
        except CNIError as err:
            for ipc in done:
                store.release_ip(ipc.address.ip)
            raise err.with_context(f"failed to allocate for range {idx}") from None
    return tuple(done)


def release(store: Store, key: Key) -> tuple[IPAddress, ...]:
    """Release ``id\\r\\nifname`` files; if there are none, files holding only the ID (old format)."""
    released = store.release(key)
    if not released and key.ifname:
        released = store.release(key.legacy)
    return released


def holds(store: Store, key: Key) -> tuple[IPAddress, ...]:
    return store.held_by(key) or (store.held_by(key.legacy) if key.ifname else ())


def gc(store: Store, valid: frozenset[Key]) -> tuple[IPAddress, ...]:
    """Release every reservation whose attachment is not in ``valid``.

    An old-format file (ID only) is kept when any valid attachment has that container ID
    (the reference's GC agrees); an empty or unreadable file has no owner and is released.
    """
    valid_ids = {k.container_id for k in valid}
    stale = []
    for ip, owner in store.owners().items():
        if (
            owner is None
            or (owner.ifname and owner not in valid)
            or (not owner.ifname and owner.container_id not in valid_ids)
        ):
            stale.append(ip)
    for ip in stale:
        store.release_ip(ip)
    return tuple(stale)


def check_prev_result(
    plugin: str, range_sets: tuple[RangeSet, ...], key: Key, held: tuple[IPAddress, ...], prev: Result | None
) -> None:
    """CHECK: every address of ``prev`` in our ranges is one ``key`` holds."""
    for ipc in prev.ips if prev is not None else ():
        ip = ipc.address.ip
        if any(rs.contains(ip) for rs in range_sets) and ip not in held:
            raise CNIError(
                f"{plugin}: {ip} in prevResult is not reserved for container {key.container_id}",
                f"{key.ifname} holds {', '.join(map(str, held))}",
            )
