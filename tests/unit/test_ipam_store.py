"""FileStore in tmp_path: the reference's layout, the attachment index (hint + stamp), crash
leftovers, path safety, and a multi-process race."""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest

from cni_plugins.spec.errors import CNIError
from cni_plugins.spec.types import IPAddress
from ipam import allocator
from ipam.config import parse_range_set
from ipam.store import Key, parse_owner
from ipam.store.files import FileStore
from ipam.store.index import (
    CLOCK_REALTIME_COARSE,
    INDEX_DIR,
    STAMP_FILE,
    fine_grained_timestamps,
    iter_index_names,
)

IP = ipaddress.ip_address
RS = (parse_range_set([{"subnet": "10.1.0.0/24"}], "ipam.ranges[0]"),)


def add(data_dir: Path, cid: str, ifname: str = "eth0", net: str = "net1") -> str:
    with FileStore(str(data_dir), net) as store:
        (ipc,) = allocator.allocate_all(store, RS, Key(cid, ifname), (None,))
    return str(ipc.address.ip)


def delete(data_dir: Path, cid: str, ifname: str = "eth0", net: str = "net1") -> tuple[str, ...]:
    with FileStore(str(data_dir), net) as store:
        return tuple(map(str, allocator.release(store, Key(cid, ifname))))


def stamp(data_dir: Path, net: str = "net1") -> bytes:
    return (data_dir / net / INDEX_DIR / STAMP_FILE).read_bytes()


