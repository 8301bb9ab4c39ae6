"""The named steps of an ADD and their undo, shared by the main plugins.

``with step("IPAM host-local ADD"): ...`` puts the step's name in front of any CNIError
raised inside, so the error JSON says which step failed. ``quietly`` runs one undo callback
of a failed ADD (registered on a ``contextlib.ExitStack``): its own failure is logged and
the other undo steps still run, and the error reported stays the one that stopped the ADD.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from cni_plugins import log
from cni_plugins.errors import CNIError


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Name the step that failed in the error."""
    try:
        yield
    except CNIError as err:
        raise err.with_context(what) from None


def quietly(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run an undo step; a failure is logged, not raised."""
    try:
        fn(*args, **kwargs)
    except CNIError as err:
        log.warning(f"rollback: {what}: {err.msg}")
