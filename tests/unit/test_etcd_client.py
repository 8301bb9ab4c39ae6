"""The etcd gateway client's wire handling against a local server that answers with bytes
recorded from etcd 3.4's gateway (Content-Length answers, chunked streams with and without
trailers, errors), its endpoint and config parsing, and its deadlines. The client against
a real etcd: tests/integration/test_cluster_ipam.py."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.etcd import client as etcd
from cni_plugins.etcd.config import options_from_json
from cni_plugins.etcd.watch import Compacted, Watch
from cni_plugins.spec.errors import InvalidNetworkConfig

HEADER = b'{"header":{"cluster_id":"1","member_id":"2","revision":"7","raft_term":"2"}'


def plain(body: bytes, status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


def chunked(*messages: bytes, trailer: bool = False, status: str = "200 OK", end: bool = True) -> bytes:
    out = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n".encode()
    if trailer:
        out += b"Trailer: Grpc-Trailer-Content-Type\r\n"
    out += b"\r\n"
    for m in messages:
        out += f"{len(m):x}\r\n".encode() + m + b"\r\n"
    if end:
        out += b"0\r\n" + (b"Grpc-Trailer-Content-Type: application/grpc\r\n" if trailer else b"") + b"\r\n"
    return out


class Server:
    """Answers each request on a connection with the next canned answer; records requests."""

    def __init__(self, answers: list[bytes], *, hold: bool = False) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.hold = hold  # keep the connection open (and silent) after the answers ran out
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while True:
                    while b"\r\n\r\n" not in buf:
                        data = conn.recv(65536)
                        if not data:
                            break
                        buf += data
                    if b"\r\n\r\n" not in buf:
                        break
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    length = int(
                        next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
                    )
                    while len(rest) < length:
                        rest += conn.recv(65536)
                    self.requests.append(head + b"\r\n\r\n" + rest[:length])
                    buf = rest[length:]
                    if not self.answers:
                        if self.hold:
                            time.sleep(5)
                        break
                    conn.sendall(self.answers.pop(0))

    def options(self, timeout: float = 1.0) -> etcd.Options:
        return etcd.Options(endpoints=(etcd.parse_endpoint(f"http://127.0.0.1:{self.port}"),), timeout=timeout)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[Server] = []

    def make(answers: list[bytes], **kw: Any) -> Server:
        servers.append(Server(answers, **kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def _clients_closed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every client a test makes is closed at its end."""
    made: list[etcd.Client] = []
    init = etcd.Client.__init__

    def tracked(self: etcd.Client, options: etcd.Options) -> None:
        init(self, options)
        made.append(self)

    monkeypatch.setattr(etcd.Client, "__init__", tracked)
    yield
    for c in made:
        c.close()


def test_range_put_txn_over_one_connection(serve: Any) -> None:
    kv = b'{"key":"L3gvYQ==","create_revision":"4","mod_revision":"5","version":"2","value":"MQ==","lease":"9"}'
    server = serve(
        [
            plain(HEADER + b',"kvs":[' + kv + b'],"count":"1"}'),
            plain(HEADER + b"}"),  # an empty range: no kvs, no count
            plain(HEADER + b',"responses":[{"response_range":{"kvs":[' + kv + b"]}}]}"),  # failed txn: no succeeded
            plain(HEADER + b',"succeeded":true,"responses":[{"response_put":{}}]}'),
        ]
    )
    client = etcd.Client(server.options())
    kvs, rev = client.range(b"/x/", etcd.prefix_end(b"/x/"))
    assert rev == 7 and kvs == [etcd.KV(b"/x/a", b"1", 4, 5, 2, 9)]
    assert client.get(b"/x/none") is None
    failed = client.txn([etcd.created_at(b"/x/a", 0)], [etcd.put_op(b"/x/a", b"2")], [etcd.range_op(b"/x/a")])
    assert not failed.succeeded and failed.kvs(0)[0].value == b"1"
    assert client.txn([], [etcd.put_op(b"/x/b", b"2", lease=5)], []).succeeded
    assert len(server.requests) == 4  # one kept-alive connection
    assert b'"lease": "5"' in server.requests[3] and b"POST /v3/kv/txn HTTP/1.1" in server.requests[3]


