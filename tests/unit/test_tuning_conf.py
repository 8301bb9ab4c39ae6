"""tuning's option parsing without a kernel: sysctl keys, the allowlist, sources of each option."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.plugins.tuning import TuningConf, check_allowlist, resolve_sysctl
from cni_plugins.protocol.skel import CmdArgs
from cni_plugins.spec.errors import InvalidNetworkConfig
from conf.cni_args import CniArgs
from conf.netconf import NetConf


def cmd(conf: dict[str, Any] | bytes, cni_args: str = "", ifname: str = "eth0") -> CmdArgs:
    data = (
        conf
        if isinstance(conf, bytes)
        else json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "tuning", **conf}).encode()
    )
    return CmdArgs(
        command="ADD",
        container_id="c",
        netns="/x",
        ifname=ifname,
        cni_args=CniArgs.parse(cni_args),
        path=(),
        conf=NetConf.from_bytes(data),
        environ={},
    )


@pytest.mark.parametrize(
    "key, ifname, path",
    [
        ("net.core.somaxconn", "eth0", "net/core/somaxconn"),
        ("net.ipv4.conf.IFNAME.arp_filter", "eth0", "net/ipv4/conf/eth0/arp_filter"),
        ("net.ipv4.conf.eth0.arp_filter", "eth0", "net/ipv4/conf/eth0/arp_filter"),
        ("net.ipv6.conf.all.accept_ra", "eth0", "net/ipv6/conf/all/accept_ra"),
        ("net.ipv6.neigh.default.gc_thresh1", "eth0", "net/ipv6/neigh/default/gc_thresh1"),
        ("net.ipv4.conf.IFNAME.rp_filter", "eth0.100", "net/ipv4/conf/eth0.100/rp_filter"),
        ("net.ipv4.conf.eth0.100.rp_filter", "eth0.100", "net/ipv4/conf/eth0.100/rp_filter"),
    ],
)
def test_resolve_sysctl(key: str, ifname: str, path: str) -> None:
    assert resolve_sysctl(key, ifname) == path


@pytest.mark.parametrize(
    "key",
    [
        "kernel.pid_max",
        "net",
        "net.core",
        "net/core/somaxconn",
        "net.core..x",
        "net.ipv4.conf.eth1.rp_filter",
        "net.ipv4.conf.eth0.100.rp_filter",
        "net.core.x y",
        ".net.core.x",
    ],
)
def test_refused_sysctl_keys(key: str) -> None:
    with pytest.raises(InvalidNetworkConfig):
        resolve_sysctl(key, "eth0")


def test_allowlist(tmp_path: Path) -> None:
    allow = tmp_path / "allowlist.conf"
    check_allowlist(["net.core.somaxconn"], str(allow))  # no file: everything allowed
    allow.write_text("^net\\.core\\.\n\n  ^net\\.ipv4\\.conf\\.IFNAME\\.[a-z_]*$  \n")
    check_allowlist(["net.core.somaxconn", "net.ipv4.conf.IFNAME.arp_filter"], str(allow))
    with pytest.raises(InvalidNetworkConfig, match="net.ipv4.ip_forward"):
        check_allowlist(["net.ipv4.ip_forward"], str(allow))
    allow.write_text("([\n")
    with pytest.raises(InvalidNetworkConfig, match="invalid regular expression"):
        check_allowlist(["net.core.somaxconn"], str(allow))


def test_duplicates_only_counted_in_sysctl_tables() -> None:
    dup_elsewhere = (
        b'{"cniVersion": "1.0.0", "name": "n", "type": "tuning", '
        b'"type": "tuning", "sysctl": {"net.core.somaxconn": "1"}}'
    )
    assert TuningConf.from_json(cmd(dup_elsewhere)).sysctls == (("net.core.somaxconn", "net/core/somaxconn", "1"),)
    dup_args = (
        b'{"cniVersion": "1.0.0", "name": "n", "type": "tuning", "args": '
        b'{"cni": {"sysctl": {"net.core.a": "1", "net.core.a": "2"}}}}'
    )
    with pytest.raises(InvalidNetworkConfig, match="duplicated"):
        TuningConf.from_json(cmd(dup_args))


def test_sources_and_defaults() -> None:
    c = TuningConf.from_json(cmd({}))
    assert (c.mac, c.mtu, c.promisc, c.allmulti, c.txqlen, c.data_dir) == ("", 0, None, None, None, "/run/cni/tuning")
    assert not c.changes_link and c.sysctls == ()
    c = TuningConf.from_json(cmd({"mac": "C2-00-00-00-00-01", "promisc": False}, cni_args="MAC=c2:00:00:00:00:02"))
    assert c.mac == "c2:00:00:00:00:02" and c.promisc is False and c.changes_link
    assert not TuningConf.from_json(cmd({"promisc": False})).changes_link  # false: leave promisc alone
    c = TuningConf.from_json(
        cmd({"runtimeConfig": {"mac": "c2:00:00:00:00:03"}, "args": {"cni": {"mac": "c2:00:00:00:00:04", "txQLen": 0}}})
    )
    assert c.mac == "c2:00:00:00:00:04" and c.txqlen == 0 and c.changes_link


@pytest.mark.parametrize(
    "conf, words",
    [
        ({"mtu": "1400"}, "mtu"),
        ({"args": {"cni": {"promisc": "yes"}}}, "args.cni.promisc"),
        ({"sysctl": {"net.core.somaxconn": 5}}, "sysctl.net.core.somaxconn"),
        ({"mac": "c2:00"}, "mac"),
        ({"txQLen": -1}, "txQLen"),
        ({"dataDir": "x"}, "dataDir"),
    ],
)
def test_bad_values_name_their_key(conf: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidNetworkConfig, match=words.replace(".", r"\.")):
        TuningConf.from_json(cmd(conf))
