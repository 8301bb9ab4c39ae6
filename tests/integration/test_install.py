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
        launcher = str(python_launcher(cni_bin, plugin_type))
        proc = subprocess.run(
            [sys.executable, "-IS", "-X", "importtime", launcher], input=stdin, env=env, capture_output=True, timeout=30
        )
        imported = {
            line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.decode().splitlines() if "|" in line
        }
        assert not imported & set(HEAVY), (plugin_type, case, imported & set(HEAVY))
        assert proc.stdout.strip(), plugin_type


def python_launcher(bin_dir: Path, plugin_type: str) -> Path:
    """The Python launcher of a type: beside a native one (in .cni-py/), or the executable itself."""
    beside = bin_dir / ".cni-py" / plugin_type
    return beside if beside.exists() else bin_dir / plugin_type


def test_launcher_names_its_type(cni_bin: Path) -> None:
    from cni_plugins.protocol.installed import package_root, read_marker

    for plugin_type in registry.available():
        assert read_marker(str(cni_bin / plugin_type)) == (plugin_type, package_root())


def test_a_launcher_written_by_an_older_install_still_runs(tmp_path: Path, container_ns: str) -> None:
    """Launchers written before the helper moved into cni_plugins.helper import ``launch``
    from cni_plugins.launch with four arguments; until ``cni-plugins install`` rewrites
    them they run their plugin in their own process."""
    from cni_plugins.protocol.installed import MARKER, package_root, search_path

    paths = search_path()
    old = tmp_path / "loopback"
    old.write_text(
        f"#!{sys.executable} -IS\n"
        f"{MARKER} loopback {package_root()}\n"
        "import sys\n"
        f"sys.path[:0] = {paths[:2]!r}\n"
        f"sys.path += {paths[2:]!r}\n"
        "from cni_plugins.launch import launch\n"
        f"launch('loopback', ('0.3.1', '1.0.0'), {str(tmp_path / 'none.sock')!r}, False)\n"
    )
    old.chmod(0o755)
    version = subprocess.run([str(old)], input=b"{}", env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=30)
    assert version.returncode == 0 and json.loads(version.stdout)["supportedVersions"] == ["0.3.1", "1.0.0"]
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "old1",
        "CNI_NETNS": f"/var/run/netns/{container_ns}",
        "CNI_IFNAME": "lo",
        "CNI_PATH": str(tmp_path),
    }
    conf = b'{"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}'
    add = subprocess.run([str(old)], input=conf, env=env, capture_output=True, timeout=30)
    assert add.returncode == 0, add.stdout + add.stderr
    assert json.loads(add.stdout)["interfaces"][0]["name"] == "lo"
