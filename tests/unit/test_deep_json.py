"""Any depth of JSON on stdin gets a CNI answer: decoded up to Go's limit (10,000 levels, as
the reference decodes it), a code-6 error beyond it, and a value too deep (or too long) to
print is shown cut short in a message, never a RecursionError and a traceback."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from typing import Any

import pytest

from cni_plugins.protocol import skel
from cni_plugins.spec.errors import shown
from cni_plugins.spec.types import Result
from conf import gojson
from conf.netconf import NetConf


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def nested_objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [900, 1000, 5000, 9_990])
def test_deep_documents_are_decoded_like_gos(depth: int) -> None:
    value = gojson.loads(nested(depth))
    for _ in range(depth):
        value = value[0]
    assert value == 1
    assert gojson.loads(nested_objects(depth))["A"]["a"] is not None  # keys still fold
    assert sys.getrecursionlimit() < 2000  # put back


@pytest.mark.parametrize("depth", [10_050, 20_000, 200_000])
def test_deeper_than_gos_limit_is_a_decoding_error(depth: int) -> None:
    for text in (nested(depth), nested_objects(depth)):
        with pytest.raises(ValueError, match="exceeded max depth"):
            gojson.loads(text)
    with pytest.raises(Exception) as info:
        NetConf.from_bytes(f'{{"cniVersion": "1.0.0", "name": "n", "x": {nested(depth)}}}'.encode())
    assert getattr(info.value, "code", None) == 6


def test_a_thread_with_a_small_stack_refuses_instead_of_crashing() -> None:
    code = (
        "import threading\n"
        "from conf import gojson\n"
        "threading.stack_size(256 * 1024)\n"
        "out = []\n"
        "def decode():\n"
        "    try:\n"
        f"        gojson.loads({nested(8000)!r})\n"
        "        out.append('decoded')\n"
        "    except ValueError as exc:\n"
        "        out.append(str(exc))\n"
        "t = threading.Thread(target=decode)\n"
        "t.start()\n"
        "t.join()\n"
        "print(out[0])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "exceeded max depth" in proc.stdout


def _add(args: skel.CmdArgs) -> Result:
    return Result()


def _nothing(args: skel.CmdArgs) -> None:
    return None


PLUGIN = skel.Plugin(name="deep", add=_add, delete=_nothing, check=_nothing)


def call(command: str, doc: str) -> tuple[int, Any, str]:
    out, err = io.StringIO(), io.StringIO()
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/var/run/netns/none",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/x",
    }
    rc = skel.run(PLUGIN, environ=env, stdin=doc.encode(), stdout=out, stderr=err)
    return rc, json.loads(out.getvalue()) if out.getvalue().strip() else None, err.getvalue()


@pytest.mark.parametrize("command", ["ADD", "DEL"])
@pytest.mark.parametrize(
    "key", ["x", "runtimeConfig", "args", "ipam", "prevResult", "dns", "cni.dev/valid-attachments"]
)
@pytest.mark.parametrize("depth", [995, 5_000, 50_000])
def test_deep_values_anywhere_get_a_cni_answer(command: str, key: str, depth: int) -> None:
    for value in (nested(depth), nested_objects(depth), '{"portMappings": ' + nested(depth) + "}"):
        rc, answer, err = call(command, f'{{"cniVersion": "1.0.0", "name": "n", "type": "deep", "{key}": {value}}}')
        assert "Traceback" not in err, err
        if rc:
            assert answer["code"] in (6, 7), answer
            assert len(json.dumps(answer)) < 2000, answer  # what is shown of the value is cut short
        else:
            assert answer is None or "cniVersion" in answer


def test_shown_is_repr_for_small_values_and_bounded_for_others() -> None:
    for value in ("abc", {"b": 1, "a": [1, 2]}, gojson.loads('{"B": {"x": 1}, "a": 2}'), None, True, 1.5, [1, "x"]):
        assert shown(value) == repr(value)
    assert len(shown("x" * 10_000_000)) < 200
    assert shown(gojson.loads(nested(5000))) == "[[[[[...]]]]]"
    assert len(shown(list(range(10_000)))) < 100
