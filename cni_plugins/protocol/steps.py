"""The named steps of an ADD and their undo, and what CHECK starts from, shared by the main plugins.

``with step("IPAM host-local ADD"): ...`` puts the step's name in front of any CNIError
raised inside, so the error JSON says which step failed; with ``CNI_PY_DEBUG=1`` it also
logs how long the step took. ``quietly`` runs one undo callback of a failed ADD (registered
on a ``contextlib.ExitStack``): its own failure is logged and the other undo steps still
run, and the error reported stays the one that stopped the ADD. ``options_for_del`` keeps a
DEL going when its options cannot be read.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from cni_plugins.protocol import cancel, log
from cni_plugins.spec.errors import CNIError, InternalError, InvalidNetworkConfig

if TYPE_CHECKING:
    from cni_plugins.protocol.skel import CmdArgs
    from cni_plugins.spec.types import Interface, Result

T = TypeVar("T")


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Name the step that failed in the error; with CNI_PY_DEBUG=1, log how long it took.
    Entering a step is a safe point: an ADD whose caller went away stops there (``cancel``)."""
    cancel.check()
    start = time.perf_counter() if log.debugging() else 0.0
    try:
        yield
    except CNIError as err:
        raise err.with_context(what) from None
    if start:
        log.debug(f"step {what}: {(time.perf_counter() - start) * 1000:.1f} ms")


def quietly(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run an undo step; a failure is logged, not raised."""
    try:
        fn(*args, **kwargs)
    except CNIError as err:
        log.warning(f"rollback: {what}: {err.msg}")


def ipam_add(args: CmdArgs, ipam_type: str, undo: contextlib.ExitStack) -> Result:
    """IPAM ADD as a named step, its DEL registered on ``undo`` first (IPAM is DELed after a
    failed ADD too, as the spec asks); a result without addresses is an error."""
    from cni_plugins.protocol import invoke

    undo.callback(
        quietly, f"IPAM {ipam_type} DEL", invoke.delegate, ipam_type, "DEL", args.stdin, args.environ, args.path
    )
    with step(f"IPAM {ipam_type} ADD"):
        result = invoke.delegate_add(ipam_type, args.stdin, args.environ, args.path)
    if not result.ips:
        raise InternalError(
            f"IPAM {ipam_type} ADD: IPAM plugin returned missing IP config",
            "its ranges must yield at least one address",
        )
    return result


def to_ipam(args: CmdArgs, command: str) -> None:
    """Pass ``command`` (STATUS, GC) on to the config's IPAM plugin, if it names one."""
    from cni_plugins.protocol import invoke

    if args.conf.ipam_type:
        invoke.delegate(args.conf.ipam_type, command, args.stdin, args.environ, args.path)


def ipam_check(args: CmdArgs, ipam_type: str) -> None:
    """CHECK on the IPAM plugin ``ipam_type`` (none: nothing to do), as a named step."""
    from cni_plugins.protocol import invoke

    if ipam_type:
        with step(f"IPAM {ipam_type} CHECK"):
            invoke.delegate(ipam_type, "CHECK", args.stdin, args.environ, args.path)


def options_for_del(plugin: str, parse: Callable[[], T], owning_all: Callable[[], T]) -> T:
    """A DEL's options: ``parse()``, or when they cannot be read, ``owning_all()``, options under
    which the DEL removes whatever the attachment may own (found by owner, as after an ADD with
    every feature on). Only ADD and CHECK refuse a config they cannot read."""
    try:
        return parse()
    except CNIError as err:
        log.warning(
            f"{plugin} DEL: ignoring options that cannot be read ({err.msg}); removing whatever this attachment owns"
        )
        return owning_all()


def prev_result_for_check(args: CmdArgs, plugin: str) -> Result:
    """The cached ADD result that CHECK compares the container against (required by the spec)."""
    prev = args.conf.prev_result
    if prev is None:
        raise InvalidNetworkConfig(
            f"{plugin} CHECK: required prevResult missing", "the runtime passes the cached ADD result as prevResult"
        )
    return prev


def prev_container_interface(prev: Result, args: CmdArgs) -> Interface:
    """prevResult's entry for this call's interface in this call's sandbox."""
    interface = prev.interface(args.ifname, sandbox=args.netns)
    if interface is not None:
        return interface
    raise InvalidNetworkConfig(
        f"prevResult has no interface {args.ifname!r} in sandbox {args.netns}",
        "CHECK must use the ADD result of this container",
    )
