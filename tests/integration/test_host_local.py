"""host-local as a runtime runs it: the installed executable exec'd with env + stdin, a
dataDir in tmp_path, every spec version; concurrency, exhaustion, reuse, dual-stack, GC,
round-robin, bad input that writes nothing. (IPAM needs no namespace of its own; CNI_NETNS
names a throwaway one, as a runtime would pass the container's.)"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.spec.version import SUPPORTED_VERSIONS
from tests.integration.nsutil import PluginRun, path, run_plugin, unique

INDEX = ".cni-py-index"


class HostLocal:
    def __init__(self, cni_bin: Path, data_dir: Path, netns: str) -> None:
        self.cni_bin, self.data_dir, self.netns = cni_bin, data_dir, netns
        self.net = unique("hl")

    def conf(self, version: str = "1.0.0", **ipam: Any) -> dict[str, Any]:
        top = {
            k: ipam.pop(k) for k in list(ipam) if k in ("runtimeConfig", "args", "cni.dev/valid-attachments", "name")
        }
        return {
            "cniVersion": version,
            "name": self.net,
            "type": "bridge",
            **top,
            "ipam": {"type": "host-local", "dataDir": str(self.data_dir), **ipam},
        }

    def __call__(
        self,
        command: str,
        conf: dict[str, Any] | bytes,
        cid: str = "ctr1",
        ifname: str = "eth0",
        cni_args: str = "",
        env: dict[str, Any] | None = None,
    ) -> PluginRun:
        return run_plugin(
            self.cni_bin,
            "host-local",
            command,
            conf,
            netns=self.netns,
            container_id=cid,
            ifname=ifname,
            cni_args=cni_args,
            env=env,
        )

    @property
    def dir(self) -> Path:
        return self.data_dir / self.net

    def ip_files(self) -> dict[str, bytes]:
        if not self.dir.exists():
            return {}
        return {
            p.name: p.read_bytes()
            for p in self.dir.iterdir()
            if p.is_file() and p.name[0] in "0123456789abcdef" and p.name != "lock"
        }


@pytest.fixture
def hl(cni_bin: Path, tmp_path: Path, container_ns: str) -> HostLocal:
    return HostLocal(cni_bin, tmp_path / "data", path(container_ns))


def addresses(out: dict[str, Any]) -> list[str]:
    if "ips" in out:
        return [ip["address"] for ip in out["ips"]]
    return [out[f]["ip"] for f in ("ip4", "ip6") if f in out]


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_check_del_every_version(hl: HostLocal, version: str) -> None:
    ranges = [[{"subnet": "10.61.0.0/24"}]] + ([[{"subnet": "fd61::/64"}]] if version >= "0.3.0" else [])
    conf = hl.conf(version, ranges=ranges, routes=[{"dst": "0.0.0.0/0"}])
    out = hl("ADD", conf).ok()
    assert out["cniVersion"] == version and "interfaces" not in out
    assert addresses(out) == ["10.61.0.2/24"] + (["fd61::2/64"] if version >= "0.3.0" else [])
    assert all("interface" not in ip for ip in out.get("ips", []))
    assert hl.ip_files() == {
        "10.61.0.2": b"ctr1\r\neth0",
        **({"fd61::2": b"ctr1\r\neth0"} if version >= "0.3.0" else {}),
    }
    if version >= "0.4.0":
        hl("CHECK", {**conf, "prevResult": out}).ok()
    hl("DEL", conf).ok()
    assert hl.ip_files() == {}
    assert [n for n in os.listdir(hl.dir / INDEX) if n != "stamp"] == []
    hl("DEL", conf).ok()  # again: still success
    if version >= "0.4.0":
        bad = hl("CHECK", conf)
        assert bad.rc == 1 and "Failed to find address added by container ctr1" in bad.json["msg"]


def test_sixteen_processes_allocate_800_distinct_addresses(hl: HostLocal) -> None:
    conf = json.dumps(hl.conf(subnet="10.62.0.0/20")).encode()
    results: dict[int, list[str]] = {}
    errors: list[str] = []

    def worker(w: int) -> None:
        got = []
        for i in range(50):
            res = hl("ADD", conf, cid=f"w{w}-c{i}")
            if res.rc != 0:
                errors.append(res.stdout + res.stderr)
                return
            got.append(res.json["ips"][0]["address"])
        results[w] = got

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    got = [a for w in range(16) for a in results[w]]
    assert len(got) == 800 and len(set(got)) == 800
    files = hl.ip_files()
    assert len(files) == 800
    owners = {content for content in files.values()}
    assert owners == {f"w{w}-c{i}\r\neth0".encode() for w in range(16) for i in range(50)}
    assert len([n for n in os.listdir(hl.dir / INDEX) if ":" in n]) == 800


def test_exhausted_29_fails_cleanly_then_release_and_reuse(hl: HostLocal) -> None:
    conf = hl.conf(subnet="10.63.0.0/29")
    got = [hl("ADD", conf, cid=f"c{i}").ok()["ips"][0]["address"] for i in range(5)]
    assert got == [f"10.63.0.{n}/29" for n in (2, 3, 4, 5, 6)]  # .0 network, .1 gateway, .7 broadcast never
    before = (hl.ip_files(), (hl.dir / "last_reserved_ip.0").read_bytes())
    res = hl("ADD", conf, cid="c5")
    assert res.rc == 1 and res.json["code"] == 7
    assert "no IP addresses available in range set 10.63.0.0/29" in res.json["msg"]
    assert (hl.ip_files(), (hl.dir / "last_reserved_ip.0").read_bytes()) == before
    hl("DEL", conf, cid="c2").ok()
    assert hl("ADD", conf, cid="c6").ok()["ips"][0]["address"] == "10.63.0.4/29"  # the released one is reused
    assert hl.ip_files()["10.63.0.4"] == b"c6\r\neth0"


def test_duplicate_add_refused_naming_the_held_address(hl: HostLocal) -> None:
    conf = hl.conf(subnet="10.64.0.0/24")
    hl("ADD", conf).ok()
    res = hl("ADD", conf)
    assert (
        res.rc == 1 and "10.64.0.2 has been allocated to ctr1, duplicate allocation is not allowed" in res.json["msg"]
    )
    assert list(hl.ip_files()) == ["10.64.0.2"]
    assert hl("ADD", conf, ifname="eth1").ok()["ips"][0]["address"] == "10.64.0.3/24"


def test_round_robin_continues_after_last_reserved_ip(hl: HostLocal) -> None:
    conf = hl.conf(subnet="10.65.0.0/24")
    assert hl("ADD", conf, cid="a").ok()["ips"][0]["address"] == "10.65.0.2/24"
    (hl.dir / "last_reserved_ip.0").write_text("10.65.0.20")
    assert hl("ADD", conf, cid="b").ok()["ips"][0]["address"] == "10.65.0.21/24"
    hl("DEL", conf, cid="b").ok()
    assert hl("ADD", conf, cid="c").ok()["ips"][0]["address"] == "10.65.0.22/24"  # not the one just released
    (hl.dir / "last_reserved_ip.0").write_text("10.65.0.254")
    assert hl("ADD", conf, cid="d").ok()["ips"][0]["address"] == "10.65.0.3/24"  # wraps, skipping gateway and taken


def test_dual_stack(hl: HostLocal) -> None:
    conf = hl.conf(
        ranges=[
            [{"subnet": "10.66.0.0/24", "gateway": "10.66.0.254"}],
            [{"subnet": "fd66::/120", "rangeStart": "fd66::10"}],
        ]
    )
    out = hl("ADD", conf).ok()
    assert out["ips"] == [
        {"address": "10.66.0.1/24", "gateway": "10.66.0.254"},
        {"address": "fd66::10/120", "gateway": "fd66::1"},
    ]
    assert sorted(hl.ip_files()) == ["10.66.0.1", "fd66::10"]
    assert (hl.dir / "last_reserved_ip.1").read_text() == "fd66::10"
    hl("DEL", conf).ok()
    assert hl.ip_files() == {}


@pytest.mark.parametrize("source", ["cni_args", "args", "capability"])
def test_requested_address_honoured_then_refused_when_taken(hl: HostLocal, source: str) -> None:
    extra: dict[str, Any] = (
        {"args": {"cni": {"ips": ["10.67.0.50"]}}}
        if source == "args"
        else ({"runtimeConfig": {"ips": ["10.67.0.50/24"]}} if source == "capability" else {})
    )
    cni_args = "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.67.0.50" if source == "cni_args" else ""
    conf = hl.conf(subnet="10.67.0.0/24", **extra)
    assert hl("ADD", conf, cid="a", cni_args=cni_args).ok()["ips"][0]["address"] == "10.67.0.50/24"
    res = hl("ADD", conf, cid="b", cni_args=cni_args)
    assert res.rc == 1 and "requested IP address 10.67.0.50 is not available" in res.json["msg"]
    assert list(hl.ip_files()) == ["10.67.0.50"]


def test_gc_releases_attachments_not_in_valid_list(hl: HostLocal) -> None:
    conf = hl.conf("1.1.0", subnet="10.68.0.0/24")
    for cid in ("a", "b", "c"):
        hl("ADD", conf, cid=cid).ok()
    hl("ADD", conf, cid="b", ifname="eth1").ok()
    env = {"CNI_CONTAINERID": None, "CNI_IFNAME": None, "CNI_NETNS": None}
    res = hl("GC", conf, env=env)
    assert res.rc == 0 and "valid-attachments" in res.stderr and len(hl.ip_files()) == 4
    hl(
        "GC",
        {
            **conf,
            "cni.dev/valid-attachments": [
                {"containerID": "b", "ifname": "eth0"},
                {"containerID": "zz", "ifname": "eth0"},
            ],
        },
        env=env,
    ).ok()
    assert hl.ip_files() == {"10.68.0.3": b"b\r\neth0"}
    hl("DEL", conf, cid="b").ok()
    assert hl.ip_files() == {}


def test_status(hl: HostLocal, tmp_path: Path) -> None:
    env = {"CNI_CONTAINERID": None, "CNI_IFNAME": None, "CNI_NETNS": None}
    hl("STATUS", hl.conf("1.1.0", subnet="10.69.0.0/24"), env=env).ok()
    (tmp_path / "blocker").write_text("")
    res = hl(
        "STATUS",
        {
            **hl.conf("1.1.0", subnet="10.69.0.0/24"),
            "ipam": {"type": "host-local", "subnet": "10.69.0.0/24", "dataDir": str(tmp_path / "blocker" / "d")},
        },
        env=env,
    )
    assert res.rc == 1 and res.json["code"] == 50


BAD = [
    # (id, ipam changes, top-level changes, env changes, code, words)
    ("malformed-cidr", {"subnet": "10.70.0.0/40"}, {}, {}, 7, "ipam.subnet"),
    (
        "range-start-outside",
        {"ranges": [[{"subnet": "10.70.0.0/24", "rangeStart": "10.71.0.5"}]]},
        {},
        {},
        7,
        "ipam.ranges[0][0].rangeStart: 10.71.0.5 is not in subnet 10.70.0.0/24",
    ),
    ("gateway-outside", {"subnet": "10.70.0.0/24", "gateway": "10.99.0.1"}, {}, {}, 7, "ipam.gateway"),
    ("overlapping", {"ranges": [[{"subnet": "10.70.0.0/24"}], [{"subnet": "10.70.0.128/25"}]]}, {}, {}, 7, "overlaps"),
    ("too-small", {"subnet": "10.70.0.0/31"}, {}, {}, 7, "too small"),
    ("relative-datadir", {"subnet": "10.70.0.0/24", "dataDir": "rel/dir"}, {}, {}, 7, "ipam.dataDir"),
    ("dotdot-datadir", {"subnet": "10.70.0.0/24", "dataDir": "{data}/../../escape"}, {}, {}, 7, "ipam.dataDir"),
    ("network-name-escape", {"subnet": "10.70.0.0/24"}, {"name": "../../escape"}, {}, 7, "invalid network name"),
    ("container-id-escape", {"subnet": "10.70.0.0/24"}, {}, {"CNI_CONTAINERID": "../../escape"}, 4, "containerID"),
    ("ifname-escape", {"subnet": "10.70.0.0/24"}, {}, {"CNI_IFNAME": "../x"}, 4, "interface name"),
    ("ifname-dotdot", {"subnet": "10.70.0.0/24"}, {}, {"CNI_IFNAME": ".."}, 4, "interface name"),
    ("requested-outside", {"subnet": "10.70.0.0/24"}, {}, {"CNI_ARGS": "IP=10.80.0.5"}, 7, "not in any range set"),
    ("requested-gateway", {"subnet": "10.70.0.0/24"}, {"runtimeConfig": {"ips": ["10.70.0.1"]}}, {}, 7, "gateway"),
    ("unknown-cni-arg", {"subnet": "10.70.0.0/24"}, {}, {"CNI_ARGS": "FOO=bar"}, 4, "FOO"),
    ("ranges-not-list", {"ranges": "10.70.0.0/24"}, {}, {}, 7, "ipam.ranges"),
]


@pytest.mark.parametrize("ipam,top,env,code,words", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_writes_nothing(
    hl: HostLocal, tmp_path: Path, ipam: dict[str, Any], top: dict[str, Any], env: dict[str, str], code: int, words: str
) -> None:
    ipam = {k: (v.replace("{data}", str(hl.data_dir)) if isinstance(v, str) else v) for k, v in ipam.items()}
    conf = {**hl.conf(**ipam), **top}
    before = sorted(p.name for p in tmp_path.iterdir())
    res = hl(
        "ADD",
        conf,
        cid=env.get("CNI_CONTAINERID", "ctr1"),
        ifname=env.get("CNI_IFNAME", "eth0"),
        cni_args=env.get("CNI_ARGS", ""),
    )
    assert res.rc == 1, res
    assert res.json["code"] == code and words in res.json["msg"] + res.json.get("details", ""), res.json
    assert "Traceback" not in res.stderr
    assert not hl.data_dir.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path / "escape").exists() and not Path("/escape").exists()
