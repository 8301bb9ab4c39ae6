"""The protocol core, in-process: environment and stdin in, exit status and JSON out."""

from __future__ import annotations

import io
import ipaddress
import json
from typing import Any

import pytest

from cni_plugins.protocol import skel
from cni_plugins.protocol.skel import CmdArgs, Handler, Plugin
from cni_plugins.spec.errors import InvalidNetworkConfig
from cni_plugins.spec.types import IPConfig, Result
from cni_plugins.spec.version import SUPPORTED_VERSIONS

ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "ctr1",
    "CNI_NETNS": "/var/run/netns/does-not-matter",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/opt/cni/bin",
}
CONF = {"cniVersion": "1.0.0", "name": "net1", "type": "fake"}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, CmdArgs]] = []

    def plugin(self, **kw: Any) -> Plugin:
        def add(a: CmdArgs) -> Result:
            self.calls.append(("ADD", a))
            return Result(
                ips=(IPConfig(address=ipaddress.ip_interface("10.0.0.2/24"), gateway=ipaddress.ip_address("10.0.0.1")),)
            )

        def rec(verb: str) -> Handler:
            def handler(a: CmdArgs) -> None:
                self.calls.append((verb, a))

            return handler

        return Plugin(
            name="fake",
            add=add,
            delete=rec("DEL"),
            check=rec("CHECK"),
            status=rec("STATUS"),
            gc=rec("GC"),
            about="fake",
            **kw,
        )


