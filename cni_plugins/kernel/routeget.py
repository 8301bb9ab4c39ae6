"""``ip route get <address>`` in the current namespace, over a raw rtnetlink socket.

portmap needs only the interface that routes to a container's address (to set
``route_localnet`` on it); importing pyroute2 for one query costs ~250 ms, this costs well
under a millisecond. Standard library only; one request, one reply.
"""

from __future__ import annotations

import os
import socket
import struct

from cni_plugins.spec.types import IPAddress

NETLINK_ROUTE = 0
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
RTA_DST, RTA_OIF = 1, 4
NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTATTR = struct.Struct("=HH")


def _align(n: int) -> int:
    return (n + 3) & ~3


def output_interface(address: IPAddress) -> str | None:
    """Name of the interface the kernel would send to ``address`` on, or None (no route)."""
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    dst = address.packed
    attr = RTATTR.pack(RTATTR.size + len(dst), RTA_DST) + dst
    body = RTMSG.pack(family, len(dst) * 8, 0, 0, 0, 0, 0, 0, 0) + attr + b"\0" * (_align(len(attr)) - len(attr))
    seq = os.getpid() & 0xFFFF
    request = NLMSGHDR.pack(NLMSGHDR.size + len(body), RTM_GETROUTE, NLM_F_REQUEST, seq, 0) + body
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE) as sock:
        sock.settimeout(2.0)
        sock.sendto(request, (0, 0))
        reply = sock.recv(65536)
    if len(reply) < NLMSGHDR.size:
        return None
    length, msg_type, _, _, _ = NLMSGHDR.unpack_from(reply)
    if msg_type != RTM_NEWROUTE:
        return None  # NLMSG_ERROR: no route (ENETUNREACH ...)
    pos = NLMSGHDR.size + RTMSG.size
    end = min(length, len(reply))
    while pos + RTATTR.size <= end:
        rta_len, rta_type = RTATTR.unpack_from(reply, pos)
        if rta_len < RTATTR.size:
            break
        if rta_type == RTA_OIF and rta_len >= RTATTR.size + 4:
            (index,) = struct.unpack_from("=I", reply, pos + RTATTR.size)
            try:
                return socket.if_indextoname(index)
            except OSError:
                return None
        pos += _align(rta_len)
    return None
