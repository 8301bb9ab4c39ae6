"""What an installed plugin executable runs, kept to the cheapest possible imports.

The executables written by ``cni-plugins install`` are tiny scripts run by ``python -I -S``
(isolated from the caller's PYTHON* variables, user site-packages and .pth files) that put
our package on ``sys.path`` and call ``launch()``; where a C compiler is present, a native
launcher (``launcher.c``, the same paths 1 and 2) stands under the type's name instead and
execs this one for 3 and 4 (with ``--run-here``: straight to 4). Four paths, cheapest first:

1. VERSION is answered here, from the versions written into the launcher at install time:
   no JSON module, no dataclasses, nothing else imported.
2. If this install's warm helper (``cni_plugins.helper.server``) listens on the launcher's socket
   and takes the call, the call is handed to it with the caller's stdin/stdout/stderr,
   network and mount namespaces and working directory as file descriptors; one of its
   workers runs the very same ``skel.run`` with this environment. Only ``_socket`` is
   imported for that, and the builtin ``posix`` stands in for ``os`` (whose import, without
   ``site``, costs ~1.7 ms of every call's start). The helper says ``A`` when a worker takes
   the call; a helper that does not within ``ACCEPT_WAIT`` (stuck) or that refuses this
   caller (``N``: it may do less than the helper could, or it belongs to another install)
   leaves the call to this process, and nothing was done for it there.
3. In ``auto`` mode with no helper listening, a caller privileged enough to run one starts
   it and waits until it listens (it says so on a pipe, or closes the pipe if it failed; if
   another helper holds the socket's lock, ours says so once that one listens), then hands
   itself over like any later call. That is faster than running here while the helper
   starts: both would pay the same imports, competing for the CPUs.
4. Otherwise the plugin runs in this process.

The wire protocol is ``cni_plugins.helper.protocol``; docs/helper.md shows a call.
"""

from __future__ import annotations

import posix
import sys

from cni_plugins.helper.protocol import (
    ACCEPT_WAIT,
    ACCEPTED,
    HELPER_NEEDS,
    READY,
    READY_WAIT,
    REFUSED,
    VERSION_TAG,
    declared_version,
    encode_request,
)

RUN_HERE = -1  # _via_helper: a helper is there but does not take this call


def launch(
    plugin_type: str,
    versions: tuple[str, ...] = (),
    helper: str = "",
    auto_start: bool = False,
    install: str = "",
    run_dir: str = "",
) -> None:
    command = posix.environ.get(b"CNI_COMMAND", b"").decode("utf-8", "surrogateescape")
    if command == "VERSION" and versions:
        sys.exit(_version(versions))
    if sys.argv[1:] == ["--run-here"]:  # exec'd by the native launcher: a helper did not take the call
        helper = ""
    if helper and command:
        rc = _via_helper(plugin_type, helper, install, run_dir, versions)
        if rc is None and auto_start and _may_start_helper() and _start_helper(helper, install):
            rc = _via_helper(plugin_type, helper, install, run_dir, versions)
        if rc is not None and rc != RUN_HERE:
            sys.exit(rc)
    from cni_plugins.protocol import attachment_lock, registry, skel

    attachment_lock.configure(run_dir)
    sys.exit(skel.run(registry.load(plugin_type).PLUGIN))


def _version(versions: tuple[str, ...]) -> int:
    """``{"cniVersion": <asked, if supported, else newest>, "supportedVersions": [...]}``."""
    try:
        data = sys.stdin.buffer.read(65536)
    except OSError:
        data = b""
    asked = declared_version(data, versions)
    listed = ", ".join(f'"{v}"' for v in versions)
    try:
        sys.stdout.write(f'{{"cniVersion": "{asked}", "supportedVersions": [{listed}]}}\n')
        sys.stdout.flush()
    except OSError:
        return 1
    return 0


def _debug(msg: str) -> None:
    if posix.environ.get(b"CNI_PY_DEBUG"):
        try:
            sys.stderr.write(f"cni-py launcher: {msg}\n")
        except OSError:
            pass


