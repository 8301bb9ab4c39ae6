"""An etcd v3 client over etcd's HTTP/JSON gateway (``POST /v3/<service>/<rpc>``), on the
standard library's ``socket``, ``json`` and ``base64`` only.

Why not a gRPC client: every CNI call is a new process unless the warm helper serves it,
and importing ``grpc`` with a generated etcd client costs ~100 ms per process against ~10 ms
for this module (``http.client`` alone would add ~17 ms of ``email`` imports). A call does
one to four requests of well under a millisecond each, so start-up is what counts.

What the gateway does that a client must know:

- keys and values are base64; int64 fields (revisions, lease IDs, TTLs, counts) are JSON
  strings; fields holding their default value are left out (a failed txn has no
  ``succeeded``, an empty range no ``kvs``, an expired lease's keepalive no ``TTL``);
- unary RPCs answer with ``Content-Length``, stream RPCs (lease keepalive, watch) chunked;
- an error is a non-200 status with ``{"error", "code", "message"}`` (the gRPC code).

Every request has a deadline (``Options.timeout`` from its start, and never later than
``Client.deadline`` when set): a connection refused, an endpoint that accepts but never
answers, a member without a leader (HTTP 503, gRPC code 14) are retried with backoff on
every endpoint until then, and end as ``Unavailable``. A retried request may have been
applied once already (the answer was lost): callers only send requests that are
idempotent or whose failure branch reads back what they need to tell (see ``ipam.store.etcd``).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

DEFAULT_PORT = 2379
DEFAULT_TIMEOUT = 5.0
DEFAULT_PREFIX = "/cni-py"
BACKOFF_FIRST, BACKOFF_MAX = 0.025, 0.5
GRPC_UNAVAILABLE_CODES = (4, 8, 14)  # DeadlineExceeded, ResourceExhausted, Unavailable: try again
RECV_SIZE = 65536
SHARED_MAX = 8


class EtcdError(Exception):
    """etcd answered with an error (``grpc_code``, ``status``) or with something unreadable."""

    def __init__(self, msg: str, *, grpc_code: int = 0, status: int = 0) -> None:
        super().__init__(msg)
        self.msg = msg
        self.grpc_code = grpc_code
        self.status = status


class Unavailable(EtcdError):
    """No endpoint answered in time: refused, unreachable, silent, or without a leader."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    scheme: str  # "http" or "https"
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    """``http://10.0.0.1:2379``, ``https://etcd.example:2379``, ``http://[fd00::1]:2379``;
    the port defaults to 2379. ValueError says what is wrong."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in ("http", "https"):
        raise ValueError(f"{text!r} is not an http:// or https:// URL")
    rest = rest.rstrip("/")
    if not rest or "/" in rest or "@" in rest:
        raise ValueError(f"{text!r}: give scheme://host:port, without a path or user")
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
        if tail and not tail.startswith(":"):
            raise ValueError(f"{text!r}: bad IPv6 host")
    else:
        host, _, port_text = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not host:
        raise ValueError(f"{text!r} has no host")
    try:
        port = int(port_text) if port_text else DEFAULT_PORT
    except ValueError:
        raise ValueError(f"{text!r}: port {port_text!r} is not a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port {port} is out of range")
    return Endpoint(scheme, host, port)


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """Where etcd is and how to reach it; ``prefix`` is where our keys live in it."""

    endpoints: tuple[Endpoint, ...]
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    timeout: float = DEFAULT_TIMEOUT
    prefix: str = DEFAULT_PREFIX

    def describe(self) -> str:
        return ",".join(map(str, self.endpoints))


@dataclass(frozen=True, slots=True)
class KV:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    responses: list[dict[str, Any]]  # one per op of the branch taken, as the gateway sent them
    revision: int

    def kvs(self, index: int) -> list[KV]:
        """The pairs read by the ``index``-th op of the branch taken (a ``range_op``)."""
        return kvs_of(self.responses[index].get("response_range", {}))


# ---------------------------------------------------------------- wire form


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"  # every key


def kv_of(raw: dict[str, Any]) -> KV:
    return KV(
        key=unb64(raw.get("key", "")),
        value=unb64(raw.get("value", "")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        version=int(raw.get("version", 0)),
        lease=int(raw.get("lease", 0)),
    )


def kvs_of(raw: dict[str, Any]) -> list[KV]:
    return [kv_of(item) for item in raw.get("kvs", ())]


def revision_of(raw: dict[str, Any]) -> int:
    return int(raw.get("header", {}).get("revision", 0))


def _key_range(key: bytes, end: bytes | None) -> dict[str, Any]:
    out = {"key": b64(key)}
    if end is not None:
        out["range_end"] = b64(end)
    return out


def put_op(key: bytes, value: bytes, lease: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def range_op(key: bytes, end: bytes | None = None) -> dict[str, Any]:
    return {"request_range": _key_range(key, end)}


def delete_op(key: bytes, end: bytes | None = None) -> dict[str, Any]:
    return {"request_delete_range": _key_range(key, end)}


def created_at(key: bytes, revision: int) -> dict[str, Any]:
    """Compare: the key's create revision is ``revision`` (0: the key does not exist)."""
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(revision)}