def test_reference_layout(tmp_path: Path) -> None:
    assert add(tmp_path, "c1") == "10.1.0.2"
    net = tmp_path / "net1"
    assert stat.S_IMODE(net.stat().st_mode) == 0o755 & ~_umask()
    ip_file = net / "10.1.0.2"
    assert ip_file.read_bytes() == b"c1\r\neth0"  # exactly: no trailing newline
    assert stat.S_IMODE(ip_file.stat().st_mode) == 0o600
    assert ip_file.stat().st_nlink == 1  # the temporary link is gone
    assert (net / "last_reserved_ip.0").read_bytes() == b"10.1.0.2"
    assert (net / "lock").exists()
    assert sorted(p.name for p in net.iterdir()) == [INDEX_DIR, "10.1.0.2", "last_reserved_ip.0", "lock"]
    assert list(iter_index_names(str(net))) == ["c1:eth0"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_index_content_can_never_match_the_references_release_rule(tmp_path: Path) -> None:
    for i in range(3):
        add(tmp_path, f"c{i}")
    add(tmp_path, "c0", "eth1")
    for path in (tmp_path / "net1" / INDEX_DIR).iterdir():
        trimmed = path.read_bytes().strip()
        for cid, ifname in (("c0", "eth0"), ("c0", "eth1"), ("c1", "eth0"), ("c2", "eth0")):
            assert trimmed not in (f"{cid}\r\n{ifname}".encode(), cid.encode()), path
        assert b"\r" not in trimmed


def test_release_reads_only_the_index_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(20):
        add(tmp_path, f"c{i}")
    scans: list[str] = []
    real_scan = FileStore._scan

    def counted_scan(self: FileStore) -> dict[IPAddress, Key | None]:
        scans.append(self.dir)
        return real_scan(self)

    monkeypatch.setattr(FileStore, "_scan", counted_scan)
    assert delete(tmp_path, "c7") == ("10.1.0.9",)
    assert delete(tmp_path, "c7") == ()  # idempotent, still no scan
    assert add(tmp_path, "new") == "10.1.0.22"
    with FileStore(str(tmp_path), "net1") as store:
        assert allocator.holds(store, Key("c3", "eth0")) == (IP("10.1.0.5"),)
    assert scans == []
    assert not (tmp_path / "net1" / "10.1.0.9").exists()


def test_foreign_reservation_triggers_a_rebuild_and_is_released(tmp_path: Path) -> None:
    add(tmp_path, "ours")
    net = tmp_path / "net1"
    # What the reference plugin does: O_EXCL create, write, last_reserved_ip in place.
    (net / "10.1.0.3").write_bytes(b"theirs\r\neth0")
    (net / "last_reserved_ip.0").write_bytes(b"10.1.0.3")
    assert add(tmp_path, "ours2") == "10.1.0.4"
    with pytest.raises(CNIError, match="10.1.0.3 has been allocated to theirs"):
        add(tmp_path, "theirs")
    assert delete(tmp_path, "theirs") == ("10.1.0.3",)
    assert "theirs:eth0" not in iter_index_names(str(net))


def test_stale_index_entry_is_ignored(tmp_path: Path) -> None:
    add(tmp_path, "c1")
    net = tmp_path / "net1"
    os.unlink(net / "10.1.0.2")  # released by someone else (e.g. the reference's DEL)
    (net / "10.1.0.2").write_bytes(b"other\r\neth0")  # and re-used
    assert delete(tmp_path, "c1") == ()
    assert (net / "10.1.0.2").read_bytes() == b"other\r\neth0"
    assert delete(tmp_path, "other") == ("10.1.0.2",)


def test_lost_or_corrupt_index_is_rebuilt(tmp_path: Path) -> None:
    add(tmp_path, "c1")
    add(tmp_path, "c2")
    idx = tmp_path / "net1" / INDEX_DIR
    os.unlink(idx / "c1:eth0")  # lost (changes the index dir's mtime)
    (idx / "c2:eth0").write_bytes(b"garbage")  # corrupt in place (does not)
    assert delete(tmp_path, "c1") == ("10.1.0.2",)
    assert delete(tmp_path, "c2") == ("10.1.0.3",)


def test_crash_leaves_a_dirty_stamp_and_the_next_call_rebuilds(tmp_path: Path) -> None:
    add(tmp_path, "c1")
    store = FileStore(str(tmp_path), "net1")
    store.__enter__()
    assert stamp(tmp_path) == b"dirty\n"
    store.reserve(Key("crashed", "eth0"), IP("10.1.0.50"))  # then the process dies: no __exit__
    os.close(store._lock_fd)
    store.index.close()
    assert delete(tmp_path, "crashed") == ("10.1.0.50",)
    leftovers = [n for n in os.listdir(tmp_path / "net1" / INDEX_DIR) if n.startswith(".tmp.")]
    assert leftovers == []


def test_stamp_recorded_and_the_next_change_is_always_visible(tmp_path: Path) -> None:
    for i in range(100):
        if i % 4 < 2:
            time.sleep(0.005)  # a tick after the last change (then ours gets a coarse timestamp)
        add(tmp_path, f"c{i}") if i % 2 == 0 else delete(tmp_path, f"c{i - 1}")
        header, values = stamp(tmp_path).split(b"\n", 1)
        assert header == b"cni-py host-local stamp v1"
        nums = [int(x) for x in values.split()]
        assert len(nums) == 6
        # What the next lock holder (say the reference plugin) does at once must change the
        # recorded timestamps, however soon it comes.
        (tmp_path / "net1" / f"10.1.9.{i}").write_bytes(b"theirs\r\neth0")
        after = os.stat(tmp_path / "net1")
        assert (after.st_mtime_ns, after.st_ctime_ns) != (nums[1], nums[2]), i
        os.unlink(tmp_path / "net1" / f"10.1.9.{i}")


def test_fine_grained_probe_agrees_with_the_kernel(tmp_path: Path) -> None:
    """The probe's answer, against 200 more pairs of changes within one tick, the timestamps
    read in between: with multigrain timestamps the second is always later, without them the
    same (the coarse tick's)."""
    (tmp_path / "x").touch()
    answer = fine_grained_timestamps(str(tmp_path), "x")
    assert fine_grained_timestamps(str(tmp_path), "x") is answer
    pairs, equal = 0, 0
    for _ in range(200):
        tick = time.clock_gettime_ns(CLOCK_REALTIME_COARSE)
        (tmp_path / "f").touch()
        first = os.stat(tmp_path).st_ctime_ns
        (tmp_path / "f").unlink()
        second = os.stat(tmp_path).st_ctime_ns
        if time.clock_gettime_ns(CLOCK_REALTIME_COARSE) == tick:
            pairs += 1
            equal += second == first
    assert pairs >= 50
    assert answer == (equal == 0), (answer, pairs, equal)
    assert not [n for n in os.listdir(tmp_path) if n not in ("f", "x")]  # the probe's link is gone


def test_no_clock_wait_where_timestamps_are_fine_grained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x").touch()
    if not fine_grained_timestamps(str(tmp_path), "x"):
        pytest.skip("this file system has no multigrain timestamps (Linux 6.13+ on ext4, xfs, btrfs, tmpfs)")
    pause = time.sleep
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    # Calls a tick apart, as a runtime's are: each change then starts from a timestamp of an
    # earlier tick and gets the coarse clock's (what an older check took for coarse timestamps).
    for i in range(20):
        pause(0.005)
        add(tmp_path, f"c{i}")
    for i in range(20):
        pause(0.005)
        delete(tmp_path, f"c{i}")
    assert sleeps == []


def test_cursor_rewritten_in_place_to_exactly_the_new_address(tmp_path: Path) -> None:
    add(tmp_path, "c1")
    cursor = tmp_path / "net1" / "last_reserved_ip.0"
    inode = cursor.stat().st_ino
    cursor.write_bytes(b"10.1.0.254")  # what the reference leaves: the next search wraps around
    assert add(tmp_path, "c2") == "10.1.0.3"
    assert cursor.read_bytes() == b"10.1.0.3"  # no tail of the longer address left
    assert cursor.stat().st_ino == inode and stat.S_IMODE(cursor.stat().st_mode) == 0o644


def test_empty_reservation_file_is_taken_back(tmp_path: Path) -> None:
    add(tmp_path, "c1")
    net = tmp_path / "net1"
    (net / "10.1.0.3").write_bytes(b"")  # an old writer crashed between create and write
    (net / "last_reserved_ip.0").write_bytes(b"10.1.0.2")
    assert add(tmp_path, "c2") == "10.1.0.3"
    assert (net / "10.1.0.3").read_bytes() == b"c2\r\neth0"


def test_legacy_id_only_files_are_released_by_id(tmp_path: Path) -> None:
    add(tmp_path, "c1")
    (tmp_path / "net1" / "10.1.0.9").write_bytes(b"  old-ctr \n")
    assert delete(tmp_path, "old-ctr", "eth3") == ("10.1.0.9",)


def test_gc_on_disk_keeps_bookkeeping_files(tmp_path: Path) -> None:
    for cid in ("a", "b", "c"):
        add(tmp_path, cid)
    net = tmp_path / "net1"
    (net / "10.1.0.40").write_bytes(b"")
    (net / "not-an-ip").write_bytes(b"zz")
    with FileStore(str(tmp_path), "net1") as store:
        stale = allocator.gc(store, frozenset({Key("b", "eth0")}))
    assert sorted(map(str, stale)) == ["10.1.0.2", "10.1.0.4", "10.1.0.40"]
    assert sorted(p.name for p in net.iterdir()) == [INDEX_DIR, "10.1.0.3", "last_reserved_ip.0", "lock", "not-an-ip"]
    assert list(iter_index_names(str(net))) == ["b:eth0"]
    assert delete(tmp_path, "b") == ("10.1.0.3",)


@pytest.mark.parametrize("net", ["..", ".", "a/b", ""])
def test_network_names_that_escape_are_refused(tmp_path: Path, net: str) -> None:
    with pytest.raises(CNIError) as info:
        FileStore(str(tmp_path / "d"), net)
    assert info.value.code == 7
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "content,owner",
    [
        (b"c1\r\neth0", Key("c1", "eth0")),
        (b" c1\r\neth0\n", Key("c1", "eth0")),
        (b"c1", Key("c1", "")),
        (b"c1\r\n", Key("c1", "")),
        (b"", None),
        (b"\x00\x01", None),
        (b"../x\r\neth0", None),
        (b"c1\r\neth 0", None),
    ],
)
def test_parse_owner(content: bytes, owner: Key | None) -> None:
    assert parse_owner(content) == owner


def _worker(data_dir: str, wid: int, n: int, out: multiprocessing.Queue[list[str]]) -> None:
    out.put([add(Path(data_dir), f"w{wid}-{i}") for i in range(n)])


def test_concurrent_processes_never_share_an_address(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[list[str]] = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), w, 15, queue)) for w in range(4)]
    for p in procs:
        p.start()
    got = [ip for _ in procs for ip in queue.get(timeout=60)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(got) == 60 and len(set(got)) == 60
    files = [n for n in os.listdir(tmp_path / "net1") if n[0].isdigit()]
    assert sorted(files) == sorted(got)
