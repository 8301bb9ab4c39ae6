"""A helper's worker: a pre-forked, pre-warmed process that serves one call at a time.

The pool manager (``cni_plugins.helper.server``) accepts each connection, checks the caller and
hands the connection over on the worker's control socket; the worker never holds the
listening socket. A call, in order:

1. The manager has checked the caller (``peer.refusal``) and told it ``A``; the launcher
   sends its request (install, plugin type, umask, run dir, environment) with its stdin,
   stdout, stderr, network and mount namespaces and working directory as file descriptors.
2. A request for another install (another code) is refused: ``N``, nothing was done, and
   the launcher runs the plugin in its own process.
3. Become the caller: join its mount and network namespaces, directory, umask, streams and
   environment; the connection is watched (see ``_Watch``); stdin is read; ``V<cniVersion>``
   tells the launcher which version an error would be reported in, should this worker die.
4. ``skel.run`` of the plugin, exactly as the executable would run it.
5. Let go of the caller's pipes, send the exit status, go back to the worker's own
   namespaces, directory, umask and environment, tell the manager it is free.

If the launcher goes away meanwhile (the runtime killed it or timed the call out), the
worker lets go of the caller's pipes at once (the runtime's wait for EOF on them ends) and
asks the ADD to stop at its next safe point (``cni_plugins.protocol.cancel``).
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import select
import signal
import socket
import struct
import sys
from typing import NoReturn

from cni_plugins.helper import peer
from cni_plugins.helper.protocol import (
    FDS,
    MAX_MESSAGE,
    REFUSED,
    VERSION_TAG,
    declared_version,
    decode_request,
)

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
CALLS_PER_WORKER = 200  # then a fresh fork: whatever a call left behind does not pile up
REQUEST_WAIT = 5.0  # seconds for the request after "A" (a launcher sends it at once)
POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)
IDLE_CLOSE = 1.0  # seconds without a call before a worker frees its nftables contexts


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """What a worker compares a request and a caller with."""

    install: str
    creds: peer.Credentials


def _setns(fd: int, nstype: int) -> None:
    from cni_plugins.kernel import netns

    netns._setns(fd, nstype)


@dataclasses.dataclass
class _Home:
    """Where a worker stands between calls, to go back there after serving one."""

    net: int
    mnt: int
    cwd: int
    err: int  # the worker's own stderr (the helper's log), for what a call logs after its caller left
    umask: int
    env: dict[str, str]
    parent: int
    stop_r: int
    stop_w: int

    @classmethod
    def here(cls) -> _Home:
        umask = os.umask(0o022)
        os.umask(umask)
        flags = os.O_RDONLY | os.O_CLOEXEC
        stop_r, stop_w = os.pipe()
        return cls(
            net=os.open("/proc/self/ns/net", flags),
            mnt=os.open("/proc/self/ns/mnt", flags),
            cwd=os.open(".", flags | os.O_DIRECTORY),
            err=fcntl.fcntl(2, fcntl.F_DUPFD_CLOEXEC, 3),
            umask=umask,
            env=dict(os.environ),
            parent=os.getppid(),
            stop_r=stop_r,
            stop_w=stop_w,
        )

    def back(self) -> None:
        """Leave the caller's namespaces and settings; close what the call kept open."""
        import gc

        from cni_plugins.kernel import netlink, sysctl
        from cni_plugins.protocol import attachment_lock, cancel

        netlink.release_kept()
        sysctl.release()  # its dentries would pile up call after call
        _setns(self.mnt, CLONE_NEWNS)
        _setns(self.net, CLONE_NEWNET)
        os.fchdir(self.cwd)
        os.umask(self.umask)
        os.environ.clear()
        os.environ.update(self.env)
        attachment_lock.configure("")
        cancel.reset()
        gc.collect()  # the call's cycles (collection is off during calls)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _Watch:
    """Notices the launcher's end of the connection closing (it sends nothing after its
    request): then the caller is gone, so its pipes are let go at once (its stdin and stdout
    become /dev/null, stderr the helper's log) and the ADD is asked to stop.

    The kernel signals it (``O_ASYNC``: SIGIO to this process on any event of the socket;
    the handler looks whether it was the close). No thread: a process with a second thread
    cannot join a mount namespace, which every call does. A Python handler runs between two
    bytecodes of the call, or when a blocking system call (a lock, a wait for a child, a
    netlink read) is interrupted by the signal; only one long C call can delay it."""

    conn = -1
    err = -1

    @classmethod
    def start(cls, conn: socket.socket, home: _Home) -> None:
        cls.conn, cls.err = conn.fileno(), home.err
        fcntl.fcntl(cls.conn, fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(cls.conn, fcntl.F_SETFL, fcntl.fcntl(cls.conn, fcntl.F_GETFL) | os.O_ASYNC)
        cls.look()  # it may have closed before O_ASYNC was set

    @classmethod
    def look(cls, *_: object) -> None:
        """SIGIO's handler (also for events that are not the close: space to write, say)."""
        if cls.conn < 0:
            return
        poller = select.poll()
        poller.register(cls.conn, select.POLLIN | POLLRDHUP)
        if poller.poll(0):
            cls.conn = -1
            from cni_plugins.protocol import cancel

            cancel.request()
            release_streams(cls.err)

    @classmethod
    def stop(cls, conn: socket.socket) -> None:
        cls.conn = -1
        fcntl.fcntl(conn.fileno(), fcntl.F_SETFL, fcntl.fcntl(conn.fileno(), fcntl.F_GETFL) & ~os.O_ASYNC)


def release_streams(err: int = -1) -> None:
    """Point fds 0 and 1 (and 2, at ``err`` or /dev/null) away from the caller's pipes."""
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(err if err >= 0 else devnull, 2)
    finally:
        os.close(devnull)


def _parse(data: bytes, identity: Identity) -> tuple[str, int, str, dict[str, str]]:
    """(plugin type, umask, run dir, environment) of a request, or ValueError saying why not."""
    from cni_plugins.protocol import registry

    install, plugin_type, umask, run_dir, env = decode_request(data)
    if install != identity.install:
        raise ValueError("the launcher belongs to another install (other code)")
    if plugin_type not in registry.PLUGINS:
        raise ValueError(f"unknown plugin type {plugin_type!r}")
    return plugin_type, umask, run_dir, env


def _tell(conn: socket.socket, message: bytes) -> bool:
    try:
        conn.send(message)
        return True
    except OSError:
        return False


def _take_call(conn: socket.socket, identity: Identity, home: _Home) -> bool | None:
    """Read the request of a caller the manager checked and told ``A``, and serve it. None
    when it was refused or went away before anything was done; else whether the call ended
    normally."""
    conn.settimeout(REQUEST_WAIT)
    try:
        data, ancdata, flags, _addr = conn.recvmsg(
            MAX_MESSAGE, socket.CMSG_SPACE(len(FDS) * 4), socket.MSG_CMSG_CLOEXEC
        )
    except OSError:
        return None
    conn.settimeout(None)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(struct.unpack(f"{len(payload) // 4}i", payload[: len(payload) - len(payload) % 4]))
    try:
        if flags & (socket.MSG_CTRUNC | socket.MSG_TRUNC) or len(fds) != len(FDS):
            raise ValueError("a malformed request")
        plugin_type, umask, run_dir, env = _parse(data, identity)
    except (ValueError, UnicodeError) as exc:
        for fd in fds:
            os.close(fd)
        _tell(conn, REFUSED + str(exc).encode())
        return None
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # committed: a stopping helper must not cut the call
    from cni_plugins.kernel import netlink

    netlink.keep_open_until_exit()  # closing sockets costs time: do it after the reply
    return _serve_call(conn, plugin_type, umask, run_dir, env, fds, home)


def _read_all(fd: int) -> bytes | None:
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except OSError:
        return None  # skel reads again and reports the error
    return b"".join(chunks)


def _serve_call(
    conn: socket.socket, plugin_type: str, umask: int, run_dir: str, env: dict[str, str], fds: list[int], home: _Home
) -> bool:
    """In a worker that took a call: become the caller, run the plugin, report the status.
    True when the call ran to its end normally (the worker may be reused).

    The caller's streams are let go *before* the status is sent: the runtime sees EOF on its
    pipes as soon as the launcher exits, and closing netlink and nftables sockets (which can
    wait for a kernel RCU grace period after a transaction that deleted something) happens
    after the reply, not in the runtime's wait."""
    rc, clean = 1, False
    watching = False
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # subprocess needs to reap its children
        stdin, stdout, stderr, net_fd, mnt_fd, cwd_fd = fds
        _setns(mnt_fd, CLONE_NEWNS)
        _setns(net_fd, CLONE_NEWNET)
        os.fchdir(cwd_fd)
        os.umask(umask)
        for src, dst in ((stdin, 0), (stdout, 1), (stderr, 2)):
            os.dup2(src, dst)
        for fd in fds:
            os.close(fd)
        _Watch.start(conn, home)
        watching = True
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        os.environ.clear()
        os.environ.update(env)
        from cni_plugins.protocol import attachment_lock, registry, skel

        attachment_lock.configure(run_dir)
        plugin = registry.load(plugin_type).PLUGIN
        data = _read_all(0)
        version = declared_version(data or b"", plugin.versions)
        _tell(conn, VERSION_TAG + version.encode())
        rc = skel.run(plugin, stdin=data)
        sys.stdout.flush()
        sys.stderr.flush()
        clean = rc in (0, 1)
    except BaseException as exc:  # the worker must always report, whatever happened
        try:
            os.write(2, f"cni-py helper worker: {exc!r}\n".encode())
        except OSError:
            pass
    try:
        if watching:
            _Watch.stop(conn)
        release_streams()
    except OSError:
        clean = False
    _tell(conn, str(rc).encode())
    return clean


WARM_PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "br"}, {"name": "veth"}, {"name": "eth0", "sandbox": "/proc/self/ns/net"}],
    "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 2}],
    "routes": [{"dst": "0.0.0.0/0"}],
}