def call(plugin: Plugin, env: dict[str, str], stdin: bytes) -> tuple[int, Any, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = skel.run(plugin, environ=env, stdin=stdin, stdout=out, stderr=err)
    text = out.getvalue()
    return rc, (json.loads(text) if text.strip() else None), err.getvalue()


def env_with(**changes: str | None) -> dict[str, str]:
    env = dict(ENV)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def conf_with(**changes: Any) -> bytes:
    c = dict(CONF)
    for k, v in changes.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return json.dumps(c).encode()


BAD_INPUT = [
    # (id, env, stdin, code, words the message must contain)
    ("unknown-command", env_with(CNI_COMMAND="FROB"), conf_with(), 4, "unknown CNI_COMMAND"),
    ("missing-containerid", env_with(CNI_CONTAINERID=None), conf_with(), 4, "CNI_CONTAINERID"),
    ("missing-netns-on-add", env_with(CNI_NETNS=None), conf_with(), 4, "CNI_NETNS"),
    ("missing-ifname", env_with(CNI_IFNAME=None), conf_with(), 4, "CNI_IFNAME"),
    ("missing-path", env_with(CNI_PATH=None), conf_with(), 4, "CNI_PATH"),
    ("bad-containerid", env_with(CNI_CONTAINERID="../etc"), conf_with(), 4, "containerID"),
    ("ifname-too-long", env_with(CNI_IFNAME="a" * 16), conf_with(), 4, "too long"),
    ("ifname-slash", env_with(CNI_IFNAME="a/b"), conf_with(), 4, "interface name"),
    ("ifname-dotdot", env_with(CNI_IFNAME=".."), conf_with(), 4, "interface name"),
    ("stdin-not-json", ENV, b"{not json", 6, "decode network config"),
    ("stdin-array", ENV, b"[1,2]", 6, "JSON object"),
    ("stdin-empty", ENV, b"", 6, "decode network config"),
    ("missing-name", ENV, conf_with(name=None), 7, "missing network name"),
    ("invalid-name", ENV, conf_with(name="../x"), 7, "invalid network name"),
    ("name-not-string", ENV, conf_with(name=5), 6, "name"),
    ("version-unsupported", ENV, conf_with(cniVersion="9.9.9"), 1, "incompatible CNI versions"),
    ("version-garbage", ENV, conf_with(cniVersion="one"), 6, "cniVersion"),
    ("version-object", ENV, conf_with(cniVersion={}), 6, "cniVersion: expected a string"),
    ("version-false", ENV, conf_with(cniVersion=False), 6, "cniVersion: expected a string"),
    ("check-before-0.4.0", env_with(CNI_COMMAND="CHECK"), conf_with(cniVersion="0.3.1"), 1, "does not allow CHECK"),
    ("status-before-1.1.0", env_with(CNI_COMMAND="STATUS"), conf_with(cniVersion="1.0.0"), 1, "does not allow STATUS"),
    ("gc-before-1.1.0", env_with(CNI_COMMAND="GC"), conf_with(cniVersion="0.4.0"), 1, "does not allow GC"),
    (
        "prevresult-bad-ip",
        ENV,
        conf_with(prevResult={"cniVersion": "1.0.0", "ips": [{"address": "300.1.1.1/24"}]}),
        6,
        "prevResult.ips[0].address",
    ),
    (
        "prevresult-bad-index",
        ENV,
        conf_with(prevResult={"cniVersion": "1.0.0", "ips": [{"address": "10.1.1.1/24", "interface": 3}]}),
        6,
        "interface",
    ),
    (
        "runtimeconfig-bad-port",
        ENV,
        conf_with(runtimeConfig={"portMappings": [{"hostPort": 0, "containerPort": 80}]}),
        7,
        "runtimeConfig.portMappings[0].hostPort",
    ),
    ("ipam-not-object", ENV, conf_with(ipam="host-local"), 6, "ipam"),
]


@pytest.mark.parametrize("env,stdin,code,words", [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_gets_error_json_and_no_handler_runs(
    env: dict[str, str], stdin: bytes, code: int, words: str
) -> None:
    rec = Recorder()
    rc, out, err = call(rec.plugin(), env, stdin)
    assert rc == 1
    assert out["code"] == code, out
    assert words in out["msg"] + out.get("details", "")
    assert set(out) <= {"cniVersion", "code", "msg", "details"} and out["cniVersion"]
    assert rec.calls == []  # nothing was attempted
    assert "Traceback" not in err


def test_cni_args_refused_only_by_plugins_that_read_them() -> None:
    env = env_with(CNI_ARGS="IP=10.0.0.5;K8S_POD_NAME=x")
    rc, out, _ = call(Recorder().plugin(cni_args=frozenset({"IP"})), env, conf_with())
    assert rc == 1 and out["code"] == 4 and "K8S_POD_NAME" in out["msg"]
    rc, out, _ = call(
        Recorder().plugin(cni_args=frozenset({"IP"})),
        env_with(CNI_ARGS="IgnoreUnknown=1;IP=10.0.0.5;K8S_POD_NAME=x"),
        conf_with(),
    )
    assert rc == 0
    rc, out, _ = call(Recorder().plugin(), env_with(CNI_ARGS="garbage"), conf_with())
    assert rc == 0  # a plugin that does not read CNI_ARGS ignores it, as the reference does
    rc, out, _ = call(Recorder().plugin(cni_args=frozenset({"IP"})), env_with(CNI_ARGS="garbage"), conf_with())
    assert rc == 1 and out["code"] == 4 and "CNI_ARGS" in out["msg"]


def test_cni_args_parsed_into_handler() -> None:
    rec = Recorder()
    rc, _, _ = call(
        rec.plugin(cni_args=frozenset({"IP", "MAC"})),
        env_with(CNI_ARGS="IP=10.0.0.5;MAC=aa:bb:cc:dd:ee:ff"),
        conf_with(),
    )
    assert rc == 0
    args = rec.calls[0][1]
    assert args.cni_args.get("IP") == "10.0.0.5" and args.cni_args.get("MAC") == "aa:bb:cc:dd:ee:ff"


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_add_result_written_in_config_version(version: str) -> None:
    rec = Recorder()
    rc, out, _ = call(rec.plugin(), ENV, conf_with(cniVersion=version))
    assert rc == 0 and out["cniVersion"] == version
    if version in ("0.1.0", "0.2.0"):
        assert out["ip4"] == {"ip": "10.0.0.2/24", "gateway": "10.0.0.1"}
    else:
        assert out["ips"][0]["address"] == "10.0.0.2/24"
        assert ("version" in out["ips"][0]) == (version < "1.0.0")


def test_version_lists_every_reference_version() -> None:
    rc, out, _ = call(Recorder().plugin(), {"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"0.4.0"}')
    assert rc == 0
    assert out == {
        "cniVersion": "0.4.0",
        "supportedVersions": ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }


def test_no_command_prints_about_to_stderr() -> None:
    rc, out, err = call(Recorder().plugin(), {}, b"")
    assert rc == 0 and out is None and "fake" in err and "1.1.0" in err


def test_del_without_netns_is_allowed() -> None:
    rec = Recorder()
    rc, out, _ = call(rec.plugin(), env_with(CNI_COMMAND="DEL", CNI_NETNS=None), conf_with())
    assert rc == 0 and out is None and rec.calls[0][0] == "DEL"


@pytest.mark.parametrize("verb", ["STATUS", "GC"])
def test_status_and_gc_default_to_success(verb: str) -> None:
    plugin = Plugin(name="p", add=lambda a: Result(), delete=lambda a: None, check=lambda a: None)
    rc, out, _ = call(plugin, {"CNI_COMMAND": verb, "CNI_PATH": "/x"}, conf_with(cniVersion="1.1.0"))
    assert rc == 0 and out is None


def test_gc_sees_valid_attachments() -> None:
    rec = Recorder()
    conf = conf_with(cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]})
    rc, _, _ = call(rec.plugin(), {"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, conf)
    assert rc == 0
    att = rec.calls[0][1].conf.valid_attachments
    assert att is not None and att[0].container_id == "a" and att[0].ifname == "eth0"


def test_cni_error_from_handler_keeps_code_and_config_version() -> None:
    def add(a: CmdArgs) -> Result:
        raise InvalidNetworkConfig("bridge: 'vlan' must be 0-4094", "got 5000")

    plugin = Plugin(name="p", add=add, delete=lambda a: None, check=lambda a: None)
    rc, out, _ = call(plugin, ENV, conf_with(cniVersion="0.4.0"))
    assert rc == 1 and out == {
        "cniVersion": "0.4.0",
        "code": 7,
        "msg": "bridge: 'vlan' must be 0-4094",
        "details": "got 5000",
    }


def test_unexpected_exception_is_code_999_with_traceback_on_stderr_only() -> None:
    def add(a: CmdArgs) -> Result:
        raise KeyError("boom")

    plugin = Plugin(name="p", add=add, delete=lambda a: None, check=lambda a: None)
    rc, out, err = call(plugin, ENV, conf_with())
    assert rc == 1 and out["code"] == 999 and "boom" in out["msg"]
    assert "Traceback" in err and "Traceback" not in json.dumps(out)


def test_plugin_version_restriction() -> None:
    plugin = Recorder().plugin(versions=("0.4.0", "1.0.0", "1.1.0"))
    rc, out, _ = call(plugin, ENV, conf_with(cniVersion="0.3.1"))
    assert rc == 1 and out["code"] == 1 and "0.3.1" in out["details"]


def test_debug_logs_each_step_and_the_call_to_stderr_only() -> None:
    import re

    from cni_plugins.protocol.steps import step

    def add(a: CmdArgs) -> Result:
        with step("make the link"):
            pass
        return Result()

    plugin = Plugin(name="fake", add=add, delete=lambda a: None, check=lambda a: None)
    rc, out, err = call(plugin, env_with(CNI_PY_DEBUG="1"), json.dumps(CONF).encode())
    assert rc == 0 and "debug" not in json.dumps(out)
    assert re.search(r"^fake: debug: step make the link: \d+\.\d ms$", err, re.M), err
    assert re.search(r"^fake: debug: ADD ctr1 eth0: \d+\.\d ms$", err, re.M), err
    rc, _, err = call(plugin, ENV, json.dumps(CONF).encode())
    assert rc == 0 and err == ""


def test_an_environment_error_speaks_the_version_the_config_declares() -> None:
    from cni_plugins.spec.version import CURRENT_VERSION

    plugin = Recorder().plugin()
    rc, out, _ = call(plugin, env_with(CNI_NETNS=None), conf_with(cniVersion="0.4.0"))
    assert rc == 1 and out["code"] == 4 and out["cniVersion"] == "0.4.0"
    for stdin in (b"{not json", b"[1]", json.dumps({**CONF, "cniVersion": "9.9.9"}).encode()):
        rc, out, _ = call(plugin, env_with(CNI_NETNS=None), stdin)
        assert rc == 1 and out["code"] == 4 and out["cniVersion"] == CURRENT_VERSION, stdin
