"""The helper imports, before it forks its workers, every module a call may need: a module
first imported in a worker costs every worker that import again, on a call's time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRELOAD = """
import json, sys
from cni_plugins.helper import server
server._preload()
print(json.dumps(sorted(sys.modules)))
"""


def product_modules() -> set[str]:
    out = set()
    for top in ("cni_plugins", "conf", "ipam", "firewall"):
        for path in (ROOT / top).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] != "__init__":
                out.add(".".join(parts))
    return out


def test_every_module_a_call_may_need_is_preloaded() -> None:
    proc = subprocess.run([sys.executable, "-I", "-c", PRELOAD], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = set(json.loads(proc.stdout.splitlines()[-1]))
    not_needed = {"cni_plugins.install", "cni_plugins.launch", "cni_plugins.helper.units"}
    programs = ("cni_plugins.runtime.", "cni_plugins.node.", "cni_plugins.dhcpd.")  # run in processes of their own
    missing = {m for m in product_modules() - loaded - not_needed if not m.startswith(programs)}
    assert missing == set()


def test_no_plugin_imports_a_program_of_its_own() -> None:
    """What the helper leaves out of its preload must not be what a call needs."""
    from cni_plugins.protocol import registry

    code = (
        "import json, sys\n"
        "from cni_plugins.protocol import registry\n"
        "for t in registry.available(): registry.load(t)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-I", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.splitlines()[-1])
    assert len(registry.available()) > 10
    assert [m for m in loaded if m.startswith(("cni_plugins.node.", "cni_plugins.dhcpd."))] == []
