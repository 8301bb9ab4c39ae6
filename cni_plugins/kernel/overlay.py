"""What an overlay needs from rtnetlink that ``netlink.Netlink`` does not offer: permanent
neighbour entries, FDB entries of a vxlan device, and ``onlink`` routes, on a plain rtnetlink
socket in the caller's current network namespace, with ``struct`` (as ``linkget`` reads links).

For each remote node a vxlan overlay needs three entries (flannel's recipe), in this order::

    ip neigh replace <remote gw> lladdr <remote VTEP MAC> dev <vxlan> nud permanent
    bridge fdb replace <remote VTEP MAC> dev <vxlan> dst <remote node IP> self permanent
    ip route replace <remote subnet> via <remote gw> dev <vxlan> onlink

The neighbour first: with it in place the kernel never ARPs for the gateway, so no miss
daemon is needed.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from cni_plugins.spec.errors import InternalError
from cni_plugins.spec.types import IPAddress, IPNetwork

NETLINK_ROUTE = 0
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE, NLM_F_DUMP = 0x1, 0x4, 0x100, 0x400, 0x300
NDA_DST, NDA_LLADDR = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY = 1, 4, 5
NUD_PERMANENT = 0x80
NTF_SELF = 0x02
AF_BRIDGE = 7
RTN_UNICAST = 1
RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE = 0
RTPROT_BOOT = 3
RTNH_F_ONLINK = 4
_NLMSGHDR = struct.Struct("=IHHII")
_NDMSG = struct.Struct("=BBHiHBB")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")
RECV_SIZE = 1 << 16


@dataclass(frozen=True, slots=True)
class Neighbour:
    """A neighbour entry (family AF_INET/AF_INET6) or an FDB entry (AF_BRIDGE) on one link."""

    index: int
    mac: str
    dst: IPAddress | None  # the IP (neighbour) or the remote VTEP (FDB); None for an FDB entry without one
    state: int
    flags: int

    @property
    def permanent(self) -> bool:
        return bool(self.state & NUD_PERMANENT)


def _attr(kind: int, payload: bytes) -> bytes:
    data = _RTATTR.pack(_RTATTR.size + len(payload), kind) + payload
    return data + b"\0" * (-len(data) % 4)


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def _family(ip: IPAddress) -> int:
    return socket.AF_INET if ip.version == 4 else socket.AF_INET6


class Rtnl:
    """One rtnetlink socket in the current network namespace. Use as a context manager."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ requests

    def _request(self, kind: int, flags: int, body: bytes, what: str) -> None:
        """Send one request and wait for its acknowledgement; the kernel's error as InternalError
        (ENOENT/ESRCH from a delete: nothing to delete, not an error)."""
        self._seq += 1
        self._sock.send(
            _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, flags | NLM_F_REQUEST | NLM_F_ACK, self._seq, 0) + body
        )
        while True:
            data = self._sock.recv(RECV_SIZE)
            for msg_kind, seq, payload in _messages(data):
                if seq != self._seq or msg_kind != NLMSG_ERROR:
                    continue
                (code,) = struct.unpack_from("=i", payload)
                if code == 0:
                    return
                if kind in (RTM_DELNEIGH, RTM_DELROUTE) and -code in (errno.ENOENT, errno.ESRCH):
                    return
                raise InternalError(f"{what}: {os.strerror(-code)}", f"errno {-code}")

    def _dump(self, kind: int, body: bytes) -> Iterator[tuple[int, bytes]]:
        self._seq += 1
        seq = self._seq
        self._sock.send(_NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
        while True:
            data = self._sock.recv(RECV_SIZE)
            for msg_kind, msg_seq, payload in _messages(data):
                if msg_seq != seq:
                    continue
                if msg_kind == NLMSG_DONE:
                    return
                if msg_kind == NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload)
                    raise InternalError(f"dump: {os.strerror(-code)}", f"errno {-code}")
                yield msg_kind, payload

    # ------------------------------------------------------------ neighbours and FDB entries

    def replace_neighbour(self, index: int, ip: IPAddress, mac: str) -> None:
        """``ip neigh replace <ip> lladdr <mac> dev <index> nud permanent``"""
        body = _NDMSG.pack(_family(ip), 0, 0, index, NUD_PERMANENT, 0, 0)
        body += _attr(NDA_DST, ip.packed) + _attr(NDA_LLADDR, _mac_bytes(mac))
        self._request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body, f"neighbour {ip} lladdr {mac} on link #{index}")

    def delete_neighbour(self, index: int, ip: IPAddress) -> None:
        body = _NDMSG.pack(_family(ip), 0, 0, index, 0, 0, 0) + _attr(NDA_DST, ip.packed)
        self._request(RTM_DELNEIGH, 0, body, f"delete neighbour {ip} on link #{index}")

    def replace_fdb(self, index: int, mac: str, dst: IPAddress) -> None:
        """``bridge fdb replace <mac> dev <index> dst <dst> self permanent``"""
        body = _NDMSG.pack(AF_BRIDGE, 0, 0, index, NUD_PERMANENT, NTF_SELF, 0)
        body += _attr(NDA_LLADDR, _mac_bytes(mac)) + _attr(NDA_DST, dst.packed)
        self._request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, body, f"fdb {mac} dst {dst} on link #{index}")

    def delete_fdb(self, index: int, mac: str, dst: IPAddress | None = None) -> None:
        body = _NDMSG.pack(AF_BRIDGE, 0, 0, index, 0, NTF_SELF, 0) + _attr(NDA_LLADDR, _mac_bytes(mac))
        if dst is not None:
            body += _attr(NDA_DST, dst.packed)
        self._request(RTM_DELNEIGH, 0, body, f"delete fdb {mac} on link #{index}")

    def neighbours(self, index: int, family: int = socket.AF_INET) -> list[Neighbour]:
        """The entries on link ``index``: neighbours of ``family``, or FDB entries (AF_BRIDGE)."""
        out = []
        for _kind, payload in self._dump(RTM_GETNEIGH, _NDMSG.pack(family, 0, 0, 0, 0, 0, 0)):
            fam, _p1, _p2, ifindex, state, flags, _type = _NDMSG.unpack_from(payload)
            if ifindex != index or fam != family:
                continue
            attrs = _attrs(payload, _NDMSG.size)
            mac = attrs.get(NDA_LLADDR, b"")
            dst = attrs.get(NDA_DST)
            out.append(
                Neighbour(
                    index=ifindex,
                    mac=":".join(f"{b:02x}" for b in mac),
                    dst=ipaddress.ip_address(dst) if dst and len(dst) in (4, 16) else None,
                    state=state,
                    flags=flags,
                )
            )
        return out

    # ------------------------------------------------------------ onlink routes

    def replace_onlink_route(self, dst: IPNetwork, gw: IPAddress, index: int) -> None:
        """``ip route replace <dst> via <gw> dev <index> onlink`` (protocol boot, main table)."""
        body = _RTMSG.pack(
            _family(gw), dst.prefixlen, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, RTNH_F_ONLINK
        )
        body += _attr(RTA_DST, dst.network_address.packed) + _attr(RTA_GATEWAY, gw.packed)
        body += _attr(RTA_OIF, struct.pack("=i", index))
        self._request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, body, f"route {dst} via {gw} onlink")


def _messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            return
        yield kind, seq, data[offset + _NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3


def _attrs(data: bytes, start: int) -> dict[int, bytes]:
    out = {}
    offset = start
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        out[kind & 0x3FFF] = data[offset + _RTATTR.size : offset + length]
        offset += (length + 3) & ~3
    return out
