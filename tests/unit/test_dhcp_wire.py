"""The dhcp plugin's wire: gob as Go's net/rpc writes it (bytes recorded from the reference's
v1.1.1 ``dhcp`` plugin calling its daemon: an Allocate, a Release, a refused Allocate), our
client against our server, results both ways, and the IPAM options."""

from __future__ import annotations

import io
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.spec.errors import CNIError, InvalidNetworkConfig, TryAgainLater
from cni_plugins.spec.types import DNS, IPConfig, Result, Route
from ipam import dhcp_conf, dhcp_rpc, gob

GO_ALLOCATE_CALL = bytes.fromhex(
    "434f4e4e454354202f5f676f5250435f20485454502f312e300a0a2fff81030101075265717565737401ff82000102010d53657276696365"
    "4d6574686f64010c000103536571010600000012ff82010d444843502e416c6c6f63617465005aff8303010107436d644172677301ff8400"
    "0106010b436f6e7461696e65724944010c0001054e65746e73010c00010649664e616d65010c00010441726773010c00010450617468010c"
    "000109537464696e44617461010a000000ffbfff8401046374723101152f7661722f72756e2f6e65746e732f64772d637472010465746830"
    "020c2f7573722f6c69622f636e6901ff887b22636e6956657273696f6e223a22312e302e30222c226e616d65223a226c616e222c22747970"
    "65223a226d6163766c616e222c226d6173746572223a2265746831222c226970616d223a7b2274797065223a2264686370222c226461656d"
    "6f6e536f636b657450617468223a222f72756e2f646863707665632f646863702e736f636b227d7d0a00"
)
GO_ALLOCATE_REPLY = bytes.fromhex(
    "485454502f312e302032303020436f6e6e656374656420746f20476f205250430a0a3aff8103010108526573706f6e736501ff8200010301"
    "0d536572766963654d6574686f64010c00010353657101060001054572726f72010c00000012ff82010d444843502e416c6c6f6361746500"
    "51ff8303010106526573756c7401ff84000105010a434e4956657273696f6e010c00010a496e746572666163657301ff8800010349507301"
    "ff8e000106526f7574657301ff92000103444e5301ff9400000024ff87020101155b5d2a74797065733130302e496e7465726661636501ff"
    "880001ff86000029ff85030102ff8600010301044e616d65010c0001034d6163010c00010753616e64626f78010c00000023ff8d02010114"
    "5b5d2a74797065733130302e4950436f6e66696701ff8e0001ff8a000033ff89030102ff8a0001030109496e746572666163650104000107"
    "4164647265737301ff8c00010747617465776179010a00000023ff8b0301010549504e657401ff8c00010201024950010a0001044d61736b"
    "010a0000001dff910201010e5b5d2a74797065732e526f75746501ff920001ff9000001cff8f030102ff90000102010344737401ff8c0001"
    "024757010a00000046ff9303010103444e5301ff94000104010b4e616d657365727665727301ff96000106446f6d61696e010c0001065365"
    "6172636801ff960001074f7074696f6e7301ff9600000016ff95020101085b5d737472696e6701ff9600010c000033ff8403010201040a37"
    "00690104ffffff000001040a370001000101010104000000000104000000000001040a37000100010000"
)
GO_RELEASE_CALL = bytes.fromhex(
    "434f4e4e454354202f5f676f5250435f20485454502f312e300a0a2fff81030101075265717565737401ff82000102010d53657276696365"
    "4d6574686f64010c000103536571010600000011ff82010c444843502e52656c65617365005aff8303010107436d644172677301ff840001"
    "06010b436f6e7461696e65724944010c0001054e65746e73010c00010649664e616d65010c00010441726773010c00010450617468010c00"
    "0109537464696e44617461010a000000ffbfff8401046374723101152f7661722f72756e2f6e65746e732f64772d63747201046574683002"
    "0c2f7573722f6c69622f636e6901ff887b22636e6956657273696f6e223a22312e302e30222c226e616d65223a226c616e222c2274797065"
    "223a226d6163766c616e222c226d6173746572223a2265746831222c226970616d223a7b2274797065223a2264686370222c226461656d6f"
    "6e536f636b657450617468223a222f72756e2f646863707665632f646863702e736f636b227d7d0a00"
)
GO_RELEASE_REPLY = bytes.fromhex(
    "485454502f312e302032303020436f6e6e656374656420746f20476f205250430a0a3aff8103010108526573706f6e736501ff8200010301"
    "0d536572766963654d6574686f64010c00010353657101060001054572726f72010c00000011ff82010c444843502e52656c65617365000a"
    "ff97030102ff9800000003ff9800"
)
GO_REFUSED_CALL = bytes.fromhex(
    "434f4e4e454354202f5f676f5250435f20485454502f312e300a0a2fff81030101075265717565737401ff82000102010d53657276696365"
    "4d6574686f64010c000103536571010600000012ff82010d444843502e416c6c6f63617465005aff8303010107436d644172677301ff8400"
    "0106010b436f6e7461696e65724944010c0001054e65746e73010c00010649664e616d65010c00010441726773010c00010450617468010c"
    "000109537464696e44617461010a000000ffceff8401046374723101152f7661722f72756e2f6e65746e732f64772d637472010465746830"
    "020c2f7573722f6c69622f636e6901ff977b22636e6956657273696f6e223a22312e302e30222c226e616d65223a226c616e222c22747970"
    "65223a226d6163766c616e222c226970616d223a7b2274797065223a2264686370222c226461656d6f6e536f636b657450617468223a222f"
    "72756e2f646863707665632f646863702e736f636b222c2270726f76696465223a5b7b226f7074696f6e223a22626f677573227d5d7d7d0a"
    "00"
)
GO_REFUSED_REPLY = bytes.fromhex(
    "485454502f312e302032303020436f6e6e656374656420746f20476f205250430a0a3aff8103010108526573706f6e736501ff8200010301"
    "0d536572766963654d6574686f64010c00010353657101060001054572726f72010c0000007aff82010d444843502e416c6c6f6361746502"
    "6643616e206e6f74207061727365206f7074696f6e2022626f677573223a2043616e206e6f74207061727365206f7074696f6e3a20737472"
    "636f6e762e506172736555696e743a2070617273696e672022626f677573223a20696e76616c69642073796e746178000aff97030102ff98"
    "00000003ff9800"
)


