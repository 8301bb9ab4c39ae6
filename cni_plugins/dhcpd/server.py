"""``cni-plugins dhcp daemon`` (also ``<CNI bin dir>/dhcp daemon``, as the reference is run):
the daemon that holds the leases the ``dhcp`` IPAM plugin asks for.

It takes the reference's flags (Go style: ``-socketpath PATH`` or ``--socketpath=PATH``)
and listens where the reference does (``/run/cni/dhcp.sock``), or on the socket systemd
passes (``LISTEN_FDS``, the units ``cni-plugins install --systemd`` writes); with
``NOTIFY_SOCKET`` it says READY=1 once it listens. One thread per connection serves the
calls (``service``); a connection that says nothing for ``IDLE_TIMEOUT`` is closed.

Where the reference's v1.1.1 daemon did not: a socket file left by a daemon that is gone is
replaced (one that still answers is an error, and ``<socket>.lock`` keeps two daemons from
racing for the path); SIGTERM and SIGINT remove the socket and the pidfile it made.
Leases live in this process only: a daemon that stops forgets them (its containers keep
their addresses until the leases expire), as the reference's does.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import json
import logging
import os
import re
import select
import signal
import socket
import stat
import sys
import threading
from collections.abc import Callable, Mapping
from typing import Any

from cni_plugins.dhcpd.lease import Settings
from cni_plugins.dhcpd.service import Service
from cni_plugins.spec.errors import CNIError
from ipam import dhcp_rpc
from ipam.dhcp_conf import DEFAULT_SOCKET
from ipam.gob import STRING, GobError, Struct

log = logging.getLogger("cni-dhcp")
IDLE_TIMEOUT = 60.0
STATUS = Struct("DaemonStatus", (("JSON", STRING),))
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """A Go duration (``10s``, ``1m2s``, ``1.5h``, ``0``) in seconds."""
    body = text.strip()
    if body in ("0", "+0", "-0"):
        return 0.0
    if not body or _DURATION.sub("", body) != "":
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (examples: 10s, 1m2s, 500ms)")
    return sum(float(num) * _UNITS[unit] for num, unit in _DURATION.findall(body))


def go_bool(text: str) -> bool:
    if text.lower() in ("1", "t", "true"):
        return True
    if text.lower() in ("0", "f", "false"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="cni-plugins dhcp daemon", description="the DHCP daemon of the dhcp IPAM plugin")
    p.add_argument(
        "-socketpath", "--socketpath", default="", help=f"the socket to listen on (default {DEFAULT_SOCKET})"
    )
    p.add_argument("-pidfile", "--pidfile", default="", help="an absolute path to write the daemon's PID to")
    p.add_argument(
        "-hostprefix", "--hostprefix", default="", help="the host's root, as seen by the daemon (in a container)"
    )
    p.add_argument(
        "-broadcast",
        "--broadcast",
        nargs="?",
        const=True,
        default=False,
        type=go_bool,
        help="ask servers to broadcast their replies",
    )
    p.add_argument(
        "-timeout",
        "--timeout",
        type=duration,
        default=10.0,
        help="how long an attempt waits for an answer (default 10s)",
    )
    p.add_argument(
        "-resendmax",
        "--resendmax",
        type=duration,
        default=62.0,
        help="the longest pause between attempts (default 1m2s)",
    )
    p.add_argument(
        "-resendtimeout",
        "--resendtimeout",
        type=duration,
        default=208.0,
        help="give up acquiring a lease after this long (default 3m28s)",
    )
    return p.parse_args(argv)


# ---------------------------------------------------------------- systemd


def _systemd_listener() -> socket.socket | None:
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or not os.environ.get("LISTEN_FDS"):
        return None
    count = os.environ.get("LISTEN_FDS", "")
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(key, None)
    if count != "1":
        raise SystemExit(f"Too many ({count}) FDs passed through socket activation")
    sock = socket.socket(fileno=3)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        raise SystemExit("the socket systemd passed is not an AF_UNIX stream socket (ListenStream=)")
    fcntl.fcntl(3, fcntl.F_SETFD, fcntl.fcntl(3, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)
    return sock


def _notify(message: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError:
        pass


# ---------------------------------------------------------------- the socket


class AlreadyRunning(Exception):
    pass


def _bind(path: str) -> tuple[socket.socket, int, tuple[int, int]]:
    """Listen on ``path``: (socket, lock fd, the socket file's identity). A file left by a
    daemon that is gone is replaced; a daemon that answers there is ``AlreadyRunning``."""
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    lock = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AlreadyRunning(f"another DHCP daemon holds {path}.lock") from None
        if os.path.lexists(path):
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                raise AlreadyRunning(f"{path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                probe.settimeout(1.0)
                probe.connect(path)
                raise AlreadyRunning(f"a DHCP daemon already listens on {path}")
            except OSError as exc:
                if exc.errno != errno.ECONNREFUSED:
                    raise
            finally:
                probe.close()
            log.info(f"removing the stale socket {path}")
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.bind(path)
        sock.listen(128)
        st = os.stat(path)
        return sock, lock, (st.st_dev, st.st_ino)
    except BaseException:
        os.close(lock)
        raise


# ---------------------------------------------------------------- serving


def _no_reply(method: Callable[[Mapping[str, Any]], None]) -> Callable[[Mapping[str, Any]], Any]:
    def call(args: Mapping[str, Any]) -> dict[str, Any]:
        method(args)
        return {}

    return call


class Server:
    def __init__(self, service: Service, listener: socket.socket) -> None:
        self.service = service
        self.listener = listener
        self.methods: dict[str, tuple[Callable[[Mapping[str, Any]], Any], Struct]] = {
            "DHCP.Allocate": (lambda a: dhcp_rpc.result_to_gob(service.allocate(a)), dhcp_rpc.RESULT),
            "DHCP.Release": (_no_reply(service.release), dhcp_rpc.EMPTY),
            "DHCP.Check": (lambda a: dhcp_rpc.result_to_gob(service.check(a)), dhcp_rpc.RESULT),
            "DHCP.GC": (_no_reply(service.gc), dhcp_rpc.EMPTY),
            "DHCP.Status": (lambda a: {"JSON": json.dumps(service.status())}, STATUS),
        }

    def serve(self, stop_fd: int) -> None:
        """Accept until ``stop_fd`` is readable."""
        while True:
            ready, _, _ = select.select([self.listener, stop_fd], [], [])
            if stop_fd in ready:
                return
            try:
                conn, _ = self.listener.accept()
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning(f"accept: {exc.strerror}")
                    select.select([stop_fd], [], [], 0.5)  # a short pause, not a spin
                continue
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        try:
            rpc = dhcp_rpc.ServerConn(conn, IDLE_TIMEOUT)
            if not rpc.handshake():
                return
            while True:
                request = rpc.read_request()
                if request is None:
                    return
                method, seq, argument = request
                error, body, body_type = "", {}, dhcp_rpc.EMPTY
                entry = self.methods.get(method)
                if entry is None:
                    error = (
                        f"rpc: can't find method {method}"
                        if "." in method
                        else f"rpc: service/method request ill-formed: {method}"
                    )
                elif not isinstance(argument, dict):
                    error = f"rpc: {method}: the argument is not a CmdArgs"
                else:
                    self.service.calls += 1
                    try:
                        body, body_type = entry[0](argument), entry[1]
                    except CNIError as err:
                        error = dhcp_rpc.error_text(err)
                        log.info(f"{method}: {error}")
                    except Exception as exc:
                        log.exception(f"{method} failed")
                        error = f"internal error: {exc}"
                rpc.reply(method, seq, error, body_type, body)
        except (OSError, EOFError, GobError) as exc:
            log.debug(f"connection: {exc}")
        except Exception as exc:  # a malformed call ends its connection, not the daemon's log in tracebacks
            log.warning(f"connection dropped: {type(exc).__name__}: {exc}")
        finally:
            conn.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%Y/%m/%d %H:%M:%S", stream=sys.stderr
    )
    if args.pidfile and not os.path.isabs(args.pidfile):
        log.error(f"Error writing pidfile {args.pidfile!r}: path not absolute")
        return 1
    path = args.hostprefix + (args.socketpath or DEFAULT_SOCKET)
    lock, identity = -1, None
    listener = _systemd_listener()
    if listener is None:
        try:
            listener, lock, identity = _bind(path)
        except (AlreadyRunning, OSError) as exc:
            log.error(f"Error getting listener: {exc}")
            return 1
    if args.pidfile:
        try:
            with open(args.pidfile, "w") as f:
                f.write(str(os.getpid()))
            os.chmod(args.pidfile, 0o644)
        except OSError as exc:
            log.error(f"Error writing pidfile {args.pidfile!r}: {exc.strerror}")
            return 1
    stop_r, stop_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    signal.set_wakeup_fd(stop_w)
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda n, _f: stopping.append(n))
    service = Service(
        Settings(
            timeout=args.timeout,
            resend_max=args.resendmax,
            resend_timeout=args.resendtimeout,
            broadcast=bool(args.broadcast),
        ),
        args.hostprefix,
    )
    log.info(f"listening on {path if identity else 'the socket systemd passed'} (pid {os.getpid()})")
    _notify("READY=1")
    try:
        Server(service, listener).serve(stop_r)
    finally:
        _notify("STOPPING=1")
        listener.close()
        if identity is not None:
            try:
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == identity:  # ours still: not one a later daemon made
                    os.unlink(path)
            except OSError:
                pass
        if lock >= 0:
            os.close(lock)
        if args.pidfile:
            try:
                os.unlink(args.pidfile)
            except OSError:
                pass
        service.shutdown()
        log.info(f"stopped ({signal.Signals(stopping[0]).name if stopping else 'done'})")
    return 0


# ---------------------------------------------------------------- status


def status_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="cni-plugins dhcp status", description="what the DHCP daemon holds")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help=f"the daemon's socket (default {DEFAULT_SOCKET})")
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    try:
        reply = dhcp_rpc.call(args.socket, "DHCP.Status", dhcp_rpc.cmd_args("", "", "", "", "", b""), timeout=10.0)
    except dhcp_rpc.RpcError as exc:
        if args.json:
            print(json.dumps({"running": False, "socket": args.socket, "error": str(exc)}, indent=2))
        else:
            print(f"no DHCP daemon of ours answers at {args.socket}: {exc}")
        return 3
    data = {"running": True, "socket": args.socket, **json.loads(str(reply.get("JSON") or "{}"))}
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"DHCP daemon at {args.socket}: pid {data.get('pid')}, since {data.get('since')}, {data.get('calls')} calls")
    leases = data.get("leases") or []
    print(f"{len(leases)} lease(s)")
    for lease in leases:
        print(
            f"  {lease['clientID']}: {lease.get('address', '-')} {lease['state']}"
            f" (server {lease.get('server', '-')}, renew in {lease.get('renewIn', '-')}s,"
            f" expires in {lease.get('expiresIn', '-')}s, {lease['renewals']} renewals)"
        )
    return 0
