"""Where host-local's reservations live: the ``Store`` the allocator needs, and who holds an
address (``Key``). ``ipam.store.files.FileStore`` keeps them in the reference's on-disk
layout, with an index of our own (``ipam.store.index``) so that DEL and CHECK do not read
the whole directory; tests/fakes has an in-memory store for the allocator's tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

from cni_plugins.spec.errors import InvalidEnvironment, InvalidNetworkConfig
from cni_plugins.spec.names import ID_RE
from cni_plugins.spec.types import IPAddress


@dataclass(frozen=True, slots=True)
class Key:
    """An attachment: container ID and interface. ``ifname == ""`` is the old format that
    recorded only the container ID."""

    container_id: str
    ifname: str

    @property
    def legacy(self) -> Key:
        return Key(self.container_id, "")

    def content(self) -> bytes:
        return os.fsencode(f"{self.container_id}\r\n{self.ifname}")


def parse_owner(data: bytes) -> Key | None:
    """Who holds an address file, trimmed as the reference trims; None for empty or garbage."""
    text = os.fsdecode(data).strip()
    cid, sep, ifname = text.partition("\r\n")
    if not ID_RE.match(cid):
        return None
    if not sep:
        return Key(cid, "")
    if not ifname or "/" in ifname or any(c.isspace() for c in ifname):
        return None
    return Key(cid, ifname)


def validate_component(value: str, what: str) -> None:
    """A name used as one path component below dataDir must stay there."""
    if not value or value in (".", "..") or "/" in value or "\0" in value:
        cls = InvalidNetworkConfig if what == "network name" else InvalidEnvironment
        raise cls(
            f"invalid {what} {value!r}: it cannot be used as a file name under dataDir",
            f"a {what} must not be empty, '.', '..' or contain '/'",
        )


class Store(Protocol):
    """What the allocator needs. Every method is called with the store locked."""

    def reserve(self, key: Key, ip: IPAddress) -> bool:
        """Claim ``ip`` for ``key``; False if it is already taken."""
        ...

    def release_ip(self, ip: IPAddress) -> None: ...

    def last_reserved(self, range_id: int) -> IPAddress | None: ...

    def set_last_reserved(self, range_id: int, ip: IPAddress) -> None: ...

    def held_by(self, key: Key) -> tuple[IPAddress, ...]:
        """The addresses whose file content is exactly ``key``."""
        ...

    def release(self, key: Key) -> tuple[IPAddress, ...]:
        """Release what ``key`` holds (exact match only); what was released."""
        ...

    def owners(self) -> dict[IPAddress, Key | None]:
        """Every reservation (a full scan: GC only)."""
        ...


def sort_key(ip: IPAddress) -> tuple[int, int]:
    """Addresses in the order files and index entries list them: IPv4 first, then by value."""
    return (ip.version, int(ip))


def read_or_none(path: str) -> bytes | None:
    """A file's bytes; None when there is no file (or a directory) there."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def unlink_if_exists(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