def _body(data: bytes) -> bytes:
    """The gob stream after the HTTP CONNECT exchange."""
    return data[data.index(b"\n\n") + 2 :]


def decode_all(data: bytes) -> list[tuple[str, Any]]:
    stream = io.BytesIO(data)

    def read(n: int) -> bytes:
        chunk = stream.read(n)
        if len(chunk) != n:
            raise EOFError
        return chunk

    decoder, out = gob.Decoder(read), []
    while stream.tell() < len(data):
        out.append(decoder.next())
    return out


def test_decodes_what_the_reference_sends() -> None:
    (_, request), (_, args) = decode_all(_body(GO_ALLOCATE_CALL))
    assert request == {"ServiceMethod": "DHCP.Allocate"}  # Seq 0 is not sent
    assert args["ContainerID"] == "ctr1" and args["IfName"] == "eth0" and args["Netns"] == "/var/run/netns/dw-ctr"
    assert "Args" not in args and args["StdinData"].startswith(b'{"cniVersion":"1.0.0","name":"lan"')
    (_, header), (name, reply) = decode_all(_body(GO_ALLOCATE_REPLY))
    assert header == {"ServiceMethod": "DHCP.Allocate"} and name == "Result" and "CNIVersion" not in reply
    result = dhcp_rpc.result_from_gob(reply)
    assert result.ips == (
        IPConfig(address=ipaddress.ip_interface("10.55.0.105/24"), gateway=ipaddress.ip_address("10.55.0.1")),
    )
    assert result.routes == (Route(dst=ipaddress.ip_network("0.0.0.0/0"), gw=ipaddress.ip_address("10.55.0.1")),)
    assert result.dns == DNS() and result.interfaces == ()
    assert decode_all(_body(GO_RELEASE_REPLY)) == [("Response", {"ServiceMethod": "DHCP.Release"}), ("", {})]
    (_, header), (_, body) = decode_all(_body(GO_REFUSED_REPLY))
    assert body == {} and header["Error"].startswith('Can not parse option "bogus"')


def test_encodes_a_call_byte_for_byte_as_go() -> None:
    (_, request), (_, args) = decode_all(_body(GO_ALLOCATE_CALL))
    encoder = gob.Encoder()
    ours = encoder.encode(dhcp_rpc.REQUEST, request) + encoder.encode(dhcp_rpc.CMD_ARGS, args)
    assert b"CONNECT /_goRPC_ HTTP/1.0\n\n" + ours == GO_ALLOCATE_CALL
    # Definitions go once per stream: a second call on it sends values only.
    again = encoder.encode(dhcp_rpc.REQUEST, {"ServiceMethod": "DHCP.Release", "Seq": 1})
    assert again == bytes.fromhex("13ff82010c") + b"DHCP.Release" + bytes.fromhex("010100")
    assert decode_all(ours + again)[-1] == ("Request", {"ServiceMethod": "DHCP.Release", "Seq": 1})


