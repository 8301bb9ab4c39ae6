"""host-local's store when the file system refuses writes: no temporary file outlives a
failed ADD, and a DEL that cannot write the store still releases what it can.

The fault is the kernel's own: ``RLIMIT_FSIZE`` makes every write past the limit fail
(EFBIG, SIGXFSZ ignored), as a full disk fails writes with ENOSPC, without root. Each case
runs in a forked child that sets the limit; the read-only and out-of-inodes cases, which
need mounts, are in the reliability suite's disk part (tests/integration/test_reliability.py)."""

from __future__ import annotations

import io
import ipaddress
import json
import os
import resource
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from cni_plugins.protocol import skel
from cni_plugins.spec.errors import CNIError
from ipam import allocator, host_local
from ipam.store import Key
from ipam.store.files import FileStore
from ipam.store.index import INDEX_DIR, TMP_PREFIX
from tests.unit.test_ipam_store import RS, add


def in_child_with_file_size_limit(limit: int, fn: Callable[[], int]) -> int:
    """Run ``fn`` in a forked child whose writes may not go past ``limit`` bytes; its result (0-255)."""
    pid = os.fork()
    if pid == 0:
        code = 255
        try:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            code = fn()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status), status
    return os.WEXITSTATUS(status)


def tmp_files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / "net1" / INDEX_DIR).iterdir() if p.name.startswith(TMP_PREFIX))


def test_no_temporary_file_outlives_a_reservation_that_could_not_be_written(tmp_path: Path) -> None:
    add(tmp_path, "c1")  # the store exists, its stamp and lock too

    def reserve() -> int:
        try:
            with FileStore(str(tmp_path), "net1") as store:
                allocator.allocate_all(store, RS, Key("c2", "eth0"), (None,))
        except CNIError as err:
            return err.code
        return 0

    # 7 bytes: the stamp's "dirty" fits, a reservation's content ("c2\r\neth0") does not.
    assert in_child_with_file_size_limit(7, reserve) == 5
    assert tmp_files(tmp_path) == []
    assert sorted(n for n in os.listdir(tmp_path / "net1") if n[0].isdigit()) == ["10.1.0.2"]
    assert add(tmp_path, "c2") == "10.1.0.3"  # writable again: the next ADD works


@pytest.mark.parametrize("limit", [0, 7, 40])
def test_a_del_that_cannot_write_the_store_still_releases(tmp_path: Path, limit: int) -> None:
    ips = [add(tmp_path, "c1"), add(tmp_path, "c2")]
    conf = {
        "cniVersion": "1.0.0",
        "name": "net1",
        "type": "host-local",
        "ipam": {"type": "host-local", "subnet": "10.1.0.0/24", "dataDir": str(tmp_path)},
    }
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_PATH": "/x"}
    err = io.StringIO()

    def delete() -> int:
        out = io.StringIO()
        rc = skel.run(host_local.PLUGIN, environ=env, stdin=json.dumps(conf).encode(), stdout=out, stderr=err)
        fell_back = "releasing c1/eth0 without writing the store" in err.getvalue()
        return rc if not out.getvalue() and fell_back else 100

    assert in_child_with_file_size_limit(limit, delete) == 0
    assert sorted(n for n in os.listdir(tmp_path / "net1") if n[0].isdigit()) == [ips[1]]
    assert tmp_files(tmp_path) == []
    assert add(tmp_path, "c3") == "10.1.0.4"  # the index was rebuilt where it could not be written
    with FileStore(str(tmp_path), "net1") as store:
        assert allocator.holds(store, Key("c2", "eth0")) == (ipaddress.ip_address(ips[1]),)
