"""What an installed plugin executable runs, kept to the cheapest possible imports.

The executables written by ``cni-plugins install`` are tiny scripts run by ``python -I -S``
(isolated from the caller's PYTHON* variables, user site-packages and .pth files) that put
our package on ``sys.path`` and call ``launch()``. Four paths, cheapest first:

1. VERSION is answered here, from the versions written into the launcher at install time:
   no JSON module, no dataclasses, nothing else imported.
2. If a warm helper (``cni_plugins.helper``) listens on the launcher's socket, the call is
   handed to it with the caller's stdin/stdout/stderr, network and mount namespaces and
   working directory as file descriptors; one of its workers runs the very same
   ``skel.run`` with this environment. Only ``_socket`` is imported for that, and the
   builtin ``posix`` stands in for ``os`` (whose import, without ``site``, costs ~1.7 ms
   of every call's start).
3. In ``auto`` mode with no helper listening, this call starts one and waits until it
   listens (it says so on a pipe, or closes the pipe if it failed; if another helper holds
   the socket's lock, ours says so once that one listens), then hands itself over like any
   later call. That is faster than running here while the helper starts: both would pay
   the same imports, competing for the CPUs.
4. Otherwise the plugin runs in this process.
"""

from __future__ import annotations

import posix
import sys

PROTOCOL = b"cni-py-helper/1"
READY = b"R"  # what a helper started by ``_start_helper`` writes on its pipe once it listens
READY_WAIT = 3.0  # seconds; a helper is ready in ~0.25 s on an idle 2-CPU machine


def launch(plugin_type: str, versions: tuple[str, ...] = (), helper: str = "", auto_start: bool = False) -> None:
    command = posix.environ.get(b"CNI_COMMAND", b"").decode("utf-8", "surrogateescape")
    if command == "VERSION" and versions:
        sys.exit(_version(versions))
    if helper and command:
        rc = _via_helper(plugin_type, helper)
        if rc is None and auto_start and _start_helper(helper):
            rc = _via_helper(plugin_type, helper)
        if rc is not None:
            sys.exit(rc)
    from cni_plugins import registry, skel

    sys.exit(skel.run(registry.load(plugin_type).PLUGIN))


def _version(versions: tuple[str, ...]) -> int:
    """``{"cniVersion": <asked, if supported, else newest>, "supportedVersions": [...]}``."""
    try:
        data = sys.stdin.buffer.read(65536).decode("utf-8", "replace")
    except OSError:
        data = ""
    asked = versions[-1]
    at = data.find('"cniVersion"')
    if at >= 0:
        rest = data[at + len('"cniVersion"'):].lstrip()
        if rest.startswith(":"):
            rest = rest[1:].lstrip()
            if rest.startswith('"'):
                value = rest[1:].split('"', 1)[0]
                if value in versions:  # only ever echo one of our own constants
                    asked = value
    listed = ", ".join(f'"{v}"' for v in versions)
    try:
        sys.stdout.write(f'{{"cniVersion": "{asked}", "supportedVersions": [{listed}]}}\n')
        sys.stdout.flush()
    except OSError:
        return 1
    return 0


def _via_helper(plugin_type: str, path: str) -> int | None:
    """Run the call in the helper; None when no helper took it (nothing was started then)."""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    opened: list[int] = []
    try:
        try:
            sock.connect(path)
        except OSError:
            return None
        for ns_path in ("/proc/thread-self/ns/net", "/proc/thread-self/ns/mnt"):
            opened.append(posix.open(ns_path, posix.O_RDONLY | posix.O_CLOEXEC))
        opened.append(posix.open(".", posix.O_RDONLY | posix.O_DIRECTORY | posix.O_CLOEXEC))
        umask = posix.umask(0o022)
        posix.umask(umask)
        env = [k + b"=" + v for k, v in posix.environ.items() if b"\0" not in k + v]
        payload = b"\0".join([PROTOCOL, plugin_type.encode(), str(umask).encode(), *env])
        fds = [0, 1, 2, *opened]
        ancillary = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
        try:
            sock.sendmsg([payload], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, ancillary)])
            accepted = sock.recv(16)
        except OSError:
            return None
        if accepted != b"A":
            return None  # the helper refused or went away before starting anything: run here
        try:
            reply = sock.recv(16)
        except OSError:
            reply = b""
        if not reply.isdigit():
            # The child died mid-call: report it as the error JSON (it printed nothing else).
            sys.stdout.write('{"code": 999, "msg": "cni-py helper: the plugin process died before finishing", "details": "see the helper log or stderr"}\n')
            return 1
        return int(reply)
    finally:
        for fd in opened:
            posix.close(fd)
        sock.close()


def _start_helper(path: str, wait: float = READY_WAIT) -> bool:
    """Start a helper in the background (it exits when idle); True once it listens, False if
    it exited first or is not listening after ``wait`` seconds (nothing was handed to it)."""
    import os
    import select

    ready_r, ready_w = os.pipe()
    args = [sys.executable, "-IS", "-c", f"import sys; sys.path[:0] = {sys.path[:2]!r}; sys.path += {sys.path[2:]!r}; "
            f"from cni_plugins.helper import main; main(['--socket', {path!r}, '--daemon', '--ready-fd', '{ready_w}'])"]
    try:
        pid = os.fork()
    except OSError:
        os.close(ready_r)
        os.close(ready_w)
        return False
    if pid == 0:  # child: detach and exec the helper; never return into the plugin
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.set_inheritable(ready_w, True)
            os.execv(sys.executable, args)
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        os.waitpid(pid, 0)  # the helper double-forks, so this returns at once
    except OSError:
        pass
    try:
        readable, _, _ = select.select([ready_r], [], [], wait)
        return bool(readable) and os.read(ready_r, 1) == READY
    except OSError:
        return False
    finally:
        os.close(ready_r)
