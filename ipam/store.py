"""Where host-local's reservations live: the ``Store`` protocol, the on-disk ``FileStore``
(the reference's layout, so a node can switch plugins without losing allocations) and an
in-memory ``MemoryStore`` for the allocator's tests.

On-disk layout under ``<dataDir>/<network>/`` (the reference's ``backend/disk``)::

    lock                  flock'd exclusively for a whole call (the reference locks the same file)
    10.1.0.5              one file per reserved address: "<containerID>\\r\\n<ifname>", mode 0600
    last_reserved_ip.0    the last address handed out from range set 0 (round-robin cursor)
    .cni-py-index/        ours only, a hint the reference never mistakes for a reservation:
        <id>:<ifname>     "cni-py host-local index v1\\n" + the addresses that attachment holds
        stamp             the directories' (inode, mtime, ctime) when the index was last complete

Why the index: the reference releases by reading every file in the directory, so its DEL
grows with the number of containers. Ours reads ``.cni-py-index/<id>:<ifname>`` and then only
the files it names, each checked against its content (an entry is a hint, never trusted).
The index is *complete* when the stamp matches the directories: any reservation made or
removed by someone else (the reference plugin, a person) changes the directory's mtime, and
the next call rebuilds the index from a full scan. A call writes "dirty" into the stamp before
changing anything and the new stamp only at the end, so a crash in between also leads to a
rebuild. A change made by the next lock holder must never carry the timestamp we recorded:
on file systems with fine-grained (multigrain, Linux 6.13+) timestamps that holds once we
have read them; otherwise a call waits before unlocking until the coarse clock has passed
the recorded time (at most one tick, ~4 ms). Index entries are rewritten in place: the stamp
says "dirty" while a call runs, so a torn entry is rebuilt, never trusted.

Index files never match what the reference's ``ReleaseByID`` looks for (their content has a
line break that is not ``\\r\\n`` and a header), so its recursive walk leaves them alone.

Crash safety of a reservation: the content is written and fsync'd in a temporary file inside
``.cni-py-index/`` and then hard-linked to the address's name, which fails if the name exists:
the claim is exclusive and the file is never seen empty or half-written. An empty address
file (left by an older writer that crashed between create and write, plugins#498) is taken
back when found under the lock.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import re
import time
from dataclasses import dataclass
from typing import Iterator, Protocol

from cni_plugins.protocol import log
from cni_plugins.spec.errors import CNIError, InvalidEnvironment, InvalidNetworkConfig, IOFailure
from cni_plugins.spec.types import IPAddress

LOCK_FILE = "lock"
LAST_RESERVED_PREFIX = "last_reserved_ip."
INDEX_DIR = ".cni-py-index"
STAMP_FILE = "stamp"
TMP_PREFIX = ".tmp."
INDEX_HEADER = "cni-py host-local index v1\n"
STAMP_HEADER = b"cni-py host-local stamp v1\n"
IP_FILE_MODE = 0o600
LAST_RESERVED_MODE = 0o644  # as the reference writes it
CLOCK_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)  # Linux's constant; Python 3.11 lacks the name
MAX_TICK_WAIT = 0.05

_ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")


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
    if not _ID_RE.match(cid):
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
        raise cls(f"invalid {what} {value!r}: it cannot be used as a file name under dataDir", f"a {what} must not be empty, '.', '..' or contain '/'")


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


class MemoryStore:
    """The Store in a dict: for the allocator's unit tests."""

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
        return tuple(sorted((ip for ip, k in self.files.items() if k == key), key=_sort_key))

    def release(self, key: Key) -> tuple[IPAddress, ...]:
        ips = self.held_by(key)
        for ip in ips:
            del self.files[ip]
        return ips

    def owners(self) -> dict[IPAddress, Key | None]:
        return dict(self.files)


def _sort_key(ip: IPAddress) -> tuple[int, int]:
    return (ip.version, int(ip))


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
            where = f" {exc.filename}" if exc.filename else ""
            raise IOFailure(f"{self.what}:{where}: {exc.strerror or exc}", "check that dataDir is a writable directory on a local filesystem") from None


def _ip_name(name: str) -> IPAddress | None:
    if not name or not (name[0].isdigit() or name[0] in "abcdefABCDEF:"):
        return None
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


class _CorruptIndex(Exception):
    pass


