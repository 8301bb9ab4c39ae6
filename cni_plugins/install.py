"""``cni-plugins``: install our plugin executables into a CNI bin dir, list them, run the
warm helper and say how it is doing.

An executable is named by its CNI type and is a short script for this virtualenv's
interpreter, run with ``-I -S``: a runtime can exec it with a bare environment (no PATH,
PYTHONPATH or virtualenv activation) and the caller's PYTHON* variables are ignored.

An install is named by its interpreter and code paths (``install_id``): its launchers use
a helper socket of their own (``<run dir>/helper-<id>.sock``) and name the install in every
request, so a helper only ever runs the code its launchers were installed from.
"""

from __future__ import annotations

import argparse
import compileall
import os
import sys
from pathlib import Path

from cni_plugins.helper.protocol import socket_path
from cni_plugins.protocol import registry
from cni_plugins.protocol.installed import (
    DEFAULT_RUN_DIR,
    MARKER,
    install_id,
    package_root,
    search_path,
)

DEFAULT_DIR = "/opt/cni/bin"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
DEFAULT_UNIT_NAME = "cni-py-helper"


def default_socket(run_dir: str = DEFAULT_RUN_DIR, interpreter: str | None = None) -> str:
    return socket_path(run_dir, install_id(interpreter))


# ``<bin dir>/dhcp daemon ...`` runs the daemon, as the reference's executable does (its
# documentation and systemd unit start it so): the executable hands that to our CLI.
_SUBCOMMAND_HOOK = {
    "dhcp": (
        "if sys.argv[1:2] == ['daemon']:\n"
        "    from cni_plugins.install import main\n"
        "    sys.exit(main(['dhcp', *sys.argv[1:]]))\n"
    ),
}


def launcher_text(
    plugin_type: str,
    *,
    helper: str = "",
    auto_start: bool = False,
    interpreter: str | None = None,
    run_dir: str = DEFAULT_RUN_DIR,
) -> str:
    """The executable for ``plugin_type``. ``helper``: the warm helper's socket ('' = none);
    ``run_dir``: where the attachment locks live."""
    interpreter = interpreter or sys.executable
    paths = search_path()
    head, tail = paths[:2], paths[2:]
    versions = tuple(registry.load(plugin_type).PLUGIN.versions)
    ident = install_id(interpreter)
    return (
        f"#!{interpreter} -IS\n"
        f"{MARKER} {plugin_type} {package_root()}\n"
        "import sys\n"
        f"sys.path[:0] = {head!r}\n"
        f"sys.path += {tail!r}\n"
        + _SUBCOMMAND_HOOK.get(plugin_type, "")
        + "from cni_plugins.helper.client import launch\n"
        f"launch({plugin_type!r}, {versions!r}, {helper!r}, {auto_start!r}, {ident!r}, {run_dir!r})\n"
    )


def install(
    target: Path,
    types: list[str],
    *,
    helper: str = "",
    auto_start: bool = False,
    run_dir: str = DEFAULT_RUN_DIR,
    launcher: str = "auto",
) -> list[Path]:
    """Write each type's launcher into ``target``: native (``launcher``: "native", or "auto"
    where a C compiler builds it) with the Python one in ``.cni-py/``, else the Python one."""
    target.mkdir(parents=True, exist_ok=True)
    binary = _native_binary(launcher)
    written = []
    for plugin_type in types:
        dest = target / plugin_type
        tmp = target / f".{plugin_type}.tmp{os.getpid()}"
        text = launcher_text(plugin_type, helper=helper, auto_start=auto_start, run_dir=run_dir)
        if _write_native(target, plugin_type, tmp, text, binary, helper=helper, run_dir=run_dir):
            pass
        elif launcher == "native":
            raise SystemExit(f"cni-plugins install: the native launcher of {plugin_type} could not be built")
        else:
            tmp.write_text(text)
            tmp.chmod(0o755)
        os.replace(tmp, dest)  # atomic: a runtime exec'ing it never sees half a file
        written.append(dest)
    # Byte-compile now so the first exec does not pay for it.
    for pkg in ("cni_plugins", "ipam", "firewall", "conf"):
        compileall.compile_dir(str(Path(package_root()) / pkg), quiet=1)
    return written


