"""Persistent tap devices, made as the kernel only lets them be made: through ``/dev/net/tun``.

A tun/tap device cannot be created over rtnetlink; a process opens ``/dev/net/tun`` and
asks for a name (``TUNSETIFF``), sets its owner and group, and makes it persistent so it
outlives that descriptor. The device is born in the network namespace of the process
that opened ``/dev/net/tun``, so the file is opened inside the target namespace.
``IFF_TUN_EXCL`` makes ``TUNSETIFF`` fail instead of attaching to an existing device of
that name, and until ``TUNSETPERSIST`` succeeds, closing the descriptor removes the device:
a failure leaves nothing behind.

With an SELinux context (``label``) the device must be made by a process running in that
context, so ``ip tuntap add`` is exec'd with it as its exec label, as the reference does.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import subprocess

from cni_plugins.kernel import netns
from cni_plugins.spec.errors import InternalError, InvalidNetworkConfig

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000
_IFREQ = struct.Struct("16sH22x")  # struct ifreq: name, flags (the rest of its 40-byte union unused)
SELINUX_FS = "/sys/fs/selinux"


def selinux_enabled() -> bool:
    """SELinux is on when its file system is mounted (as go-selinux decides)."""
    return os.path.exists(os.path.join(SELINUX_FS, "enforce"))


def create_tap(
    ns_fd: int, name: str, *, flags: int, owner: int | None = None, group: int | None = None, label: str = ""
) -> None:
    """A persistent tap ``name`` in the namespace ``ns_fd``, down. ``flags``: IFF_* bits besides
    IFF_TAP (IFF_NO_PI, IFF_VNET_HDR, IFF_MULTI_QUEUE). ``owner``/``group``: who may attach
    to it without CAP_NET_ADMIN (None: not restricted by that)."""
    if label:
        create_with_ip(ns_fd, name, flags=flags, owner=owner, group=group, label=label)
        return
    with netns.entered(ns_fd):
        try:
            fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            raise InternalError(f"open {TUN_DEVICE}: {exc.strerror}", "the kernel needs CONFIG_TUN") from None
    try:
        step = "create"
        try:
            fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), IFF_TAP | IFF_TUN_EXCL | flags))
            if owner is not None:
                step = f"set owner {owner} of"
                fcntl.ioctl(fd, TUNSETOWNER, owner)
            if group is not None:
                step = f"set group {group} of"
                fcntl.ioctl(fd, TUNSETGROUP, group)
            step = "make persistent"
            fcntl.ioctl(fd, TUNSETPERSIST, 1)
        except OSError as exc:
            raise InternalError(f"{step} tap {name}: {exc.strerror}", f"errno {exc.errno}") from None
    finally:
        os.close(fd)


def create_with_ip(ns_fd: int, name: str, *, flags: int, owner: int | None, group: int | None, label: str) -> None:
    """``ip tuntap add`` run in the namespace with ``label`` as its SELinux exec context (none
    if ''). ``ip`` makes the device without packet information or vnet header."""
    if flags & IFF_VNET_HDR or not flags & IFF_NO_PI:
        raise InternalError("ip tuntap makes taps without packet information or vnet header only")
    ip = shutil.which("ip") or shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin:/bin") or "ip"
    argv = [ip, "tuntap", "add", "mode", "tap", "name", name]
    if flags & IFF_MULTI_QUEUE:
        argv.append("multi_queue")
    if owner is not None:
        argv += ["user", str(owner)]
    if group is not None:
        argv += ["group", str(group)]
    context = label.encode()

    def set_exec_label() -> None:  # in the child, before it execs ip
        fd = os.open("/proc/thread-self/attr/exec", os.O_WRONLY)
        try:
            os.write(fd, context)
        finally:
            os.close(fd)

    with netns.entered(ns_fd):
        try:
            proc = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                preexec_fn=set_exec_label if label else None,
                check=False,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise InvalidNetworkConfig(
                f"selinuxContext: cannot run ip with context {label!r}: {exc}",
                "give a context this host's SELinux policy lets the plugin run ip in",
            ) from None
    if proc.returncode != 0:
        raise InternalError(f"{' '.join(argv)} failed: {(proc.stderr or proc.stdout).strip()}")
