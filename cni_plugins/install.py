"""``cni-plugins``: install our plugin executables into a CNI bin dir, and list them.

An executable is named by its CNI type and is a short script for this virtualenv's
interpreter, run with ``-I -S``: a runtime can exec it with a bare environment (no PATH,
PYTHONPATH or virtualenv activation) and the caller's PYTHON* variables are ignored.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

from cni_plugins import registry

DEFAULT_DIR = "/opt/cni/bin"
DEFAULT_HELPER_SOCKET = "/run/cni-py/helper.sock"
MARKER = "# cni-py launcher:"


def search_path() -> list[str]:
    """Directories the launcher puts on sys.path: our package root, our site-packages, nftables."""
    paths = [str(Path(__file__).resolve().parent.parent), sysconfig.get_paths()["purelib"]]
    spec = importlib.util.find_spec("nftables")
    if spec is not None and spec.origin:
        paths.append(str(Path(spec.origin).resolve().parent.parent))
    out: list[str] = []
    for p in paths:
        if p not in out:
            out.append(p)
    return out


def package_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def launcher_text(plugin_type: str, *, helper: str = "", auto_start: bool = False, interpreter: str | None = None) -> str:
    """The executable for ``plugin_type``. ``helper``: the warm helper's socket ('' = none)."""
    interpreter = interpreter or sys.executable
    paths = search_path()
    head, tail = paths[:2], paths[2:]
    versions = tuple(registry.load(plugin_type).PLUGIN.versions)
    return (
        f"#!{interpreter} -IS\n"
        f"{MARKER} {plugin_type} {package_root()}\n"
        "import sys\n"
        f"sys.path[:0] = {head!r}\n"
        f"sys.path += {tail!r}\n"
        "from cni_plugins.launch import launch\n"
        f"launch({plugin_type!r}, {versions!r}, {helper!r}, {auto_start!r})\n"
    )


def read_marker(path: str) -> tuple[str, str] | None:
    """(type, package root) if ``path`` is one of our launchers."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(512).decode("utf-8", "replace")
    except OSError:
        return None
    for line in head.splitlines()[:3]:
        if line.startswith(MARKER):
            parts = line[len(MARKER):].split()
            if len(parts) == 2:
                return parts[0], parts[1]
    return None


def install(target: Path, types: list[str], *, helper: str = "", auto_start: bool = False) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for plugin_type in types:
        dest = target / plugin_type
        tmp = target / f".{plugin_type}.tmp{os.getpid()}"
        tmp.write_text(launcher_text(plugin_type, helper=helper, auto_start=auto_start))
        tmp.chmod(0o755)
        os.replace(tmp, dest)  # atomic: a runtime exec'ing it never sees half a file
        written.append(dest)
    # Byte-compile now so the first exec does not pay for it.
    for pkg in ("cni_plugins", "ipam", "firewall", "conf"):
        compileall.compile_dir(str(Path(package_root()) / pkg), quiet=1)
    return written


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
    p_install.add_argument("--helper-socket", default=DEFAULT_HELPER_SOCKET, help=f"helper socket (default {DEFAULT_HELPER_SOCKET})")
    p_install.add_argument("types", nargs="*", help="plugin types to install (default: all available)")
    sub.add_parser("list", help="list the plugin types this installation provides")
    p_helper = sub.add_parser("helper", help="run the warm helper (see cni_plugins/helper.py)")
    p_helper.add_argument("--socket", default=DEFAULT_HELPER_SOCKET)
    p_helper.add_argument("--idle", type=float, default=600.0, help="exit after this many idle seconds (0: never)")
    p_helper.add_argument("--daemon", action="store_true", help="detach")
    p_helper.add_argument("--stop", action="store_true", help="stop the helper serving --socket")
    args = parser.parse_args(argv)
    if args.cmd == "helper":
        from cni_plugins import helper as helper_daemon

        if args.stop:
            return helper_daemon.stop(args.socket)
        return helper_daemon.main(["--socket", args.socket, "--idle", str(args.idle), *(["--daemon"] if args.daemon else [])])
    available = registry.available()
    if args.cmd == "list":
        print("\n".join(available))
        return 0
    unknown = [t for t in args.types if t not in available]
    if unknown:
        parser.error(f"unknown plugin type(s): {', '.join(unknown)}; available: {', '.join(available)}")
    socket_path = "" if args.helper == "off" else args.helper_socket
    for path in install(Path(args.dir), args.types or available, helper=socket_path, auto_start=args.helper == "auto"):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
