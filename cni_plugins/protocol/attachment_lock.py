"""One call at a time per attachment: ADD, CHECK and DEL of the same (network, container ID,
ifname) never overlap, in a helper worker or in a plugin's own process.

A runtime that times out an ADD kills the plugin and DELs at once; without this lock a
slow ADD (a helper worker, or a process stuck in a kernel call) can finish after the DEL and
leave its veth, reservation or rules behind. The lock is an ``flock`` on a file named after
the attachment in a root-only directory (``<run dir>/attachments``, 0700); the kernel
drops it when its holder exits, however it exits.

The file is removed by its holder before unlocking, so the directory holds only the calls in
flight. A waiter that then gets the lock finds its file unlinked (or replaced) and starts over
on the current one: two holders never lock different files for the same name.

A caller that is not root takes no lock: it cannot use the directory, nor change any
attachment (it fails at its first step, as the reference plugin does). IPAM plugins
(``ipam.*``) take no lock: they run for a main plugin that holds it (in its
process, or exec'd by it) and lock their own store. Only the executables written by
``cni-plugins install`` configure a directory; ``skel.run`` called as a library (tests,
benchmarks) takes no lock unless ``configure`` was called.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
from collections.abc import Iterator

from cni_plugins.spec.errors import IOFailure

SUBDIR = "attachments"
_SAFE = re.compile(r"^[A-Za-z0-9_.\-]+$")
MAX_NAME = 200
_directory = ""  # "" = no lock (not configured)
_checked = ""  # the directory last found root-only in this process


def configure(run_dir: str) -> None:
    """Lock in ``<run_dir>/attachments`` from now on ("" turns locking off)."""
    global _directory
    _directory = os.path.join(run_dir, SUBDIR) if run_dir else ""


def directory() -> str:
    return _directory


def applies_to(plugin_type: str) -> bool:
    from cni_plugins.protocol import registry

    return bool(_directory) and not registry.PLUGINS.get(plugin_type, "").startswith("ipam.")


def file_name(network: str, container_id: str, ifname: str) -> str:
    """``<network>:<container ID>:<ifname>`` when that is a safe, short file name (the usual
    case: all three are validated names); else a checksum of them (a collision only makes two
    attachments wait for each other)."""
    parts = (network, container_id, ifname)
    name = ":".join(parts)
    if all(_SAFE.match(p) for p in parts) and len(name) <= MAX_NAME:
        return name
    import zlib

    raw = "\0".join(parts).encode("utf-8", "surrogateescape")
    return f"h-{zlib.crc32(raw):08x}{zlib.adler32(raw):08x}"


def _ensure_directory(path: str) -> None:
    """Make ``path`` (and its parent) 0700 if missing; refuse one that is not a root-only
    directory (anyone who can write there could hold every attachment's lock)."""
    global _checked
    if _checked == path:
        return
    for d in (os.path.dirname(path), path):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise IOFailure(
                f"attachment lock directory {d}: {exc.strerror}", "the run dir must be writable by root"
            ) from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise IOFailure(
            f"attachment lock directory {path} is not a directory only its "
            f"owner can use (mode {stat.S_IMODE(st.st_mode):o}, uid {st.st_uid})",
            "remove it, or make it a 0700 directory owned by root",
        )
    _checked = path


@contextlib.contextmanager
def held(plugin_type: str, network: str, container_id: str, ifname: str) -> Iterator[None]:
    """Hold the attachment's lock for the block (waits for whoever holds it)."""
    if not applies_to(plugin_type) or not container_id or not ifname or os.geteuid() != 0:
        yield
        return
    _ensure_directory(_directory)
    path = os.path.join(_directory, file_name(network, container_id, ifname))
    fd = _lock(path)
    try:
        yield
    finally:
        try:
            os.unlink(path)  # while holding it: see the module docstring
        except OSError:
            pass
        os.close(fd)


def _lock(path: str) -> int:
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise IOFailure(f"attachment lock {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            mine = os.fstat(fd)
            try:
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
                return fd
        except OSError as exc:
            os.close(fd)
            if exc.errno == errno.EINTR:
                continue
            raise IOFailure(f"attachment lock {path}: {exc.strerror}") from None
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # its holder removed it after we opened it: lock the current file
