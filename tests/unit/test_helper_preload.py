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
    missing = {m for m in product_modules() - loaded - not_needed if not m.startswith("cni_plugins.runtime.")}
    assert missing == set()
