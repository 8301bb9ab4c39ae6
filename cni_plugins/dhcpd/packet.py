"""DHCPv4 messages (RFC 2131/2132) and the IPv4+UDP around them, as bytes: no sockets here.

The client sends and receives on a packet socket (the interface has no address yet), so it
builds the IP and UDP headers itself and reads them back; ``BPF_DHCP_CLIENT`` keeps every
other packet out of that socket in the kernel.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network

MAGIC = b"\x63\x82\x53\x63"
CLIENT_PORT, SERVER_PORT = 68, 67
BOOTREQUEST, BOOTREPLY = 1, 2
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE = 1, 2, 3, 4, 5, 6, 7
TYPE_NAMES = {
    1: "DHCPDISCOVER",
    2: "DHCPOFFER",
    3: "DHCPREQUEST",
    4: "DHCPDECLINE",
    5: "DHCPACK",
    6: "DHCPNAK",
    7: "DHCPRELEASE",
}
BROADCAST_FLAG = 0x8000
(
    OPT_PAD,
    OPT_SUBNET_MASK,
    OPT_ROUTER,
    OPT_STATIC_ROUTES,
    OPT_REQUESTED_IP,
    OPT_LEASE_TIME,
    OPT_OVERLOAD,
    OPT_MESSAGE_TYPE,
    OPT_SERVER_ID,
    OPT_PARAMETERS,
    OPT_RENEWAL_TIME,
    OPT_REBINDING_TIME,
    OPT_CLIENT_ID,
    OPT_CLASSLESS_ROUTES,
    OPT_END,
) = 0, 1, 3, 33, 50, 51, 52, 53, 54, 55, 58, 59, 61, 121, 255
ANY = IPv4Address(0)
BROADCAST = IPv4Address("255.255.255.255")
DEFAULT_LEASE_TIME = 3600  # a server that names none (RFC 2131 leaves it to the client)
_HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")  # the fixed BOOTP part, 236 bytes
_MIN_SIZE = 300  # BOOTP relays expect at least this (RFC 1542)

# ip and udp dst port 68 and not a fragment, on a SOCK_DGRAM packet socket (data = the IP header)
BPF_DHCP_CLIENT = (
    (0x30, 0, 0, 9),  # ldb [9]                  protocol
    (0x15, 0, 6, 17),  # jeq #17 else drop        UDP
    (0x28, 0, 0, 6),  # ldh [6]                  flags and fragment offset
    (0x45, 4, 0, 0x1FFF),  # jset #0x1fff then drop  a later fragment
    (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf)         IP header length
    (0x48, 0, 0, 2),  # ldh [x+2]                destination port
    (0x15, 0, 1, CLIENT_PORT),  # jeq #68 else drop
    (0x06, 0, 0, 0x40000),  # accept
    (0x06, 0, 0, 0),  # drop
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    op: int
    xid: int
    chaddr: bytes  # the 6-byte hardware address
    options: Mapping[int, bytes] = field(default_factory=dict)
    flags: int = 0
    secs: int = 0
    ciaddr: IPv4Address = ANY
    yiaddr: IPv4Address = ANY
    siaddr: IPv4Address = ANY
    giaddr: IPv4Address = ANY

    @property
    def type(self) -> int:
        value = self.options.get(OPT_MESSAGE_TYPE, b"")
        return value[0] if len(value) == 1 else 0

    def ip_option(self, code: int) -> IPv4Address | None:
        value = self.options.get(code, b"")
        return IPv4Address(value[:4]) if len(value) >= 4 else None

    def u32_option(self, code: int) -> int | None:
        value = self.options.get(code, b"")
        return int.from_bytes(value[:4], "big") if len(value) >= 4 else None

    def encode(self) -> bytes:
        head = _HEADER.pack(
            self.op,
            1,  # htype: Ethernet
            len(self.chaddr),
            0,  # hops
            self.xid,
            self.secs,
            self.flags,
            self.ciaddr.packed,
            self.yiaddr.packed,
            self.siaddr.packed,
            self.giaddr.packed,
            self.chaddr,
            b"",
            b"",
        )
        out = bytearray(head + MAGIC)
        for code, value in self.options.items():
            if code in (OPT_PAD, OPT_END):
                continue
            for start in range(0, max(len(value), 1), 255):  # RFC 3396: a long option is split
                chunk = value[start : start + 255]
                out += bytes((code, len(chunk))) + chunk
        out.append(OPT_END)
        if len(out) < _MIN_SIZE:
            out += bytes(_MIN_SIZE - len(out))
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> Message:
        if len(data) < _HEADER.size + len(MAGIC) or data[_HEADER.size : _HEADER.size + 4] != MAGIC:
            raise ValueError("not a DHCP message")
        op, _htype, hlen, _hops, xid, secs, flags, ci, yi, si, gi, ch, sname, file = _HEADER.unpack_from(data)
        options = _options(data[_HEADER.size + 4 :])
        overload = options.get(OPT_OVERLOAD, b"\0")[:1]
        if overload in (b"\1", b"\3"):  # RFC 2132 9.3: options continue in the file field, then sname
            _merge(options, _options(file))
        if overload in (b"\2", b"\3"):
            _merge(options, _options(sname))
        return cls(
            op=op,
            xid=xid,
            chaddr=ch[: min(hlen, 16)],
            options=options,
            flags=flags,
            secs=secs,
            ciaddr=IPv4Address(ci),
            yiaddr=IPv4Address(yi),
            siaddr=IPv4Address(si),
            giaddr=IPv4Address(gi),
        )


def _options(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    at = 0
    while at < len(data):
        code = data[at]
        if code == OPT_END:
            break
        if code == OPT_PAD:
            at += 1
            continue
        if at + 1 >= len(data) or at + 2 + data[at + 1] > len(data):
            raise ValueError(f"option {code} runs past the end of the message")
        size = data[at + 1]
        out[code] = out.get(code, b"") + data[at + 2 : at + 2 + size]  # RFC 3396: concatenated
        at += 2 + size
    return out


def _merge(into: dict[int, bytes], more: Mapping[int, bytes]) -> None:
    for code, value in more.items():
        into[code] = into.get(code, b"") + value


def client_options(
    kind: int,
    client_id: str,
    provide: Iterable[tuple[int, bytes]] = (),
    parameters: Iterable[int] = (),
    *,
    requested: IPv4Address | None = None,
    server: IPv4Address | None = None,
) -> dict[int, bytes]:
    """The options of a message we send, in the order the reference sends them."""
    out: dict[int, bytes] = {OPT_MESSAGE_TYPE: bytes((kind,))}
    if requested is not None:
        out[OPT_REQUESTED_IP] = requested.packed
    if server is not None:
        out[OPT_SERVER_ID] = server.packed
    out[OPT_CLIENT_ID] = b"\0" + client_id.encode()  # type 0: not a hardware address
    if kind == RELEASE:
        return out
    for code, value in provide:
        out[code] = value
    params = bytes(parameters)
    if params:
        out[OPT_PARAMETERS] = params
    return out


# ---------------------------------------------------------------- what an ACK grants


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """The lease an ACK describes; times in seconds from the ACK."""

    address: ipaddress.IPv4Interface
    server: IPv4Address
    routers: tuple[IPv4Address, ...]
    lease_time: int
    renewal_time: float
    rebinding_time: float
    classless_routes: tuple[tuple[IPv4Network, IPv4Address], ...]
    static_routes: tuple[tuple[IPv4Network, IPv4Address], ...]


def grant(ack: Message, server: IPv4Address | None = None) -> Grant:
    """The lease in ``ack``; ValueError if it lacks what a CNI result needs (a subnet mask)."""
    mask = ack.options.get(OPT_SUBNET_MASK, b"")
    if len(mask) != 4:
        raise ValueError("DHCP option Subnet Mask not found in DHCPACK")
    try:
        address = ipaddress.IPv4Interface(f"{ack.yiaddr}/{IPv4Address(mask)}")
    except ValueError:
        raise ValueError(f"DHCPACK carries a non-contiguous subnet mask {IPv4Address(mask)}") from None
    routers = ack.options.get(OPT_ROUTER, b"")
    lease = ack.u32_option(OPT_LEASE_TIME)
    lease_time = DEFAULT_LEASE_TIME if lease is None or lease == 0 else lease
    # RFC 2131 4.4.5 defaults; a server's T2 past the lease or T1 past T2 is ignored as the reference does.
    t2 = ack.u32_option(OPT_REBINDING_TIME)
    rebinding = float(t2) if t2 is not None and t2 <= lease_time else lease_time * 0.875
    t1 = ack.u32_option(OPT_RENEWAL_TIME)
    renewal = float(t1) if t1 is not None and t1 <= rebinding else lease_time * 0.5
    return Grant(
        address=address,
        server=ack.ip_option(OPT_SERVER_ID) or server or ack.siaddr,
        routers=tuple(IPv4Address(routers[i : i + 4]) for i in range(0, len(routers) - 3, 4)),
        lease_time=lease_time,
        renewal_time=min(renewal, rebinding),
        rebinding_time=rebinding,
        classless_routes=classless_routes(ack.options.get(OPT_CLASSLESS_ROUTES, b"")),
        static_routes=static_routes(ack.options.get(OPT_STATIC_ROUTES, b"")),
    )


def classless_routes(data: bytes) -> tuple[tuple[IPv4Network, IPv4Address], ...]:
    """Option 121 (RFC 3442): width, the significant octets of the destination, the router."""
    out, at = [], 0
    while at < len(data):
        width = data[at]
        octets = (width + 7) // 8
        if width > 32 or at + 1 + octets + 4 > len(data):
            raise ValueError("malformed classless static routes option")
        dst = data[at + 1 : at + 1 + octets] + bytes(4 - octets)
        router = IPv4Address(data[at + 1 + octets : at + 5 + octets])
        out.append((IPv4Network((dst, width), strict=False), router))
        at += 5 + octets
    return tuple(out)


def static_routes(data: bytes) -> tuple[tuple[IPv4Network, IPv4Address], ...]:
    """Option 33: pairs of (destination, router), each destination taken with its classful mask."""
    out = []
    for at in range(0, len(data) - 7, 8):
        dst = IPv4Address(data[at : at + 4])
        first = dst.packed[0]
        prefix = 8 if first < 128 else 16 if first < 192 else 24
        out.append((IPv4Network((dst, prefix), strict=False), IPv4Address(data[at + 4 : at + 8])))
    return tuple(out)


# ---------------------------------------------------------------- IPv4 + UDP


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def udp_datagram(src: IPv4Address, dst: IPv4Address, payload: bytes, ident: int) -> bytes:
    """An IPv4 packet carrying ``payload`` from port 68 to port 67, checksums filled in."""
    udp_len = 8 + len(payload)
    pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", CLIENT_PORT, SERVER_PORT, udp_len, 0) + payload
    udp_sum = _checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", udp_sum) + udp[8:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, ident & 0xFFFF, 0, 64, 17, 0, src.packed, dst.packed)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return header + udp


def udp_payload(packet: bytes) -> bytes | None:
    """The payload of an IPv4 UDP packet to port 68, or None. The UDP checksum is not checked:
    on a packet socket a checksum the sender left to offloading is not filled in yet."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != 17:
        return None
    ihl = (packet[0] & 0x0F) * 4
    total = int.from_bytes(packet[2:4], "big")
    if ihl < 20 or len(packet) < ihl + 8 or int.from_bytes(packet[6:8], "big") & 0x1FFF:
        return None
    if int.from_bytes(packet[ihl + 2 : ihl + 4], "big") != CLIENT_PORT:
        return None
    end = min(len(packet), total) if total else len(packet)
    udp_len = int.from_bytes(packet[ihl + 4 : ihl + 6], "big")
    return packet[ihl + 8 : min(end, ihl + udp_len)] if udp_len >= 8 else None
