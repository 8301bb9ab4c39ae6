"""DHCP messages, the lease an ACK grants, the result the daemon makes of it, the IPv4/UDP
framing of the packet socket, and the daemon's Go-style flags."""

from __future__ import annotations

import argparse
import ipaddress
from ipaddress import IPv4Address, IPv4Network

import pytest

from cni_plugins.dhcpd import client, packet
from cni_plugins.dhcpd.client import Request
from cni_plugins.dhcpd.lease import Attachment, Lease, Settings
from cni_plugins.dhcpd.packet import Message
from cni_plugins.dhcpd.server import duration, go_bool, parse_args

MAC = bytes.fromhex("0a1b2c3d4e5f")


def ack(**options: bytes) -> Message:
    opts = {packet.OPT_MESSAGE_TYPE: bytes((packet.ACK,)), **{int(k[1:]): v for k, v in options.items()}}
    return Message(op=packet.BOOTREPLY, xid=7, chaddr=MAC, yiaddr=IPv4Address("10.9.0.50"), options=opts)


def test_messages_round_trip() -> None:
    options = packet.client_options(
        packet.REQUEST,
        "c1/net/eth0",
        ((12, b"web-1"),),
        (6, 3, 1),
        requested=IPv4Address("10.9.0.50"),
        server=IPv4Address("10.9.0.1"),
    )
    message = Message(op=packet.BOOTREQUEST, xid=0xDEADBEEF, chaddr=MAC, options=options, flags=packet.BROADCAST_FLAG)
    data = message.encode()
    assert len(data) >= 300 and data[236:240] == packet.MAGIC
    assert Message.decode(data) == message
    # In the reference's order: type, requested address, server, client id (type 0), provided, parameters.
    assert list(options) == [53, 50, 54, 61, 12, 55]
    assert options[61] == b"\0c1/net/eth0" and options[55] == bytes((6, 3, 1))
    assert client._message(1, MAC, {}, Request(client_id="x", broadcast=True)).flags == packet.BROADCAST_FLAG
    assert client._message(1, MAC, {}, Request(client_id="x")).flags == 0
    release = packet.client_options(packet.RELEASE, "c1/net/eth0", ((12, b"x"),), (1,), server=IPv4Address("10.9.0.1"))
    assert list(release) == [53, 54, 61]


def test_long_options_are_split_and_joined_again() -> None:
    message = Message(op=1, xid=1, chaddr=MAC, options={77: b"x" * 600})
    data = message.encode()
    assert data.count(bytes((77, 255))) == 2  # RFC 3396: 255 + 255 + 90
    assert Message.decode(data).options[77] == b"x" * 600


def test_overloaded_fields_carry_options() -> None:
    data = bytearray(Message(op=2, xid=1, chaddr=MAC, options={52: b"\1", 53: b"\5"}).encode())
    data[108:115] = bytes((3, 4, 10, 9, 0, 1, 255))  # the file field: routers 10.9.0.1
    assert Message.decode(bytes(data)).ip_option(packet.OPT_ROUTER) == IPv4Address("10.9.0.1")


@pytest.mark.parametrize(
    "data",
    [b"\0" * 100, b"\0" * 236 + b"\1\2\3\4", b"\0" * 236 + packet.MAGIC + bytes((12, 9, 1))],
)
def test_malformed_messages(data: bytes) -> None:
    with pytest.raises(ValueError):
        Message.decode(data)


def test_what_an_ack_grants() -> None:
    granted = packet.grant(
        ack(
            o1=bytes((255, 255, 255, 0)),
            o3=bytes((10, 9, 0, 1, 10, 9, 0, 2)),
            o54=bytes((10, 9, 0, 254)),
            o51=(600).to_bytes(4, "big"),
        )
    )
    assert granted.address == ipaddress.IPv4Interface("10.9.0.50/24") and granted.server == IPv4Address("10.9.0.254")
    assert granted.routers == (IPv4Address("10.9.0.1"), IPv4Address("10.9.0.2"))
    assert (granted.lease_time, granted.renewal_time, granted.rebinding_time) == (600, 300.0, 525.0)
    # The server's T1 and T2 are taken when they make sense, else the RFC's defaults.
    times = packet.grant(
        ack(
            o1=b"\xff\xff\xff\0",
            o51=(600).to_bytes(4, "big"),
            o58=(100).to_bytes(4, "big"),
            o59=(200).to_bytes(4, "big"),
        )
    )
    assert (times.renewal_time, times.rebinding_time) == (100.0, 200.0)
    odd = packet.grant(
        ack(
            o1=b"\xff\xff\xff\0",
            o51=(600).to_bytes(4, "big"),
            o58=(550).to_bytes(4, "big"),
            o59=(900).to_bytes(4, "big"),
        )
    )
    assert (odd.renewal_time, odd.rebinding_time) == (300.0, 525.0)
    assert packet.grant(ack(o1=b"\xff\xff\xff\0")).lease_time == packet.DEFAULT_LEASE_TIME
    with pytest.raises(ValueError, match="Subnet Mask not found"):
        packet.grant(ack())
    with pytest.raises(ValueError, match="non-contiguous"):
        packet.grant(ack(o1=b"\xff\x00\xff\x00"))


