"""Traffic control (qdiscs, classes, filters) over a plain rtnetlink socket, packed with ``struct``.

What ``bandwidth`` needs and nothing more: an HTB qdisc and its classes, the ``ingress``
qdisc, u32 filters (address keys, and the match-all key with mirred redirects), their
removal, and dumps of all three to read them back.

The messages are built here rather than through pyroute2's tc API because pyroute2 derives
an HTB class's buffer from a burst in bytes (``calc_xmittime``) in another floating-point
order than the reference's netlink library, so some rate/burst pairs would come out one
tick apart and fail the reference's own CHECK; here the caller passes the buffer in ticks,
computed once (``buffer_ticks``) exactly as the reference computes it. The kernel's
extended ack is asked for, so a refusal carries the kernel's own words.

A ``Tc`` is bound to the network namespace it was opened in.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from cni_plugins.spec.errors import CNIError, InternalError, TryAgainLater

NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11
RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
RTM_NEWTCLASS, RTM_GETTCLASS = 40, 42
RTM_NEWTFILTER, RTM_GETTFILTER = 44, 46
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x10
NLM_F_DUMP = 0x300
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200
NLMSGERR_ATTR_MSG = 1
NLA_TYPE_MASK = 0x3FFF
DUMP_RETRIES = 5

TC_H_ROOT = 0xFFFFFFFF
TC_H_INGRESS = 0xFFFFFFF1
INGRESS_HANDLE = 0xFFFF0000  # ffff:
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_HTB_PARMS, TCA_HTB_INIT, TCA_HTB_RATE64, TCA_HTB_CEIL64 = 1, 2, 6, 7
TC_LINKLAYER_ETHERNET = 1
TCA_U32_CLASSID, TCA_U32_SEL, TCA_U32_ACT = 1, 5, 7
TC_U32_TERMINAL = 1
TCA_ACT_KIND, TCA_ACT_OPTIONS = 1, 2
TCA_MIRRED_PARMS = 2
TCA_EGRESS_REDIR = 1
TC_ACT_OK, TC_ACT_STOLEN = 0, 4
ETH_P_ALL, ETH_P_IP, ETH_P_IPV6 = 0x0003, 0x0800, 0x86DD
TIME_UNITS_PER_SEC = 1_000_000
U32_MAX = 2**32 - 1

_NLMSGHDR = struct.Struct("=IHHII")
_TCMSG = struct.Struct("=BBHiIII")
_RTATTR = struct.Struct("=HH")
_HTB_GLOB = struct.Struct("=IIIII")  # version, rate2quantum, defcls, debug, direct_pkts
_RATESPEC = struct.Struct("=BBHhHI")  # cell_log, linklayer, overhead, cell_align, mpu, rate
_HTB_OPT = struct.Struct("=12s12sIIIII")  # rate, ceil, buffer, cbuffer, quantum, level, prio
_U32_SEL = struct.Struct("=BBBxHHhhI")  # flags, offshift, nkeys, offmask, off, offoff, hoff, hmask
_U32_KEY_MATCH = struct.Struct("!II")  # mask, value: network order
_U32_KEY_AT = struct.Struct("=ii")  # off, offmask: host order
_U32_KEY_SIZE = _U32_KEY_MATCH.size + _U32_KEY_AT.size
_MIRRED = struct.Struct("=IIiiiiI")  # index, capab, action, refcnt, bindcnt, eaction, ifindex
RECV_SIZE = 1 << 16


def handle(major: int, minor: int) -> int:
    return (major << 16) | minor


def fmt_handle(value: int) -> str:
    """As tc writes a handle: ``1:30`` (hex), ``ffff:``."""
    major, minor = value >> 16, value & 0xFFFF
    return f"{major:x}:{minor:x}" if minor else f"{major:x}:"


class TcError(CNIError):
    """The kernel refused a tc request; ``errno`` says why."""

    code = 999

    def __init__(self, msg: str, err: int) -> None:
        super().__init__(msg, f"errno {err}")
        self.errno = err


def tick_in_usec(psched: str = "/proc/net/psched") -> float:
    """Kernel scheduler ticks per microsecond, as iproute2 (and the reference's netlink
    library) derive it from /proc/net/psched."""
    try:
        with open(psched, encoding="ascii") as fh:
            t2us, us2t, clock_res, _ = (int(v, 16) for v in fh.read().split()[:4])
    except (OSError, ValueError) as exc:
        raise InternalError(f"read {psched}: {exc}", "the kernel's packet scheduler clock is needed") from None
    if clock_res == 1_000_000_000:
        t2us = us2t
    return t2us / us2t * (clock_res / TIME_UNITS_PER_SEC)


def buffer_ticks(rate_bytes: int, burst_bytes: int, ticks_per_usec: float) -> int:
    """The time to send ``burst_bytes`` at ``rate_bytes``/s, in scheduler ticks, computed in
    the reference's order (whole microseconds first, then ticks, each truncated)."""
    usec = int(float(burst_bytes) * float(TIME_UNITS_PER_SEC) / float(rate_bytes))
    return int(float(usec) * ticks_per_usec)