class FileStore:
    """The reference's on-disk layout plus our index (module docstring). Use as a context
    manager: entering takes the lock (and rebuilds the index if someone else changed the
    directory), leaving writes the index, the cursors and the stamp, then unlocks."""

    def __init__(self, data_dir: str, network: str) -> None:
        if not data_dir.startswith("/") or "\0" in data_dir or ".." in data_dir.split("/"):
            raise InvalidNetworkConfig(f"ipam.dataDir: {data_dir!r} must be an absolute path without '..'")
        validate_component(network, "network name")
        self.dir = os.path.join(data_dir, network)
        self.index_dir = os.path.join(self.dir, INDEX_DIR)
        self.broken = False
        self._lock_fd = -1
        self._stamp_fd = -1
        self._index: dict[Key, set[IPAddress]] = {}
        self._dirty: set[Key] = set()
        self._pending_last: dict[int, IPAddress] = {}
        self._tmp: dict[Key, str] = {}
        self._counter = 0

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    # ------------------------------------------------------------ transaction

    def __enter__(self) -> FileStore:
        with _io(f"open IPAM store {self.dir}", self):
            os.makedirs(self.dir, 0o755, exist_ok=True)
            self._lock_fd = os.open(os.path.join(self.dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                os.mkdir(self.index_dir, 0o700)
            except FileExistsError:
                pass
            self._stamp_fd = os.open(os.path.join(self.index_dir, STAMP_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if not self._stamp_valid():
                log.debug(f"{self.dir}: index not known complete, rebuilding it from a full scan")
                self._rebuild()
            self._write_stamp(b"dirty\n")
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        try:
            if not self.broken:
                try:
                    with _io(f"update IPAM store {self.dir}", self):
                        self._flush()
                        self._write_valid_stamp()
                except CNIError:
                    if exc is None:
                        raise
        finally:
            for fd in (self._stamp_fd, self._lock_fd):
                if fd >= 0:
                    os.close(fd)  # closing the lock fd releases the flock
            self._stamp_fd = self._lock_fd = -1

    def _flush(self) -> None:
        if self._pending_last:
            os.stat(self.dir)  # read the timestamps first: on multigrain file systems the change below gets a fine-grained one
        for range_id, ip in self._pending_last.items():
            tmp = self._write_tmp(str(ip).encode(), LAST_RESERVED_MODE, sync=False)
            os.replace(tmp, os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{range_id}"))
        self._pending_last.clear()
        for tmp in self._tmp.values():
            _unlink(tmp)
        self._tmp.clear()
        for key in sorted(self._dirty, key=lambda k: (k.container_id, k.ifname)):
            self._write_index(key, self._index.get(key, set()))
        self._dirty.clear()

    # ------------------------------------------------------------ stamp

    def _dir_stats(self) -> tuple[int, ...]:
        p, s = os.stat(self.dir), os.stat(self.index_dir)
        return (p.st_ino, p.st_mtime_ns, p.st_ctime_ns, s.st_ino, s.st_mtime_ns, s.st_ctime_ns)

    def _stamp_valid(self) -> bool:
        data = os.pread(self._stamp_fd, 512, 0)
        if not data.startswith(STAMP_HEADER):
            return False
        try:
            recorded = tuple(int(x) for x in data[len(STAMP_HEADER):].split())
        except ValueError:
            return False
        return recorded == self._dir_stats()

    def _write_stamp(self, data: bytes) -> None:
        # In place (not replace): rewriting the stamp must not change the directory it records.
        os.pwrite(self._stamp_fd, data, 0)
        os.ftruncate(self._stamp_fd, len(data))

    def _write_valid_stamp(self) -> None:
        stats = self._dir_stats()
        self._write_stamp(STAMP_HEADER + " ".join(str(x) for x in stats).encode() + b"\n")
        stamps = (stats[1], stats[2], stats[4], stats[5])
        if any(t > time.clock_gettime_ns(CLOCK_REALTIME_COARSE) for t in stamps):
            # Fine-grained timestamps (multigrain, Linux 6.13+): we have just queried them, so
            # the next change to either directory gets a later timestamp. No wait needed.
            return
        newest = max(stamps)
        deadline = time.monotonic() + MAX_TICK_WAIT
        while time.clock_gettime_ns(CLOCK_REALTIME_COARSE) <= newest:
            if time.monotonic() > deadline:  # the clock went backwards: do not trust the stamp
                self._write_stamp(b"dirty\n")
                return
            time.sleep(0.0005)

    # ------------------------------------------------------------ index

    def _index_name(self, key: Key) -> str:
        name = f"{key.container_id}:{key.ifname}"
        if len(os.fsencode(name)) <= 200 and "/" not in name and "\0" not in name:
            return name
        import hashlib  # only for container IDs too long for a file name

        return "#" + hashlib.sha256(os.fsencode(name)).hexdigest()

    def _load_index(self, key: Key) -> set[IPAddress]:
        cached = self._index.get(key)
        if cached is not None:
            return cached
        data = _read(os.path.join(self.index_dir, self._index_name(key)))
        ips: set[IPAddress] = set()
        if data is not None:
            try:
                ips = _parse_index(data)
            except _CorruptIndex:
                log.note(f"{self.dir}: index entry for {key.container_id}/{key.ifname} is unreadable, rebuilding the index")
                self._rebuild()
                return self._index.setdefault(key, set())
        self._index[key] = ips
        return ips

    def _write_index(self, key: Key, ips: set[IPAddress]) -> None:
        path = os.path.join(self.index_dir, self._index_name(key))
        if not ips:
            _unlink(path)
            return
        content = (INDEX_HEADER + "".join(f"{ip}\n" for ip in sorted(ips, key=_sort_key))).encode()
        # In place: the stamp says "dirty" until the call ends, so a torn entry is rebuilt.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)

    def _scan(self) -> dict[IPAddress, Key | None]:
        owners: dict[IPAddress, Key | None] = {}
        with os.scandir(self.dir) as entries:
            for entry in entries:
                ip = _ip_name(entry.name)
                if ip is None:
                    continue
                data = _read(entry.path)
                if data is not None:
                    owners[ip] = parse_owner(data)
        return owners

    def _rebuild(self) -> None:
        """Make the index exactly what the address files say (a full scan)."""
        by_key: dict[Key, set[IPAddress]] = {}
        for ip, owner in self._scan().items():
            if owner is not None:
                by_key.setdefault(owner, set()).add(ip)
        expected = {self._index_name(k): k for k in by_key}
        own_tmp = set(self._tmp.values())
        with os.scandir(self.index_dir) as entries:
            for entry in entries:
                if entry.name == STAMP_FILE or entry.path in own_tmp:
                    continue
                if entry.name not in expected:
                    _unlink(entry.path)  # stale entries and temporary files left by a crash
        for name, key in expected.items():
            data = _read(os.path.join(self.index_dir, name))
            try:
                current = _parse_index(data) if data is not None else None
            except _CorruptIndex:
                current = None
            if current != by_key[key]:
                self._write_index(key, by_key[key])
        self._index = by_key
        self._dirty.clear()

    # ------------------------------------------------------------ files

    def _path(self, ip: IPAddress) -> str:
        return os.path.join(self.dir, str(ip))

    def _write_tmp(self, content: bytes, mode: int, *, sync: bool) -> str:
        self._counter += 1
        path = os.path.join(self.index_dir, f"{TMP_PREFIX}{os.getpid()}.{self._counter}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            os.write(fd, content)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def _owner_of(self, ip: IPAddress) -> Key | None | bool:
        """The file's owner; False when there is no such file."""
        data = _read(self._path(ip))
        return False if data is None else parse_owner(data)

    # ------------------------------------------------------------ Store

    def reserve(self, key: Key, ip: IPAddress) -> bool:
        with _io(f"reserve {ip} in {self.dir}", self):
            path = self._path(ip)
            tmp = self._tmp.get(key)
            if tmp is None:
                tmp = self._tmp[key] = self._write_tmp(key.content(), IP_FILE_MODE, sync=True)
            if not _link_exclusive(tmp, path, key):
                if os.stat(path).st_size != 0:
                    return False
                log.note(f"{path}: empty reservation file (left by a writer that crashed), taking it back")
                _unlink(path)
                if not _link_exclusive(tmp, path, key):
                    return False
            _unlink(tmp)
            del self._tmp[key]
            self._load_index(key).add(ip)
            self._dirty.add(key)
            return True

    def release_ip(self, ip: IPAddress) -> None:
        with _io(f"release {ip} in {self.dir}", self):
            owner = self._owner_of(ip)
            _unlink(self._path(ip))
            if isinstance(owner, Key):
                self._load_index(owner).discard(ip)
                self._dirty.add(owner)

    def last_reserved(self, range_id: int) -> IPAddress | None:
        if range_id in self._pending_last:
            return self._pending_last[range_id]
        with _io(f"read last reserved address in {self.dir}", self):
            data = _read(os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{range_id}"))
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
            ips = self._load_index(key)
            held = []
            for ip in sorted(ips, key=_sort_key):
                if self._owner_of(ip) == key:
                    held.append(ip)
                else:
                    ips.discard(ip)  # stale hint: released or re-used by someone else
                    self._dirty.add(key)
            return tuple(held)

    def release(self, key: Key) -> tuple[IPAddress, ...]:
        ips = self.held_by(key)
        with _io(f"release {key.container_id}/{key.ifname} in {self.dir}", self):
            for ip in ips:
                _unlink(self._path(ip))
            if ips:
                self._index[key] = set()
                self._dirty.add(key)
        return ips

    def owners(self) -> dict[IPAddress, Key | None]:
        with _io(f"scan {self.dir}", self):
            return self._scan()


def _parse_index(data: bytes) -> set[IPAddress]:
    text = data.decode("ascii", "replace")
    if not text.startswith(INDEX_HEADER):
        raise _CorruptIndex
    try:
        return {ipaddress.ip_address(line) for line in text[len(INDEX_HEADER):].split()}
    except ValueError:
        raise _CorruptIndex from None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


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


def iter_index_names(store_dir: str) -> Iterator[str]:
    """The attachment entries in a store's index (for tests and debugging)."""
    try:
        with os.scandir(os.path.join(store_dir, INDEX_DIR)) as entries:
            names = [e.name for e in entries if e.name != STAMP_FILE and not e.name.startswith(TMP_PREFIX)]
    except FileNotFoundError:
        return iter(())
    return iter(sorted(names))
