"""kernel.tc without a kernel: the tick arithmetic against the reference's numbers, and the
messages it builds read back by its own parsers (the kernel reads them in the integration
tests of bandwidth)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from cni_plugins.kernel import tc
from cni_plugins.spec.errors import InternalError


def psched(tmp_path: Path, text: str) -> str:
    p = tmp_path / "psched"
    p.write_text(text)
    return str(p)


def test_tick_in_usec_as_iproute2_reads_psched(tmp_path: Path) -> None:
    assert tc.tick_in_usec(psched(tmp_path, "000003e8 00000040 000f4240 3b9aca00\n")) == 15.625
    # a clock resolution of 1 GHz: iproute2's compatibility branch makes ticks nanoseconds
    assert tc.tick_in_usec(psched(tmp_path, "000003e8 00000040 3b9aca00 3b9aca00\n")) == 1000.0
    with pytest.raises(InternalError):
        tc.tick_in_usec(str(tmp_path / "missing"))


@pytest.mark.parametrize(
    "rate, burst, ticks",
    [
        (1_000_000, 100_000, 1_562_500),  # 8 Mbit/s, 800 kbit: 100 ms (the reference's tc shows burst 100000b)
        (2_000_000, 200_000, 1_562_500),
        (500_000, 5_000, 156_250),
        (3, 7, 36_458_328),  # whole microseconds first (2333333), then ticks, each truncated
    ],
)
def test_buffer_ticks(rate: int, burst: int, ticks: int) -> None:
    assert tc.buffer_ticks(rate, burst, 15.625) == ticks


def message(kind: str, options: bytes, *, info: int = 0, hdl: int = 0, parent: int = 0) -> bytes:
    body = tc._TCMSG.pack(socket.AF_UNSPEC, 0, 0, 7, hdl, parent, info)
    return body + tc._attr(tc.TCA_KIND, kind.encode() + b"\0") + tc._attr(tc.TCA_OPTIONS, options)


def test_htb_qdisc_and_classes_round_trip() -> None:
    ifindex, qdisc = tc.parse_qdisc(message("htb", tc.htb_qdisc_options(0x30), hdl=0x10000, parent=tc.TC_H_ROOT))
    assert (ifindex, qdisc.kind, qdisc.handle, qdisc.defcls) == (7, "htb", 0x10000, 0x30)
    options = tc.htb_class_options(rate=1_000_000, ceil=2_000_000, buffer=1_562_500, cbuffer=1_562_500)
    cls = tc.parse_class(message("htb", options, hdl=0x10030))
    assert (cls.rate, cls.ceil, cls.buffer, cls.cbuffer) == (1_000_000, 2_000_000, 1_562_500, 1_562_500)
    big = tc.parse_class(message("htb", tc.htb_class_options(rate=10**11, ceil=10**11, buffer=0, cbuffer=0)))
    assert (big.rate, big.ceil) == (10**11, 10**11)  # above 32 bits: RATE64/CEIL64
    parms = dict(tc._attrs(options))[tc.TCA_HTB_PARMS]
    assert struct.unpack_from("=B", parms, 1)[0] == tc.TC_LINKLAYER_ETHERNET  # no rate table needed


def test_u32_filter_round_trip() -> None:
    keys = (tc.U32Key(0xFFFF0000, 0x0A010000, 16),)
    f = tc.parse_filter(message("u32", tc.u32_options(0x10001, keys), info=tc._info(16, tc.ETH_P_IP)))
    assert (f.prio, f.protocol, f.classid, f.keys, f.redirects) == (16, tc.ETH_P_IP, 0x10001, keys, ())
    redirects = ((5, tc.TC_ACT_STOLEN), (5, tc.TC_ACT_OK))
    f = tc.parse_filter(message("u32", tc.u32_options(0x10001, (), redirects), info=tc._info(1, tc.ETH_P_ALL)))
    assert f.keys == (tc.U32Key(0, 0, 0),) and f.redirects == redirects and f.protocol == tc.ETH_P_ALL


def test_handles() -> None:
    assert tc.handle(1, 0x30) == 0x10030
    assert (tc.fmt_handle(0x10030), tc.fmt_handle(0x10000), tc.fmt_handle(tc.INGRESS_HANDLE)) == ("1:30", "1:", "ffff:")
