"""Launchers written by installs before the helper moved into ``cni_plugins.helper`` import
``launch`` from here; ``cni-plugins install`` writes launchers that import it from
``cni_plugins.helper.client``."""

from cni_plugins.helper.client import launch

__all__ = ["launch"]
