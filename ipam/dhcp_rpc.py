"""The dhcp plugin's calls to the dhcp daemon, on the wire as the reference makes them.

Go's ``net/rpc`` over HTTP over a unix socket, gob-encoded (``ipam.gob``): the client sends
``CONNECT /_goRPC_ HTTP/1.0`` and a blank line, the server answers ``HTTP/1.0 200 Connected
to Go RPC`` and a blank line, then each call is an ``rpc.Request{ServiceMethod, Seq}`` and
its argument, answered by an ``rpc.Response{ServiceMethod, Seq, Error}`` and its reply.
The argument is always the plugin's ``skel.CmdArgs``; ``DHCP.Allocate`` replies with a CNI
result, the other methods with an empty struct. Speaking it lets our plugin use the
reference's daemon and the reference's plugin use ours.

A daemon error travels as a string (``Response.Error``); ours ends it with ``[CNI code N]``
when the code is not 999, which our plugin turns back into that code.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

from cni_plugins.spec.errors import CNIError
from cni_plugins.spec.types import DNS, Interface, IPAddress, IPConfig, Result, Route
from ipam.gob import BYTES, INT, STRING, UINT, Decoder, Encoder, GobError, Slice, Struct

RPC_PATH = b"/_goRPC_"
CONNECTED = b"HTTP/1.0 200 Connected to Go RPC"
CONNECT_TIMEOUT = 5.0  # a daemon that listens accepts at once; a wedged one is not waited for long
HANDSHAKE_TIMEOUT = 10.0
MAX_LINE = 4096

REQUEST = Struct("Request", (("ServiceMethod", STRING), ("Seq", UINT)))
RESPONSE = Struct("Response", (("ServiceMethod", STRING), ("Seq", UINT), ("Error", STRING)))
CMD_ARGS = Struct(
    "CmdArgs",
    (
        ("ContainerID", STRING),
        ("Netns", STRING),
        ("IfName", STRING),
        ("Args", STRING),
        ("Path", STRING),
        ("StdinData", BYTES),
    ),
)
EMPTY = Struct("", ())  # struct{}: Go gives it no name
_IPNET = Struct("IPNet", (("IP", BYTES), ("Mask", BYTES)))
_STRINGS = Slice(STRING, "[]string")
RESULT = Struct(
    "Result",
    (
        ("CNIVersion", STRING),
        (
            "Interfaces",
            Slice(
                Struct("Interface", (("Name", STRING), ("Mac", STRING), ("Sandbox", STRING))), "[]*types100.Interface"
            ),
        ),
        (
            "IPs",
            Slice(
                Struct("IPConfig", (("Interface", INT), ("Address", _IPNET), ("Gateway", BYTES))),
                "[]*types100.IPConfig",
            ),
        ),
        (
            "Routes",
            Slice(
                Struct(
                    "Route",
                    (
                        ("Dst", _IPNET),
                        ("GW", BYTES),
                        ("MTU", INT),
                        ("AdvMSS", INT),
                        ("Priority", INT),
                        ("Table", INT),
                        ("Scope", INT),
                    ),
                ),
                "[]*types.Route",
            ),
        ),
        (
            "DNS",
            Struct("DNS", (("Nameservers", _STRINGS), ("Domain", STRING), ("Search", _STRINGS), ("Options", _STRINGS))),
        ),
    ),
)
_CODE_SUFFIX = re.compile(r" \[CNI code (\d+)\]$")


class RpcError(Exception):
    """A call that did not get an answer from the daemon."""


class Unreachable(RpcError):
    """Nothing accepts connections at the socket (no file, no listener, not a socket)."""


class CallFailed(RpcError):
    """The daemon answered with an error; ``code`` is the CNI code it named (999 if none)."""

    def __init__(self, text: str) -> None:
        match = _CODE_SUFFIX.search(text)
        self.code = int(match.group(1)) if match else 999
        self.text = text[: match.start()] if match else text
        super().__init__(self.text)

    @property
    def unknown_method(self) -> bool:
        """The daemon has no such method (the reference's has no Check, GC or Status)."""
        return self.text.startswith("rpc: can't find method ")


def error_text(err: CNIError) -> str:
    text = f"{err.msg} ({err.details})" if err.details else err.msg
    code = err.error_code()
    return text if code == 999 else f"{text} [CNI code {code}]"


# ---------------------------------------------------------------- results


def _ip_bytes(ip: IPAddress | None) -> bytes:
    return ip.packed if ip is not None else b""


def _ipnet(
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface | ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> dict[str, bytes]:
    net = address.network if isinstance(address, ipaddress.IPv4Interface | ipaddress.IPv6Interface) else address
    ip = (
        address.ip
        if isinstance(address, ipaddress.IPv4Interface | ipaddress.IPv6Interface)
        else address.network_address
    )
    return {"IP": ip.packed, "Mask": net.netmask.packed}


def result_to_gob(result: Result) -> dict[str, Any]:
    """A result as the reference's daemon sends it: no ``CNIVersion`` (the plugin prints its
    own: a v1.1.1 plugin could not convert a version it does not know)."""
    return {
        "Interfaces": [{"Name": i.name, "Mac": i.mac, "Sandbox": i.sandbox} for i in result.interfaces],
        "IPs": [
            {"Interface": ip.interface, "Address": _ipnet(ip.address), "Gateway": _ip_bytes(ip.gateway)}
            for ip in result.ips
        ],
        "Routes": [
            {
                "Dst": _ipnet(r.dst),
                "GW": _ip_bytes(r.gw),
                "MTU": r.mtu,
                "AdvMSS": r.advmss,
                "Priority": r.priority,
                "Table": r.table,
                "Scope": r.scope,
            }
            for r in result.routes
        ],
        "DNS": {
            "Nameservers": list(result.dns.nameservers),
            "Domain": result.dns.domain,
            "Search": list(result.dns.search),
            "Options": list(result.dns.options),
        },
    }


def _ip_from(raw: object, where: str) -> IPAddress | None:
    if not raw:
        return None
    if not isinstance(raw, bytes) or len(raw) not in (4, 16):
        raise GobError(f"{where}: not an IP address: {raw!r}")
    ip = ipaddress.ip_address(raw)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # Go keeps IPv4 addresses in 16 bytes as often as in 4
    return ip


def _prefix(mask: object, version: int, where: str) -> int:
    if not isinstance(mask, bytes) or len(mask) not in (4, 16):
        raise GobError(f"{where}: not a netmask: {mask!r}")
    bits = mask[-4:] if version == 4 else mask
    value = int.from_bytes(bits, "big")
    width = len(bits) * 8
    ones = bin(value).count("1")
    if value != ((1 << ones) - 1) << (width - ones):
        raise GobError(f"{where}: {mask.hex()} is not a contiguous netmask")
    return ones


def _net_from(raw: object, where: str) -> tuple[IPAddress, int]:
    d = raw if isinstance(raw, dict) else {}
    ip = _ip_from(d.get("IP"), f"{where}.IP")
    if ip is None:
        raise GobError(f"{where}: no address")
    return ip, _prefix(d.get("Mask"), ip.version, f"{where}.Mask")


def _opt(d: Mapping[str, Any], key: str) -> int | None:
    value = d.get(key)
    return value if isinstance(value, int) and value else None


def result_from_gob(reply: Mapping[str, Any]) -> Result:
    """A result sent by a daemon (ours or the reference's); raises ``GobError`` if malformed."""
    ips, routes = [], []
    for i, entry in enumerate(reply.get("IPs") or []):
        ip, prefix = _net_from(entry.get("Address"), f"IPs[{i}].Address")
        ips.append(
            IPConfig(
                address=ipaddress.ip_interface(f"{ip}/{prefix}"),
                gateway=_ip_from(entry.get("Gateway"), f"IPs[{i}].Gateway"),
                interface=entry.get("Interface") if isinstance(entry.get("Interface"), int) else None,
            )
        )
    for i, entry in enumerate(reply.get("Routes") or []):
        ip, prefix = _net_from(entry.get("Dst"), f"Routes[{i}].Dst")
        routes.append(
            Route(
                dst=ipaddress.ip_network(f"{ip}/{prefix}", strict=False),
                gw=_ip_from(entry.get("GW"), f"Routes[{i}].GW"),
                mtu=_opt(entry, "MTU"),
                advmss=_opt(entry, "AdvMSS"),
                priority=_opt(entry, "Priority"),
                table=_opt(entry, "Table"),
                scope=_opt(entry, "Scope"),
            )
        )
    interfaces = tuple(
        Interface(name=str(i.get("Name", "")), mac=str(i.get("Mac", "")), sandbox=str(i.get("Sandbox", "")))
        for i in reply.get("Interfaces") or []
    )
    dns = reply.get("DNS") or {}
    return Result(
        interfaces=interfaces,
        ips=tuple(ips),
        routes=tuple(routes),
        dns=DNS(
            nameservers=tuple(dns.get("Nameservers") or ()),
            domain=str(dns.get("Domain", "")),
            search=tuple(dns.get("Search") or ()),
            options=tuple(dns.get("Options") or ()),
        ),
    )


# ---------------------------------------------------------------- the stream


class _Stream:
    """Buffered reads from a socket, under a deadline; ``poll`` runs whenever a read has
    waited ``slice_s`` (a cancelled call raises from there)."""

    def __init__(self, sock: socket.socket, poll: Callable[[], None] | None = None, slice_s: float = 0.5) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.deadline: float | None = None
        self.poll = poll
        self.slice_s = slice_s

    def _fill(self) -> None:
        while True:
            wait = None if self.deadline is None else self.deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise TimeoutError("no answer in time")
            if self.poll is not None:
                wait = self.slice_s if wait is None else min(wait, self.slice_s)
            self.sock.settimeout(wait)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if self.poll is not None:
                    self.poll()
                continue
            if not data:
                raise EOFError("connection closed")
            self.buf += data
            return

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            if len(self.buf) > MAX_LINE:
                raise GobError("HTTP line too long")
            self._fill()
        line, _, rest = bytes(self.buf).partition(b"\n")
        self.buf = bytearray(rest)
        return line.rstrip(b"\r")

    def at_eof(self) -> bool:
        """True when the peer closed the connection before sending anything more."""
        if self.buf:
            return False
        try:
            self._fill()
        except EOFError:
            return True
        return False


# ---------------------------------------------------------------- client


def call(
    path: str,
    method: str,
    args: Mapping[str, Any],
    *,
    timeout: float,
    poll: Callable[[], None] | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
) -> dict[str, Any]:
    """One call on a fresh connection, as the reference's plugin makes it: the reply's value.
    ``timeout`` bounds the wait for the answer; ``poll`` runs while waiting (to cancel)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(connect_timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise Unreachable(f"dial unix {path}: {exc.strerror or exc}") from None
        stream = _Stream(sock, poll)
        stream.deadline = time.monotonic() + HANDSHAKE_TIMEOUT
        try:
            sock.sendall(b"CONNECT " + RPC_PATH + b" HTTP/1.0\n\n")
            status = stream.readline()
            while stream.readline():
                pass  # headers, if any: the Go server sends none
            if status != CONNECTED:
                raise RpcError(f"{path} is not a DHCP daemon socket: it answered {status[:80]!r}")
            encoder = Encoder()
            sock.sendall(encoder.encode(REQUEST, {"ServiceMethod": method, "Seq": 0}) + encoder.encode(CMD_ARGS, args))
            stream.deadline = time.monotonic() + timeout
            decoder = Decoder(stream.read_exact)
            _, header = decoder.next()
            _, body = decoder.next()
        except TimeoutError:
            raise RpcError(f"the DHCP daemon at {path} did not answer {method} within {timeout:g}s") from None
        except (EOFError, ConnectionError) as exc:
            raise RpcError(f"the DHCP daemon at {path} closed the connection during {method}: {exc}") from None
        except GobError as exc:
            raise RpcError(f"the DHCP daemon at {path} sent a malformed answer to {method}: {exc}") from None
        if header.get("Error"):
            raise CallFailed(str(header["Error"]))
        return body if isinstance(body, dict) else {}
    finally:
        sock.close()


def cmd_args(container_id: str, netns: str, ifname: str, args: str, path: str, stdin: bytes) -> dict[str, Any]:
    return {
        "ContainerID": container_id,
        "Netns": netns,
        "IfName": ifname,
        "Args": args,
        "Path": path,
        "StdinData": stdin,
    }


# ---------------------------------------------------------------- server


class ServerConn:
    """The daemon's side of one connection."""

    def __init__(self, sock: socket.socket, idle_timeout: float) -> None:
        self.sock = sock
        self.stream = _Stream(sock)
        self.idle_timeout = idle_timeout
        self.encoder = Encoder()
        self.decoder = Decoder(self.stream.read_exact)

    def handshake(self) -> bool:
        """Read the HTTP CONNECT; False (and a 405, as Go's server says) for anything else."""
        self.stream.deadline = time.monotonic() + self.idle_timeout
        request = self.stream.readline()
        while self.stream.readline():
            pass
        parts = request.split()
        if len(parts) >= 2 and parts[0] == b"CONNECT" and parts[1] == RPC_PATH:
            self.sock.sendall(CONNECTED + b"\n\n")
            return True
        body = b"405 must CONNECT\n"
        self.sock.sendall(
            b"HTTP/1.0 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        return False

    def read_request(self) -> tuple[str, int, Any] | None:
        """(method, seq, argument) of the next call; None once the client has closed."""
        self.stream.deadline = time.monotonic() + self.idle_timeout
        if self.stream.at_eof():
            return None
        _, header = self.decoder.next()
        _, argument = self.decoder.next()
        return str(header.get("ServiceMethod", "")), int(header.get("Seq", 0)), argument

    def reply(self, method: str, seq: int, error: str, body_type: Struct, body: Mapping[str, Any]) -> None:
        header = {"ServiceMethod": method, "Seq": seq, "Error": error}
        if error:
            body_type, body = EMPTY, {}  # as Go's server: the reply value is not sent with an error
        self.sock.settimeout(self.idle_timeout)
        self.sock.sendall(self.encoder.encode(RESPONSE, header) + self.encoder.encode(body_type, body))