def test_encodes_an_empty_reply_as_go() -> None:
    (_, header), _ = decode_all(_body(GO_RELEASE_REPLY))
    ours = gob.Encoder().encode(dhcp_rpc.RESPONSE, header) + gob.Encoder().encode(dhcp_rpc.EMPTY, {})
    go = _body(GO_RELEASE_REPLY)
    # Go numbers its types process-wide (the empty struct is type 76 there), we per stream: compare the rest.
    assert ours[: len(ours) - 13] == go[: len(ours) - 13]
    assert decode_all(ours) == decode_all(go)


def sample_result() -> Result:
    return Result(
        ips=(
            IPConfig(address=ipaddress.ip_interface("10.1.2.3/22"), gateway=ipaddress.ip_address("10.1.0.1")),
            IPConfig(address=ipaddress.ip_interface("fd00::5/64"), interface=2),
        ),
        routes=(
            Route(dst=ipaddress.ip_network("0.0.0.0/0"), gw=ipaddress.ip_address("10.1.0.1"), priority=100),
            Route(dst=ipaddress.ip_network("192.168.7.0/24"), scope=253, mtu=1400, table=7),
        ),
        dns=DNS(nameservers=("10.1.0.53",), domain="lan", search=("lan", "example"), options=("ndots:2",)),
    )


def test_results_survive_the_wire() -> None:
    encoded = gob.Encoder().encode(dhcp_rpc.RESULT, dhcp_rpc.result_to_gob(sample_result()))
    ((name, reply),) = decode_all(encoded)
    assert name == "Result" and "CNIVersion" not in reply  # a v1.1.1 plugin could not convert 1.1.0
    assert dhcp_rpc.result_from_gob(reply) == sample_result()


def test_ipv4_in_sixteen_bytes_and_bad_masks() -> None:
    mapped = ipaddress.ip_address("::ffff:10.0.0.9").packed
    reply = {"IPs": [{"Address": {"IP": mapped, "Mask": b"\xff\xff\xff\x00"}, "Gateway": mapped}]}
    assert str(dhcp_rpc.result_from_gob(reply).ips[0].address) == "10.0.0.9/24"
    with pytest.raises(gob.GobError, match="contiguous"):
        dhcp_rpc.result_from_gob({"IPs": [{"Address": {"IP": b"\n\0\0\1", "Mask": b"\xff\x00\xff\x00"}}]})
    with pytest.raises(gob.GobError, match="not an IP address"):
        dhcp_rpc.result_from_gob({"IPs": [{"Address": {"IP": b"\1\2\3", "Mask": b"\xff\xff\xff\x00"}}]})


@pytest.mark.parametrize(
    "value, encoded",
    [(0, "00"), (127, "7f"), (128, "ff80"), (256, "fe0100"), (2**64 - 1, "f8ffffffffffffffff")],
)
def test_uints(value: int, encoded: str) -> None:
    assert gob.uint_bytes(value).hex() == encoded
    reader = gob._Reader(bytes.fromhex(encoded))
    assert reader.uint() == value and reader.done


@pytest.mark.parametrize("value, encoded", [(0, "00"), (-1, "01"), (65, "ff82"), (-65, "ff81"), (-129, "fe0101")])
def test_ints(value: int, encoded: str) -> None:
    assert gob.int_bytes(value).hex() == encoded
    assert gob._Reader(bytes.fromhex(encoded)).int() == value


@pytest.mark.parametrize(
    "stream, error",
    [
        (bytes.fromhex("0102"), "cut short"),  # a bool value without its byte
        (bytes.fromhex("f7" + "00" * 9), "length byte"),  # a length of 9 bytes
        (bytes.fromhex("03ff8200"), "undefined type id"),  # a value of a type never defined
        (bytes.fromhex("021000"), "not supported"),  # a wireType value where a user value belongs
    ],
)
def test_malformed_streams_are_refused(stream: bytes, error: str) -> None:
    with pytest.raises(gob.GobError, match=error):
        decode_all(stream)


