"""cnitool drives a conflist through the installed plugins and keeps libcni's cache."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cni_plugins.runtime.cnitool import container_id_for
from tests.integration.nsutil import links, path


def cnitool(host_ns: str, env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("cnitool", path=str(Path(sys.executable).parent))
    assert exe, "the cnitool console script is installed beside the interpreter"
    full = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **env}
    return subprocess.run(
        ["ip", "netns", "exec", host_ns, exe, *argv], env=full, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def netconf(tmp_path: Path) -> Path:
    d = tmp_path / "net.d"
    d.mkdir()
    (d / "10-lo.conflist").write_text(
        json.dumps({"cniVersion": "1.1.0", "name": "lonet", "plugins": [{"type": "loopback"}]})
    )
    return d


def test_add_check_del_with_cache(
    cni_bin: Path, host_ns: str, container_ns: str, netconf: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    env = {"NETCONFPATH": str(netconf), "CNI_PATH": str(cni_bin), "CNI_CACHE_DIR": str(cache), "CNI_IFNAME": "lo"}
    add = cnitool(host_ns, env, "add", "lonet", path(container_ns))
    assert add.returncode == 0, add.stderr
    result = json.loads(add.stdout)
    assert result["interfaces"][0]["name"] == "lo" and "UP" in links(container_ns)["lo"]["flags"]
    cid = container_id_for(path(container_ns))
    cached = json.loads((cache / "results" / f"lonet-{cid}-lo").read_text())
    assert cached["kind"] == "cniCacheV1" and cached["containerId"] == cid and cached["result"] == result
    assert json.loads(base64.b64decode(cached["config"]))["name"] == "lonet"
    assert cnitool(host_ns, env, "check", "lonet", path(container_ns)).returncode == 0
    assert cnitool(host_ns, env, "status", "lonet", path(container_ns)).returncode == 0
    assert cnitool(host_ns, env, "del", "lonet", path(container_ns)).returncode == 0
    assert "UP" not in links(container_ns)["lo"]["flags"]
    assert not (cache / "results" / f"lonet-{cid}-lo").exists()
    assert cnitool(host_ns, env, "del", "lonet", path(container_ns)).returncode == 0  # idempotent


def test_gc_dels_cached_attachments(
    cni_bin: Path, host_ns: str, container_ns: str, netconf: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    env = {"NETCONFPATH": str(netconf), "CNI_PATH": str(cni_bin), "CNI_CACHE_DIR": str(cache), "CNI_IFNAME": "lo"}
    assert cnitool(host_ns, env, "add", "lonet", path(container_ns)).returncode == 0
    gc = cnitool(host_ns, env, "gc", "lonet", path(container_ns))
    assert gc.returncode == 0, gc.stderr
    assert list((cache / "results").iterdir()) == []
    assert "UP" not in links(container_ns)["lo"]["flags"]


def test_errors_are_clear(cni_bin: Path, host_ns: str, container_ns: str, netconf: Path, tmp_path: Path) -> None:
    env = {"NETCONFPATH": str(netconf), "CNI_PATH": str(cni_bin), "CNI_CACHE_DIR": str(tmp_path / "c")}
    res = cnitool(host_ns, env, "add", "nosuchnet", path(container_ns))
    assert res.returncode == 1 and 'no net configuration with name "nosuchnet"' in res.stderr
    res = cnitool(host_ns, {**env, "CNI_PATH": str(tmp_path)}, "add", "lonet", path(container_ns))
    assert res.returncode == 1 and 'failed to find plugin "loopback"' in res.stderr
    res = cnitool(host_ns, {**env, "CAP_ARGS": "{nope"}, "add", "lonet", path(container_ns))
    assert res.returncode == 1 and "CAP_ARGS" in res.stderr
    assert "Traceback" not in res.stderr
