"""The host-local Store in a dict, for the allocator's unit tests (no disk, no root)."""

from __future__ import annotations

from cni_plugins.spec.types import IPAddress
from ipam.store import Key, sort_key


class MemoryStore:
    """The Store in a dict."""

    def __init__(self) -> None:
        self.files: dict[IPAddress, Key | None] = {}
        self.last: dict[int, IPAddress] = {}

    def reserve(self, key: Key, ip: IPAddress) -> bool:
        if ip in self.files:
            return False
        self.files[ip] = key
        return True

    def release_ip(self, ip: IPAddress) -> None:
        self.files.pop(ip, None)

    def last_reserved(self, range_id: int) -> IPAddress | None:
        return self.last.get(range_id)

    def set_last_reserved(self, range_id: int, ip: IPAddress) -> None:
        self.last[range_id] = ip

    def held_by(self, key: Key) -> tuple[IPAddress, ...]:
        return tuple(sorted((ip for ip, k in self.files.items() if k == key), key=sort_key))

    def release(self, key: Key) -> tuple[IPAddress, ...]:
        ips = self.held_by(key)
        for ip in ips:
            del self.files[ip]
        return ips

    def owners(self) -> dict[IPAddress, Key | None]:
        return dict(self.files)
