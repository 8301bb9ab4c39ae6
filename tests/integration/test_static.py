"""static IPAM as a runtime runs it: addresses from config, capability, args or CNI_ARGS (one
source, in the reference's priority order), every spec version, CHECK against prevResult,
DEL a no-op; compared with the reference binary where it is installed."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import pytest

from cni_plugins.spec.version import SUPPORTED_VERSIONS
from tests.integration.nsutil import PluginRun, path, run_plugin

REFERENCE = Path("/usr/lib/cni/static")


def conf(version: str = "1.0.0", **top: Any) -> dict[str, Any]:
    ipam: dict[str, Any] = {
        "type": "static",
        "addresses": [{"address": "10.90.0.5/24", "gateway": "10.90.0.1"}, {"address": "fd90::5/64"}],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.91.0.0/16", "gw": "10.90.0.254"}],
        "dns": {"nameservers": ["10.90.0.53"], "domain": "example.org", "search": ["example.org"]},
    }
    if version < "0.3.0":
        ipam["addresses"] = ipam["addresses"][:1]
    return {"cniVersion": version, "name": "staticnet", "type": "bridge", "ipam": ipam, **top}


class Static(Protocol):
    """``static(command, conf, cni_args)``: the installed static IPAM run in container_ns."""

    def __call__(
        self, command: str, c: dict[str, Any], cni_args: str = "", bin_dir: Path | None = None
    ) -> PluginRun: ...


@pytest.fixture
def static(cni_bin: Path, container_ns: str) -> Static:
    def run(command: str, c: dict[str, Any], cni_args: str = "", bin_dir: Path | None = None) -> PluginRun:
        return run_plugin(bin_dir or cni_bin, "static", command, c, netns=path(container_ns), cni_args=cni_args)

    return run


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_check_del_every_version(static: Static, version: str) -> None:
    out = static("ADD", conf(version)).ok()
    assert out["cniVersion"] == version and "interfaces" not in out
    if version < "0.3.0":
        assert out["ip4"] == {
            "ip": "10.90.0.5/24",
            "gateway": "10.90.0.1",
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.91.0.0/16", "gw": "10.90.0.254"}],
        }
    else:
        assert [ip["address"] for ip in out["ips"]] == ["10.90.0.5/24", "fd90::5/64"]
        assert all("interface" not in ip for ip in out["ips"])
        assert ("version" in out["ips"][0]) == (version < "1.0.0")
    assert out["dns"] == {"nameservers": ["10.90.0.53"], "domain": "example.org", "search": ["example.org"]}
    if version >= "0.4.0":
        static("CHECK", conf(version, prevResult=out)).ok()
        other = {**out, "ips": [{**out["ips"][0], "gateway": "10.90.0.2"}]}
        assert static("CHECK", conf(version, prevResult=other)).rc == 1
    static("DEL", conf(version)).ok()
    static("DEL", conf(version)).ok()


CASES = [
    ("config", {}, ""),
    ("cni-args", {}, "IP=10.92.0.5/24,fd92::5/64;GATEWAY=10.92.0.1"),
    ("args", {"args": {"cni": {"ips": ["10.93.0.5/24"]}}}, "IP=10.92.0.5/24"),
    (
        "capability",
        {"runtimeConfig": {"ips": ["10.94.0.5/24"]}, "args": {"cni": {"ips": ["10.93.0.5/24"]}}},
        "IP=10.92.0.5/24",
    ),
    ("cni-args-ignore-unknown", {}, "IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.92.0.5/24"),
]


@pytest.mark.parametrize("top,cni_args", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.skipif(not REFERENCE.exists(), reason="reference static plugin not installed")
def test_sources_match_the_reference(static: Static, top: dict[str, Any], cni_args: str) -> None:
    ours = static("ADD", conf(**top), cni_args).ok()
    theirs = static("ADD", conf(**top), cni_args, bin_dir=REFERENCE.parent).ok()
    assert ours == theirs


@pytest.mark.parametrize(
    "c,cni_args,words",
    [
        (conf(ipam={"type": "static", "addresses": [{"address": "10.95.0.5"}]}), "", "ipam.addresses[0].address"),
        (conf(), "IP=10.95.0.5", "CNI_ARGS IP"),
        (conf(), "IP=10.95.0.5/24;MAC=x", "MAC"),
    ],
    ids=["not-cidr", "cni-args-not-cidr", "unknown-cni-arg"],
)
def test_bad_input(static: Static, c: dict[str, Any], cni_args: str, words: str) -> None:
    res = static("ADD", c, cni_args)
    assert res.rc == 1 and words in res.json["msg"] + res.json.get("details", "") and "Traceback" not in res.stderr
