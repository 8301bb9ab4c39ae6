"""The CNI protocol for one plugin call: environment + stdin -> verb -> stdout.

``run()`` writes a plugin's answer to stdout and holds the plugins' one broad ``except``: a
``CNIError`` becomes the spec's error JSON, anything else code 999 with the traceback on
stderr. Handlers return a ``Result`` (ADD) or ``None`` and never print. (The launcher,
``cni_plugins.helper.client``, answers VERSION itself and reports a helper worker that died
mid-call; nothing else writes to a plugin's stdout.)

Nothing heavy is imported here: VERSION and every error path stay cheap.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, TextIO

from cni_plugins.protocol import attachment_lock, cancel, log
from cni_plugins.spec.errors import (
    CNIError,
    IncompatibleCNIVersion,
    InvalidEnvironment,
    InvalidNetNS,
    IOFailure,
    UnknownContainer,
    shown,
)
from cni_plugins.spec.names import ID_RE, interface_name_problem
from cni_plugins.spec.types import Result
from cni_plugins.spec.version import (
    CURRENT_VERSION,
    SUPPORTED_VERSIONS,
    at_least,
    check_supported,
    result_to_json,
)
from conf import gojson
from conf.cni_args import CniArgs
from conf.netconf import NetConf

ADD, DEL, CHECK, STATUS, GC, VERSION = "ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"
COMMANDS = (ADD, DEL, CHECK, STATUS, GC, VERSION)

# The first spec version that defines each verb.
MIN_VERSION = {ADD: "0.1.0", DEL: "0.1.0", CHECK: "0.4.0", STATUS: "1.1.0", GC: "1.1.0"}


def validate_container_id(value: str) -> None:
    if not value:
        raise UnknownContainer("missing containerID", "set CNI_CONTAINERID")
    if not ID_RE.match(value):
        raise InvalidEnvironment(
            "invalid characters in containerID",
            f"CNI_CONTAINERID={shown(value)}: use letters, digits, '_', '.' and '-', starting with a letter or digit",
        )


def validate_ifname(value: str) -> None:
    problem = interface_name_problem(value)
    if problem:
        raise InvalidEnvironment(problem, f"CNI_IFNAME={shown(value)}")


@dataclass(frozen=True, slots=True)
class EnvVar:
    name: str
    required_for: frozenset[str]
    validate: Callable[[str], None] | None = None


ENV_TABLE = (
    EnvVar("CNI_CONTAINERID", frozenset({ADD, DEL, CHECK}), validate_container_id),
    EnvVar("CNI_NETNS", frozenset({ADD, CHECK})),
    EnvVar("CNI_IFNAME", frozenset({ADD, DEL, CHECK}), validate_ifname),
    EnvVar("CNI_ARGS", frozenset()),
    EnvVar("CNI_PATH", frozenset({ADD, DEL, CHECK, GC, STATUS})),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class CmdArgs:
    """Everything a handler gets: the validated environment and the parsed config."""

    command: str
    container_id: str
    netns: str
    ifname: str
    cni_args: CniArgs
    path: tuple[str, ...]
    conf: NetConf
    environ: Mapping[str, str]

    @property
    def stdin(self) -> bytes:
        return self.conf.data


AddHandler = Callable[[CmdArgs], Result]
Handler = Callable[[CmdArgs], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Plugin:
    name: str
    add: AddHandler
    delete: Handler
    check: Handler
    status: Handler | None = None  # None: the skel answers success, as the Go skel does
    gc: Handler | None = None
    cni_args: frozenset[str] | None = None  # CNI_ARGS keys this plugin reads; None: ignores CNI_ARGS
    versions: tuple[str, ...] = SUPPORTED_VERSIONS
    about: str = ""


def run(
    plugin: Plugin,
    *,
    environ: Mapping[str, str] | None = None,
    stdin: BinaryIO | bytes | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Serve one call. Returns the process exit status (0 or 1)."""
    environ = os.environ if environ is None else environ
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    saved = log.snapshot()
    log.configure(plugin.name, environ, stderr)
    start = time.perf_counter()
    try:
        return _serve(plugin, environ, stdin, stdout, stderr)
    finally:
        if log.debugging():
            log.debug(
                f"{environ.get('CNI_COMMAND', '')} {environ.get('CNI_CONTAINERID', '')} "
                f"{environ.get('CNI_IFNAME', '')}: {(time.perf_counter() - start) * 1000:.1f} ms"
            )
        log.restore(saved)