@dataclass(frozen=True, slots=True, order=True)
class U32Key:
    """Match ``(word at off) & mask == value`` (network order), off counted from the network header."""

    mask: int
    value: int
    off: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Qdisc:
    kind: str
    handle: int
    parent: int
    defcls: int | None = None  # htb: the default class's minor number


@dataclass(frozen=True, slots=True, kw_only=True)
class TcClass:
    kind: str
    handle: int
    parent: int
    rate: int = 0  # bytes/s
    ceil: int = 0
    buffer: int = 0  # ticks
    cbuffer: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Filter:
    kind: str
    prio: int
    protocol: int
    handle: int
    classid: int | None = None
    keys: tuple[U32Key, ...] | None = None  # None: a u32 hash-table entry, not a rule
    redirects: tuple[tuple[int, int], ...] = field(default=())  # mirred egress redirects: (target ifindex, action)


def _attr(kind: int, payload: bytes) -> bytes:
    size = _RTATTR.size + len(payload)
    return _RTATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


def _attrs(data: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    end = len(data) if end is None else end
    while start + _RTATTR.size <= end:
        size, kind = _RTATTR.unpack_from(data, start)
        if size < _RTATTR.size:
            return
        yield kind & NLA_TYPE_MASK, data[start + _RTATTR.size : start + size]
        start += (size + 3) & ~3


def _text(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode("ascii", "replace")


def _info(prio: int, protocol: int) -> int:
    """tcm_info of a filter: its priority and its protocol in network order."""
    return (prio << 16) | socket.htons(protocol)


def htb_qdisc_options(defcls: int) -> bytes:
    return _attr(TCA_HTB_INIT, _HTB_GLOB.pack(3, 10, defcls, 0, 0))


def htb_class_options(*, rate: int, ceil: int, buffer: int, cbuffer: int) -> bytes:
    """Rates in bytes/s; above 32 bits the kernel reads them from RATE64/CEIL64. The link layer
    is given, so the kernel needs no rate table."""
    opt = _HTB_OPT.pack(
        _RATESPEC.pack(0, TC_LINKLAYER_ETHERNET, 0, 0, 0, min(rate, U32_MAX)),
        _RATESPEC.pack(0, TC_LINKLAYER_ETHERNET, 0, 0, 0, min(ceil, U32_MAX)),
        buffer,
        cbuffer,
        0,
        0,
        0,
    )
    out = _attr(TCA_HTB_PARMS, opt)
    if rate > U32_MAX:
        out += _attr(TCA_HTB_RATE64, struct.pack("=Q", rate))
    if ceil > U32_MAX:
        out += _attr(TCA_HTB_CEIL64, struct.pack("=Q", ceil))
    return out


def u32_options(classid: int, keys: tuple[U32Key, ...], redirects: tuple[tuple[int, int], ...] = ()) -> bytes:
    """A terminal u32 selector (no keys: one all-zero key, which matches everything) sending to
    ``classid``, with a mirred egress redirect to each ``(ifindex, action)`` in turn."""
    keys = keys or (U32Key(0, 0, 0),)
    sel = _U32_SEL.pack(TC_U32_TERMINAL, 0, len(keys), 0, 0, 0, 0, 0)
    sel += b"".join(_U32_KEY_MATCH.pack(k.mask, k.value) + _U32_KEY_AT.pack(k.off, 0) for k in keys)
    out = _attr(TCA_U32_CLASSID, struct.pack("=I", classid)) + _attr(TCA_U32_SEL, sel)
    if redirects:
        actions = b""
        for order, (ifindex, action) in enumerate(redirects, start=1):
            parms = _MIRRED.pack(0, 0, action, 0, 0, TCA_EGRESS_REDIR, ifindex)
            body = _attr(TCA_ACT_KIND, b"mirred\0") + _attr(TCA_ACT_OPTIONS, _attr(TCA_MIRRED_PARMS, parms))
            actions += _attr(order, body)
        out += _attr(TCA_U32_ACT, actions)
    return out


def parse_qdisc(msg: bytes) -> tuple[int, Qdisc]:
    """(ifindex, qdisc) from an RTM_NEWQDISC message body (after the netlink header)."""
    _f, _p1, _p2, ifindex, hdl, parent, _info_ = _TCMSG.unpack_from(msg)
    kind, defcls = "", None
    for typ, value in _attrs(msg, _TCMSG.size):
        if typ == TCA_KIND:
            kind = _text(value)
        elif typ == TCA_OPTIONS and kind == "htb":
            for otyp, ovalue in _attrs(value):
                if otyp == TCA_HTB_INIT and len(ovalue) >= _HTB_GLOB.size:
                    defcls = _HTB_GLOB.unpack_from(ovalue)[2]
    return ifindex, Qdisc(kind=kind, handle=hdl, parent=parent, defcls=defcls)


def parse_class(msg: bytes) -> TcClass:
    _f, _p1, _p2, _ifindex, hdl, parent, _info_ = _TCMSG.unpack_from(msg)
    kind = ""
    rate = ceil = buffer = cbuffer = 0
    rate64 = ceil64 = 0
    for typ, value in _attrs(msg, _TCMSG.size):
        if typ == TCA_KIND:
            kind = _text(value)
        elif typ == TCA_OPTIONS and kind == "htb":
            for otyp, ovalue in _attrs(value):
                if otyp == TCA_HTB_PARMS and len(ovalue) >= _HTB_OPT.size:
                    rspec, cspec, buffer, cbuffer, *_ = _HTB_OPT.unpack_from(ovalue)
                    rate, ceil = _RATESPEC.unpack(rspec)[5], _RATESPEC.unpack(cspec)[5]
                elif otyp == TCA_HTB_RATE64:
                    rate64 = struct.unpack_from("=Q", ovalue)[0]
                elif otyp == TCA_HTB_CEIL64:
                    ceil64 = struct.unpack_from("=Q", ovalue)[0]
    return TcClass(
        kind=kind, handle=hdl, parent=parent, rate=rate64 or rate, ceil=ceil64 or ceil, buffer=buffer, cbuffer=cbuffer
    )


def parse_filter(msg: bytes) -> Filter:
    _f, _p1, _p2, _ifindex, hdl, _parent, info = _TCMSG.unpack_from(msg)
    kind = ""
    classid: int | None = None
    keys: tuple[U32Key, ...] | None = None
    redirects: list[tuple[int, int]] = []
    for typ, value in _attrs(msg, _TCMSG.size):
        if typ == TCA_KIND:
            kind = _text(value)
        elif typ == TCA_OPTIONS and kind == "u32":
            for otyp, ovalue in _attrs(value):
                if otyp == TCA_U32_CLASSID:
                    classid = struct.unpack_from("=I", ovalue)[0]
                elif otyp == TCA_U32_SEL and len(ovalue) >= _U32_SEL.size:
                    nkeys = _U32_SEL.unpack_from(ovalue)[2]
                    keys = tuple(_u32_key(ovalue, _U32_SEL.size + i * _U32_KEY_SIZE) for i in range(nkeys))
                elif otyp == TCA_U32_ACT:
                    redirects += _mirred_redirects(ovalue)
    return Filter(
        kind=kind,
        prio=info >> 16,
        protocol=socket.ntohs(info & 0xFFFF),
        handle=hdl,
        classid=classid,
        keys=keys,
        redirects=tuple(redirects),
    )


def _u32_key(data: bytes, offset: int) -> U32Key:
    mask, value = _U32_KEY_MATCH.unpack_from(data, offset)
    return U32Key(mask, value, _U32_KEY_AT.unpack_from(data, offset + _U32_KEY_MATCH.size)[0])


def _mirred_redirects(actions: bytes) -> list[tuple[int, int]]:
    out = []
    for _order, action in sorted(_attrs(actions)):
        fields = dict(_attrs(action))
        if _text(fields.get(TCA_ACT_KIND, b"")) != "mirred":
            continue
        parms = dict(_attrs(fields.get(TCA_ACT_OPTIONS, b""))).get(TCA_MIRRED_PARMS, b"")
        if len(parms) >= _MIRRED.size:
            _i, _c, act, _r, _b, eaction, ifindex = _MIRRED.unpack_from(parms)
            if eaction == TCA_EGRESS_REDIR:
                out.append((ifindex, act))
    return out


class Tc:
    """One rtnetlink socket for tc requests, in the namespace the caller is in when opening it."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            self._sock.bind((0, 0))
            for opt in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
                try:
                    self._sock.setsockopt(SOL_NETLINK, opt, 1)
                except OSError:
                    pass  # an older kernel: errors come without the kernel's text
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Tc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ changes

    def add_qdisc(self, ifindex: int, kind: str, *, hdl: int, parent: int, options: bytes | None = None) -> None:
        """``tc qdisc add dev <ifindex> parent <parent> handle <hdl> <kind>``; EEXIST if taken."""
        body = _attr(TCA_KIND, kind.encode() + b"\0")
        if options is not None:
            body += _attr(TCA_OPTIONS, options)
        what = f"add {kind} qdisc {fmt_handle(hdl)} on link #{ifindex}"
        self._request(RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, ifindex, hdl, parent, 0, body, what)

    def delete_qdisc(self, ifindex: int, *, hdl: int, parent: int) -> bool:
        """Remove a qdisc (its classes and filters go with it); False if there was none."""
        try:
            self._request(RTM_DELQDISC, 0, ifindex, hdl, parent, 0, b"", f"delete qdisc {fmt_handle(hdl)}")
        except TcError as err:
            if err.errno in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                return False  # EINVAL: no qdisc at that parent (the ingress one, absent)
            raise
        return True

    def add_class(self, ifindex: int, kind: str, *, hdl: int, parent: int, options: bytes) -> None:
        body = _attr(TCA_KIND, kind.encode() + b"\0") + _attr(TCA_OPTIONS, options)
        what = f"add {kind} class {fmt_handle(hdl)} on link #{ifindex}"
        self._request(RTM_NEWTCLASS, NLM_F_CREATE | NLM_F_EXCL, ifindex, hdl, parent, 0, body, what)

    def add_filter(self, ifindex: int, kind: str, *, parent: int, prio: int, protocol: int, options: bytes) -> None:
        body = _attr(TCA_KIND, kind.encode() + b"\0") + _attr(TCA_OPTIONS, options)
        what = f"add {kind} filter pref {prio} under {fmt_handle(parent)} on link #{ifindex}"
        self._request(RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_EXCL, ifindex, 0, parent, _info(prio, protocol), body, what)

    # ------------------------------------------------------------ reads

    def qdiscs(self, ifindex: int) -> list[Qdisc]:
        out = []
        for msg in self._dump(RTM_GETQDISC, ifindex, 0, f"list qdiscs of link #{ifindex}"):
            index, qdisc = parse_qdisc(msg)
            if index == ifindex:
                out.append(qdisc)
        return out

    def classes(self, ifindex: int) -> list[TcClass]:
        return [parse_class(m) for m in self._dump(RTM_GETTCLASS, ifindex, 0, f"list classes of link #{ifindex}")]

    def filters(self, ifindex: int, parent: int) -> list[Filter]:
        what = f"list filters under {fmt_handle(parent)} of link #{ifindex}"
        return [parse_filter(m) for m in self._dump(RTM_GETTFILTER, ifindex, parent, what)]

    # ------------------------------------------------------------ internals

    def _send(self, kind: int, flags: int, ifindex: int, hdl: int, parent: int, info: int, body: bytes) -> int:
        self._seq += 1
        payload = _TCMSG.pack(socket.AF_UNSPEC, 0, 0, ifindex, hdl, parent, info) + body
        header = _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), kind, NLM_F_REQUEST | flags, self._seq, 0)
        self._sock.send(header + payload)
        return self._seq

    def _messages(self, seq: int) -> Iterator[tuple[int, int, bytes]]:
        """(type, flags, body) of each message answering ``seq``."""
        while True:
            data = self._sock.recv(RECV_SIZE)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, flags, mseq, _pid = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size:
                    return
                if mseq == seq:
                    yield kind, flags, data[offset + _NLMSGHDR.size : offset + length]
                offset += (length + 3) & ~3

    def _request(
        self, kind: int, flags: int, ifindex: int, hdl: int, parent: int, info: int, body: bytes, what: str
    ) -> None:
        try:
            seq = self._send(kind, flags | NLM_F_ACK, ifindex, hdl, parent, info, body)
            for mtype, mflags, mbody in self._messages(seq):
                if mtype == NLMSG_ERROR:
                    _raise_if_error(mbody, mflags, what)
                    return
        except OSError as exc:
            raise TcError(f"{what}: {exc.strerror or exc}", exc.errno or 0) from None

    def _dump(self, kind: int, ifindex: int, parent: int, what: str) -> list[bytes]:
        for _ in range(DUMP_RETRIES):
            out: list[bytes] = []
            interrupted = False
            try:
                seq = self._send(kind, NLM_F_DUMP, ifindex, 0, parent, 0, b"")
                for mtype, mflags, mbody in self._messages(seq):
                    if mtype == NLMSG_DONE:
                        break
                    if mtype == NLMSG_ERROR:
                        _raise_if_error(mbody, mflags, what)
                        break
                    interrupted |= bool(mflags & NLM_F_DUMP_INTR)
                    out.append(mbody)
            except OSError as exc:
                raise TcError(f"{what}: {exc.strerror or exc}", exc.errno or 0) from None
            if not interrupted:
                return out
        raise TryAgainLater(f"{what}: netlink dump interrupted repeatedly")


def _raise_if_error(body: bytes, flags: int, what: str) -> None:
    (code,) = struct.unpack_from("=i", body)
    if code == 0:
        return
    err = -code
    text = os.strerror(err)
    if flags & NLM_F_ACK_TLVS and len(body) >= 4 + _NLMSGHDR.size:
        # nlmsgerr: the error, the request (its header only when capped), then the TLVs
        echoed = _NLMSGHDR.size if flags & NLM_F_CAPPED else _NLMSGHDR.unpack_from(body, 4)[0]
        start = 4 + ((echoed + 3) & ~3)
        for typ, value in _attrs(body, start):
            if typ == NLMSGERR_ATTR_MSG:
                text = f"{text}: {_text(value)}"
    raise TcError(f"{what}: {text}", err)
