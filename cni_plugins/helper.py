"""A warm helper: plugin executables hand their call to it, so a call does not pay for
importing pyroute2 and nftables (~100 ms) every time.

Security: it listens only on a unix socket in a root-only directory (0700; socket 0600),
and serves only peers whose SO_PEERCRED uid is 0. Anything else is refused before anything
is done for it (no namespace joined, no fd kept), and the caller then runs the plugin itself.

Semantics: each call is served by a worker (pre-forked, see ``serve``) that takes over
the caller's stdin, stdout and stderr (passed as fds), joins the caller's mount and network
namespaces and working directory, adopts its environment and umask, and runs exactly the
``skel.run`` the executable would have run. The exit status goes back to the caller, which
exits with it. The exec protocol is unchanged: the runtime sees one process that reads
stdin and writes one JSON document to stdout. A worker then goes back to the helper's own
namespaces, directory, umask and environment and serves another call (at most
``CALLS_PER_WORKER``; any call that did not end normally ends the worker).

Lifetime: ``--daemon`` detaches; the helper exits after ``--idle`` seconds without calls
(default 600) and when the code it loaded changes on disk (it then stops taking calls;
the next caller in ``auto`` mode starts a fresh helper, with the new code).
"""

from __future__ import annotations

import argparse
import dataclasses
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
PR_SET_PDEATHSIG = 1
CALLS_PER_WORKER = 200  # then a fresh fork: whatever a call left behind does not pile up


def _preload() -> None:
    """Import everything a call may need, once, before any fork, and build what is built on
    first use (pyroute2 compiles its message tables when it first decodes one): a worker
    then starts its call with nothing left to load (a module imported in a worker costs
    ~1 ms, and every worker would pay it again)."""
    import ctypes  # noqa: F401  (setns in children)
    import importlib
    import pkgutil

    from cni_plugins import registry

    for plugin_type in registry.available():
        registry.load(plugin_type)
    root = Path(__file__).resolve().parent.parent
    for pkg in ("cni_plugins", "ipam", "firewall", "conf"):
        for info in pkgutil.iter_modules([str(root / pkg)], prefix=f"{pkg}."):
            if info.name not in ("cni_plugins.install", "cni_plugins.launch") and not info.ispkg:
                try:
                    importlib.import_module(info.name)
                except Exception:  # an optional module that cannot load here: a call that needs it will say so
                    pass
    import nftables  # noqa: F401

    from cni_plugins import netlink
    from firewall import nft  # noqa: F401

    netlink.preload_pyroute2()

    try:
        with netlink.Netlink.open(None, label="helper warm-up") as nl:  # reads only, in the helper's own namespace
            nl.link("lo")
            nl.link_by_index(1)
            nl.addresses(family=socket.AF_INET)
            nl.routes(socket.AF_INET)
    except Exception:  # no rtnetlink here: workers compile the tables themselves
        pass


def _code_stamp(root: Path) -> float:
    """The newest mtime of the code workers run (not the runtime side, ``cni_plugins/runtime``,
    which no plugin imports)."""
    newest = 0.0
    for pkg in ("cni_plugins", "ipam", "firewall", "conf"):
        for path in (root / pkg).rglob("*.py"):
            if path.parent.name == "runtime" and path.parent.parent.name == "cni_plugins":
                continue
            try:
                newest = max(newest, path.stat().st_mtime)
            except OSError:
                pass
    return newest


def _setns(fd: int, nstype: int) -> None:
    from cni_plugins import netns

    netns._setns(fd, nstype)


def _serve_call(conn: socket.socket, plugin_type: str, umask: int, env: dict[str, str], fds: list[int]) -> bool:
    """In a worker that took a call: become the caller, run the plugin, report the status.
    True when the call ran to its end normally (the worker may be reused).

    The caller's stdin/stdout/stderr are let go (replaced by /dev/null) *before* the status
    is sent: the runtime sees EOF on its pipes as soon as the launcher exits, and closing
    netlink and nftables sockets (which can wait for a kernel RCU grace period after a
    transaction that deleted something) happens after the reply, not in the runtime's wait."""
    rc, clean = 1, False
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
        sys.stderr.flush()
        clean = rc in (0, 1)
    except BaseException as exc:  # the worker must always report, whatever happened
        try:
            os.write(2, f"cni-py helper worker: {exc!r}\n".encode())
        except OSError:
            pass
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:
        clean = False
    try:
        conn.send(str(rc).encode())
    except OSError:
        pass
    return clean


