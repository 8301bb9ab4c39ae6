"""The README's demo: our plugins driven by cnitool on real, throwaway namespaces.

Everything runs inside a namespace that stands for the host, so the machine itself is
never touched, and everything is removed at the end, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def sh(*argv: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: {' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc


def step(msg: str) -> None:
    print(f"--- {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cni-py demo")
    parser.add_argument("--cni-path", default="/opt/cni/bin")
    opts = parser.parse_args(argv)
    tag = f"demo{os.getpid()}"
    host, ctr = f"cnidemo-{tag}-host", f"cnidemo-{tag}-ctr"
    work = Path(tempfile.mkdtemp(prefix="cni-py-demo-"))
    cnitool = shutil.which("cnitool", path=str(Path(sys.executable).parent)) or "cnitool"
    try:
        (work / "net.d").mkdir()
        conflist = {"cniVersion": "1.1.0", "name": "demo-lo", "plugins": [{"type": "loopback"}]}
        (work / "net.d" / "10-demo-lo.conflist").write_text(json.dumps(conflist, indent=2))
        sh("ip", "netns", "add", host)
        sh("ip", "netns", "add", ctr)
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "NETCONFPATH": str(work / "net.d"),
            "CNI_PATH": opts.cni_path,
            "CNI_CACHE_DIR": str(work / "cache"),
            "CNI_IFNAME": "lo",
        }
        step(f"cnitool add demo-lo /var/run/netns/{ctr}")
        add = sh("ip", "netns", "exec", host, cnitool, "add", "demo-lo", f"/var/run/netns/{ctr}", env=env)
        print(add.stdout, end="")
        step("inside the container: " + sh("ip", "netns", "exec", ctr, "ip", "-br", "addr", "show", "lo").stdout.strip())
        step("cnitool check")
        sh("ip", "netns", "exec", host, cnitool, "check", "demo-lo", f"/var/run/netns/{ctr}", env=env)
        step("cnitool del")
        sh("ip", "netns", "exec", host, cnitool, "del", "demo-lo", f"/var/run/netns/{ctr}", env=env)
        step("inside the container: " + sh("ip", "netns", "exec", ctr, "ip", "-br", "link", "show", "lo").stdout.strip())
        step("demo finished: all checks passed")
        return 0
    finally:
        for ns in (ctr, host):
            sh("ip", "netns", "del", ns, check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