def _warm() -> None:
    """Before a worker takes a call: walk the common paths once (config and result parsing,
    the skel, a netlink and an nftables read in the helper's own namespace; nothing is
    changed anywhere). A fresh fork shares every page with the pool manager, and the first
    touch of each (Python writes reference counts) copies it: ~1,300 page copies, 5-10 ms,
    would otherwise land inside the call."""
    import io
    import json

    from cni_plugins.kernel import netlink
    from cni_plugins.protocol import registry, skel
    from conf.netconf import NetConf
    from firewall.nft import LibNftables

    conf = {
        "cniVersion": "1.0.0",
        "name": "warm",
        "type": "portmap",
        "prevResult": WARM_PREV,
        "runtimeConfig": {"portMappings": [{"hostPort": 1, "containerPort": 2, "protocol": "tcp"}]},
    }
    data = json.dumps(conf).encode()
    for plugin_type in ("bridge", "portmap", "firewall", "host-local"):
        plugin = registry.load(plugin_type).PLUGIN
        for command in ("VERSION", "ADD"):  # ADD without CNI_CONTAINERID: refused by the skel, before any action
            skel.run(plugin, environ={"CNI_COMMAND": command}, stdin=data, stdout=io.StringIO(), stderr=io.StringIO())
    NetConf.from_bytes(data)
    declared_version(data, plugin.versions)
    with netlink.Netlink.open(None, label="warm-up") as nl:
        nl.link("lo")
        nl.link_by_index(1)
        nl.addresses(index=1, family=socket.AF_INET)
    LibNftables().list_chain("inet", "cni_py_warm_up", "none")


