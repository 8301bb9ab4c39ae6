"""Building the native launcher (``launcher.c``) of an install.

It is compiled once per install; each plugin type gets a copy with its configuration
written into the placeholder note (``CONFIG_SIZE`` bytes: the marker line, then
``key=value`` lines). The Python launcher stays beside it (``<bin dir>/.cni-py/<type>``): the
native one execs it when no helper listens (it starts one) and when a helper does not take
the call (it runs the plugin in its own process, ``--run-here``). Where there is no C
compiler, or the build fails, the install writes the Python launcher under the type's name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from cni_plugins.helper.protocol import ACCEPT_WAIT

SOURCE = Path(__file__).with_name("launcher.c")
FALLBACK_DIR = ".cni-py"  # in the bin dir: the Python launchers the native ones exec
PLACEHOLDER = b"\n# cni-py launcher: unconfigured\n"
CONFIG_SIZE = 4096  # as in launcher.c


class BuildFailed(Exception):
    """No C compiler, or it refused: the install falls back to the Python launcher."""


def compiler() -> str | None:
    return shutil.which("cc") or shutil.which("gcc")


def compile_launcher() -> bytes:
    """The launcher binary, unconfigured (statically linked where the C library allows it: it
    starts faster)."""
    cc = compiler()
    if cc is None:
        raise BuildFailed("no C compiler (cc) found")
    with tempfile.TemporaryDirectory(prefix="cni-py-launcher-") as work:
        Path(work, "config.h").write_text(f"#define CNIPY_ACCEPT_WAIT_MS {int(ACCEPT_WAIT * 1000)}\n")
        out = Path(work, "launcher")
        errors = ""
        for extra in (["-static"], []):
            argv = [cc, *extra, "-O2", "-Wall", "-I", work, "-o", str(out), str(SOURCE)]
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            if proc.returncode == 0:
                binary = out.read_bytes()
                if binary.count(PLACEHOLDER) != 1:
                    raise BuildFailed("the compiled launcher has no single configuration note")
                return binary
            errors = proc.stderr.strip()
    raise BuildFailed(f"{cc} failed: {errors[-500:]}")


def configured(binary: bytes, *, marker: str, settings: dict[str, str]) -> bytes:
    """A copy of ``binary`` with its note holding ``marker`` and ``settings`` (key=value lines)."""
    text = "\n" + marker + "\n" + "".join(f"{key}={value}\n" for key, value in settings.items())
    data = text.encode("utf-8", "surrogateescape")
    if b"\0" in data or len(data) >= CONFIG_SIZE or any("\n" in v for v in settings.values()):
        raise BuildFailed("the launcher's configuration does not fit its note (a path too long, or with a newline)")
    at = binary.index(PLACEHOLDER)
    return binary[:at] + data.ljust(CONFIG_SIZE, b"\0") + binary[at + CONFIG_SIZE :]


def write(dest: Path, binary: bytes) -> None:
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o755)
    try:
        os.write(fd, binary)
    finally:
        os.close(fd)
    os.chmod(dest, 0o755)