def value_is(key: bytes, value: bytes) -> dict[str, Any]:
    return {"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value)}


def modified_at(key: bytes, revision: int) -> dict[str, Any]:
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


# ---------------------------------------------------------------- one connection


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer in time"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class Conn:
    """One HTTP/1.1 connection to one endpoint (keep-alive; also a watch's stream)."""

    def __init__(self, sock: socket.socket, endpoint: Endpoint) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.buf = b""

    @classmethod
    def open(cls, options: Options, endpoint: Endpoint, deadline: float) -> Conn:
        """Connected (and TLS-handshaken) by ``deadline``; OSError otherwise."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no time left to connect")
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=remaining)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if endpoint.scheme == "https":
                context = _tls_context(options)
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                try:
                    sock = context.wrap_socket(sock, server_hostname=endpoint.host)
                except OSError as exc:
                    if _tls_refused(exc):  # a certificate or protocol problem: trying again changes nothing
                        raise EtcdError(f"{endpoint}: TLS: {exc}") from None
                    if _tls_closed(exc):  # also what a plain-HTTP etcd does to a ClientHello
                        raise ConnectionResetError(
                            0, "closed during the TLS handshake (does this endpoint serve https?)"
                        ) from None
                    raise
        except BaseException:
            sock.close()
            raise
        return cls(sock, endpoint)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, path: str, body: bytes, deadline: float) -> None:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.endpoint.host}:{self.endpoint.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        self._timeout(deadline)
        self.sock.sendall(head + body)

    def _timeout(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(remaining)

    def _fill(self, deadline: float) -> None:
        self._timeout(deadline)
        data = self.sock.recv(RECV_SIZE)
        if not data:
            raise ConnectionResetError(0, "etcd closed the connection")
        self.buf += data

    def _until(self, sep: bytes, deadline: float) -> bytes:
        while (at := self.buf.find(sep)) < 0:
            self._fill(deadline)
        out, self.buf = self.buf[:at], self.buf[at + len(sep) :]
        return out

    def _exactly(self, n: int, deadline: float) -> bytes:
        while len(self.buf) < n:
            self._fill(deadline)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_head(self, deadline: float) -> tuple[int, dict[str, str]]:
        lines = self._until(b"\r\n\r\n", deadline).decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise EtcdError(f"{self.endpoint}: not an HTTP answer: {lines[0][:80]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return int(parts[1]), headers

    def read_chunk(self, deadline: float) -> bytes | None:
        """The next chunk of a chunked body; None after the last one."""
        size_line = self._until(b"\r\n", deadline).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise EtcdError(f"{self.endpoint}: bad chunk header {size_line[:20]!r}") from None
        if size == 0:
            while self._until(b"\r\n", deadline):  # trailers (etcd sends one with errors), then an empty line
                pass
            return None
        data = self._exactly(size, deadline)
        self._exactly(2, deadline)
        return data

    def read_body(self, headers: dict[str, str], deadline: float) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks = []
            while (chunk := self.read_chunk(deadline)) is not None:
                chunks.append(chunk)
            return b"".join(chunks)
        return self._exactly(int(headers.get("content-length", "0") or 0), deadline)

    def readable(self, timeout: float) -> bool:
        """Whether there is something to read within ``timeout`` seconds."""
        if self.buf or (hasattr(self.sock, "pending") and self.sock.pending()):
            return True
        import select

        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
        return bool(poller.poll(max(int(timeout * 1000), 0)))


def _tls_context(options: Options) -> Any:
    import ssl  # only for https endpoints: ~6 ms of imports

    try:
        context = ssl.create_default_context(cafile=options.ca_file or None)
        if options.cert_file:
            context.load_cert_chain(options.cert_file, options.key_file or None)
    except (OSError, ValueError) as exc:
        raise EtcdError(f"TLS files (caFile, certFile, keyFile): {exc}") from None
    return context


def _tls_refused(exc: OSError) -> bool:
    """A TLS handshake that failed on certificates or protocol (not a connection that broke)."""
    import ssl

    return isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError)


def _tls_closed(exc: OSError) -> bool:
    """The peer dropped the connection during the handshake: closed, or reset (a server
    that closes with the ClientHello unread in its buffer makes the kernel send a reset)."""
    import ssl

    return isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError | ConnectionResetError)


def decode_answer(endpoint: Endpoint, status: int, body: bytes) -> dict[str, Any]:
    """The JSON of a unary answer (a chunked stream's first message); raises on errors."""
    text = body.split(b"\n", 1)[0] if body.strip() else b"{}"
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        if status == 503:
            raise Unavailable(f"{endpoint}: HTTP 503", status=status)
        raise EtcdError(f"{endpoint}: HTTP {status}: unreadable answer {body[:80]!r}", status=status)
    err = obj.get("error")
    if status != 200 or err:
        if isinstance(err, dict):  # a stream's error message: {"error": {"grpc_code": 14, ...}}
            code, message = int(err.get("grpc_code", 0)), str(err.get("message", ""))
        else:
            code, message = int(obj.get("code", 0) or 0), str(obj.get("message") or err or "")
        cls = Unavailable if status == 503 or code in GRPC_UNAVAILABLE_CODES else EtcdError
        raise cls(f"{endpoint}: {message or f'HTTP {status}'}", grpc_code=code, status=status)
    return obj


# ---------------------------------------------------------------- the client


class Client:
    """Requests over one kept-alive connection to the first endpoint that answers."""

    def __init__(self, options: Options) -> None:
        if not options.endpoints:
            raise ValueError("no etcd endpoints")
        self.options = options
        self.deadline: float | None = None  # monotonic; no request runs past it
        self._conn: Conn | None = None
        self._next = 0  # the endpoint to try first

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _deadline(self) -> float:
        own = time.monotonic() + self.options.timeout
        return own if self.deadline is None else min(own, self.deadline)

    def connection(self, deadline: float) -> Conn:
        """An open connection, to the endpoints in turn from the last one that worked."""
        if self._conn is not None:
            return self._conn
        problems = []
        endpoints = self.options.endpoints
        for i in range(len(endpoints)):
            endpoint = endpoints[(self._next + i) % len(endpoints)]
            try:
                self._conn = Conn.open(self.options, endpoint, deadline)
                self._next = (self._next + i) % len(endpoints)
                return self._conn
            except OSError as exc:
                problems.append(f"{endpoint}: {_describe(exc)}")
        self._next = (self._next + 1) % len(endpoints)
        raise Unavailable("; ".join(problems))

    def call(self, rpc: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /v3/<rpc>`` and its decoded answer, retried until the deadline."""
        data = json.dumps(body).encode()
        start = time.monotonic()
        deadline = self._deadline()
        delay = BACKOFF_FIRST
        while True:
            try:
                return self._call_once(rpc, data, deadline)
            except Unavailable as exc:
                self.close()
                if time.monotonic() + delay >= deadline:
                    tried = f"tried for {time.monotonic() - start:.1f} s, timeout {self.options.timeout:g} s"
                    raise Unavailable(f"etcd unreachable: {exc.msg} ({tried})", grpc_code=exc.grpc_code) from None
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    def _call_once(self, rpc: str, data: bytes, deadline: float) -> dict[str, Any]:
        conn = self.connection(deadline)
        try:
            conn.send(f"/v3/{rpc}", data, deadline)
            status, headers = conn.read_head(deadline)
            body = conn.read_body(headers, deadline)
        except OSError as exc:
            if conn.endpoint.scheme == "https" and _tls_refused(exc):  # TLS 1.3 says no after the handshake
                self.close()
                raise EtcdError(f"{conn.endpoint}: TLS: {exc}") from None
            raise Unavailable(f"{conn.endpoint}: {_describe(exc)}") from None
        except EtcdError:
            self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return decode_answer(conn.endpoint, status, body)

    # ------------------------------------------------------------ KV

    def range(
        self, key: bytes, end: bytes | None = None, *, keys_only: bool = False, limit: int = 0
    ) -> tuple[list[KV], int]:
        """The pairs in [key, end) (just ``key`` without ``end``), and the store's revision."""
        body = _key_range(key, end)
        if keys_only:
            body["keys_only"] = True
        if limit:
            body["limit"] = limit
        answer = self.call("kv/range", body)
        return kvs_of(answer), revision_of(answer)

    def get(self, key: bytes) -> KV | None:
        kvs, _ = self.range(key)
        return kvs[0] if kvs else None

    def put(self, key: bytes, value: bytes, *, lease: int = 0) -> int:
        return revision_of(self.call("kv/put", put_op(key, value, lease)["request_put"]))

    def delete(self, key: bytes, end: bytes | None = None) -> int:
        """How many keys were deleted (0 when there were none: not an error)."""
        return int(self.call("kv/deleterange", _key_range(key, end)).get("deleted", 0))

    def txn(
        self, compare: list[dict[str, Any]], success: list[dict[str, Any]], failure: list[dict[str, Any]]
    ) -> TxnResult:
        answer = self.call("kv/txn", {"compare": compare, "success": success, "failure": failure})
        return TxnResult(
            succeeded=bool(answer.get("succeeded", False)),
            responses=list(answer.get("responses", ())),
            revision=revision_of(answer),
        )

    # ------------------------------------------------------------ leases

    def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (ID, TTL granted)."""
        answer = self.call("lease/grant", {"TTL": ttl})
        return int(answer["ID"]), int(answer.get("TTL", 0))

    def keepalive(self, lease: int) -> int:
        """Renew ``lease``; its TTL now, 0 when it has expired or was revoked."""
        answer = self.call("lease/keepalive", {"ID": str(lease)})
        return int(answer.get("result", {}).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        """Revoke ``lease`` (its keys go with it); a lease that is gone already is fine."""
        try:
            self.call("lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if exc.grpc_code != 5:  # NotFound
                raise

    def status(self) -> dict[str, Any]:
        """The answering member's status (version, leader, raft index): a liveness check."""
        return self.call("maintenance/status", {})


# ---------------------------------------------------------------- one client per process and namespace

_SHARED: dict[tuple[Any, ...], Client] = {}


def _files_stamp(options: Options) -> tuple[Any, ...]:
    """TLS files by identity and age: a renewed certificate makes a new connection."""
    out = []
    for path in (options.ca_file, options.cert_file, options.key_file):
        try:
            st = os.stat(path) if path else None
        except OSError:
            st = None
        out.append((path, st.st_ino, st.st_mtime_ns) if st else (path,))
    return tuple(out)


def shared(options: Options) -> Client:
    """A client kept open for later calls of this process (a warm helper's worker serves many):
    one per network namespace, because a socket stays in the namespace it was made in, and
    per process, because a forked child must not share its parent's connection."""
    try:
        st = os.stat("/proc/thread-self/ns/net")
        netns = (st.st_dev, st.st_ino)
    except OSError:
        netns = (0, 0)
    key = (os.getpid(), netns, options, _files_stamp(options))
    client = _SHARED.get(key)
    if client is None:
        while len(_SHARED) >= SHARED_MAX:
            _SHARED.pop(next(iter(_SHARED))).close()
        client = _SHARED[key] = Client(options)
    client.deadline = None
    return client


def close_shared() -> None:
    """Close every kept client (a helper worker going back between calls may, to let a
    namespace its connections were made in go away)."""
    while _SHARED:
        _SHARED.popitem()[1].close()