def test_counts_larger_than_the_message_are_refused() -> None:
    schema = gob.Struct("S", (("L", gob.Slice(gob.INT, "[]int")),))
    encoded = gob.Encoder().encode(schema, {"L": [1]})
    assert decode_all(encoded)[-1] == ("S", {"L": [1]})
    # The value message: length, type id, field delta 1, count 1, element 1 (zig-zag 2), end.
    assert encoded.endswith(bytes.fromhex("06ff8201010200"))
    bomb = encoded[:-7] + bytes.fromhex("0aff8201fc3b9aca000200")  # a count of a billion
    with pytest.raises(gob.GobError, match="cannot fit"):
        decode_all(bomb)


# ---------------------------------------------------------------- client and server

Handler = Callable[[socket.socket], None]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[Handler], str]]:
    """``serve(handler)``: a unix socket whose first connection ``handler`` gets, in a thread."""
    listeners: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def start(handler: Handler) -> str:
        path = str(tmp_path / f"d{len(listeners)}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(4)
        listeners.append(listener)

        def loop() -> None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                handler(conn)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        threads.append(thread)
        return path

    yield start
    for listener in listeners:
        listener.close()
    for thread in threads:
        thread.join(5)


Answer = Callable[[str, Any], tuple[str, gob.Struct, dict[str, Any]]]


def daemon_like(answer: Answer) -> Handler:
    def handler(conn: socket.socket) -> None:
        rpc = dhcp_rpc.ServerConn(conn, idle_timeout=5)
        if not rpc.handshake():
            return
        while (request := rpc.read_request()) is not None:
            method, seq, argument = request
            error, body_type, body = answer(method, argument)
            rpc.reply(method, seq, error, body_type, body)

    return handler


NO_ARGS = dhcp_rpc.cmd_args("", "", "", "", "", b"")


def test_our_client_and_server(serve: Callable[[Handler], str]) -> None:
    seen: list[tuple[str, Any]] = []

    def answer(method: str, argument: Any) -> tuple[str, gob.Struct, dict[str, Any]]:
        seen.append((method, argument))
        return "", dhcp_rpc.RESULT, dhcp_rpc.result_to_gob(sample_result())

    path = serve(daemon_like(answer))
    args = dhcp_rpc.cmd_args("c1", "/var/run/netns/x", "eth0", "K=V", "/opt/cni/bin", b'{"name":"n"}')
    reply = dhcp_rpc.call(path, "DHCP.Allocate", args, timeout=5)
    assert dhcp_rpc.result_from_gob(reply) == sample_result()
    assert seen == [("DHCP.Allocate", args)]


def test_daemon_errors_keep_their_code(serve: Callable[[Handler], str]) -> None:
    error = dhcp_rpc.error_text(TryAgainLater("no DHCP lease for eth0", "check the server"))
    assert error == "no DHCP lease for eth0 (check the server) [CNI code 11]"
    path = serve(daemon_like(lambda m, a: (error, dhcp_rpc.RESULT, {})))
    with pytest.raises(dhcp_rpc.CallFailed) as failed:
        dhcp_rpc.call(path, "DHCP.Allocate", NO_ARGS, timeout=5)
    assert failed.value.code == 11 and failed.value.text == "no DHCP lease for eth0 (check the server)"
    assert not failed.value.unknown_method
    assert dhcp_rpc.CallFailed("rpc: can't find method DHCP.Check").unknown_method
    assert dhcp_rpc.CallFailed(dhcp_rpc.error_text(CNIError("plain"))).code == 999


def test_a_daemon_that_does_not_answer_is_not_waited_for(serve: Callable[[Handler], str]) -> None:
    quiet = threading.Event()

    def handler(conn: socket.socket) -> None:
        dhcp_rpc.ServerConn(conn, idle_timeout=5).handshake()
        quiet.wait(5)  # reads the call, never answers

    path = serve(handler)
    start = time.monotonic()
    with pytest.raises(dhcp_rpc.RpcError, match=r"did not answer DHCP.Allocate within 0.5s"):
        dhcp_rpc.call(path, "DHCP.Allocate", NO_ARGS, timeout=0.5)
    assert time.monotonic() - start < 2
    quiet.set()


def test_a_cancelled_call_stops_waiting(serve: Callable[[Handler], str]) -> None:
    quiet = threading.Event()

    def handler(conn: socket.socket) -> None:
        dhcp_rpc.ServerConn(conn, idle_timeout=5).handshake()
        quiet.wait(5)

    def poll() -> None:
        raise TryAgainLater("cancelled")

    path = serve(handler)
    start = time.monotonic()
    with pytest.raises(TryAgainLater):
        dhcp_rpc.call(path, "DHCP.Allocate", NO_ARGS, timeout=60, poll=poll)
    assert time.monotonic() - start < 2
    quiet.set()


def test_unreachable_and_foreign_sockets(tmp_path: Path, serve: Callable[[Handler], str]) -> None:
    with pytest.raises(dhcp_rpc.Unreachable, match="No such file"):
        dhcp_rpc.call(str(tmp_path / "none.sock"), "DHCP.Release", NO_ARGS, timeout=1)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "stale.sock"))
    stale.close()  # the file stays, nobody listens
    with pytest.raises(dhcp_rpc.Unreachable, match="refused"):
        dhcp_rpc.call(str(tmp_path / "stale.sock"), "DHCP.Release", NO_ARGS, timeout=1)

    def web(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"HTTP/1.1 404 Not Found\r\n\r\n")

    with pytest.raises(dhcp_rpc.RpcError, match="not a DHCP daemon socket"):
        dhcp_rpc.call(serve(web), "DHCP.Release", NO_ARGS, timeout=1)


