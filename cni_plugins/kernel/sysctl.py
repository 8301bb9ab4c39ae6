"""``/proc/sys`` reads and writes. Call inside ``netns.entered()``: net.* values are per namespace.

Files are opened through a private procfs instance when the kernel lets us make one
(``fsopen``/``fsmount``: a detached mount no one else sees), else through /proc/sys. Why:
each network namespace that has touched its net.* sysctls leaves its own "ipv4" and
"ipv6" dentries under one shared parent in /proc's dcache, and every lookup of those
names compares against all of them, under a global lock. With 2,000 such namespaces
(1,000 containers of ours and 1,000 of the reference's, as in bench/chain_bench.py) a new
container's first access took 1.5 ms instead of 11 µs, and any access in a long-lived host
namespace 130 to 570 µs; through a fresh instance 75 to 200 µs whatever their number
(``bench/sysctl_bench.py``). The instance lives until ``release()`` (a helper worker calls
it after each call), so it never gathers many dentries itself.
"""

from __future__ import annotations

import os

from cni_plugins.kernel import netns
from cni_plugins.spec.errors import InternalError

PROC_SYS = "/proc/sys"
_SYS_FSOPEN, _SYS_FSCONFIG, _SYS_FSMOUNT = 430, 431, 432  # the same numbers on every architecture (Linux 5.2+)
_FSCONFIG_CMD_CREATE = 6
_FS_CLOEXEC = 1  # FSOPEN_CLOEXEC, FSMOUNT_CLOEXEC


class _Instance:
    """This process's private procfs: its mount fd, or why there is none."""

    fd: int | None = None
    unavailable = False  # the kernel refused once (old kernel, seccomp, no privilege): /proc/sys from then on


def _relative(key: str) -> str:
    """``net.ipv4.ip_forward`` or ``net/ipv4/ip_forward`` -> ``net/ipv4/ip_forward`` (no escaping)."""
    rel = key.replace(".", "/") if "/" not in key else key
    parts = [p for p in rel.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise InternalError(f"invalid sysctl name {key!r}")
    return "/".join(parts)


def _private_proc() -> int | None:
    """The private procfs instance's mount fd, made on first use; None where it cannot be."""
    if _Instance.fd is None and not _Instance.unavailable:
        libc = netns.libc()
        try:
            ctx = libc.syscall(_SYS_FSOPEN, b"proc", _FS_CLOEXEC)
            if ctx < 0:
                netns.raise_errno()
            try:
                if libc.syscall(_SYS_FSCONFIG, ctx, _FSCONFIG_CMD_CREATE, None, None, 0) < 0:
                    netns.raise_errno()
                mnt = libc.syscall(_SYS_FSMOUNT, ctx, _FS_CLOEXEC, 0)
                if mnt < 0:
                    netns.raise_errno()
                _Instance.fd = mnt
            finally:
                os.close(ctx)
        except OSError:
            _Instance.unavailable = True
    return _Instance.fd


def release() -> None:
    """Drop the private procfs instance (its dentries go with it); the next access makes a new one."""
    fd, _Instance.fd = _Instance.fd, None
    if fd is not None:
        os.close(fd)


def _open(key: str, flags: int) -> int:
    rel = _relative(key)
    root = _private_proc()
    if root is not None:
        return os.open(f"sys/{rel}", flags | os.O_CLOEXEC, dir_fd=root)
    return os.open(os.path.join(PROC_SYS, rel), flags | os.O_CLOEXEC)


def read(key: str) -> str:
    try:
        fd = _open(key, os.O_RDONLY)
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
    except OSError as exc:
        raise InternalError(f"read sysctl {key}: {exc.strerror}") from None
    return b"".join(chunks).decode("ascii", "replace").strip()


def write(key: str, value: str) -> None:
    try:
        data = value.encode("ascii")
    except UnicodeEncodeError:
        raise InternalError(f"set sysctl {key}={value}: not an ASCII value", "sysctl values are ASCII text") from None
    try:
        fd = _open(key, os.O_WRONLY)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
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