def test_chunked_answers_and_trailers(serve: Any) -> None:
    server = serve(
        [
            chunked(b'{"result":' + HEADER + b',"ID":"77","TTL":"5"}}\n'),
            chunked(b'{"result":' + HEADER + b',"ID":"77"}}\n'),  # expired lease: no TTL
            chunked(
                b'{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found",'
                b'"code":5}',
                trailer=True,
                status="404 Not Found",
            ),
            plain(HEADER + b',"version":"3.4.23"}'),
        ]
    )
    client = etcd.Client(server.options())
    assert client.keepalive(77) == 5
    assert client.keepalive(77) == 0
    client.revoke(77)  # not found: fine, and the trailer does not spoil the next answer
    assert client.status()["version"] == "3.4.23"


def test_errors_are_typed(serve: Any) -> None:
    server = serve(
        [
            plain(b'{"error":"etcdserver: duplicate key given in txn request","code":3}', "400 Bad Request"),
            plain(b'{"error":"etcdserver: no leader","code":14}', "503 Service Unavailable"),
            plain(HEADER + b',"deleted":"2"}'),
        ]
    )
    client = etcd.Client(server.options())
    with pytest.raises(etcd.EtcdError) as exc:
        client.txn([], [etcd.put_op(b"a", b""), etcd.put_op(b"a", b"")], [])
    assert not isinstance(exc.value, etcd.Unavailable) and exc.value.grpc_code == 3 and "duplicate key" in exc.value.msg
    assert client.delete(b"/", etcd.prefix_end(b"/")) == 2  # the 503 was retried


def test_refused_and_silent_endpoints_end_in_time(serve: Any) -> None:
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    refused = etcd.Options(endpoints=(etcd.parse_endpoint(f"http://127.0.0.1:{port}"),), timeout=0.5)
    start = time.monotonic()
    with pytest.raises(etcd.Unavailable, match="connection refused"):
        etcd.Client(refused).get(b"k")
    assert time.monotonic() - start < 0.8
    silent = serve([], hold=True)  # accepts and reads, never answers
    client = etcd.Client(silent.options(timeout=0.4))
    start = time.monotonic()
    with pytest.raises(etcd.Unavailable, match="no answer in time"):
        client.get(b"k")
    assert 0.3 < time.monotonic() - start < 0.9
    client.deadline = time.monotonic() + 0.2  # a call's budget is shorter than the timeout
    start = time.monotonic()
    with pytest.raises(etcd.Unavailable):
        client.get(b"k")
    assert time.monotonic() - start < 0.5


def test_second_endpoint_is_used_when_the_first_refuses(serve: Any) -> None:
    server = serve([plain(HEADER + b"}")])
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    dead = free.getsockname()[1]
    free.close()
    options = etcd.Options(
        endpoints=(
            etcd.parse_endpoint(f"http://127.0.0.1:{dead}"),
            etcd.parse_endpoint(f"http://127.0.0.1:{server.port}"),
        ),
        timeout=1,
    )
    assert etcd.Client(options).get(b"k") is None


def test_watch_stream(serve: Any) -> None:
    created = b'{"result":' + HEADER + b',"created":true}}\n'
    put = (
        b'{"result":'
        + HEADER
        + b',"events":[{"kv":{"key":"L3cvYQ==","create_revision":"8","mod_revision":"8","version":"1",'
        + b'"value":"MQ=="}}]}}\n'
    )
    gone = b'{"result":' + HEADER + b',"events":[{"type":"DELETE","kv":{"key":"L3cvYQ==","mod_revision":"9"}}]}}\n'
    server = serve([chunked(created, put, gone, end=False)], hold=True)
    watch = Watch(server.options(), b"/w/", b"/w0", 8)
    first = watch.next(1)
    assert first is not None and [(e.deleted, e.kv.key, e.kv.value) for e in first] == [(False, b"/w/a", b"1")]
    second = watch.next(1)
    assert second is not None and second[0].deleted and watch.revision == 9
    assert watch.next(0.05) is None
    assert b'"start_revision": "8"' in server.requests[0]
    watch.close()