def _via_helper(plugin_type: str, path: str, install: str, run_dir: str, versions: tuple[str, ...]) -> int | None:
    """Run the call in the helper: its exit status; None when no helper listens; RUN_HERE when
    one listens but does not take the call (nothing was done for it)."""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    opened: list[int] = []
    try:
        sock.settimeout(ACCEPT_WAIT)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return None
        except OSError as exc:
            _debug(f"helper at {path}: {exc}; running here")
            return RUN_HERE
        try:
            answer = sock.recv(4096)
        except OSError as exc:  # a timeout: nobody took the call
            _debug(f"helper at {path}: no worker took the call ({exc}); running here")
            return RUN_HERE
        if answer != ACCEPTED:
            _debug(f"helper at {path} refused: {answer[1:].decode('utf-8', 'replace') or 'it went away'}; running here")
            return RUN_HERE
        sock.settimeout(None)
        for ns_path in ("/proc/thread-self/ns/net", "/proc/thread-self/ns/mnt"):
            opened.append(posix.open(ns_path, posix.O_RDONLY | posix.O_CLOEXEC))
        opened.append(posix.open(".", posix.O_RDONLY | posix.O_DIRECTORY | posix.O_CLOEXEC))
        umask = posix.umask(0o022)
        posix.umask(umask)
        env = [k + b"=" + v for k, v in posix.environ.items() if b"\0" not in k + v]
        payload = encode_request(install, plugin_type, umask, run_dir, env)
        fds = [0, 1, 2, *opened]  # protocol.FDS
        ancillary = b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)
        try:
            sock.sendmsg([payload], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, ancillary)])
        except OSError as exc:  # not delivered: the worker has nothing of ours
            _debug(f"helper at {path}: {exc}; running here")
            return RUN_HERE
        version = declared_version(b"", versions)
        try:
            reply = sock.recv(4096)
            if reply.startswith(REFUSED):
                _debug(f"helper at {path} refused: {reply[1:].decode('utf-8', 'replace')}; running here")
                return RUN_HERE
            if reply.startswith(VERSION_TAG):
                version = reply[1:].decode("ascii", "replace")
                reply = sock.recv(16)
        except OSError:
            reply = b""
        if not reply.isdigit():
            # The worker died mid-call (it may have read stdin: the call cannot be run again here).
            sys.stdout.write(
                f'{{"cniVersion": "{version}", "code": 999, "msg": "cni-py helper: the plugin process '
                'died before finishing", "details": "see the helper log (journal) or stderr"}\n'
            )
            return 1
        return int(reply)
    finally:
        for fd in opened:
            posix.close(fd)
        sock.close()


def _may_start_helper() -> bool:
    """Whether this process holds what a helper needs (``HELPER_NEEDS``, effective): a helper
    inherits its starter's capabilities, and one that could do less than its callers would
    fail where they would not."""
    try:
        fd = posix.open("/proc/self/status", posix.O_RDONLY | posix.O_CLOEXEC)
        try:
            text = posix.read(fd, 16384)
        finally:
            posix.close(fd)
        at = text.index(b"\nCapEff:") + len(b"\nCapEff:")
        caps = int(text[at : text.index(b"\n", at)].strip(), 16)
    except (OSError, ValueError):
        return False
    return caps & HELPER_NEEDS == HELPER_NEEDS


def _start_helper(path: str, install: str = "", wait: float = READY_WAIT) -> bool:
    """Start a helper in the background (it exits when idle); True once it listens, False if
    it exited first or is not listening after ``wait`` seconds (nothing was handed to it)."""
    import os
    import select

    ready_r, ready_w = os.pipe()
    args = [
        sys.executable,
        "-IS",
        "-c",
        f"import sys; sys.path[:0] = {sys.path[:2]!r}; sys.path += {sys.path[2:]!r}; "
        f"from cni_plugins.helper.server import main; main(['--socket', {path!r}, "
        f"'--install-id', {install!r}, '--daemon', '--ready-fd', '{ready_w}'])",
    ]
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
