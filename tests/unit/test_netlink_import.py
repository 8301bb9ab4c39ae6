"""netlink's lazy pyroute2 import: only the submodules it uses, and the package still whole
for anyone else in the process. Each check runs in a fresh interpreter (this one may have
imported pyroute2 already)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_fresh(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(ROOT)!r})\n{code}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_preload_skips_the_package_init() -> None:
    loaded = run_fresh(
        "from cni_plugins.kernel import netlink\n"
        "netlink.preload_pyroute2()\n"
        "print(sorted(m for m in ('pyroute2.iproute.linux', 'pyroute2.ndb.main', "
        "'pyroute2.ipdb', 'pyroute2.conntrack') if m in sys.modules))"
    )
    assert loaded == "['pyroute2.iproute.linux']"


def test_names_only_the_init_defines_still_import() -> None:
    out = run_fresh(
        "from cni_plugins.kernel import netlink\n"
        "netlink.preload_pyroute2()\n"
        "from pyroute2 import NDB, IPRoute, config\n"
        "import pyroute2.iproute.linux as linux\n"
        "print(NDB.__module__, IPRoute is linux.IPRoute, config.__name__)"
    )
    assert out == "pyroute2.ndb.main True pyroute2.config"


def test_a_name_nowhere_is_still_an_attribute_error() -> None:
    out = run_fresh(
        "from cni_plugins.kernel import netlink\n"
        "netlink.preload_pyroute2()\n"
        "import pyroute2\n"
        "try:\n    pyroute2.NoSuchThing\nexcept AttributeError:\n    print('AttributeError')"
    )
    assert out == "AttributeError"
