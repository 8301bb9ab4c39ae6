"""``/proc/sys`` reads and writes. Call inside ``netns.entered()``: net.* values are per namespace."""

from __future__ import annotations

import os

from cni_plugins.errors import InternalError

PROC_SYS = "/proc/sys"


def path_for(key: str) -> str:
    """``net.ipv4.ip_forward`` or ``net/ipv4/ip_forward`` -> its /proc/sys path (no escaping)."""
    rel = key.replace(".", "/") if "/" not in key else key
    parts = [p for p in rel.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise InternalError(f"invalid sysctl name {key!r}")
    return os.path.join(PROC_SYS, *parts)


def read(key: str) -> str:
    try:
        with open(path_for(key), encoding="ascii") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise InternalError(f"read sysctl {key}: {exc.strerror}") from None


def write(key: str, value: str) -> None:
    try:
        with open(path_for(key), "w", encoding="ascii") as fh:
            fh.write(value)
    except OSError as exc:
        raise InternalError(f"set sysctl {key}={value}: {exc.strerror}") from None


def ensure(key: str, value: str) -> None:
    """Write only when the value differs (writing forwarding resets some per-interface state)."""
    if read(key) != value:
        write(key, value)


def iface_key(family: int, ifname: str, leaf: str) -> str:
    """The path of a per-interface sysctl; interface names may contain dots, so no dotted form."""
    return f"net/ipv{family}/conf/{ifname}/{leaf}"


FORWARDING = {4: "net/ipv4/ip_forward", 6: "net/ipv6/conf/all/forwarding"}


def enable_forwarding(version: int) -> None:
    """Turn on IPv4 or IPv6 forwarding in the calling thread's namespace (only if off: writing
    ``forwarding`` resets per-interface settings)."""
    ensure(FORWARDING[version], "1")
