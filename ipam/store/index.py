"""Our index of a host-local store: which addresses each attachment holds, so that DEL and
CHECK read one small file instead of the whole directory (the reference's ``ReleaseByID``
reads every file, so its DEL grows with the number of containers).

Layout, under ``<dataDir>/<network>/.cni-py-index/`` (a hint the reference never mistakes for
a reservation)::

    <id>:<ifname>   "cni-py host-local index v1\\n" + the addresses that attachment holds
    stamp           the directories' (inode, mtime, ctime) when the index was last complete
    .tmp.<pid>.<n>  a reservation being written (see ``ipam.store.files``)

An entry is a hint, never trusted: the store checks each address file it names. The index
is *complete* when the stamp matches the directories: any reservation made or removed by
someone else (the reference plugin, a person) changes the directory's mtime, and the next
call rebuilds the index from a full scan. A call writes "dirty" into the stamp before
changing anything and the new stamp only at the end, so a crash in between also leads to a
rebuild. A change made by the next lock holder must never carry the timestamp we recorded:
on file systems with multigrain timestamps (Linux 6.13+: ext4, xfs, btrfs, tmpfs) that holds
once we have read them, as a change in the same clock tick then gets a fine-grained one; a
probe tells such a file system once per process (``fine_grained_timestamps``). Elsewhere a
call waits before unlocking until the coarse clock has passed the recorded time (at most
one tick, ~4 ms). Entries are rewritten in place: the stamp says "dirty" while a call runs,
so a torn entry is rebuilt, never trusted.

Entries never match what the reference's ``ReleaseByID`` looks for (their content has a
line break that is not ``\\r\\n`` and a header), so its recursive walk leaves them alone.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import time
from collections.abc import Callable, Iterator

from cni_plugins.protocol import log
from cni_plugins.spec.types import IPAddress
from ipam.store import Key, read_or_none, sort_key, unlink_if_exists

INDEX_DIR = ".cni-py-index"
STAMP_FILE = "stamp"
TMP_PREFIX = ".tmp."
INDEX_HEADER = "cni-py host-local index v1\n"
STAMP_HEADER = b"cni-py host-local stamp v1\n"
CLOCK_REALTIME_COARSE = getattr(time, "CLOCK_REALTIME_COARSE", 5)  # Linux's constant; Python 3.11 lacks the name
MAX_TICK_WAIT = 0.05


class CorruptEntry(Exception):
    pass


class Index:
    """The index of the store at ``store_dir``; used only while the store's lock is held.
    ``scan`` reads every address file (a full rebuild's source of truth)."""

    def __init__(self, store_dir: str, scan: Callable[[], dict[IPAddress, Key | None]]) -> None:
        self.store_dir = store_dir
        self.dir = os.path.join(store_dir, INDEX_DIR)
        self._scan = scan
        self._stamp_fd = -1
        self._entries: dict[Key, set[IPAddress]] = {}
        self._dirty: set[Key] = set()
        self._counter = 0
        self.writable = True
        self.keep: set[str] = set()  # temporary files in use, which a rebuild must leave alone

    # ------------------------------------------------------------ a call's lifetime

    def open(self, *, writable: bool = True) -> None:
        """At the start of a call (lock held): rebuild if not known complete, then mark dirty.
        Not ``writable`` (a store that cannot be written): nothing is written; an index not
        known complete is rebuilt in memory only."""
        self.writable = writable
        if not writable:
            try:
                self._stamp_fd = os.open(os.path.join(self.dir, STAMP_FILE), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                self._stamp_fd = -1
            if self._stamp_fd < 0 or not self._stamp_valid():
                self._entries = self._from_scan()
            return
        try:
            os.mkdir(self.dir, 0o700)
        except FileExistsError:
            pass
        self._stamp_fd = os.open(os.path.join(self.dir, STAMP_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if not self._stamp_valid():
            log.debug(f"{self.store_dir}: index not known complete, rebuilding it from a full scan")
            self.rebuild()
        self._write_stamp(b"dirty\n")

    def flush(self) -> None:
        """Write the entries this call changed, then the stamp that says the index is complete."""
        if not self.writable:
            return
        for key in sorted(self._dirty, key=lambda k: (k.container_id, k.ifname)):
            self._write_entry(key, self._entries.get(key, set()))
        self._dirty.clear()
        self._write_valid_stamp()

    def close(self) -> None:
        if self._stamp_fd >= 0:
            os.close(self._stamp_fd)
            self._stamp_fd = -1

    # ------------------------------------------------------------ entries

    def held(self, key: Key) -> set[IPAddress]:
        """The addresses the index says ``key`` holds (a hint); the set is live: change it and
        call ``changed(key)``."""
        cached = self._entries.get(key)
        if cached is not None:
            return cached
        data = read_or_none(os.path.join(self.dir, entry_name(key)))
        ips: set[IPAddress] = set()
        if data is not None:
            try:
                ips = parse_entry(data)
            except CorruptEntry:
                log.note(
                    f"{self.store_dir}: index entry for {key.container_id}/{key.ifname} "
                    "is unreadable, rebuilding the index"
                )
                self.rebuild()
                return self._entries.setdefault(key, set())
        self._entries[key] = ips
        return ips

    def changed(self, key: Key) -> None:
        self._dirty.add(key)

    def forget(self, key: Key) -> None:
        self._entries[key] = set()
        self._dirty.add(key)

    def _from_scan(self) -> dict[Key, set[IPAddress]]:
        by_key: dict[Key, set[IPAddress]] = {}
        for ip, owner in self._scan().items():
            if owner is not None:
                by_key.setdefault(owner, set()).add(ip)
        return by_key

    def rebuild(self) -> None:
        """Make the index exactly what the address files say (a full scan)."""
        by_key = self._from_scan()
        if not self.writable:
            self._entries = by_key
            return
        expected = {entry_name(k): k for k in by_key}
        with os.scandir(self.dir) as entries:
            for entry in entries:
                if entry.name == STAMP_FILE or entry.path in self.keep:
                    continue
                if entry.name not in expected:
                    unlink_if_exists(entry.path)  # stale entries and temporary files left by a crash
        for name, key in expected.items():
            data = read_or_none(os.path.join(self.dir, name))
            try:
                current = parse_entry(data) if data is not None else None
            except CorruptEntry:
                current = None
            if current != by_key[key]:
                self._write_entry(key, by_key[key])
        self._entries = by_key
        self._dirty.clear()

    def _write_entry(self, key: Key, ips: set[IPAddress]) -> None:
        path = os.path.join(self.dir, entry_name(key))
        if not ips:
            unlink_if_exists(path)
            return
        content = (INDEX_HEADER + "".join(f"{ip}\n" for ip in sorted(ips, key=sort_key))).encode()
        # In place: the stamp says "dirty" until the call ends, so a torn entry is rebuilt.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)

    # ------------------------------------------------------------ temporary files

    def write_tmp(self, content: bytes, mode: int, *, sync: bool) -> str:
        """A new file with ``content`` in the index directory (same file system as the store:
        it can be linked or renamed into place)."""
        self._counter += 1
        path = os.path.join(self.dir, f"{TMP_PREFIX}{os.getpid()}.{self._counter}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            if os.write(fd, content) != len(content):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
            if sync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            unlink_if_exists(path)  # a full disk must not leave it behind
            raise
        os.close(fd)
        return path

    # ------------------------------------------------------------ stamp

    def _dir_stats(self) -> tuple[int, ...]:
        p, s = os.stat(self.store_dir), os.stat(self.dir)
        return (p.st_ino, p.st_mtime_ns, p.st_ctime_ns, s.st_ino, s.st_mtime_ns, s.st_ctime_ns)

    def _stamp_valid(self) -> bool:
        data = os.pread(self._stamp_fd, 512, 0)
        if not data.startswith(STAMP_HEADER):
            return False
        try:
            recorded = tuple(int(x) for x in data[len(STAMP_HEADER) :].split())
        except ValueError:
            return False
        return recorded == self._dir_stats()

    def _write_stamp(self, data: bytes) -> None:
        # In place (not replace): rewriting the stamp must not change the directory it records.
        os.pwrite(self._stamp_fd, data, 0)
        os.ftruncate(self._stamp_fd, len(data))

    def _write_valid_stamp(self) -> None:
        fine = fine_grained_timestamps(self.dir, STAMP_FILE)  # before the stats: a probe changes the directory
        stats = self._dir_stats()
        self._write_stamp(STAMP_HEADER + " ".join(str(x) for x in stats).encode() + b"\n")
        if fine:  # we have just queried them: the next change gets a later timestamp
            return
        newest = max(stats[1], stats[2], stats[4], stats[5])
        deadline = time.monotonic() + MAX_TICK_WAIT
        while time.clock_gettime_ns(CLOCK_REALTIME_COARSE) <= newest:
            if time.monotonic() > deadline:  # the clock went backwards: do not trust the stamp
                self._write_stamp(b"dirty\n")
                return
            time.sleep(0.0005)


_FINE_GRAINED: dict[int, bool] = {}  # st_dev -> fine_grained_timestamps' answer


def fine_grained_timestamps(directory: str, existing: str) -> bool:
    """Whether the file system of ``directory`` gives a change made in the same clock tick as
    the previous one, after that one's timestamps were read, a later timestamp (multigrain).
    Probed once per file system and process: two changes to ``directory`` within one tick of
    the coarse clock (a hard link to its file ``existing`` made and removed: no inode to
    allocate), the timestamps read in between; a probe that a tick interrupts is retried.
    A probe that cannot run answers False (the caller then waits out the tick)."""
    try:
        dev = os.stat(directory).st_dev
        known = _FINE_GRAINED.get(dev)
        if known is not None:
            return known
        target = os.path.join(directory, existing)
        probe = os.path.join(directory, f"{TMP_PREFIX}{os.getpid()}.mgtime")
        unlink_if_exists(probe)  # left by a process of this pid that died mid-probe
        answer = False
        for _ in range(5):
            tick = time.clock_gettime_ns(CLOCK_REALTIME_COARSE)
            os.link(target, probe)
            first = os.stat(directory).st_ctime_ns
            os.unlink(probe)
            second = os.stat(directory).st_ctime_ns
            if time.clock_gettime_ns(CLOCK_REALTIME_COARSE) == tick:
                answer = second > first
                break
    except OSError:
        return False
    _FINE_GRAINED[dev] = answer
    return answer


def entry_name(key: Key) -> str:
    name = f"{key.container_id}:{key.ifname}"
    if len(os.fsencode(name)) <= 200 and "/" not in name and "\0" not in name:
        return name
    import hashlib  # only for container IDs too long for a file name

    return "#" + hashlib.sha256(os.fsencode(name)).hexdigest()


def parse_entry(data: bytes) -> set[IPAddress]:
    text = data.decode("ascii", "replace")
    if not text.startswith(INDEX_HEADER):
        raise CorruptEntry
    try:
        return {ipaddress.ip_address(line) for line in text[len(INDEX_HEADER) :].split()}
    except ValueError:
        raise CorruptEntry from None


def iter_index_names(store_dir: str) -> Iterator[str]:
    """The attachment entries in a store's index (for tests and debugging)."""
    try:
        with os.scandir(os.path.join(store_dir, INDEX_DIR)) as entries:
            names = [e.name for e in entries if e.name != STAMP_FILE and not e.name.startswith(TMP_PREFIX)]
    except FileNotFoundError:
        return iter(())
    return iter(sorted(names))
