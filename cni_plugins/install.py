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


def launcher_text(plugin_type: str, *, interpreter: str | None = None) -> str:
    interpreter = interpreter or sys.executable
    paths = search_path()
    head, tail = paths[:2], paths[2:]
    return (
        f"#!{interpreter} -IS\n"
        f"{MARKER} {plugin_type} {package_root()}\n"
        "import sys\n"
        f"sys.path[:0] = {head!r}\n"
        f"sys.path += {tail!r}\n"
        "from cni_plugins.launch import launch\n"
        f"launch({plugin_type!r})\n"
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


def install(target: Path, types: list[str]) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for plugin_type in types:
        dest = target / plugin_type
        tmp = target / f".{plugin_type}.tmp{os.getpid()}"
        tmp.write_text(launcher_text(plugin_type))
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
    p_install.add_argument("types", nargs="*", help="plugin types to install (default: all available)")
    sub.add_parser("list", help="list the plugin types this installation provides")
    args = parser.parse_args(argv)
    available = registry.available()
    if args.cmd == "list":
        print("\n".join(available))
        return 0
    unknown = [t for t in args.types if t not in available]
    if unknown:
        parser.error(f"unknown plugin type(s): {', '.join(unknown)}; available: {', '.join(available)}")
    for path in install(Path(args.dir), args.types or available):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
