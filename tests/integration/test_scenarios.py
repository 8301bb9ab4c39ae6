"""cni-scenario: every shipped scenario runs green on our plugins; a failing check, a failing
step and an interruption all exit non-zero and still leave nothing behind."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = sorted((ROOT / "conf" / "scenarios").glob("*.yaml"))


def traces(pid: int) -> tuple[list[str], list[str]]:
    """The namespaces and work directories of the cni-scenario process ``pid`` that exist now."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = sorted(line.split()[0] for line in out.splitlines() if line.startswith(f"cnisc-{pid}-"))
    return names, sorted(glob.glob(os.path.join(tempfile.gettempdir(), f"cni-scenario-{pid}-*")))


def scenario(cni_bin: Path, *files: Path, timeout: float = 240) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run cni-scenario; (its result, its pid: the names it gave its namespaces and files)."""
    proc = subprocess.Popen(
        [exe(), "--cni-path", str(cni_bin), *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def exe() -> str:
    path = shutil.which("cni-scenario", path=str(Path(sys.executable).parent))
    assert path, "the cni-scenario console script is installed beside the interpreter"
    return path


BRIDGE = {
    "cniVersion": "1.0.0",
    "name": "t-br",
    "plugins": [
        {
            "type": "bridge",
            "bridge": "cnit0",
            "isGateway": True,
            "ipMasq": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.96.0.0/24"}]]},
        },
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ],
}


def write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return path


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_shipped_scenario_passes(cni_bin: Path, path: Path) -> None:
    proc, pid = scenario(cni_bin, path)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    summary = re.search(r"^== all (\d+) checks passed \(", out, re.M)
    assert summary, out
    total = int(summary.group(1))
    results = [line for line in out.splitlines() if line.startswith(("ok ", "FAIL"))]
    assert len(results) == total and all(line.startswith("ok ") for line in results)
    assert re.search(r"^ok +nothing left behind", out, re.M)
    assert all(re.search(r"\(\d+ ms\)$", line) for line in results)  # each check shows its timing
    assert traces(pid) == ([], [])


def test_readme_demo_is_a_shipped_scenario() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    demo = re.search(
        r'demo\)\n(?:.*\n)*?\s*exec "\$VENV/bin/cni-scenario" '
        r'--cni-path "\$BIN" "\$ROOT/(conf/scenarios/[\w-]+\.yaml)"',
        setup,
    )
    assert demo, "scripts/setup.sh demo runs cni-scenario on a shipped scenario"
    assert (ROOT / demo.group(1)) in SCENARIOS


def test_failing_check_exits_nonzero_and_leaves_nothing(cni_bin: Path, tmp_path: Path) -> None:
    doc = {
        "name": "meant-to-fail",
        "networks": [{"conflist": BRIDGE}],
        "containers": [
            {
                "name": "a",
                "networks": ["t-br"],
                "ports": [{"hostPort": 8080, "containerPort": 80}],
                "serve": ["tcp/80"],
            },
            {"name": "b", "networks": ["t-br"]},
        ],
        "checks": ["ping a -> b", "ping a -> b fails", "tcp host -> localhost:8080", "udp b -> a:9 fails"],
    }
    proc, pid = scenario(cni_bin, write(tmp_path, doc))
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert re.search(r"^FAIL ping a -> b fails .*connected", out, re.M)
    assert re.search(r"^ok +tcp host -> localhost:8080", out, re.M)  # later checks still ran
    assert re.search(r"^== FAILED: 1 of \d+ checks failed", out, re.M)
    assert re.search(r"^- +a leaves t-br", out, re.M) and re.search(r"^ok +nothing left behind", out, re.M)
    assert traces(pid) == ([], [])


def test_failing_step_tears_down(cni_bin: Path, tmp_path: Path) -> None:
    broken = {
        "cniVersion": "1.0.0",
        "name": "t-broken",
        "plugins": [{"type": "bridge", "bridge": "cnit1", "ipam": {"type": "no-such-ipam"}}],
    }
    doc = {
        "networks": [{"conflist": BRIDGE}, {"conflist": broken}],
        "containers": [{"name": "a", "networks": ["t-br"]}, {"name": "b", "networks": ["t-broken"]}],
        "checks": ["ping a -> b"],
    }
    proc, pid = scenario(cni_bin, write(tmp_path, doc))
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert re.search(r"^\+ +a joins t-br", out, re.M)
    assert re.search(r"^FAIL b joins t-broken as eth0: .*no-such-ipam", out, re.M)
    assert "ping a -> b" not in out  # the checks did not run
    assert re.search(r"^- +a leaves t-br", out, re.M) and re.search(r"^ok +nothing left behind", out, re.M)
    assert traces(pid) == ([], [])


def test_interrupted_run_tears_down(cni_bin: Path, tmp_path: Path) -> None:
    doc = {
        "networks": [{"conflist": BRIDGE}],
        "containers": [{"name": "a", "networks": ["t-br"]}, {"name": "b", "networks": ["t-br"]}],
        "checks": [f"ping a -> 10.96.0.{n} fails" for n in range(200, 230)],  # nobody there: ~1 s each
    }
    proc = subprocess.Popen(
        [exe(), "--cni-path", str(cni_bin), str(write(tmp_path, doc))], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("ok   ping a -> 10.96.0.200 "):
            assert len(traces(proc.pid)[0]) == 3, "host, a and b namespaces exist while it runs"
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=120)
    out = "".join(lines) + rest
    assert proc.returncode == 1, out
    assert re.search(r"^FAIL interrupted", out, re.M)
    assert re.search(r"^ok +nothing left behind", out, re.M)
    assert "10.96.0.229" not in out
    assert traces(proc.pid) == ([], [])


def test_bad_file_says_what_is_wrong(cni_bin: Path, tmp_path: Path) -> None:
    doc = {"networks": [{"conflist": BRIDGE}], "containers": [{"name": "a", "networks": ["nope"]}], "checks": []}
    proc, pid = scenario(cni_bin, write(tmp_path, doc))
    assert proc.returncode == 1 and "unknown network 'nope'; defined: t-br" in proc.stdout
    assert traces(pid) == ([], [])