def _serve(
    plugin: Plugin, environ: Mapping[str, str], stdin: BinaryIO | bytes | None, stdout: TextIO, stderr: TextIO
) -> int:
    cni_version = ""  # the config's, once parsed
    data = b""
    try:
        command = environ.get("CNI_COMMAND", "")
        if not command and plugin.about:
            stderr.write(f"{plugin.about}\nCNI protocol versions supported: {', '.join(plugin.versions)}\n")
            return 0
        if command not in COMMANDS:
            raise InvalidEnvironment(
                f"unknown CNI_COMMAND: {command}", f"CNI_COMMAND must be one of {', '.join(COMMANDS)}"
            )
        data = _read_stdin(stdin)
        if command == VERSION:
            return _write(stdout, _version_reply(plugin, data))
        args = _parse_env(command, environ)
        # DEL never gets stuck on its own input: what it cannot read is left out (and logged),
        # and the plugin removes what the attachment owns from its own records.
        conf = NetConf.from_bytes(data, lenient=command == DEL)
        for problem in conf.unreadable:
            log.warning(f"DEL: ignoring {problem}")
        cni_version = conf.cni_version
        check_supported(conf.cni_version, plugin.versions)
        if not at_least(conf.cni_version, MIN_VERSION[command]):
            raise IncompatibleCNIVersion(
                f"config version does not allow {command}",
                f'{command} needs cniVersion {MIN_VERSION[command]} or later; the config has "{conf.cni_version}"',
            )
        # Like the reference, only plugins that read CNI_ARGS parse (and can refuse) it.
        cni_args = CniArgs()
        if plugin.cni_args is not None:
            cni_args = CniArgs.parse(environ.get("CNI_ARGS", ""), lenient=command == DEL)
            for item in cni_args.skipped:
                log.warning(f"DEL: ignoring CNI_ARGS item {shown(item)}")
            if command in (ADD, CHECK):
                cni_args.check_known(plugin.cni_args)
        if command in (ADD, CHECK):
            _check_netns_differs(args["CNI_NETNS"], environ)
        elif command == DEL and args.get("CNI_NETNS") and _is_own_netns(args["CNI_NETNS"], environ):
            # never a container's: undo what the attachment owns elsewhere, as for a gone namespace
            log.warning(f"DEL: CNI_NETNS {args['CNI_NETNS']} is the plugin's own network namespace; leaving it alone")
            args["CNI_NETNS"] = ""
        cmd = CmdArgs(
            command=command,
            container_id=args.get("CNI_CONTAINERID", ""),
            netns=args.get("CNI_NETNS", ""),
            ifname=args.get("CNI_IFNAME", ""),
            cni_args=cni_args,
            path=tuple(p for p in environ.get("CNI_PATH", "").split(os.pathsep) if p),
            conf=conf,
            environ=environ,
        )
        with attachment_lock.held(
            plugin.name, conf.name, cmd.container_id, cmd.ifname
        ):  # ADD, CHECK, DEL of one attachment never overlap
            if command == ADD:
                result = cancel.run_add(plugin, cmd)  # stops at a safe point if a helper's caller goes away
                try:
                    answer = result_to_json(result, conf.cni_version)
                except CNIError:  # (a result before 0.3.0 without an address): nothing it made may stay
                    _undo_add(plugin, cmd)
                    raise
                return _write(stdout, answer, indent=4)
            handler = {DEL: plugin.delete, CHECK: plugin.check, STATUS: plugin.status, GC: plugin.gc}[command]
            if handler is not None:
                handler(cmd)
        return 0
    except CNIError as err:
        _write(stdout, err.to_json(cni_version or _declared_version(data)), indent=4)
        return 1
    except Exception as exc:  # nothing unexpected reaches the caller as a traceback
        import traceback

        traceback.print_exc(file=stderr)
        _write(
            stdout,
            {
                "cniVersion": cni_version or _declared_version(data),
                "code": 999,
                "msg": f"internal error: {exc}",
                "details": type(exc).__name__,
            },
            indent=4,
        )
        return 1


