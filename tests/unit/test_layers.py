"""The packages are layers, and imports only go down (docs/architecture.md draws them):

    cni_plugins.spec        the CNI spec as data: errors, results, versions
    conf                    what a plugin is given: stdin as Go decodes it, typed readers, config files
    cni_plugins.protocol    one plugin call: skel, delegation, registry, logging, steps, locks
    cni_plugins.etcd        the etcd client (cluster-ipam and the node agent share it)
    cni_plugins.kernel | firewall | ipam      the kernel, nftables, addresses (side by side, independent)
    cni_plugins.plugins     one module per plugin type
    cni_plugins.helper | cni_plugins.runtime | cni_plugins.dhcpd  the warm helper; the runtime side; the DHCP daemon
    cni_plugins.node        the node agent of a pod network across nodes (beside the helper)
    cni_plugins.install     the installer, at the top

Every import in the product code is checked, those inside functions too (plugins import
lazily to keep start-up cheap): a module may import its own layer's package and the layers
below, never a layer above or a neighbour in the same layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS: list[tuple[str, ...]] = [
    ("cni_plugins.spec",),
    ("conf",),
    ("cni_plugins.protocol",),
    ("cni_plugins.etcd",),
    ("cni_plugins.kernel", "firewall", "ipam"),
    ("cni_plugins.plugins",),
    ("cni_plugins.helper", "cni_plugins.runtime", "cni_plugins.dhcpd", "cni_plugins.node"),
    ("cni_plugins.install", "cni_plugins.launch"),
]


def package_of(module: str) -> tuple[int, str] | None:
    """(layer, package) of one of our modules; None for anything else."""
    for rank, packages in enumerate(LAYERS):
        for pkg in packages:
            if module == pkg or module.startswith(pkg + "."):
                return rank, pkg
    return None


def product_modules() -> list[tuple[str, Path]]:
    out = []
    for top in ("cni_plugins", "conf", "ipam", "firewall"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return out


def imports_of(module: str, path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return names


def test_every_module_has_a_layer() -> None:
    assert [
        m
        for m, _ in product_modules()
        if package_of(m) is None and m not in ("cni_plugins", "conf", "ipam", "firewall")
    ] == []


@pytest.mark.parametrize("module, path", product_modules(), ids=[m for m, _ in product_modules()])
def test_imports_only_go_down(module: str, path: Path) -> None:
    own = package_of(module)
    if own is None:
        return
    wrong = []
    for name in imports_of(module, path):
        target = package_of(name)
        if target is None:
            continue
        if target[0] > own[0] or (target[0] == own[0] and target[1] != own[1]):
            wrong.append(name)
    assert wrong == [], f"{module} ({own[1]}) imports upward or sideways: {sorted(set(wrong))}"
