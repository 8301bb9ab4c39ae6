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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from cni_plugins.spec.errors import InternalError, InvalidNetNS

CLONE_NEWNET = 0x40000000
CLONE_NEWNS = 0x00020000
NSFS_MAGIC = 0x6E736673
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
    """An fd for the namespace at ``path``; the caller closes it.

    What ``path`` names is checked before it is opened (on an ``O_PATH`` descriptor, which
    opens nothing): a FIFO would block the open until someone writes to it, and opening a
    device can have effects of its own. Only a file of the namespace file system is opened."""
    if not path:
        raise NetNSGone("no network namespace given", "set CNI_NETNS to the container's namespace path")
    try:
        probe = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetNSGone(f"network namespace {path} does not exist", "check CNI_NETNS") from None
    except OSError as exc:
        raise InvalidNetNS(f"open network namespace {path}: {exc.strerror}", "check CNI_NETNS") from None
    try:
        try:
            kind = _fs_type(probe)
        except OSError as exc:
            raise InvalidNetNS(f"network namespace {path}: {exc.strerror}", "check CNI_NETNS") from None
        if kind != NSFS_MAGIC:
            raise InvalidNetNS(
                f"{path} is not a network namespace",
                "CNI_NETNS must name a network namespace, e.g. /var/run/netns/<name>",
            )
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidNetNS(f"open network namespace {path}: {exc.strerror}", "check CNI_NETNS") from None
        opened, probed = os.fstat(fd), os.fstat(probe)
        if (opened.st_dev, opened.st_ino) != (probed.st_dev, probed.st_ino):
            os.close(fd)
            raise InvalidNetNS(f"{path} changed while it was opened", "check CNI_NETNS")
        return fd
    finally:
        os.close(probe)


def _fs_type(fd: int) -> int:
    """``fstatfs(fd).f_type``."""
    import ctypes

    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type is its first member, a C long
    if libc().fstatfs(fd, buf) != 0:
        raise_errno()
    return ctypes.c_long.from_buffer(buf).value


def current_netns_fd() -> int:
    return os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


@contextmanager
def temporary() -> Iterator[int]:
    """A new, empty network namespace for the block, as an fd; nothing names it, so it
    goes away when the block ends. What is left in it then goes as the kernel decides for
    a namespace that dies: virtual links are destroyed, physical ones return to the
    initial namespace. This thread makes it (``unshare``) and is back in its own
    namespace before the block runs."""
    own = current_netns_fd()
    try:
        if libc().unshare(CLONE_NEWNET) != 0:
            import ctypes

            err = ctypes.get_errno()
            raise InternalError(f"create a temporary network namespace: {os.strerror(err)}", f"errno {err}")
        try:
            fd = current_netns_fd()
        finally:
            try:
                _setns(own, CLONE_NEWNET)
            except OSError:  # pragma: no cover - cannot happen unless the kernel refuses
                os.write(2, b"fatal: cannot return to the original network namespace\n")
                os._exit(70)
    finally:
        os.close(own)
    try:
        yield fd
    finally:
        os.close(fd)


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
                raise InvalidNetNS(
                    f"{name} is not a network namespace",
                    "CNI_NETNS must name a network namespace, e.g. /var/run/netns/<name>",
                ) from None
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