def _declared_version(data: bytes) -> str:
    """For an error raised before the config was parsed (a bad environment): the version the
    config declares if it is one we speak, else the newest."""
    try:
        declared = gojson.loads(data).get("cniVersion")
    except Exception:  # reporting another error: this one must not replace it
        declared = None
    return declared if declared in SUPPORTED_VERSIONS else CURRENT_VERSION


def _read_stdin(stdin: BinaryIO | bytes | None) -> bytes:
    if isinstance(stdin, bytes):
        return stdin
    try:
        return (stdin or sys.stdin.buffer).read()
    except OSError as exc:
        raise IOFailure(f"read network config from stdin: {exc}") from None


def _parse_env(command: str, environ: Mapping[str, str]) -> dict[str, str]:
    missing = [v.name for v in ENV_TABLE if command in v.required_for and not environ.get(v.name)]
    if missing:
        raise InvalidEnvironment(
            f"required env variables [{','.join(missing)}] missing", f"{command} needs {', '.join(missing)} set"
        )
    values = {}
    for var in ENV_TABLE:
        value = environ.get(var.name, "")
        if value and var.validate is not None:
            var.validate(value)
        values[var.name] = value
    return values


def _undo_add(plugin: Plugin, cmd: CmdArgs) -> None:
    """The plugin's DEL of an ADD whose result cannot be given, as the runtime's would be."""
    try:
        plugin.delete(dataclasses.replace(cmd, command=DEL))
    except CNIError as err:
        log.warning(f"undo of the ADD: {err.msg}")


def _is_own_netns(netns: str, environ: Mapping[str, str]) -> bool:
    if environ.get("CNI_NETNS_OVERRIDE"):
        return False
    try:
        target = os.stat(netns)
        own = os.stat("/proc/self/ns/net")
    except OSError:
        return False  # a missing path is reported by the code that opens it, with its own message
    return (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino)


def _check_netns_differs(netns: str, environ: Mapping[str, str]) -> None:
    """Refuse to configure the plugin's own namespace (the Go skel's guard, code 8)."""
    if _is_own_netns(netns, environ):
        raise InvalidNetNS(
            f"CNI_NETNS {netns} is the plugin's own network namespace",
            "pass the container's namespace, or set CNI_NETNS_OVERRIDE=1 if this is intended",
        )


def _version_reply(plugin: Plugin, data: bytes) -> dict[str, Any]:
    asked = ""
    try:
        asked = gojson.loads(data).get("cniVersion", "") if data.strip() else ""
    except (ValueError, AttributeError):
        pass
    version = asked if asked in plugin.versions else plugin.versions[-1]
    return {"cniVersion": version, "supportedVersions": list(plugin.versions)}


def _write(stdout: TextIO, obj: dict[str, Any], indent: int | None = None) -> int:
    try:
        stdout.write(json.dumps(obj, indent=indent) + "\n")
        stdout.flush()
    except (BrokenPipeError, ValueError, OSError):
        return 1
    return 0


def main(plugin: Plugin) -> None:
    """Executable entry: run and exit with its status."""
    sys.exit(run(plugin))
