"""Remove stale UDP conntrack entries for host ports, so that a flow created before a
mapping existed (or towards a container that is gone) does not keep blackholing traffic
(containernetworking/plugins#123, #1190): portmap calls it on ADD and on DEL, only when a
UDP mapping exists.

The ``conntrack`` tool (conntrack-tools) is exec'd with an argv list, never through a shell:
the port is an int and the family a constant. It is looked up in fixed system directories,
because runtimes often exec plugins with an empty PATH. Failures are reported back to the
caller (which logs them), as the reference treats them: informative only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

SEARCH = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")
FAMILIES = {4: "ipv4", 6: "ipv6"}
PARALLEL = 16


def find_tool() -> str | None:
    for d in SEARCH:
        path = os.path.join(d, "conntrack")
        if os.access(path, os.X_OK):
            return path
    return None


def delete_udp_flows(ports: Iterable[int], versions: Iterable[int]) -> list[str]:
    """Delete UDP entries whose original destination port is one of ``ports``. Returns problems."""
    ports, versions = sorted(set(ports)), sorted(set(versions))
    if not ports or not versions:
        return []
    tool = find_tool()
    if tool is None:
        return [
            f"conntrack tool not found in {', '.join(SEARCH)}: stale UDP "
            f"flows to port(s) {', '.join(map(str, ports))} are not removed"
        ]
    import subprocess

    problems = []
    argvs = [
        [tool, "-D", "-f", FAMILIES[v], "-p", "udp", "--orig-port-dst", str(int(port))]
        for v in versions
        for port in ports
    ]
    for start in range(0, len(argvs), PARALLEL):  # one exec costs ~10-30 ms: run them side by side
        running = []
        for argv in argvs[start : start + PARALLEL]:
            try:
                running.append(
                    (
                        argv,
                        subprocess.Popen(
                            argv,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE,
                            text=True,
                            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                        ),
                    )
                )
            except OSError as exc:
                problems.append(f"{' '.join(argv)}: {exc}")
        for argv, proc in running:
            try:
                _, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                problems.append(f"{' '.join(argv)}: timed out")
                continue
            # exit 1 with "0 flow entries have been deleted" just means there was nothing to remove
            if proc.returncode != 0 and "0 flow entries" not in err:
                problems.append(f"{' '.join(argv)}: {err.strip() or f'exit {proc.returncode}'}")
    return problems
