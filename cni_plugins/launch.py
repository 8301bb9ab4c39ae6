"""What an installed plugin executable runs.

The executables written by ``cni-plugins install`` are tiny scripts run by
``python -I -S`` (isolated from the caller's PYTHON* variables, user site and .pth
files, ~8 ms to start) that put our package on ``sys.path`` and call ``launch(type)``.
"""

from __future__ import annotations

import sys


def launch(plugin_type: str) -> None:
    from cni_plugins import registry, skel

    module = registry.load(plugin_type)
    sys.exit(skel.run(module.PLUGIN))
