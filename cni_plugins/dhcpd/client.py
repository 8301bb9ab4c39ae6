"""One DHCP exchange on a container's interface, from a packet socket made in its namespace.

The interface has no address while it asks for one, so the client talks on an
``AF_PACKET`` socket bound to it (opened inside the container's network namespace, where
it stays bound after this thread leaves): every message goes out to the Ethernet broadcast
address, as the reference's client sends them, and replies are read whether the server
broadcasts them or sends them to our MAC. A classic BPF filter lets only UDP to port 68
into the socket. A socket lives for one exchange; every wait is bounded and ends early
when ``stop`` is set.
"""

from __future__ import annotations

import ctypes
import os
import random
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address

from cni_plugins.dhcpd import packet
from cni_plugins.dhcpd.packet import ACK, BOOTREPLY, BOOTREQUEST, BROADCAST_FLAG, NAK, OFFER, Message
from cni_plugins.kernel import netns

ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4
ETHER_BROADCAST = b"\xff" * 6
POLL_S = 0.2  # how soon a wait notices ``stop``


class Stopped(Exception):
    """``stop`` was set during the exchange."""


class NoAnswer(Exception):
    """No usable answer came in time (or the server said no)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """What every message of one lease carries."""

    client_id: str
    provide: tuple[tuple[int, bytes], ...] = ()
    parameters: tuple[int, ...] = ()
    broadcast: bool = False  # ask the server to broadcast its replies (the BOOTP flag)


def _attach_filter(sock: socket.socket) -> None:
    program = b"".join(struct.pack("HBBI", *insn) for insn in packet.BPF_DHCP_CLIENT)
    buf = ctypes.create_string_buffer(program)
    fprog = struct.pack("HL", len(packet.BPF_DHCP_CLIENT), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class Channel:
    """A packet socket on ``ifname`` in the namespace at ``netns_path``. Use as a context manager."""

    def __init__(self, netns_path: str, ifname: str) -> None:
        self.ifname = ifname
        with netns.entered(netns_path):
            # Protocol 0 receives nothing until bound: the filter is in place before any packet is queued.
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 0)
            try:
                _attach_filter(sock)
                sock.bind((ifname, ETH_P_IP))
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self.mac: bytes = sock.getsockname()[4]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Channel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, message: Message, src: IPv4Address, dst: IPv4Address) -> None:
        datagram = packet.udp_datagram(src, dst, message.encode(), random.getrandbits(16))
        self.sock.sendto(datagram, (self.ifname, ETH_P_IP, 0, 0, ETHER_BROADCAST))

    def receive(self, accept: Callable[[Message], bool], timeout: float, stop: threading.Event) -> Message | None:
        """The first message ``accept`` takes within ``timeout`` seconds, else None."""
        deadline = time.monotonic() + timeout
        while True:
            if stop.is_set():
                raise Stopped()
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.sock], [], [], min(left, POLL_S))
            if not ready:
                continue
            data, address = self.sock.recvfrom(65536)
            if address[2] == PACKET_OUTGOING:
                continue
            payload = packet.udp_payload(data)
            if payload is None:
                continue
            try:
                message = Message.decode(payload)
            except ValueError:
                continue
            if accept(message):
                return message


def _reply_to(xid: int, mac: bytes, kinds: Iterable[int]) -> Callable[[Message], bool]:
    wanted = frozenset(kinds)
    return lambda m: m.op == BOOTREPLY and m.xid == xid and m.chaddr[: len(mac)] == mac and m.type in wanted


def _message(
    xid: int, mac: bytes, options: dict[int, bytes], request: Request, ciaddr: IPv4Address = packet.ANY
) -> Message:
    flags = BROADCAST_FLAG if request.broadcast else 0
    return Message(op=BOOTREQUEST, xid=xid, chaddr=mac, options=options, flags=flags, ciaddr=ciaddr)


def acquire(chan: Channel, request: Request, timeout: float, stop: threading.Event) -> Message:
    """DISCOVER, OFFER, REQUEST, ACK: the ACK. ``NoAnswer`` if a step got no answer within
    ``timeout`` or the server refused."""
    xid = random.getrandbits(32)
    options = packet.client_options(packet.DISCOVER, request.client_id, request.provide, request.parameters)
    chan.send(_message(xid, chan.mac, options, request), packet.ANY, packet.BROADCAST)
    offer = chan.receive(_reply_to(xid, chan.mac, (OFFER,)), timeout, stop)
    if offer is None:
        raise NoAnswer(f"no DHCPOFFER within {timeout:g}s")
    server = offer.ip_option(packet.OPT_SERVER_ID) or offer.siaddr
    options = packet.client_options(
        packet.REQUEST, request.client_id, request.provide, request.parameters, requested=offer.yiaddr, server=server
    )
    chan.send(_message(xid, chan.mac, options, request), packet.ANY, packet.BROADCAST)
    return _ack(chan, xid, timeout, stop, f"the DHCPREQUEST for {offer.yiaddr}")


def renew(
    chan: Channel,
    request: Request,
    address: IPv4Address,
    server: IPv4Address | None,
    timeout: float,
    stop: threading.Event,
) -> Message:
    """RENEWING (to ``server``) or REBINDING (``server`` None: to everyone): a REQUEST with
    our address as ciaddr (RFC 2131 4.3.2); the ACK, or ``NoAnswer``."""
    xid = random.getrandbits(32)
    options = packet.client_options(packet.REQUEST, request.client_id, request.provide, request.parameters)
    message = _message(xid, chan.mac, options, request, ciaddr=address)
    chan.send(message, address, server or packet.BROADCAST)
    return _ack(chan, xid, timeout, stop, f"the renewal of {address}")


def _ack(chan: Channel, xid: int, timeout: float, stop: threading.Event, what: str) -> Message:
    reply = chan.receive(_reply_to(xid, chan.mac, (ACK, NAK)), timeout, stop)
    if reply is None:
        raise NoAnswer(f"no DHCPACK for {what} within {timeout:g}s")
    if reply.type == NAK:
        text = reply.options.get(56, b"").decode("utf-8", "replace")  # option 56: the server's message
        raise NoAnswer(f"the DHCP server refused {what} (DHCPNAK{': ' + text if text else ''})")
    return reply


def release_message(request: Request, mac: bytes, address: IPv4Address, server: IPv4Address) -> Message:
    options = packet.client_options(packet.RELEASE, request.client_id, server=server)
    return Message(op=BOOTREQUEST, xid=random.getrandbits(32), chaddr=mac, options=options, ciaddr=address)


def release_on_link(chan: Channel, message: Message, address: IPv4Address, server: IPv4Address) -> None:
    chan.send(message, address, server)


def release_routed(message: Message, server: IPv4Address) -> None:
    """Send a DHCPRELEASE from this process's own namespace, routed to the server (RFC 2131
    4.4.6: a release is unicast to the server): the way left once the container's interface
    is gone. The server finds the lease by client identifier and ciaddr, not by the sender."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.sendto(message.encode(), (str(server), packet.SERVER_PORT))


def namespace_id(path: str) -> tuple[int, int] | None:
    """(device, inode) of the namespace at ``path``; None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
