"""An ADD whose caller went away stops at its next safe point and undoes what it did.

In a helper worker, a thread watches the launcher's connection; when the launcher dies (the
runtime killed it, or timed the call out), it calls ``request()``. The ADD then raises
``Cancelled`` at the next ``steps.step`` it enters: every step registers its undo before the
next one begins, so the plugin's ``ExitStack`` unwinds exactly as after a failed step (IPAM
release, links, nftables entries; an nftables transaction is never cut, it is one batch).
``Cancelled`` is raised once per call: the rollback itself (an IPAM DEL run in-process, say)
runs to its end. An ADD that had already passed its last step when the caller went away is
undone by the plugin's own DEL. DEL and CHECK are not cut: they run to their end (a DEL cut
halfway would leave part of the attachment for the next DEL, which waits for this one).

Outside a helper worker nothing calls ``request()``: a plugin in its own process dies with
the signal, as the reference's does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from cni_plugins.spec.errors import CNIError

if TYPE_CHECKING:
    from cni_plugins.protocol.skel import CmdArgs, Plugin
    from cni_plugins.spec.types import Result


class Cancelled(CNIError):
    """The caller went away; nobody reads this error (it goes to the helper's log)."""

    code = 999


_state = {"requested": False, "raised": False, "depth": 0}


def reset() -> None:
    _state.update(requested=False, raised=False, depth=0)


def request() -> None:
    """The caller is gone (called from the worker's watcher thread)."""
    _state["requested"] = True


def requested() -> bool:
    return bool(_state["requested"])


def check() -> None:
    """A safe point: raise ``Cancelled`` if the caller of this ADD went away (once)."""
    if _state["requested"] and _state["depth"] and not _state["raised"]:
        _state["raised"] = True
        raise Cancelled("the caller went away (killed, or its timeout expired): ADD rolled back")


@contextlib.contextmanager
def _cancellable() -> Iterator[None]:
    _state["depth"] = int(_state["depth"]) + 1
    try:
        yield
    finally:
        _state["depth"] = int(_state["depth"]) - 1


def run_add(plugin: Plugin, args: CmdArgs) -> Result:
    """``plugin.add(args)``, stopped at a safe point if the caller goes away meanwhile."""
    with _cancellable():
        check()
        result = plugin.add(args)
        if _state["requested"]:
            from cni_plugins.protocol import log

            try:
                plugin.delete(args)  # nobody will get the result: undo the whole ADD
            except CNIError as err:
                log.warning(f"rollback of a completed ADD: {err.msg}")
            _state["raised"] = True
            raise Cancelled("the caller went away after the ADD finished: ADD undone by DEL")
        return result