def _native_binary(launcher: str) -> bytes | None:
    """The compiled native launcher, or None (``launcher`` "python", or no compiler in "auto")."""
    from cni_plugins.helper import native

    if launcher == "python":
        return None
    try:
        return native.compile_launcher()
    except native.BuildFailed as exc:
        if launcher == "native":
            raise SystemExit(f"cni-plugins install: the native launcher cannot be built: {exc}") from None
        print(f"cni-plugins install: {exc}; writing Python launchers", file=sys.stderr)
        return None


def _write_native(
    target: Path, plugin_type: str, tmp: Path, text: str, binary: bytes | None, *, helper: str, run_dir: str
) -> bool:
    """The native launcher at ``tmp`` (``binary``, configured for this type), its Python launcher
    (``text``) in ``.cni-py/``; False (nothing written at ``tmp``) without a binary."""
    from cni_plugins.helper import native

    if binary is None:
        return False
    fallback = target / native.FALLBACK_DIR / plugin_type
    fallback.parent.mkdir(mode=0o755, exist_ok=True)
    fallback_tmp = fallback.with_name(f".{plugin_type}.tmp{os.getpid()}")
    fallback_tmp.write_text(text)
    fallback_tmp.chmod(0o755)
    os.replace(fallback_tmp, fallback)
    settings = {
        "type": plugin_type,
        "socket": helper,
        "install": install_id(),
        "run_dir": run_dir,
        "fallback": str(fallback.resolve()),
        "versions": ",".join(registry.load(plugin_type).PLUGIN.versions),
    }
    try:
        native.write(
            tmp, native.configured(binary, marker=f"{MARKER} {plugin_type} {package_root()}", settings=settings)
        )
    except native.BuildFailed as exc:
        print(f"cni-plugins install: {plugin_type}: {exc}; writing the Python launcher", file=sys.stderr)
        return False
    return True


def _helper_command(args: argparse.Namespace) -> int:
    from cni_plugins.helper import server as helper_daemon

    sock = args.socket or default_socket(args.run_dir)
    action = "stop" if args.stop else args.action
    if action == "stop":
        return helper_daemon.stop(sock)
    if action == "status":
        data = helper_daemon.status(sock)
        if args.json:
            import json

            print(json.dumps({"running": data is not None, "socket": sock, **(data or {})}, indent=2))
        else:
            print(helper_daemon.describe(data, sock))
        return 0 if data is not None else 3  # 3: not running, as systemctl status says
    argv = ["--socket", sock, "--idle", str(args.idle), *(["--daemon"] if args.daemon else [])]
    if args.workers:
        argv += ["--workers", str(args.workers)]
    return helper_daemon.main(argv)