def test_watch_ends_on_compaction_and_on_etcd_stopping(serve: Any) -> None:
    canceled = b'{"result":' + HEADER + b',"canceled":true,"compact_revision":"15"}}\n'
    created = b'{"result":' + HEADER + b',"created":true}}\n'
    server = serve([chunked(created, canceled, end=False)], hold=True)
    watch = Watch(server.options(), b"/w/", b"/w0", 2)
    with pytest.raises(Compacted) as exc:
        watch.next(1)
    assert exc.value.revision == 15
    stopping = (
        b'{"error":{"grpc_code":14,"http_code":503,"message":"transport is closing",'
        b'"http_status":"Service Unavailable"}}'
    )
    server2 = serve([chunked(created, stopping)])
    watch2 = Watch(server2.options(), b"/w/", b"/w0", 2)
    with pytest.raises(etcd.Unavailable, match="transport is closing"):
        watch2.next(1)


@pytest.mark.parametrize(
    "text, want",
    [
        ("http://10.0.0.1:2379", etcd.Endpoint("http", "10.0.0.1", 2379)),
        ("https://etcd.example", etcd.Endpoint("https", "etcd.example", 2379)),
        ("http://[fd00::1]:12379/", etcd.Endpoint("http", "fd00::1", 12379)),
    ],
)
def test_parse_endpoint(text: str, want: etcd.Endpoint) -> None:
    assert etcd.parse_endpoint(text) == want


@pytest.mark.parametrize("text", ["10.0.0.1:2379", "ftp://x:1", "http://x:99999", "http://x:2379/v3", "http://:1"])
def test_parse_endpoint_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        etcd.parse_endpoint(text)


def test_prefix_end() -> None:
    assert etcd.prefix_end(b"/x/") == b"/x0"
    assert etcd.prefix_end(b"a\xff") == b"b"
    assert etcd.prefix_end(b"\xff\xff") == b"\0"


def test_options_from_json() -> None:
    options = options_from_json(
        {"endpoints": ["https://10.0.0.1:2379"], "caFile": "/ca.pem", "timeout": 1.5, "prefix": "/k8s/cni/"},
        "ipam.etcd",
    )
    assert options.ca_file == "/ca.pem" and options.timeout == 1.5 and options.prefix == "/k8s/cni"
    assert options_from_json({"endpoints": ["http://a:1"], "prefix": "/"}, "e").prefix == ""
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "ipam.etcd.endpoints: missing"),
        ({"endpoints": ["a:1"]}, "ipam.etcd.endpoints[0]"),
        ({"endpoints": ["http://a:1"], "timeout": 0}, "ipam.etcd.timeout"),
        ({"endpoints": ["http://a:1"], "timeout": "5"}, "ipam.etcd.timeout"),
        ({"endpoints": ["http://a:1"], "certFile": "/c.pem"}, "certFile and keyFile go together"),
        ({"endpoints": ["http://a:1"], "caFile": "/ca.pem"}, "every endpoint is http://"),
        ({"endpoints": ["http://a:1"], "prefix": "x"}, "ipam.etcd.prefix"),
        ({"endpoints": ["http://a:1"], "prefix": "/a/../b"}, "ipam.etcd.prefix"),
    ]
    for raw, words in cases:
        with pytest.raises(InvalidNetworkConfig) as exc:
            options_from_json(raw, "ipam.etcd")
        assert words in exc.value.msg, exc.value.msg


