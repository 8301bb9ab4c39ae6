"""containerd 1.6 with ``ctr run --cni`` on a conflist of ours, inside a sandbox that stands for
the host (tests/integration/runtimes.py): ctr reads /etc/cni/net.d and /opt/cni/bin, which
the sandbox's mount namespace backs with this test's directories; the daemon runs with its own
root, state, socket and config, started here and stopped at the end. ctr passes no capability
args, so the port mapping is a static ``runtimeConfig`` in the conflist. When a task exits,
ctr DELs with an empty CNI_NETNS after the task (and its namespace) is gone: our plugins must
clean up from the container ID and the cached prevResult alone (a recorder plugin at the end
of the chain shows what ctr passed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.images import busybox_rootfs_tar, oci_layout_tar
from tests.integration.runtimes import (
    HOST_ADDR,
    Containerd,
    Sandbox,
    assert_helper_served,
    install_plugins,
    need,
    wait_for,
)

NETWORK, SUBNET, GATEWAY, HOST_PORT = "cnipy-ctr", "10.88.5.0/24", "10.88.5.1", 8081
HTTPD = "mkdir -p /w && echo {name} > /w/index.html && exec httpd -f -p 80 -h /w"

RECORDER = """#!{python} -I
import json, os, sys
data = sys.stdin.read()
keys = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
with open({log!r}, "a") as fh:
    fh.write(json.dumps({{k: os.environ.get(k, "") for k in keys}}) + "\\n")
