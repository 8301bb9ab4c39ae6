"""Our installed executables, as every layer that meets them sees them: where our code is
(``package_root``, the ``search_path`` a launcher puts on ``sys.path``), an install's name
(``install_id``), and the marker line that tells a launcher of ours from any other
executable (``read_marker``), and a systemd ``ExecStart=`` that runs one of our programs as
a launcher would (``exec_start``). ``cni_plugins.install`` writes launchers from these;
``invoke`` runs a delegate of this very install in-process; the helper serves only its own
install's launchers."""

from __future__ import annotations

import importlib.util
import sys
import sysconfig
from pathlib import Path

MARKER = "# cni-py launcher:"
DEFAULT_RUN_DIR = "/run/cni-py"


def package_root() -> str:
    """The directory that holds our packages (cni_plugins, conf, ipam, firewall)."""
    return str(Path(__file__).resolve().parents[2])


def search_path() -> list[str]:
    """Directories a launcher puts on sys.path: our package root, our site-packages, nftables."""
    paths = [package_root(), sysconfig.get_paths()["purelib"]]
    spec = importlib.util.find_spec("nftables")
    if spec is not None and spec.origin:
        paths.append(str(Path(spec.origin).resolve().parent.parent))
    out: list[str] = []
    for p in paths:
        if p not in out:
            out.append(p)
    return out


def exec_start(module: str, argv: list[str]) -> str:
    """A systemd ``ExecStart=`` value running ``module``'s ``main(argv)`` as a launcher runs
    our code: this interpreter, isolated (``-IS``), with ``search_path`` on its path."""
    paths = search_path()
    code = (
        f"import sys; sys.path[:0] = {paths[:2]!r}; sys.path += {paths[2:]!r}; "
        f"from {module} import main; sys.exit(main({argv!r}))"
    )
    return " ".join(_unit_quoted(arg) for arg in (sys.executable, "-IS", "-c", code))


def _unit_quoted(arg: str) -> str:
    """One ExecStart= argument: double-quoted, with systemd's specifiers and variables escaped."""
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def install_id(interpreter: str | None = None) -> str:
    """An install's name: a digest of the interpreter and the code paths its launchers use."""
    import hashlib

    key = "\0".join([interpreter or sys.executable, *search_path()])
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def read_marker(path: str) -> tuple[str, str] | None:
    """(type, package root) if ``path`` is one of our launchers: the Python one says so on its
    second line, the native one in an ELF note within its first page."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    key = b"\n" + MARKER.encode()
    at = head.find(key)
    if at < 0:
        return None
    end = head.find(b"\n", at + len(key))
    parts = head[at + len(key) : end if end >= 0 else len(head)].decode("utf-8", "replace").split()
    return (parts[0], parts[1]) if len(parts) == 2 else None
