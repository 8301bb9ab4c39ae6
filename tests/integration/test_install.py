"""Installed executables: bare environment, isolation from PYTHON*, cheap VERSION and error paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cni_plugins.protocol import registry

HEAVY = ("pyroute2", "nftables", "yaml", "netaddr")


def test_runs_with_bare_environment_and_ignores_python_variables(cni_bin: Path, tmp_path: Path) -> None:
    poison = tmp_path / "poison"
    (poison / "cni_plugins").mkdir(parents=True)
    (poison / "cni_plugins" / "__init__.py").write_text("raise SystemExit('poisoned import')\n")
    (poison / "json.py").write_text("raise SystemExit('poisoned json')\n")
    for plugin_type in registry.available():
        env = {
            "CNI_COMMAND": "VERSION",
            "PYTHONPATH": str(poison),
            "PYTHONHOME": "/nonexistent",
            "PYTHONSTARTUP": str(poison / "json.py"),
        }
        proc = subprocess.run(
            [str(cni_bin / plugin_type)], input=b'{"cniVersion":"1.0.0"}', env=env, capture_output=True, timeout=30
        )
        assert proc.returncode == 0, (plugin_type, proc.stderr)
        assert json.loads(proc.stdout)["supportedVersions"][-1] == "1.1.0"


@pytest.mark.parametrize("case", ["version", "bad-json", "missing-env"])
def test_version_and_error_paths_import_nothing_heavy(cni_bin: Path, case: str) -> None:
    stdin, env = {
        "version": (b'{"cniVersion":"1.0.0"}', {"CNI_COMMAND": "VERSION"}),
        "bad-json": (
            b"{",
            {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0", "CNI_PATH": "/x"},
        ),
        "missing-env": (b"{}", {"CNI_COMMAND": "ADD"}),
    }[case]
    for plugin_type in registry.available():
        launcher = str(cni_bin / plugin_type)
        proc = subprocess.run(
            [sys.executable, "-IS", "-X", "importtime", launcher], input=stdin, env=env, capture_output=True, timeout=30
        )
        imported = {
            line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.decode().splitlines() if "|" in line
        }
        assert not imported & set(HEAVY), (plugin_type, case, imported & set(HEAVY))
        assert proc.stdout.strip(), plugin_type


def test_launcher_names_its_type(cni_bin: Path) -> None:
    from cni_plugins.protocol.installed import package_root, read_marker

    for plugin_type in registry.available():
        assert read_marker(str(cni_bin / plugin_type)) == (plugin_type, package_root())