def test_shared_client_per_process_and_namespace() -> None:
    options = etcd.Options(endpoints=(etcd.parse_endpoint("http://127.0.0.1:1"),))
    first = etcd.shared(options)
    first.deadline = 1.0
    again = etcd.shared(options)
    assert again is first and again.deadline is None  # a new call starts without the last one's deadline
    other = etcd.shared(etcd.Options(endpoints=options.endpoints, timeout=2))
    assert other is not first
    etcd.close_shared()
    assert etcd.shared(options) is not first
    etcd.close_shared()


def _self_signed(tmp: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that is its own CA, and its key."""
    cert, key = tmp / f"{name}.pem", tmp / f"{name}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


class TLSServer:
    """Answers one request per connection over TLS; a failed handshake ends the connection
    cleanly (its alert, then EOF), as etcd's server does."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        if client_ca is not None:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(client_ca)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            raw.settimeout(2)
            conn = self.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            try:
                conn.do_handshake()
                conn.recv(65536)
                conn.sendall(plain(HEADER + b',"version":"3.4.23"}'))
            except OSError:  # the alert is sent: read what the client sent, so that closing sends no reset
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(conn, socket.SHUT_WR)
                    while socket.socket.recv(conn, 65536):
                        pass
            finally:
                conn.close()

    def options(self, timeout: float = 3.0, **files: str) -> etcd.Options:
        return etcd.Options(
            endpoints=(etcd.parse_endpoint(f"https://127.0.0.1:{self.port}"),), timeout=timeout, **files
        )

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificates to test TLS with")
    return {name: _self_signed(tmp_path, name) for name in ("server", "other", "client")}


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_a_plain_server_that_drops_the_client_hello_is_named(reset: bool) -> None:
    """What a plain-HTTP etcd does to a ClientHello: it closes the connection, which reaches
    the client as an EOF or, with the hello still unread on the server, as a reset. Either
    way the handshake's error says that the endpoint may not serve https."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:  # a close with part of the hello unread makes the kernel send a reset
            conn.recv(1 if reset else 4096)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        options = etcd.Options(endpoints=(etcd.parse_endpoint(f"https://127.0.0.1:{port}"),), timeout=2.0)
        with pytest.raises(ConnectionResetError) as exc:
            etcd.Conn.open(options, options.endpoints[0], time.monotonic() + 2.0)
        assert "closed during the TLS handshake (does this endpoint serve https?)" in str(exc.value)
    finally:
        thread.join(timeout=5)
        listener.close()


def test_tls_answers_and_refusals_are_errors_at_once(tls_files: dict[str, tuple[Path, Path]], tmp_path: Path) -> None:
    """A trusted server answers over TLS; an untrusted certificate, a server that wants a
    client certificate, and unreadable TLS files end the call with an EtcdError at once (not
    Unavailable after the timeout: retrying cannot help), naming TLS."""
    (server_cert, server_key), (other_cert, _), (client_cert, client_key) = (
        tls_files["server"],
        tls_files["other"],
        tls_files["client"],
    )
    server = TLSServer(server_cert, server_key)
    strict = TLSServer(server_cert, server_key, client_ca=client_cert)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    try:
        assert etcd.Client(server.options(ca_file=str(server_cert))).status()["version"] == "3.4.23"
        with_cert = strict.options(ca_file=str(server_cert), cert_file=str(client_cert), key_file=str(client_key))
        assert etcd.Client(with_cert).status()["version"] == "3.4.23"
        refused = [
            (server.options(ca_file=str(other_cert)), "certificate verify failed"),
            (strict.options(ca_file=str(server_cert)), "TLS: "),  # no client certificate
            (server.options(ca_file=str(garbage)), "TLS files"),
            (server.options(ca_file=str(tmp_path / "missing.pem")), "TLS files"),
        ]
        for options, words in refused:
            start = time.monotonic()
            with pytest.raises(etcd.EtcdError) as exc:
                etcd.Client(options).status()
            took = time.monotonic() - start
            assert not isinstance(exc.value, etcd.Unavailable), exc.value.msg
            assert words in exc.value.msg, exc.value.msg
            assert took < 1.0, f"{exc.value.msg}: {took:.1f} s with a 3 s timeout"
    finally:
        server.close()
        strict.close()