command = os.environ.get("CNI_COMMAND")
if command == "VERSION":
    print(json.dumps({{"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]}}))
elif command == "ADD":
    print(json.dumps(json.loads(data)["prevResult"]))
"""


def conflist() -> dict[str, Any]:
    ipam = {"type": "host-local", "ranges": [[{"subnet": SUBNET}]], "routes": [{"dst": "0.0.0.0/0"}]}
    return {
        "cniVersion": "1.0.0",
        "name": NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cnipyctr0",
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": ipam,
            },
            {
                "type": "portmap",
                "runtimeConfig": {"portMappings": [{"hostPort": HOST_PORT, "containerPort": 80, "protocol": "tcp"}]},
            },
            {"type": "firewall"},
            {"type": "tuning", "sysctl": {"net.ipv4.conf.IFNAME.arp_notify": "1"}},
            {"type": "cnipy-recorder"},
        ],
    }


@pytest.fixture(params=["off", "on"], ids=["helper-off", "helper-on"])
def containerd(request: pytest.FixtureRequest, host_untouched: None) -> Iterator[tuple[Containerd, Path | None]]:
    need("containerd", "ctr", "runc", "containerd-shim-runc-v2", "nsenter", "unshare")
    sb = Sandbox(f"ctr{request.param}")
    ctrd: Containerd | None = None
    try:
        sb.start()
        bin_dir = sb.shadow("/opt/cni/bin")  # ctr's fixed plugin dir, as the sandbox sees it
        helper_calls = install_plugins(sb, request.param, bin_dir)[2]
        recorder = bin_dir / "cnipy-recorder"
        recorder.write_text(RECORDER.format(python=sys.executable, log=str(sb.work / "recorded.jsonl")))
        recorder.chmod(0o755)
        (sb.shadow("/etc/cni/net.d") / "10-cnipy.conflist").write_text(json.dumps(conflist(), indent=1))
        ctrd = Containerd(sb).start()
        oci = oci_layout_tar(busybox_rootfs_tar(sb.work / "rootfs.tar"), sb.work / "image-oci.tar")
        ctrd.ctr("image", "import", "--snapshotter", "native", str(oci))
        yield ctrd, helper_calls
        assert ctrd.stop() == 0, "containerd did not stop cleanly on SIGTERM"
    finally:
        if ctrd is not None:
            ctrd.stop()
        sb.close()


def cached(ctrd: Containerd, cid: str) -> dict[str, Any] | None:
    path = ctrd.sb.shadow("/var/lib/cni") / "results" / f"{NETWORK}-default-{cid}-eth0"  # go-cni's ID: <namespace>-<id>
    return json.loads(path.read_text()) if path.exists() else None


def start(ctrd: Containerd, cid: str) -> tuple[subprocess.Popen[str], int, str]:
    """A container serving its name on port 80; (ctr run process, task pid, address)."""
    proc = ctrd.run_popen(cid, "sh", "-c", HTTPD.format(name=cid), log=ctrd.sb.work / f"{cid}.log")
    wait_for(lambda: ctrd.task_pid(cid) is not None, f"task {cid} running")
    att = cached(ctrd, cid)
    assert att is not None and att["kind"] == "cniCacheV1", f"no libcni cache entry for {cid}"
    addr = att["result"]["ips"][0]["address"].split("/")[0]
    return proc, int(ctrd.task_pid(cid) or 0), addr


def ctr_exec(ctrd: Containerd, cid: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return ctrd.ctr("task", "exec", "--exec-id", f"x{os.urandom(3).hex()}", cid, *argv, check=False)


def kill(ctrd: Containerd, cid: str, proc: subprocess.Popen[str]) -> None:
    ctrd.ctr("task", "kill", "-s", "SIGKILL", cid)
    proc.wait(timeout=60)  # ctr run: task exited -> network.Remove (DEL) -> task delete -> container rm


def test_ctr_run_cni_on_our_conflist(containerd: tuple[Containerd, Path | None]) -> None:
    ctrd, helper_calls = containerd
    sb = ctrd.sb
    k1, k1_pid, k1_ip = start(ctrd, "k1")
    assert k1_ip.startswith("10.88.5.")
    for url in (f"http://127.0.0.1:{HOST_PORT}/", f"http://{HOST_ADDR}:{HOST_PORT}/", f"http://{k1_ip}/"):
        assert sb.fetch(url) == "k1", url
    assert sb.in_netns_of(k1_pid, "sysctl", "-n", "net.ipv4.conf.eth0.arp_notify").stdout.strip() == "1"  # tuning ran

    k2, _k2_pid, k2_ip = start(ctrd, "k2")
    assert sb.leftovers(["default-k1", "default-k2"])["nft"], "per-container nftables entries are seen"
    assert ctr_exec(ctrd, "k2", "ping", "-c", "1", "-W", "2", k1_ip).returncode == 0
    assert ctr_exec(ctrd, "k1", "ping", "-c", "1", "-W", "2", k2_ip).returncode == 0
    assert ctr_exec(ctrd, "k1", "ping", "-c", "1", "-W", "2", GATEWAY).returncode == 0
    got = (
        ctr_exec(ctrd, "k2", "sh", "-c", f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 3 {k1_ip} 80')
        .stdout.strip()
        .splitlines()
    )
    assert got and got[-1] == "k1"
    # Both containers got the conflist's static mapping; the newest one holds the port.
    assert sb.fetch(f"http://127.0.0.1:{HOST_PORT}/") == "k2"

    kill(ctrd, "k2", k2)
    assert cached(ctrd, "k2") is None
    assert sb.leftovers()["reserved"] == [f"{NETWORK}/{k1_ip}"] and sb.fetch(f"http://{k1_ip}/") == "k1"
    kill(ctrd, "k1", k1)

    left = sb.leftovers(["default-k1", "default-k2"])
    assert left == {"links": [], "reserved": [], "cached": [], "nft": [], "netns": []}, left
    assert ctrd.ctr("containers", "ls", "-q").stdout.split() == []
    calls = [json.loads(line) for line in (sb.work / "recorded.jsonl").read_text().splitlines()]
    dels = [c for c in calls if c["CNI_COMMAND"] == "DEL"]
    adds = [c for c in calls if c["CNI_COMMAND"] == "ADD"]
    assert sorted(c["CNI_CONTAINERID"] for c in adds) == ["default-k1", "default-k2"]
    assert all(c["CNI_NETNS"].startswith("/proc/") for c in adds)
    assert sorted(c["CNI_CONTAINERID"] for c in dels) == ["default-k1", "default-k2"]
    assert all(c["CNI_NETNS"] == "" for c in dels), dels  # DEL from the container ID and prevResult alone
    if helper_calls is not None:
        assert_helper_served(helper_calls, 12)  # 2 ADDs and 2 DELs of bridge, host-local, portmap, firewall, tuning
