"""A warm helper: plugin executables hand their call to it, so a call does not pay for
importing pyroute2 and nftables (~100 ms) every time.

Security: it listens only on a unix socket in a root-only directory (0700; socket 0600),
and serves only peers whose SO_PEERCRED uid is 0. Anything else is refused before a
child is made, and the caller then runs the plugin itself.

Semantics: for each call the helper forks a child that takes over the caller's stdin,
stdout and stderr (passed as fds), joins the caller's mount and network namespaces and
working directory, adopts its environment and umask, and runs exactly the ``skel.run``
the executable would have run. The exit status goes back to the caller, which exits
with it. The exec protocol is unchanged: the runtime sees one process that reads stdin
and writes one JSON document to stdout.

Lifetime: ``--daemon`` detaches; the helper exits after ``--idle`` seconds without calls
(default 600) and when the code it loaded changes on disk (it then stops taking calls,
so callers run the new code in-process until a fresh helper starts).
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import time
from pathlib import Path

PROTOCOL = b"cni-py-helper/1"
MAX_MESSAGE = 1 << 20
FDS_EXPECTED = 6  # stdin, stdout, stderr, netns, mntns, cwd
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000


def _preload() -> None:
    """Import everything a call may need, once, before any fork."""
    from cni_plugins import registry

    for plugin_type in registry.available():
        registry.load(plugin_type)
    import ctypes  # noqa: F401  (setns in children)

    import nftables  # noqa: F401
    import pyroute2  # noqa: F401

    from cni_plugins import netlink  # noqa: F401
    from firewall import nft  # noqa: F401


def _code_stamp(root: Path) -> float:
    newest = 0.0
    for pkg in ("cni_plugins", "ipam", "firewall", "conf"):
        for path in (root / pkg).rglob("*.py"):
            try:
                newest = max(newest, path.stat().st_mtime)
            except OSError:
                pass
    return newest


def _setns(fd: int, nstype: int) -> None:
    from cni_plugins import netns

    netns._setns(fd, nstype)


def _serve_child(conn: socket.socket, plugin_type: str, umask: int, env: dict[str, str], fds: list[int]) -> None:
    """In the forked child: become the caller, run the plugin, report the status. Never returns."""
    rc = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # subprocess needs to reap its children
        stdin, stdout, stderr, net_fd, mnt_fd, cwd_fd = fds
        _setns(mnt_fd, CLONE_NEWNS)
        _setns(net_fd, CLONE_NEWNET)
        os.fchdir(cwd_fd)
        os.umask(umask)
        for src, dst in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(src, dst)
        for fd in (stdin, stdout, stderr, net_fd, mnt_fd, cwd_fd):
            if fd > 2:
                os.close(fd)
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        os.environ.clear()
        os.environ.update(env)
        from cni_plugins import registry, skel

        rc = skel.run(registry.load(plugin_type).PLUGIN)
        sys.stdout.flush()
    except BaseException as exc:  # the child must always report and exit, whatever happened
        try:
            os.write(2, f"cni-py helper child: {exc!r}\n".encode())
        except OSError:
            pass
    finally:
        try:
            conn.send(str(rc).encode())
        except OSError:
            pass
        os._exit(rc)


def _parse(data: bytes) -> tuple[str, int, dict[str, str]]:
    parts = data.split(b"\0")
    if len(parts) < 3 or parts[0] != PROTOCOL:
        raise ValueError("not a cni-py helper request")
    env = {}
    for item in parts[3:]:
        key, sep, value = item.decode("utf-8", "surrogateescape").partition("=")
        if sep:
            env[key] = value
    return parts[1].decode(), int(parts[2]), env


def _handle(conn: socket.socket) -> None:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    data, ancdata, _flags, _addr = conn.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(FDS_EXPECTED * 4))
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) - len(payload) % 4]))
    try:
        if uid != 0:
            return  # not root: no child; the caller runs the plugin itself (and fails there)
        from cni_plugins import registry

        plugin_type, umask, env = _parse(data)
        if len(fds) != FDS_EXPECTED or plugin_type not in registry.PLUGINS:
            return
        pid = os.fork()
        if pid == 0:
            conn.send(b"A")
            _serve_child(conn, plugin_type, umask, env, fds)
    except (ValueError, OSError):
        return
    finally:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


def serve(sock_path: str, idle: float) -> int:
    directory = os.path.dirname(sock_path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    lock_fd = os.open(sock_path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return 0  # another helper already serves this socket
        raise
    os.ftruncate(lock_fd, 0)
    os.write(lock_fd, f"{os.getpid()}\n".encode())
    _preload()
    root = Path(__file__).resolve().parent.parent
    stamp = _code_stamp(root)
    try:
        os.unlink(sock_path)
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old_umask = os.umask(0o177)
    try:
        server.bind(sock_path)
    finally:
        os.umask(old_umask)
    os.chmod(sock_path, 0o600)
    bound_inode = os.stat(sock_path).st_ino
    server.listen(128)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    last = time.monotonic()
    last_stamp_check = last
    try:
        while not stop["now"]:
            ready, _, _ = select.select([server], [], [], 1.0)
            now = time.monotonic()
            if not ready:
                if idle and now - last > idle:
                    break
                continue
            if now - last_stamp_check > 2.0:
                last_stamp_check = now
                if _code_stamp(root) != stamp:
                    break  # our code changed: let callers run the new code
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                _handle(conn)
            last = now
    finally:
        try:
            if os.stat(sock_path).st_ino == bound_inode:  # still ours, not a newer helper's
                os.unlink(sock_path)
        except OSError:
            pass
        server.close()
    return 0


def stop(sock_path: str, timeout: float = 5.0) -> int:
    """Stop the helper serving ``sock_path`` (its pid is in the lock file); 0 if none runs."""
    try:
        pid = int(Path(sock_path + ".lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return 0
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return 0


def _daemonize() -> None:
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cni-plugins helper", description="warm helper for cni-py plugin executables")
    parser.add_argument("--socket", default="/run/cni-py/helper.sock")
    parser.add_argument("--idle", type=float, default=600.0, help="exit after this many idle seconds (0: never)")
    parser.add_argument("--daemon", action="store_true", help="detach from the terminal")
    opts = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("cni-plugins helper: must run as root", file=sys.stderr)
        return 1
    if opts.daemon:
        _daemonize()
    return serve(opts.socket, opts.idle)


if __name__ == "__main__":
    sys.exit(main())