@dataclasses.dataclass
class _Home:
    """Where a worker stands between calls, to go back there after serving one."""

    net: int
    mnt: int
    cwd: int
    umask: int
    env: dict[str, str]
    parent: int

    @classmethod
    def here(cls) -> _Home:
        umask = os.umask(0o022)
        os.umask(umask)
        flags = os.O_RDONLY | os.O_CLOEXEC
        return cls(
            net=os.open("/proc/self/ns/net", flags),
            mnt=os.open("/proc/self/ns/mnt", flags),
            cwd=os.open(".", flags | os.O_DIRECTORY),
            umask=umask,
            env=dict(os.environ),
            parent=os.getppid(),
        )

    def back(self) -> None:
        """Leave the caller's namespaces and settings; close what the call kept open."""
        import gc

        from cni_plugins import netlink, sysctl
        from firewall import nft

        netlink.release_kept()
        nft.release_kept()
        sysctl.release()  # its dentries would pile up call after call
        _setns(self.mnt, CLONE_NEWNS)
        _setns(self.net, CLONE_NEWNET)
        os.fchdir(self.cwd)
        os.umask(self.umask)
        os.environ.clear()
        os.environ.update(self.env)
        gc.collect()  # the call's cycles (collection is off during calls)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


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


def _take_call(conn: socket.socket, notify: int) -> bool | None:
    """In a worker: check the peer, read the request, serve it. None when the call was
    refused (nothing was done); else whether it ended normally."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    data, ancdata, _flags, _addr = conn.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(FDS_EXPECTED * 4))
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) - len(payload) % 4]))
    request: tuple[str, int, dict[str, str]] | None = None
    try:
        if uid == 0 and len(fds) == FDS_EXPECTED:  # not root: nothing is done; the caller runs the plugin itself (and fails there)
            from cni_plugins import registry

            request = _parse(data)
            if request[0] not in registry.PLUGINS:
                request = None
    except (ValueError, OSError):
        request = None
    if request is None:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        return None
    plugin_type, umask, env = request
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # committed: a stopping helper must not cut the call
    from cni_plugins import netlink
    from firewall import nft

    netlink.keep_open_until_exit()  # closing sockets waits for the kernel: do it on exit, after the reply
    nft.keep_open_until_exit()
    try:
        os.write(notify, struct.pack("i", os.getpid()))  # busy: the pool refills now, while this call runs
        conn.send(b"A")
    except OSError:
        os._exit(1)  # the caller went away (it runs the plugin itself); this worker is spent
    return _serve_call(conn, plugin_type, umask, env, fds)


WARM_PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "br"}, {"name": "veth"}, {"name": "eth0", "sandbox": "/proc/self/ns/net"}],
    "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 2}],
    "routes": [{"dst": "0.0.0.0/0"}],
}


def _warm_worker() -> None:
    """Before a worker takes a call: walk the common paths once (config and result parsing,
    the skel, a netlink and an nftables read in the helper's own namespace; nothing is
    changed anywhere). A fresh fork shares every page with the pool manager, and the first
    touch of each (Python writes reference counts) copies it: ~1,300 page copies, 5-10 ms,
    would otherwise land inside the call."""
    import io
    import json

    from cni_plugins import netlink, registry, skel
    from conf.netconf import NetConf
    from firewall.nft import LibNftables

    conf = {"cniVersion": "1.0.0", "name": "warm", "type": "portmap", "prevResult": WARM_PREV, "runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 2, "protocol": "tcp"}]}}
    data = json.dumps(conf).encode()
    for plugin_type in ("bridge", "portmap", "firewall", "host-local"):
        plugin = registry.load(plugin_type).PLUGIN
        for command in ("VERSION", "ADD"):  # ADD without CNI_CONTAINERID: refused by the skel, before any action
            skel.run(plugin, environ={"CNI_COMMAND": command}, stdin=data, stdout=io.StringIO(), stderr=io.StringIO())
    NetConf.from_bytes(data)
    with netlink.Netlink.open(None, label="warm-up") as nl:
        nl.link("lo")
        nl.link_by_index(1)
        nl.addresses(index=1, family=socket.AF_INET)
    LibNftables().list_chain("inet", "cni_py_warm_up", "none")


def _worker(server: socket.socket, notify: int, parent: int) -> None:
    """A pre-forked worker: warm up, then serve calls one at a time, going back to its own
    namespaces between them, for up to ``CALLS_PER_WORKER`` calls; it exits after a call
    that did not end normally, when going back fails, or when the pool manager is gone.
    Never returns."""
    import gc

    gc.disable()  # collected between calls, off the callers' path
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    code = 0
    try:
        _die_with_parent()
        home = _Home.here()
        if home.parent != parent:
            raise SystemExit(0)  # the pool manager died before we asked to follow it
        try:
            _warm_worker()
        except Exception:  # a warm-up is an optimisation only
            pass
        served = 0
        while served < CALLS_PER_WORKER:
            try:
                conn, _ = server.accept()
            except (InterruptedError, ConnectionAbortedError, BlockingIOError):
                continue
            try:
                outcome = _take_call(conn, notify)  # None: refused, nothing done
            except OSError:
                outcome = None
            conn.close()
            if outcome is None:
                continue
            served += 1
            if not outcome or served >= CALLS_PER_WORKER:
                break
            home.back()
            if os.getppid() != home.parent:
                break  # the pool manager is gone: do not serve an orphaned socket
            os.write(notify, struct.pack("i", -os.getpid()))  # idle again
    except BaseException:  # never fall back into the pool manager's code
        code = 1
    finally:
        os._exit(code)


def _die_with_parent() -> None:
    """SIGTERM when the pool manager dies (an idle worker then exits; a busy one finishes)."""
    from cni_plugins import netns

    netns.libc().prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn_worker(server: socket.socket, notify_r: int, notify_w: int) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(notify_r)
        _worker(server, notify_w, parent)
    return pid


def serve(sock_path: str, idle: float, workers: int = 0, ready_fd: int = -1) -> int:
    """Serve calls with a pool of pre-forked workers (``workers`` idle at all times; default
    twice the CPUs, at least 4). Each worker accepts on the socket itself and serves exactly
    one call (it joins the caller's namespaces, so it cannot be reused); the pool manager
    forks a replacement as soon as a worker takes a call, so the fork of this large process
    is never on a call's path. ``ready_fd``: a pipe that gets ``launch.READY`` once the
    socket listens (the call that started this helper waits for it); an early return or an
    exception closes it by ending the process."""
    import gc

    directory = os.path.dirname(sock_path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    lock_fd = os.open(sock_path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if not _try_lock(lock_fd):  # another helper serves this socket, or is starting to
        if ready_fd <= 2 or not _wait_for_other(sock_path, lock_fd, ready_fd):
            return 0
    os.ftruncate(lock_fd, 0)
    os.write(lock_fd, f"{os.getpid()}\n".encode())
    _preload()
    gc.collect()
    gc.freeze()  # workers then never touch (copy) the preloaded objects' pages for collection
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
    if ready_fd > 2:
        _say_ready(ready_fd)
        os.close(ready_fd)  # before any fork: workers must not hold it
    size = workers or max(4, 2 * (os.cpu_count() or 1))
    notify_r, notify_w = os.pipe()
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    idle_workers: set[int] = set()
    busy_workers: set[int] = set()
    last = time.monotonic()
    last_stamp_check = last
    try:
        while not stop["now"]:
            while len(idle_workers) < size and len(idle_workers) + len(busy_workers) < 2 * size and not stop["now"]:
                idle_workers.add(_spawn_worker(server, notify_r, notify_w))
            ready, _, _ = select.select([notify_r], [], [], 1.0)
            now = time.monotonic()
            if ready:
                data = os.read(notify_r, 4096)
                for (pid,) in struct.iter_unpack("i", data[: len(data) - len(data) % 4]):
                    if pid > 0:  # took a call
                        idle_workers.discard(pid)
                        busy_workers.add(pid)
                    else:  # done, and waiting for the next one
                        busy_workers.discard(-pid)
                        idle_workers.add(-pid)
                last = now
            _reap(idle_workers, busy_workers)
            if not ready and idle and now - last > idle:
                break
            if ready and now - last_stamp_check > 2.0:
                last_stamp_check = now
                if _code_stamp(root) != stamp:
                    break  # our code changed: let callers run the new code
    finally:
        try:
            if os.stat(sock_path).st_ino == bound_inode:  # still ours, not a newer helper's
                os.unlink(sock_path)
        except OSError:
            pass
        server.close()
        for pid in idle_workers:  # idle ones only: a busy worker finishes its call, then sees we are gone
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
    return 0


def _try_lock(lock_fd: int) -> bool:
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise


def _say_ready(ready_fd: int) -> None:
    from cni_plugins.launch import READY

    try:
        os.write(ready_fd, READY)
    except OSError:  # the caller stopped waiting: it runs the plugin itself
        pass


def _wait_for_other(sock_path: str, lock_fd: int, ready_fd: int) -> bool:
    """Another helper holds the lock (calls that started at the same moment each started
    one): tell our caller once that one listens, so it is served there rather than in its
    own process, competing with that helper's start. True if that helper exited first and
    the lock is ours now; False once our caller was told, or after ``launch.READY_WAIT``."""
    from cni_plugins.launch import READY_WAIT

    deadline = time.monotonic() + READY_WAIT
    while time.monotonic() < deadline:
        if _try_lock(lock_fd):
            return True
        try:
            # Bound after the holder wrote its pid: not a socket file a dead helper left.
            listening = os.stat(sock_path).st_mtime_ns >= os.fstat(lock_fd).st_mtime_ns
        except OSError:
            listening = False
        if listening:
            _say_ready(ready_fd)
            return False
        time.sleep(0.01)
    return False


def _reap(idle_workers: set[int], busy_workers: set[int]) -> None:
    """Collect exited workers (done with their calls, or died)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        idle_workers.discard(pid)
        busy_workers.discard(pid)


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
    parser.add_argument("--ready-fd", type=int, default=-1, help=argparse.SUPPRESS)  # set by launch._start_helper
    opts = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("cni-plugins helper: must run as root", file=sys.stderr)
        return 1
    if opts.daemon:
        _daemonize()
    return serve(opts.socket, opts.idle, ready_fd=opts.ready_fd)


if __name__ == "__main__":
    sys.exit(main())