def test_server_refuses_plain_http(serve: Callable[[Handler], str]) -> None:
    path = serve(daemon_like(lambda m, a: ("", dhcp_rpc.EMPTY, {})))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.0 405 Method Not Allowed")


# ---------------------------------------------------------------- options


def test_options_as_the_reference_reads_them() -> None:
    ipam = {
        "type": "dhcp",
        "daemonSocketPath": "/run/other/dhcp.sock",
        "provide": [
            {"option": "host-name", "value": "fixed"},
            {"option": "host-name", "fromArg": "K8S_POD_NAME"},  # the CNI_ARGS value wins
            {"option": "77", "value": "class"},
            {"option": "60", "fromArg": "ABSENT"},  # no such key and no value: nothing is sent
        ],
        "request": [{"option": "6"}, {"option": "routers"}, {"option": ""}],
        "priority": 50,
    }
    conf = dhcp_conf.parse(ipam, "IgnoreUnknown=1;K8S_POD_NAME=web-1;junk")
    assert conf.socket_path == "/run/other/dhcp.sock" and conf.priority == 50
    assert conf.provide == ((12, b"web-1"), (77, b"class"))
    assert conf.request == (6, 3, 1)  # what is asked for, then the defaults not asked for yet
    assert dhcp_conf.parse({"request": [{"skipDefault": True, "option": "121"}]}, "").request == (121,)
    assert dhcp_conf.parse({}, "") == dhcp_conf.DhcpConf()


@pytest.mark.parametrize(
    "ipam, args, message",
    [
        ({"provide": [{"option": "domain-name-servers", "value": "x"}]}, "", r"ipam.provide\[0\].option: 'domain"),
        ({"provide": [{"option": "256", "value": "x"}]}, "", "is not a DHCP option"),
        ({"provide": [{"option": 12, "value": "x"}]}, "", "is not a DHCP option"),
        ({"provide": [{"option": "12", "value": "x" * 256}]}, "", "256 bytes is too long"),
        ({"provide": [{"option": "12", "fromArg": "N"}]}, "N=" + "y" * 256, "CNI_ARGS N is too long"),
        ({"provide": {"option": "12"}}, "", "ipam.provide: expected a JSON list"),
        ({"provide": ["12"]}, "", r"ipam.provide\[0\]: expected a JSON object"),
        ({"request": [{"option": "bogus"}]}, "", r"ipam.request\[0\].option"),
        ({"request": [{"skipDefault": "yes"}]}, "", "skipDefault: expected true or false"),
        ({"priority": -1}, "", "ipam.priority: -1 is out of range"),
        ({"daemonSocketPath": 5}, "", "ipam.daemonSocketPath: expected a string"),
    ],
)
def test_bad_options(ipam: dict[str, Any], args: str, message: str) -> None:
    with pytest.raises(InvalidNetworkConfig, match=message):
        dhcp_conf.parse(ipam, args)


def test_client_id_is_cut_to_what_option_61_holds() -> None:
    assert dhcp_conf.client_id("c1", "net", "eth0") == "c1/net/eth0"
    assert dhcp_conf.client_id("c" * 300, "net", "eth0") == "c" * 254
