"""host-local's reservations on disk, in the reference's layout (``backend/disk``), so that a
node can switch between the reference plugin and ours without losing allocations.

Under ``<dataDir>/<network>/``::

    lock                  flock'd exclusively for a whole call (the reference locks the same file)
    10.1.0.5              one file per reserved address: "<containerID>\\r\\n<ifname>", mode 0600
    last_reserved_ip.0    the last address handed out from range set 0 (round-robin cursor)
    .cni-py-index/        ours only: which addresses each attachment holds (``ipam.store.index``)

Crash safety of a reservation: the content is written in a temporary file inside
``.cni-py-index/`` and then hard-linked to the address's name, which fails if the name exists:
the claim is exclusive and no other call ever sees the file empty or half-written. An empty
address file (left by an older writer that crashed between create and write, plugins#498,
or by a host that lost power before the page cache reached the disk) is taken back when
found under the lock: the container it named died with the writer's host. Hence no fsync,
as the reference: on ext4 it also commits whatever else the journal holds, milliseconds
on a busy host. A temporary file never outlives the call that wrote it.

A store that cannot be written (a read-only file system; a full one, or one without inodes,
before the lock file exists) can still be opened ``read_only`` for DEL and CHECK, as the
reference's DEL and CHECK work there: the existing lock file (else the directory) is
flock'd through a read-only descriptor, the index is read but never written (rebuilt in
memory when it is not known complete), and a release removes what the file system lets it
remove, recording the rest in ``unreleased``. Nothing else is written, so the next writer
finds the directories changed and rebuilds the index.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os

from cni_plugins.protocol import log
from cni_plugins.spec.errors import CNIError, InvalidNetworkConfig, IOFailure
from cni_plugins.spec.types import IPAddress
from ipam.store import (
    Key,
    parse_owner,
    read_or_none,
    sort_key,
    unlink_if_exists,
    validate_component,
)
from ipam.store.index import Index

LOCK_FILE = "lock"
LAST_RESERVED_PREFIX = "last_reserved_ip."
IP_FILE_MODE = 0o600
LAST_RESERVED_MODE = 0o644  # as the reference writes it


class _io:
    """``OSError`` -> ``IOFailure`` with what we were doing and the path (a boundary, as in style.md)."""

    def __init__(self, what: str, store: FileStore | None = None) -> None:
        self.what = what
        self.store = store

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, OSError):
            if self.store is not None:
                self.store.broken = True
            where = f": {exc.filename}" if exc.filename else ""
            raise IOFailure(
                f"{self.what}{where}: {exc.strerror or exc}",
                "check that dataDir is a writable directory on a local filesystem",
            ) from None


class FileStore:
    """The reference's on-disk layout plus our index. Use as a context manager: entering
    takes the lock (and rebuilds the index if someone else changed the directory), leaving
    writes the index, the cursors and the stamp, then unlocks."""

    def __init__(self, data_dir: str, network: str, *, read_only: bool = False) -> None:
        if not data_dir.startswith("/") or "\0" in data_dir or ".." in data_dir.split("/"):
            raise InvalidNetworkConfig(f"ipam.dataDir: {data_dir!r} must be an absolute path without '..'")
        validate_component(network, "network name")
        self.dir = os.path.join(data_dir, network)
        self.index = Index(self.dir, self._scan)
        self.broken = False
        self.read_only = read_only
        self.unreleased: dict[IPAddress, str] = {}  # read_only: reservations that could not be removed, and why
        self._lock_fd = -1
        self._pending_last: dict[int, IPAddress] = {}
        self._tmp: dict[Key, str] = {}

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    # ------------------------------------------------------------ transaction

    def __enter__(self) -> FileStore:
        try:
            with _io(f"open IPAM store {self.dir}{' read-only' if self.read_only else ''}", self):
                if self.read_only:
                    self._lock_fd = _open_read_only_lock(self.dir)
                else:
                    os.makedirs(self.dir, 0o755, exist_ok=True)
                    lock = os.path.join(self.dir, LOCK_FILE)
                    self._lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
                self.index.open(writable=not self.read_only)
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            if not self.broken and not self.read_only:
                try:
                    with _io(f"update IPAM store {self.dir}", self):
                        self._flush()
                        self.index.flush()
                except CNIError:
                    if exc is None:
                        raise
        finally:
            self._close()

    def _close(self) -> None:
        for tmp in self._tmp.values():  # a reservation that failed half-way (a full disk, say)
            try:
                unlink_if_exists(tmp)
            except OSError:
                pass
        self._tmp.clear()
        self.index.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the lock fd releases the flock
        self._lock_fd = -1

    def _flush(self) -> None:
        for range_id, ip in self._pending_last.items():
            _write_cursor(os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{range_id}"), str(ip).encode())
        self._pending_last.clear()
        for tmp in self._tmp.values():
            unlink_if_exists(tmp)
        self._tmp.clear()
        self.index.keep.clear()

    # ------------------------------------------------------------ files

    def _path(self, ip: IPAddress) -> str:
        return os.path.join(self.dir, str(ip))

    def _owner_of(self, ip: IPAddress) -> Key | None | bool:
        """The file's owner; False when there is no such file."""
        data = read_or_none(self._path(ip))
        return False if data is None else parse_owner(data)

    def _scan(self) -> dict[IPAddress, Key | None]:
        owners: dict[IPAddress, Key | None] = {}
        with os.scandir(self.dir) as entries:
            for entry in entries:
                ip = _ip_name(entry.name)
                if ip is None:
                    continue
                data = read_or_none(entry.path)
                if data is not None:
                    owners[ip] = parse_owner(data)
        return owners

    # ------------------------------------------------------------ Store

    def reserve(self, key: Key, ip: IPAddress) -> bool:
        with _io(f"reserve {ip} in {self.dir}", self):
            path = self._path(ip)
            tmp = self._tmp.get(key)
            if tmp is None:
                tmp = self._tmp[key] = self.index.write_tmp(key.content(), IP_FILE_MODE, sync=False)
                self.index.keep.add(tmp)
            if not _link_exclusive(tmp, path, key):
                if os.stat(path).st_size != 0:
                    return False
                log.note(f"{path}: empty reservation file (left by a writer that crashed), taking it back")
                unlink_if_exists(path)
                if not _link_exclusive(tmp, path, key):
                    return False
            unlink_if_exists(tmp)
            del self._tmp[key]
            self.index.keep.discard(tmp)
            self.index.held(key).add(ip)
            self.index.changed(key)
            return True

    def release_ip(self, ip: IPAddress) -> None:
        with _io(f"release {ip} in {self.dir}", self):
            owner = self._owner_of(ip)
            unlink_if_exists(self._path(ip))
            if isinstance(owner, Key):
                self.index.held(owner).discard(ip)
                self.index.changed(owner)

    def last_reserved(self, range_id: int) -> IPAddress | None:
        if range_id in self._pending_last:
            return self._pending_last[range_id]
        with _io(f"read last reserved address in {self.dir}", self):
            data = read_or_none(os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{range_id}"))
        if not data:
            return None
        try:
            return ipaddress.ip_address(data.decode("ascii", "replace").strip())
        except ValueError:
            return None  # garbage: round-robin restarts from the range start, as in the reference

    def set_last_reserved(self, range_id: int, ip: IPAddress) -> None:
        self._pending_last[range_id] = ip

    def held_by(self, key: Key) -> tuple[IPAddress, ...]:
        with _io(f"look up {key.container_id}/{key.ifname} in {self.dir}", self):
            ips = self.index.held(key)
            held = []
            for ip in sorted(ips, key=sort_key):
                if self._owner_of(ip) == key:
                    held.append(ip)
                else:
                    ips.discard(ip)  # stale hint: released or re-used by someone else
                    self.index.changed(key)
            return tuple(held)

    def release(self, key: Key) -> tuple[IPAddress, ...]:
        ips = self.held_by(key)
        if self.read_only:
            return self._release_what_can_be(ips)
        with _io(f"release {key.container_id}/{key.ifname} in {self.dir}", self):
            for ip in ips:
                unlink_if_exists(self._path(ip))
            if ips:
                self.index.forget(key)
        return ips

    def _release_what_can_be(self, ips: tuple[IPAddress, ...]) -> tuple[IPAddress, ...]:
        released = []
        for ip in ips:
            try:
                unlink_if_exists(self._path(ip))
                released.append(ip)
            except OSError as exc:
                self.unreleased[ip] = exc.strerror or str(exc)
        return tuple(released)

    def owners(self) -> dict[IPAddress, Key | None]:
        with _io(f"scan {self.dir}", self):
            return self._scan()


def _open_read_only_lock(store_dir: str) -> int:
    """A descriptor to flock the store by without writing anything: the lock file if there is
    one (the reference locks it too), else the directory."""
    try:
        return os.open(os.path.join(store_dir, LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return os.open(store_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _ip_name(name: str) -> IPAddress | None:
    if not name or not (name[0].isdigit() or name[0] in "abcdefABCDEF:"):
        return None
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _write_cursor(path: str, content: bytes) -> None:
    """Rewrite a ``last_reserved_ip`` file in place, as the reference does, but without
    truncating it to zero first: ext4 flushes a file replaced by rename or emptied and
    rewritten when it is closed (``auto_da_alloc``). A cursor torn by a crash only moves
    where the next search starts (garbage restarts it at the range's start)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, LAST_RESERVED_MODE)
    try:
        if os.pwrite(fd, content, 0) != len(content):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        os.ftruncate(fd, len(content))
    finally:
        os.close(fd)


def _link_exclusive(tmp: str, path: str, key: Key) -> bool:
    """Publish the finished file at ``path`` unless the name exists (atomic, like O_EXCL)."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
    # A filesystem without hard links: the reference's O_EXCL create, then write.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, IP_FILE_MODE)
    except FileExistsError:
        return False
    try:
        os.write(fd, key.content())
        os.fsync(fd)
    finally:
        os.close(fd)
    return True