def _next_conn(ctl: socket.socket) -> socket.socket | None:
    """The next connection the manager hands over; None when the manager is gone (or tells
    this worker to stop). Once idle for ``IDLE_CLOSE`` seconds, the nftables contexts
    kept since the last calls are freed (and the namespaces they hold let go)."""
    from firewall import nft

    while True:
        if nft.shared_count() and not select.select([ctl], [], [], IDLE_CLOSE)[0]:
            nft.close_shared()
            continue
        try:
            data, ancdata, _flags, _addr = ctl.recvmsg(16, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC)
        except InterruptedError:
            continue
        if not data:
            return None
        fds = [
            fd
            for level, kind, payload in ancdata
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
            for (fd,) in struct.iter_unpack("i", payload[: len(payload) - len(payload) % 4])
        ]
        if data != b"C" or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            return None
        return socket.socket(fileno=fds[0])


def run(ctl: socket.socket, identity: Identity, parent: int) -> NoReturn:
    """A worker's life: warm up, say ready, then serve the connections the manager hands
    over, one at a time, going back to its own namespaces between them, for up to
    ``CALLS_PER_WORKER`` calls. It exits after a call that did not end normally, when going
    back fails, and when the manager is gone (its control socket closes). Never returns."""
    import gc

    gc.disable()  # collected between calls, off the callers' path
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    signal.signal(signal.SIGIO, _Watch.look)
    code, log = 0, 2
    try:
        from cni_plugins.kernel import netns

        netns.libc().prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # an idle worker ends with the manager
        home = _Home.here()
        log = home.err  # fd 2 is a caller's stream during a call
        if home.parent != parent:
            raise SystemExit(0)  # the manager died before we asked to follow it
        from firewall import nft

        nft.share_per_namespace()  # see firewall.nft: freeing a context stalls the next transaction
        try:
            _warm()
        except Exception:  # a warm-up is an optimisation only
            pass
        ctl.send(b"R")
        served = 0
        while served < CALLS_PER_WORKER:
            handed = _next_conn(ctl)
            if handed is None:
                break
            conn = handed
            try:
                outcome = _take_call(conn, identity, home)
            except OSError:
                outcome = None
            conn.close()
            if outcome is None:
                ctl.send(b"0")  # refused; free again
                continue
            served += 1
            from cni_plugins.protocol import cancel

            gone = b"G" if cancel.requested() else b""  # its caller went away before the end
            if not outcome or served >= CALLS_PER_WORKER:
                ctl.send(gone + b"2")  # this worker ends (the manager forks another)
                break
            home.back()
            ctl.send(gone + b"1")  # free again
    except BaseException as exc:  # never fall back into the manager's code
        code = 1
        try:
            os.write(log, f"cni-py helper worker {os.getpid()}: ends: {exc!r}\n".encode())
        except OSError:
            pass
    finally:
        os._exit(code)