def _dhcp_command(args: argparse.Namespace) -> int:
    from cni_plugins.dhcpd import server as dhcp_daemon

    if args.action == "daemon":
        return dhcp_daemon.main(args.flags)
    return dhcp_daemon.status_main(args.flags)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cni-plugins", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_install = sub.add_parser("install", help="write plugin executables into a CNI bin dir")
    p_install.add_argument("--dir", default=DEFAULT_DIR, help=f"CNI bin dir (default {DEFAULT_DIR})")
    p_install.add_argument(
        "--helper",
        choices=("auto", "on", "off"),
        default="auto",
        help="warm helper: auto = use it and start it on demand (default), on = use it if running, off = never",
    )
    p_install.add_argument(
        "--run-dir",
        default="",
        help=(
            "root-only directory of the helper's socket and the attachment locks "
            f"(default {DEFAULT_RUN_DIR}, or the directory of --helper-socket)"
        ),
    )
    p_install.add_argument(
        "--helper-socket", default="", help="helper socket (default: <run dir>/helper-<install id>.sock)"
    )
    p_install.add_argument(
        "--systemd", action="store_true", help="also write a .socket and a .service unit that start the helper at boot"
    )
    p_install.add_argument(
        "--unit-dir", default=DEFAULT_UNIT_DIR, help=f"where --systemd writes the units (default {DEFAULT_UNIT_DIR})"
    )
    p_install.add_argument(
        "--unit-name", default=DEFAULT_UNIT_NAME, help=f"the units' name (default {DEFAULT_UNIT_NAME})"
    )
    p_install.add_argument(
        "--dhcp-unit-name",
        default="cni-dhcp",
        help="the DHCP daemon's units' name, written by --systemd with dhcp (default cni-dhcp, as the reference's)",
    )
    p_install.add_argument(
        "--launcher",
        choices=("auto", "native", "python"),
        default="auto",
        help="native: a compiled launcher (starts in ~1 ms) beside the Python one; auto (default): native where "
        "a C compiler builds it; python: the Python launcher only",
    )
    p_install.add_argument("types", nargs="*", help="plugin types to install (default: all available)")
    sub.add_parser("list", help="list the plugin types this installation provides")
    p_helper = sub.add_parser("helper", help="run the warm helper, or say how it is doing, or stop it (docs/helper.md)")
    p_helper.add_argument("action", nargs="?", choices=("run", "status", "stop"), default="run")
    p_helper.add_argument(
        "--run-dir", default=DEFAULT_RUN_DIR, help=f"the install's run dir (default {DEFAULT_RUN_DIR})"
    )
    p_helper.add_argument("--socket", default="", help="default: this install's socket in --run-dir")
    p_helper.add_argument("--idle", type=float, default=600.0, help="exit after this many idle seconds (0: never)")
    p_helper.add_argument("--workers", type=int, default=0, help="ready workers (default: the CPUs, at least 2)")
    p_helper.add_argument("--daemon", action="store_true", help="detach")
    p_helper.add_argument("--stop", action="store_true", help="the same as the action stop")
    p_helper.add_argument("--json", action="store_true", help="status as JSON")
    p_dhcp = sub.add_parser(
        "dhcp", help="the DHCP daemon of the dhcp IPAM plugin: run it, or show its leases", add_help=False
    )
    p_dhcp.add_argument("action", choices=("daemon", "status"), help="daemon: run it; status: what it holds")
    p_dhcp.add_argument("flags", nargs=argparse.REMAINDER, help="the daemon's flags (-socketpath, -timeout, ...)")
    p_node = sub.add_parser(
        "node",
        help="a pod network across nodes, on etcd: init, run, unit, status, leave (cni-plugins node -h)",
        add_help=False,
    )
    p_node.add_argument("args", nargs=argparse.REMAINDER)
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["node"]:  # all its options are its own (REMAINDER would not take a leading -h)
        from cni_plugins.node import cli as node_cli

        return node_cli.main(given[1:])
    args = parser.parse_args(argv)
    if args.cmd == "helper":
        return _helper_command(args)
    if args.cmd == "dhcp":
        return _dhcp_command(args)
    available = registry.available()
    if args.cmd == "list":
        print("\n".join(available))
        return 0
    unknown = [t for t in args.types if t not in available]
    if unknown:
        parser.error(f"unknown plugin type(s): {', '.join(unknown)}; available: {', '.join(available)}")
    if args.systemd and args.helper == "off":
        parser.error("--systemd needs the helper (--helper auto or on)")
    run_dir = os.path.abspath(
        args.run_dir or (os.path.dirname(args.helper_socket) if args.helper_socket else DEFAULT_RUN_DIR)
    )
    sock = "" if args.helper == "off" else os.path.abspath(args.helper_socket or default_socket(run_dir))
    for path in install(
        Path(args.dir),
        args.types or available,
        helper=sock,
        auto_start=args.helper == "auto",
        run_dir=run_dir,
        launcher=args.launcher,
    ):
        print(path)
    if args.systemd:
        from cni_plugins.helper import units as helper_units

        for path in helper_units.write(Path(args.unit_dir), args.unit_name, sock, install_id()):
            print(path)
        print(
            f"next: systemctl daemon-reload && systemctl enable --now {args.unit_name}.socket {args.unit_name}.service",
            file=sys.stderr,
        )
        if "dhcp" in (args.types or available):
            from cni_plugins.dhcpd import units as dhcp_units

            for path in dhcp_units.write(Path(args.unit_dir), args.dhcp_unit_name):
                print(path)
            print(
                f"for the dhcp IPAM plugin: systemctl enable --now {args.dhcp_unit_name}.socket "
                f"{args.dhcp_unit_name}.service",
                file=sys.stderr,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
