"""A warm helper: plugin executables hand their call to it, so a call does not pay for
importing pyroute2 and nftables (~100 ms) every time. docs/helper.md tells the whole story.

Shape: a pool manager (this module) owns the listening socket, accepts each connection,
checks the caller (``cni_plugins.helper.peer``), says ``A`` and hands the connection to one of its
pre-forked, pre-warmed workers (``cni_plugins.helper.worker``) over that worker's control
socket. Workers never hold the listening socket: when the manager
dies, the socket stops accepting at once and the next call starts a new helper (or runs in
its own process). The manager forks a replacement as soon as a worker takes a call, so the
fork of this large process is never on a call's path.

Security: the socket is in a root-only directory (0700; socket 0600), and the helper serves a
caller only if it holds everything the helper holds (``cni_plugins.helper.peer``); any other
caller runs the plugin in its own process. A launcher names its install (interpreter and
code paths) in each request; a helper serves only its own install's launchers.

Lifetime: started by the first call (``--daemon``), by systemd (socket activation: the
listening socket arrives as fd 3, readiness is reported with ``sd_notify``), or by hand. It
exits after ``--idle`` seconds without calls (0: never) and when the code it loaded changes
on disk (it then stops taking calls; the next call, or systemd, starts one with the new
code). ``<socket>.lock`` holds its pid (flock'd while it runs); ``<socket>.status`` what
``cni-plugins helper status`` shows.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import errno
import fcntl
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from cni_plugins.helper import peer, protocol
from cni_plugins.helper import worker as helper_worker
from cni_plugins.protocol import installed

STATUS_EVERY = 0.5  # seconds between rewrites of the status file while calls come in
STAMP_EVERY = 2.0  # seconds between checks of the code's mtimes while calls come in
REST_AFTER = 30.0  # seconds without calls, after which the pool keeps only REST_WORKERS ready
REST_WORKERS = 2  # what sequential calls need: one serving, one ready while it reports back
NOT_PRELOADED = ("cni_plugins.install", "cni_plugins.launch", "cni_plugins.helper.units")  # no call runs them
# Programs of their own (cnitool, the node agent, the DHCP daemon): no plugin call imports them.
NOT_PRELOADED_PACKAGES = ("cni_plugins.runtime.", "cni_plugins.node.", "cni_plugins.dhcpd.")


def _preload() -> None:
    """Import everything a call may need, once, before any fork, and build what is built on
    first use (pyroute2 compiles its message tables when it first decodes one): a worker
    then starts its call with nothing left to load (a module imported in a worker costs
    ~1 ms, and every worker would pay it again)."""
    import ctypes  # noqa: F401  (setns in children)
    import importlib
    import pkgutil

    from cni_plugins.protocol import registry

    for plugin_type in registry.available():
        registry.load(plugin_type)
    root = Path(installed.package_root())
    for pkg in ("cni_plugins", "ipam", "firewall", "conf"):
        for info in pkgutil.walk_packages([str(root / pkg)], prefix=f"{pkg}."):
            if info.ispkg or info.name in NOT_PRELOADED or info.name.startswith(NOT_PRELOADED_PACKAGES):
                continue
            try:
                importlib.import_module(info.name)
            except Exception:  # an optional module that cannot load here: a call that needs it will say so
                pass
    import nftables  # noqa: F401  (loaded before the workers fork)

    from cni_plugins.kernel import netlink
    from firewall import nft  # noqa: F401  (loaded before the workers fork)

    netlink.preload_pyroute2()

    try:
        with netlink.Netlink.open(None, label="helper warm-up") as nl:  # reads only, in the helper's own namespace
            nl.link("lo")
            nl.link_by_index(1)
            nl.addresses(family=socket.AF_INET)
            nl.routes(socket.AF_INET)
    except Exception:  # no rtnetlink here: workers compile the tables themselves
        pass


def code_stamp(root: Path) -> float:
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


@dataclasses.dataclass
class _Worker:
    pid: int
    ctl: socket.socket
    state: str  # warming, idle, busy, leaving


class _Pool:
    """The manager's side: workers, the connections waiting for one, the counters."""

    def __init__(
        self, server: socket.socket, identity: helper_worker.Identity, size: int, keep_from_workers: list[Any]
    ) -> None:
        self.server = server
        self.identity = identity
        self.size = size
        self.keep_from_workers = keep_from_workers  # fds and sockets a worker must not inherit
        self.workers: dict[int, _Worker] = {}
        self.idle: list[int] = []  # a stack: the most recently used worker first
        self.pending: collections.deque[tuple[socket.socket, float]] = collections.deque()
        self.selector = selectors.DefaultSelector()
        self.served = self.refused = self.gone = 0
        self.last_activity = time.monotonic()

    def count(self, state: str) -> int:
        return sum(1 for w in self.workers.values() if w.state == state)

    def fill(self) -> None:
        """Keep ``size`` workers ready or warming (``REST_WORKERS`` once calls stopped coming for
        ``REST_AFTER`` seconds: each worker costs ~10 MiB), and at most twice that in all."""
        resting = time.monotonic() - self.last_activity > REST_AFTER
        want = min(self.size, REST_WORKERS) if resting else self.size
        while self.count("idle") + self.count("warming") < want and len(self.workers) < 2 * self.size:
            self._spawn()
        while resting and len(self.idle) > want:
            self.forget(self.idle[0])  # the least recently used: its control socket closes, it exits

    def _spawn(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                mine.close()
                for w in self.workers.values():
                    w.ctl.close()
                for conn, _ in self.pending:
                    conn.close()
                for item in self.keep_from_workers:
                    if isinstance(item, int):
                        os.close(item)
                    else:
                        item.close()
                self.selector.close()
            except BaseException:
                os._exit(1)
            helper_worker.run(theirs, self.identity, parent)
        theirs.close()
        self.workers[pid] = _Worker(pid, mine, "warming")
        self.selector.register(mine, selectors.EVENT_READ, pid)

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            self.pending.append((conn, peer.boottime()))
            self.last_activity = time.monotonic()

    def heard_from(self, pid: int) -> None:
        worker = self.workers[pid]
        try:
            message = worker.ctl.recv(16)
        except OSError:
            message = b""
        if not message:
            self.forget(pid)
            return
        for byte in message.decode("ascii", "replace"):
            if byte == "R" and worker.state == "warming":
                worker.state = "idle"
            elif byte in "01" and worker.state == "busy":
                worker.state = "idle"
            elif byte == "2":
                worker.state = "leaving"
            if byte == "0":  # the worker refused the request (another install, malformed)
                self.served -= 1
                self.refused += 1
            elif byte == "G":
                self.gone += 1
        if worker.state == "idle" and pid not in self.idle:
            self.idle.append(pid)
        self.last_activity = time.monotonic()

    def forget(self, pid: int) -> None:
        worker = self.workers.pop(pid, None)
        if worker is not None:
            self.selector.unregister(worker.ctl)
            worker.ctl.close()
        if pid in self.idle:
            self.idle.remove(pid)

    def dispatch(self) -> None:
        """Hand waiting connections to free workers; drop those their launcher gave up on."""
        now = peer.boottime()
        while self.pending:
            conn, accepted_at = self.pending[0]
            if now - accepted_at > protocol.ACCEPT_WAIT:
                self.pending.popleft()
                conn.close()  # its launcher stopped waiting and runs the plugin itself
                continue
            if not self.idle:
                return
            self.pending.popleft()
            why = peer.refusal(conn, self.identity.creds, accepted_at)
            try:
                conn.send(protocol.REFUSED + why.encode() if why else protocol.ACCEPTED)
            except OSError:
                why = why or "gone"  # the launcher went away: nothing to hand over
            if why:
                self.refused += 1
                conn.close()
                continue
            while self.idle:  # "A" said a worker takes it: the launcher sends its request meanwhile
                pid = self.idle.pop()
                worker = self.workers[pid]
                try:
                    worker.ctl.sendmsg(
                        [b"C"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", conn.fileno()))]
                    )
                except OSError:
                    self.forget(pid)  # it died; another one takes the connection
                    continue
                worker.state = "busy"
                self.served += 1
                break
            conn.close()  # handed over (or, with no worker left, the launcher reads EOF: "died")

    def reap(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.workers:
                self.forget(pid)

    def close(self) -> None:
        """Stop: idle workers see their control socket close and exit; busy ones finish their
        call first."""
        for conn, _ in self.pending:
            conn.close()
        self.pending.clear()
        for pid in list(self.workers):
            self.forget(pid)
        self.selector.close()

    def snapshot(self) -> dict[str, Any]:
        return {
            "calls": self.served,
            "refused": self.refused,
            "caller gone": self.gone,
            "workers": {
                state: sorted(w.pid for w in self.workers.values() if w.state == state)
                for state in ("idle", "busy", "warming", "leaving")
            },
        }


def listen_fd() -> socket.socket | None:
    """The listening socket systemd passed (socket activation: LISTEN_PID, LISTEN_FDS, fd 3)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    sock = socket.socket(fileno=3)
    if (
        sock.family != socket.AF_UNIX
        or sock.type != socket.SOCK_SEQPACKET
        or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    ):
        raise SystemExit(
            "cni-plugins helper: the socket passed by systemd is not a "
            "listening AF_UNIX SOCK_SEQPACKET socket (ListenSequentialPacket=)"
        )
    fd = fcntl.fcntl(3, fcntl.F_GETFD)
    fcntl.fcntl(3, fcntl.F_SETFD, fd | fcntl.FD_CLOEXEC)
    return sock


class _Notify:
    """systemd's notification socket (Type=notify), connected before the helper moves to its
    own network namespace (an abstract socket address belongs to a network namespace)."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        address = os.environ.pop("NOTIFY_SOCKET", "")
        if not address:
            return
        if address.startswith("@"):
            address = "\0" + address[1:]
        try:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.connect(address)
        except OSError:
            self.sock = None

    def send(self, message: str) -> None:
        if self.sock is not None:
            try:
                self.sock.send(message.encode())
            except OSError:
                pass


def _bind(sock_path: str) -> tuple[socket.socket, int]:
    try:
        os.unlink(sock_path)
    except FileNotFoundError:
        pass
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)
    try:
        server.bind(sock_path)
    finally:
        os.umask(old_umask)
    os.chmod(sock_path, 0o600)
    server.listen(128)
    return server, os.stat(sock_path).st_ino


def serve(sock_path: str, idle: float, workers: int = 0, ready_fd: int = -1, install: str = "") -> int:
    """Serve calls on ``sock_path`` (or on the socket systemd passed) with a pool of
    ``workers`` ready workers (default the CPUs, at least 2). ``ready_fd``: a pipe that
    gets ``protocol.READY`` once the socket listens (the call that started this helper waits
    for it); an early return or an exception closes it by ending the process."""
    import gc

    activated = listen_fd()
    notify = _Notify()
    me = peer.Credentials.of("self")
    if me.cap_eff & protocol.HELPER_NEEDS != protocol.HELPER_NEEDS:
        print("cni-plugins helper: needs CAP_NET_ADMIN, CAP_SYS_ADMIN and CAP_SYS_CHROOT", file=sys.stderr)
        return 1
    directory = os.path.dirname(sock_path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    lock_fd = os.open(sock_path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    if not _try_lock(lock_fd):  # another helper serves this socket, or is starting to
        if activated is not None:
            _take_over(sock_path, lock_fd)
        elif ready_fd <= 2 or not _wait_for_other(sock_path, lock_fd, ready_fd):
            return 0
    os.ftruncate(lock_fd, 0)
    os.write(lock_fd, f"{os.getpid()}\n".encode())
    _settle()
    _preload()
    gc.collect()
    gc.freeze()  # workers then never touch (copy) the preloaded objects' pages for collection
    root = Path(installed.package_root())
    stamp = code_stamp(root)
    if not install:
        install = installed.install_id()
    if activated is not None:
        server, bound_inode = activated, -1
    else:
        server, bound_inode = _bind(sock_path)
    server.setblocking(False)
    if ready_fd > 2:
        _say_ready(ready_fd)
        os.close(ready_fd)  # before any fork: workers must not hold it
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    flags = {"stop": False, "status": True}
    signal.signal(signal.SIGTERM, lambda *_: flags.update(stop=True))
    signal.signal(signal.SIGINT, lambda *_: flags.update(stop=True))
    signal.signal(signal.SIGUSR1, lambda *_: flags.update(status=True))
    identity = helper_worker.Identity(install=install, creds=me)
    pool = _Pool(
        server,
        identity,
        workers or max(REST_WORKERS, os.cpu_count() or 1),
        [server, lock_fd, wake_r, wake_w, *([notify.sock] if notify.sock else [])],
    )
    pool.selector.register(server, selectors.EVENT_READ, "accept")
    pool.selector.register(wake_r, selectors.EVENT_READ, "wake")
    started = time.time()
    status_path = sock_path + ".status"
    last_status = last_stamp_check = 0.0
    announced = False
    try:
        while not flags["stop"]:
            pool.fill()
            if not announced and pool.count("idle") >= pool.size:
                # Ready once its workers are: the first call then finds them warm, not warming.
                notify.send(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving {sock_path}")
                announced = True
            for key, _ in pool.selector.select(timeout=1.0):
                if key.data == "accept":
                    pool.accept()
                elif key.data == "wake":
                    _drain(wake_r)
                elif key.data in pool.workers:
                    pool.heard_from(key.data)
            pool.reap()
            pool.dispatch()
            now = time.monotonic()
            busy = pool.count("busy") + len(pool.pending)
            if idle and not busy and now - pool.last_activity > idle:
                break
            if pool.last_activity > last_stamp_check and now - last_stamp_check > STAMP_EVERY:
                last_stamp_check = now
                if code_stamp(root) != stamp:
                    break  # our code changed: let callers run the new code
            if flags["status"] or (pool.last_activity > last_status and now - last_status > STATUS_EVERY):
                answer = _read_small(status_path + ".ask") if flags["status"] else ""
                flags["status"] = False
                last_status = now
                _write_status(
                    status_path,
                    {
                        "pid": os.getpid(),
                        "started": started,
                        "socket": sock_path,
                        "activated": activated is not None,
                        "install": install,
                        "root": str(root),
                        "stamp": stamp,
                        **pool.snapshot(),
                        "answer": answer,
                    },
                )
    finally:
        notify.send("STOPPING=1")
        if bound_inode >= 0:
            try:
                if os.stat(sock_path).st_ino == bound_inode:  # still ours, not a newer helper's
                    os.unlink(sock_path)
            except OSError:
                pass
        server.close()
        pool.close()
        for leftover in (status_path, status_path + ".ask"):
            try:
                os.unlink(leftover)
            except OSError:
                pass
    return 0


def _settle() -> None:
    """Live in a network namespace of its own (empty but for ``lo``), not in whichever one the
    call that started this helper ran in (``ip netns exec`` into a namespace that is deleted
    later, say): the helper would keep that namespace alive, and whoever deletes it and kills
    what is left in it would kill the helper. Workers join each caller's namespaces anyway;
    the helper's sockets are paths, which no network namespace scopes."""
    from cni_plugins.kernel import netns

    try:
        if netns.libc().unshare(helper_worker.CLONE_NEWNET) != 0:
            netns.raise_errno()
    except OSError as exc:
        print(
            f"cni-plugins helper: staying in the network namespace it was started in: unshare: {exc.strerror}",
            file=sys.stderr,
        )


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _read_small(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read(256)
    except (OSError, ValueError):
        return ""


def _write_status(path: str, data: dict[str, Any]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except OSError:
        pass


def _try_lock(lock_fd: int, shared: bool = False) -> bool:
    try:
        fcntl.flock(lock_fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        raise


def _say_ready(ready_fd: int) -> None:
    try:
        os.write(ready_fd, protocol.READY)
    except OSError:  # the caller stopped waiting: it runs the plugin itself
        pass


def _wait_for_other(sock_path: str, lock_fd: int, ready_fd: int) -> bool:
    """Another helper holds the lock (calls that started at the same moment each started
    one): tell our caller once that one listens, so it is served there rather than in its
    own process, competing with that helper's start. True if that helper exited first and
    the lock is ours now; False once our caller was told, or after ``protocol.READY_WAIT``."""
    deadline = time.monotonic() + protocol.READY_WAIT
    while time.monotonic() < deadline:
        if _try_lock(lock_fd):
            return True
        if _listening(sock_path):
            _say_ready(ready_fd)
            return False
        time.sleep(0.01)
    return False


def _listening(sock_path: str) -> bool:
    """Whether someone accepts connections on ``sock_path`` (not a socket file a dead helper
    left; the probe's connection is refused by the worker it reaches, as a caller gone)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as probe:
        probe.setblocking(False)
        try:
            probe.connect(sock_path)
        except BlockingIOError:  # a full backlog: someone listens
            return True
        except OSError:
            return False
        return True


def _take_over(sock_path: str, lock_fd: int, wait: float = 10.0) -> None:
    """Socket activation while a helper started by a call still holds the lock: that helper
    no longer gets calls (systemd owns the socket now); ask it to stop and take its place."""
    pid = _holder(sock_path)
    if pid and _is_helper(pid):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + wait
    while not _try_lock(lock_fd):
        if time.monotonic() > deadline:
            raise SystemExit(f"cni-plugins helper: {sock_path}.lock is held by pid {pid}, which did not stop")
        time.sleep(0.05)


def _holder(sock_path: str) -> int:
    try:
        return int(Path(sock_path + ".lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _is_helper(pid: int) -> bool:
    try:
        return b"cni_plugins" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def running(sock_path: str) -> int:
    """The pid of the helper serving ``sock_path``, 0 if none runs (its lock is free)."""
    try:
        fd = os.open(sock_path + ".lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        if _try_lock(fd, shared=True):
            return 0
    finally:
        os.close(fd)
    return _holder(sock_path)


def stop(sock_path: str, timeout: float = 5.0) -> int:
    """Stop the helper serving ``sock_path``; 0 if none runs (or once it stopped)."""
    pid = running(sock_path)
    if not pid:
        return 0
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not running(sock_path):
            return 0
        time.sleep(0.02)
    if running(sock_path) == pid:
        os.kill(pid, signal.SIGKILL)
    return 0


def status(sock_path: str, wait: float = 2.0) -> dict[str, Any] | None:
    """What the helper serving ``sock_path`` says about itself, plus its workers as /proc sees
    them; None if none runs. It is asked for a fresh answer (a token in ``<socket>.status.ask``
    and SIGUSR1) and the answer carrying that token is awaited, for ``wait`` seconds at most."""
    pid = running(sock_path)
    if not pid:
        return None
    path = Path(sock_path + ".status")
    token = f"{os.getpid()}-{time.monotonic_ns()}"
    ask = Path(sock_path + ".status.ask")
    try:
        fd = os.open(ask, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(fd, "w") as fh:
            fh.write(token)
        os.kill(pid, signal.SIGUSR1)
    except ProcessLookupError:
        return None
    except OSError:
        token = ""
    data: dict[str, Any] = {"pid": pid}
    deadline = time.monotonic() + wait
    while True:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            pass
        if not token or data.get("answer") == token or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    data.pop("answer", None)
    try:
        data["children"] = sorted(int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split())
    except OSError:
        data["children"] = []
    return data


def describe(data: dict[str, Any] | None, sock_path: str) -> str:
    """``status`` for a person."""
    if data is None:
        return f"helper: not running (socket {sock_path})"
    started = data.get("started")
    since = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)) if started else "?"
    workers = data.get("workers", {})
    lines = [
        f"helper: running, pid {data.get('pid')}, since {since}"
        + (f" ({time.time() - started:.0f} s)" if started else ""),
        f"socket: {data.get('socket', sock_path)}" + (" (socket activation)" if data.get("activated") else ""),
        f"code: {data.get('root', '?')}, install {data.get('install', '?')}, stamp "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(data.get('stamp', 0)))}",
        f"calls served: {data.get('calls', '?')} (the caller went away before the "
        f"end: {data.get('caller gone', '?')}), refused: {data.get('refused', '?')}",
        "workers: " + ", ".join(f"{len(pids)} {state} {pids}" for state, pids in workers.items() if pids)
        if workers
        else "workers: ?",
    ]
    return "\n".join(lines)


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
    parser.add_argument("--socket", default="", help="default: this install's socket in /run/cni-py")
    parser.add_argument("--idle", type=float, default=600.0, help="exit after this many idle seconds (0: never)")
    parser.add_argument("--daemon", action="store_true", help="detach from the terminal")
    parser.add_argument("--workers", type=int, default=0, help="ready workers (default: the CPUs, at least 2)")
    parser.add_argument("--install-id", default="", help=argparse.SUPPRESS)  # set by launchers and units
    parser.add_argument("--ready-fd", type=int, default=-1, help=argparse.SUPPRESS)  # set by client._start_helper
    opts = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("cni-plugins helper: must run as root", file=sys.stderr)
        return 1
    sock_path = opts.socket
    if not sock_path:
        sock_path = protocol.socket_path(installed.DEFAULT_RUN_DIR, installed.install_id())
    if opts.daemon:
        _daemonize()
    return serve(sock_path, opts.idle, workers=opts.workers, ready_fd=opts.ready_fd, install=opts.install_id)


if __name__ == "__main__":
    sys.exit(main())