def test_static_routes() -> None:
    # RFC 3442's own example, plus a default route and an on-link one (router 0.0.0.0).
    classless = bytes.fromhex("180a0a0a" + "0a0a0a01") + bytes((0,)) + bytes((10, 9, 0, 1))
    classless += bytes((16, 172, 16)) + bytes(4)
    assert packet.classless_routes(classless) == (
        (IPv4Network("10.10.10.0/24"), IPv4Address("10.10.10.1")),
        (IPv4Network("0.0.0.0/0"), IPv4Address("10.9.0.1")),
        (IPv4Network("172.16.0.0/16"), IPv4Address("0.0.0.0")),
    )
    with pytest.raises(ValueError, match="malformed"):
        packet.classless_routes(bytes((33, 1, 2, 3, 4, 5, 6, 7, 8, 9)))
    # Option 33: each destination with its classful mask.
    assert packet.static_routes(bytes((10, 1, 0, 0, 10, 9, 0, 1, 172, 16, 5, 0, 10, 9, 0, 2))) == (
        (IPv4Network("10.0.0.0/8"), IPv4Address("10.9.0.1")),
        (IPv4Network("172.16.0.0/16"), IPv4Address("10.9.0.2")),
    )


def lease_with(message: Message, priority: int = 0) -> Lease:
    attachment = Attachment(key="c1/net/eth0", network="net", container_id="c1", ifname="eth0", netns="/x")
    lease = Lease(attachment, Request(client_id="c1/net/eth0"), priority, Settings())
    lease.grant = packet.grant(message)
    return lease


def test_the_result_a_lease_gives() -> None:
    plain = lease_with(ack(o1=b"\xff\xff\xff\0", o3=bytes((10, 9, 0, 1)), o33=bytes((10, 1, 0, 0, 10, 9, 0, 7))))
    result = plain.result()
    assert [str(ip.address) for ip in result.ips] == ["10.9.0.50/24"] and str(result.ips[0].gateway) == "10.9.0.1"
    assert [(str(r.dst), str(r.gw)) for r in result.routes] == [("10.0.0.0/8", "10.9.0.7"), ("0.0.0.0/0", "10.9.0.1")]
    assert result.interfaces == () and result.dns.nameservers == ()  # as the reference: no DNS
    # Option 121 replaces option 33 and the default route; an on-link route gets scope link; priority is the metric.
    classless = bytes((16, 172, 16)) + bytes(4) + bytes((0, 10, 9, 0, 9))
    routed = lease_with(ack(o1=b"\xff\xff\xff\0", o3=bytes((10, 9, 0, 1)), o121=classless), priority=20)
    assert [(str(r.dst), r.gw and str(r.gw), r.scope, r.priority) for r in routed.result().routes] == [
        ("172.16.0.0/16", None, 253, 20),
        ("0.0.0.0/0", "10.9.0.9", None, 20),
    ]
    assert str(routed.result().ips[0].gateway) == "10.9.0.1"


def test_udp_framing() -> None:
    payload = b"hello dhcp"
    datagram = packet.udp_datagram(IPv4Address("0.0.0.0"), IPv4Address("255.255.255.255"), payload, 77)
    assert packet._checksum(datagram[:20]) == 0  # the IP header checksum holds
    pseudo = bytes(4) + b"\xff" * 4 + bytes((0, 17)) + (8 + len(payload)).to_bytes(2, "big")
    assert packet._checksum(pseudo + datagram[20:]) == 0  # and the UDP one
    assert datagram[20:24] == bytes((0, 68, 0, 67))
    # A reply to port 68 (ports swapped), with Ethernet padding after it.
    reply = datagram[:20] + bytes((0, 67, 0, 68)) + datagram[24:] + bytes(6)
    assert packet.udp_payload(reply) == payload
    assert packet.udp_payload(datagram) is None  # to port 67: not ours
    fragment = reply[:6] + b"\x00\x10" + reply[8:]
    assert packet.udp_payload(fragment) is None


def test_go_durations_and_flags() -> None:
    assert duration("10s") == 10 and duration("1m2s") == 62 and duration("1.5h") == 5400
    assert duration("500ms") == 0.5 and duration("0") == 0
    for bad in ("10", "1x", "", "s"):
        with pytest.raises(argparse.ArgumentTypeError):
            duration(bad)
    assert go_bool("true") and not go_bool("0")
    args = parse_args(["-socketpath", "/s", "--timeout=2s", "-resendtimeout=3s", "-broadcast"])
    assert (args.socketpath, args.timeout, args.resendtimeout, args.broadcast, args.resendmax) == ("/s", 2, 3, True, 62)
    assert parse_args(["-broadcast=false"]).broadcast is False
