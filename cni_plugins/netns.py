"""Network namespaces as scoped resources.

``entered(ns)`` moves the *calling thread* into a namespace and always moves it back; if
moving back fails the process exits at once rather than carry on in the wrong namespace
(the reasoning of the reference's ``pkg/ns/README.md``). Sockets (netlink, nftables) made
inside stay bound to that namespace after leaving it, so callers enter only to open them,
or to touch ``/proc/sys/net`` which is per namespace.

A namespace is never created here: a missing path is ``NetNSGone`` (DEL treats that as
"nothing left to do"), and a path that is not a network namespace is ``InvalidNetNS``.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from typing import Any, Iterator, NoReturn

from cni_plugins.errors import InvalidNetNS

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
_libc: Any = None


class NetNSGone(InvalidNetNS):
    """The netns path does not exist (any more)."""


def libc() -> Any:
    """The C library, for the system calls Python 3.11's ``os`` lacks (setns, fsopen ...)."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def raise_errno() -> NoReturn:
    """Raise the OSError of the last failed ``libc()`` call."""
    import ctypes

    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err))


def _setns(fd: int, nstype: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, nstype)
        return
    if libc().setns(fd, nstype) != 0:
        raise_errno()


def open_netns(path: str) -> int:
    """An fd for the namespace at ``path``; the caller closes it."""
    if not path:
        raise NetNSGone("no network namespace given", "set CNI_NETNS to the container's namespace path")
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetNSGone(f"network namespace {path} does not exist", "check CNI_NETNS") from None
    except OSError as exc:
        raise InvalidNetNS(f"open network namespace {path}: {exc.strerror}", "check CNI_NETNS") from None


def current_netns_fd() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


@contextmanager
def entered(target: str | int, *, label: str = "") -> Iterator[None]:
    """Run the block with this thread in the network namespace ``target`` (path or fd)."""
    own = current_netns_fd()
    fd = open_netns(target) if isinstance(target, str) else target
    name = label or (target if isinstance(target, str) else f"fd {target}")
    try:
        try:
            _setns(fd, CLONE_NEWNET)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise InvalidNetNS(f"{name} is not a network namespace", "CNI_NETNS must name a network namespace, e.g. /var/run/netns/<name>") from None
            raise InvalidNetNS(f"enter network namespace {name}: {exc.strerror}") from None
        try:
            yield
        finally:
            try:
                _setns(own, CLONE_NEWNET)
            except OSError:  # pragma: no cover - cannot happen unless the kernel refuses
                os.write(2, b"fatal: cannot return to the original network namespace\n")
                os._exit(70)
    finally:
        os.close(own)
        if isinstance(target, str):
            os.close(fd)


def same_netns(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)
