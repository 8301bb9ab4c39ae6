"""Address ranges for host-local: a ``Range`` is one subnet with its first/last allocatable
address and gateway; a ``RangeSet`` is a pool of disjoint ranges of one family, from which
one address is handed out per attachment (``ranges[i]`` in the config).

Pure values over the standard library's ``ipaddress`` (no netaddr: import cost on every exec).
Addresses are compared and stepped as integers, so iterating a /8 costs no allocation per step.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass

from cni_plugins.spec.types import IPAddress, IPNetwork


def ip_from_int(value: int, version: int) -> IPAddress:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class Range:
    """One subnet; ``range_start``..``range_end`` inclusive are candidates, the gateway never is.

    The network address and (IPv4) the broadcast address are never handed out either, even
    when ``rangeStart``/``rangeEnd`` name them: no host can use them.
    """

    subnet: IPNetwork
    range_start: IPAddress
    range_end: IPAddress
    gateway: IPAddress

    @property
    def version(self) -> int:
        return self.subnet.version

    def contains(self, ip: IPAddress) -> bool:
        """In the subnet and between rangeStart and rangeEnd (the reference's ``Contains``)."""
        return ip.version == self.version and ip in self.subnet and self.range_start <= ip <= self.range_end  # type: ignore[operator]

    def reserved(self, ip: IPAddress) -> bool:
        """Never handed out: network address, IPv4 broadcast, gateway."""
        return (
            ip == self.subnet.network_address
            or ip == self.gateway
            or (self.version == 4 and ip == self.subnet.broadcast_address)
        )

    def overlaps(self, other: Range) -> bool:
        if self.version != other.version:
            return False
        return not (self.range_end < other.range_start or other.range_end < self.range_start)  # type: ignore[operator]

    def __str__(self) -> str:
        return f"{self.range_start}-{self.range_end}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RangeSet:
    ranges: tuple[Range, ...]

    @property
    def version(self) -> int:
        return self.ranges[0].version

    def range_for(self, ip: IPAddress) -> Range | None:
        return next((r for r in self.ranges if r.contains(ip)), None)

    def contains(self, ip: IPAddress) -> bool:
        return self.range_for(ip) is not None

    def overlaps(self, other: RangeSet) -> bool:
        return any(a.overlaps(b) for a in self.ranges for b in other.ranges)

    def __str__(self) -> str:
        """``10.1.0.0/29`` for a default range; ``10.1.0.0/24 (10.1.0.10-10.1.0.20)`` when narrowed."""
        parts = []
        for r in self.ranges:
            default_start = r.subnet.network_address + 1
            default_end = r.subnet.broadcast_address - 1 if r.version == 4 else r.subnet.broadcast_address
            narrowed = r.range_start != default_start or r.range_end != default_end
            parts.append(f"{r.subnet} ({r})" if narrowed else str(r.subnet))
        return ",".join(parts)

    def candidates(self, last_reserved: IPAddress | None) -> Iterator[tuple[IPAddress, Range]]:
        """Every allocatable address once, round-robin: from the one after ``last_reserved``
        (when it is still in the set) around to ``last_reserved`` itself; otherwise from the
        first range's start. Gateway, network and broadcast addresses are skipped.

        The same walk as the reference's ``RangeIter``, so a crash-looping container gets a
        new address each time until the whole set has been used.
        """
        n = len(self.ranges)
        start_idx, start_pos = 0, int(self.ranges[0].range_start)
        if last_reserved is not None:
            for i, r in enumerate(self.ranges):
                if r.contains(last_reserved):
                    pos = int(last_reserved) + 1
                    if pos > int(r.range_end):
                        i, pos = (i + 1) % n, int(self.ranges[(i + 1) % n].range_start)
                    start_idx, start_pos = i, pos
                    break
        version = self.version
        for step in range(n + 1):
            idx = (start_idx + step) % n
            r = self.ranges[idx]
            lo = start_pos if step == 0 else int(r.range_start)
            hi = int(r.range_end)
            if step == n:  # back in the first range: the part before where we began
                lo, hi = int(r.range_start), start_pos - 1
            for value in range(lo, hi + 1):
                ip = ip_from_int(value, version)
                if not r.reserved(ip):
                    yield ip, r
