"""Delegating to another plugin (IPAM) as the spec says: found in CNI_PATH, same
environment with CNI_COMMAND replaced, the full config on stdin.

A delegate's error JSON is decoded back into a ``CNIError`` with the same code, so an IPAM
error reaches the runtime unchanged.

One seam saves a process: when the executable found in CNI_PATH is one of *our* launchers
from this very installation, the delegate runs in-process through the same ``skel.run``
with the same environment, stdin and stdout contract. Any other executable is exec'd.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Mapping

from cni_plugins.spec.errors import (
    CNIError,
    DecodingFailure,
    InternalError,
    InvalidNetworkConfig,
)
from cni_plugins.spec.errors import from_json as error_from_json
from cni_plugins.spec.types import Result
from cni_plugins.spec.version import result_from_json
from conf import gojson

IN_PROCESS = True  # the seam above; tests turn it off to compare both paths


def find_in_path(plugin_type: str, paths: tuple[str, ...]) -> str:
    if not plugin_type or "/" in plugin_type or "\\" in plugin_type or plugin_type in (".", ".."):
        raise InvalidNetworkConfig(
            f"invalid plugin type {plugin_type!r}", "a type names an executable, without any path"
        )
    for directory in paths:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise InvalidNetworkConfig(
        f'failed to find plugin "{plugin_type}" in path [{" ".join(paths)}]',
        "install the plugin into one of the CNI_PATH directories, or fix the type in the config",
    )


def run_plugin(path: str, command: str, stdin: bytes, environ: Mapping[str, str]) -> bytes:
    """Run the plugin at ``path`` with CNI_COMMAND=command; its stdout on success, else raise."""
    env = dict(environ)
    env["CNI_COMMAND"] = command
    done = _run_in_process(path, stdin, env) if IN_PROCESS else None
    code, out, err = done if done is not None else _exec(path, stdin, env)
    if code != 0:
        raise _decode_error(path, out, err)
    return out


def _exec(path: str, stdin: bytes, env: dict[str, str]) -> tuple[int, bytes, bytes]:
    try:
        proc = subprocess.run([path], input=stdin, env=env, capture_output=True, check=False)
    except OSError as exc:
        raise InternalError(f"exec plugin {path}: {exc.strerror}") from None
    if proc.stderr:
        sys.stderr.write(proc.stderr.decode("utf-8", "replace"))  # the delegate's logs stay visible
    return proc.returncode, proc.stdout, proc.stderr


def _run_in_process(path: str, stdin: bytes, env: dict[str, str]) -> tuple[int, bytes, bytes] | None:
    from cni_plugins.protocol import installed, registry, skel

    marker = installed.read_marker(path)
    if marker is None or marker[1] != installed.package_root() or marker[0] not in registry.PLUGINS:
        return None
    module = registry.load(marker[0])
    out = io.StringIO()
    code = skel.run(module.PLUGIN, environ=env, stdin=stdin, stdout=out, stderr=sys.stderr)
    return code, out.getvalue().encode(), b""


def _decode_error(path: str, out: bytes, err: bytes) -> CNIError:
    name = os.path.basename(path)
    if out.strip():
        try:
            return error_from_json(gojson.loads(out)).with_context(name)
        except ValueError:
            pass
    text = (err or out).decode("utf-8", "replace").strip() or "failed with no output"
    return InternalError(f"{name}: {text}")


def delegate_add(plugin_type: str, stdin: bytes, environ: Mapping[str, str], paths: tuple[str, ...]) -> Result:
    out = run_plugin(find_in_path(plugin_type, paths), "ADD", stdin, environ)
    try:
        return result_from_json(gojson.loads(out), f"{plugin_type} result")
    except ValueError as exc:
        raise DecodingFailure(f"{plugin_type}: decode result: {exc}") from None


def delegate(plugin_type: str, command: str, stdin: bytes, environ: Mapping[str, str], paths: tuple[str, ...]) -> None:
    """DEL, CHECK, STATUS or GC on a delegate."""
    run_plugin(find_in_path(plugin_type, paths), command, stdin, environ)
