"""A small typed façade over pyroute2's IPRoute: the only module that touches pyroute2.
Single link reads, the most frequent request, go through ``linkget`` instead (a plain
rtnetlink socket and ``struct``: ~0.8 ms less per read in a warm process). So do the
requests of the plugins' hot paths (creating veths and macvlans; link up/down, master, MTU,
name, MAC, txqueuelen, flags; bridge port options; deleting a link; adding and deleting
addresses and routes; reading addresses): their messages are built with pyroute2's own
message classes, with the attributes pyroute2's request machinery would send (a test
compares the bytes), and written to that plain socket, skipping the request machinery.
``Netlink.batch`` sends several of them in one write. IPRoute itself is opened only when a
request not covered here needs it.

pyroute2 is imported on first use, not at import time: it costs ~100 ms, and VERSION,
error paths and the nftables-only plugins must not pay for it. Its package ``__init__`` is
skipped (``_lazy_pyroute2``): only the submodules we use are imported.

A ``Netlink`` is bound to one network namespace for its whole life: its socket is opened
inside the namespace (``netns.entered``), after which the thread is back where it was.
pyroute2's own ``IPRoute(netns=...)`` is not used: it forks a helper process per socket
and, by default, *creates* a missing namespace (``O_CREAT``).

Errors are translated at this boundary (``translate_errors``): ENODEV/ENOENT become
``LinkNotFound``, EEXIST ``LinkExists``, EBUSY/EAGAIN ``TryAgainLater``, the rest code 999
with the errno in the details.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from cni_plugins.kernel import netns
from cni_plugins.kernel.linkget import IFF_ALLMULTI as IFF_ALLMULTI
from cni_plugins.kernel.linkget import IFF_PROMISC as IFF_PROMISC
from cni_plugins.kernel.linkget import IFF_UP as IFF_UP
from cni_plugins.kernel.linkget import Link as Link
from cni_plugins.kernel.linkget import LinkGetError, LinkReader
from cni_plugins.spec.errors import CNIError, InternalError, TryAgainLater
from cni_plugins.spec.types import IPAddress, IPInterface, IPNetwork

IFA_F_NODAD = 0x02
IFA_F_TENTATIVE = 0x40
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST, RT_SCOPE_NOWHERE = 0, 253, 254, 255
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3
RTN_UNICAST = 1
FR_ACT_TO_TBL = 1
DUMP_RETRIES = 5
IFNAMSIZ_MAX = 15  # IFNAMSIZ - 1
RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR, RTM_NEWROUTE, RTM_DELROUTE = 16, 17, 20, 21, 22, 24, 25
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x100, 0x200, 0x400
RAW_REQUESTS = True  # hot-path requests over the plain socket; tests turn it off to compare with pyroute2's
BATCHES = True  # ``Netlink.batch`` holds requests back for one write; off, each is sent at once (an A/B switch)
_KEPT: list[Any] | None = None  # sockets left open until exit (``keep_open_until_exit``)


def keep_open_until_exit() -> None:
    """From now on ``Netlink.close`` leaves the socket to the process's exit (for the warm
    helper's short-lived workers, which exit after replying: closing costs time, exiting
    after the reply does not)."""
    global _KEPT
    if _KEPT is None:
        _KEPT = []


def release_kept() -> None:
    """Close what ``keep_open_until_exit`` kept (a reused worker, after its reply)."""
    while _KEPT:
        ipr = _KEPT.pop()
        try:
            ipr.close()
        except Exception:  # closing is best effort; the process is between calls
            pass


class LinkNotFound(CNIError):
    """No such link (ENODEV): DEL treats it as already done."""

    code = 999


class LinkExists(CNIError):
    """A link of that name already exists (EEXIST)."""

    code = 999


class NotSupported(InternalError):
    """The kernel refused an operation it does not implement (EOPNOTSUPP): a missing feature
    (e.g. bridge VLAN filtering compiled out). Callers name the option that needs it."""


def _lazy_pyroute2() -> None:
    """Let ``pyroute2.<submodule>`` imports skip the package's ``__init__``, which imports every
    API pyroute2 has (IPDB, NDB, conntrack, ethtool, wireless, ...). Without a helper, a
    bridge ADD or DEL process took ~365 ms with it and ~297 ms without (medians of ten, in
    turns, on this 2-CPU VM). The package module is made from its spec; a name that only
    ``__init__`` defines (``from pyroute2 import NDB`` elsewhere in the same process) runs
    the real ``__init__`` then."""
    if "pyroute2" in sys.modules:
        return
    import importlib
    import importlib.util

    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    package = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(name: str) -> Any:
        if not name.startswith("__"):
            try:  # a submodule, as ``from pyroute2 import config`` inside pyroute2 asks
                return importlib.import_module(f"pyroute2.{name}")
            except ModuleNotFoundError as exc:
                if exc.name != f"pyroute2.{name}":
                    raise
        package.__dict__.pop("__getattr__", None)
        loader.exec_module(package)
        return getattr(package, name)

    package.__dict__["__getattr__"] = complete
    sys.modules["pyroute2"] = package


def preload_pyroute2() -> None:
    """Import the pyroute2 submodules used here (a helper does, before it forks workers)."""
    _lazy_pyroute2()
    import pyroute2.iproute.linux  # noqa: F401  (loaded here, used elsewhere)
    import pyroute2.netlink.exceptions  # noqa: F401  (loaded here, used elsewhere)
    import pyroute2.netlink.rtnl.ifaddrmsg  # noqa: F401  (loaded here, used elsewhere)
    import pyroute2.netlink.rtnl.ifinfmsg  # noqa: F401  (loaded here, used elsewhere)
    import pyroute2.netlink.rtnl.rtmsg  # noqa: F401  (loaded here, used elsewhere)


@contextmanager
def translate_errors(context: str) -> Iterator[None]:
    """Map pyroute2/OS errors raised in the block to CNIError subclasses with ``context``."""
    _lazy_pyroute2()
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        yield
    except NetlinkError as exc:
        code = exc.code
        text = f"{context}: {errno.errorcode.get(code, code)} ({exc})" if code else f"{context}: {exc}"
        if code in (errno.ENODEV, errno.ENOENT):
            raise LinkNotFound(text) from None
        if code == errno.EEXIST:
            raise LinkExists(text) from None
        if code in (errno.EBUSY, errno.EAGAIN):
            raise TryAgainLater(text) from None
        if code == errno.EOPNOTSUPP:
            raise NotSupported(text, f"errno {code}") from None
        raise InternalError(text, f"errno {code}") from None
    except OSError as exc:
        raise InternalError(f"{context}: {exc.strerror or exc}", f"errno {exc.errno}") from None


@dataclass(frozen=True, slots=True, kw_only=True)
class Addr:
    index: int
    address: IPInterface
    scope: int
    flags: int = 0

    @property
    def tentative(self) -> bool:
        return bool(self.flags & IFA_F_TENTATIVE)


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteEntry:
    dst: IPNetwork
    gw: IPAddress | None
    oif: int | None
    scope: int
    table: int
    priority: int | None
    src: IPAddress | None
    proto: int = RTPROT_BOOT
    type: int = RTN_UNICAST
    mtu: int | None = None
    advmss: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleEntry:
    """A policy routing rule (``ip rule``): only the selectors the plugins read."""

    family: int
    priority: int
    table: int
    src: IPNetwork | None  # None: from all
    action: int = FR_ACT_TO_TBL


def _teach_pyroute2() -> None:
    """Attributes newer than pyroute2 0.9's tables, so they can be sent and decoded:
    macvlan's broadcast queue length (Linux 5.11, ``ip link ... bcqueuelen``). Runs before
    the first socket is made, i.e. before pyroute2 compiles its attribute tables."""
    _lazy_pyroute2()
    from pyroute2.netlink.rtnl.ifinfmsg import macvx_data

    names = [name for name, _ in macvx_data.nla_map]
    if "IFLA_MACVLAN_BC_QUEUE_LEN" not in names and len(names) == 7:
        macvx_data.nla_map = (
            *macvx_data.nla_map,
            ("IFLA_MACVLAN_BC_QUEUE_LEN", "uint32"),
            ("IFLA_MACVLAN_BC_QUEUE_LEN_USED", "uint8"),
        )


def _link_data(msg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """IFLA_INFO_DATA and IFLA_INFO_SLAVE_DATA of a decoded pyroute2 link message, by name."""
    info = msg.get_attr("IFLA_LINKINFO")
    data: dict[str, Any] = {}
    port: dict[str, Any] = {}
    if info is not None:
        idata = info.get_attr("IFLA_INFO_DATA")
        if idata is not None and hasattr(idata, "get"):
            try:
                data = {name: value for name, value in idata["attrs"]}
            except (KeyError, TypeError, ValueError):
                data = {}
        sdata = info.get_attr("IFLA_INFO_SLAVE_DATA")
        if sdata is not None and hasattr(sdata, "get"):
            try:
                port = {name: value for name, value in sdata["attrs"]}
            except (KeyError, TypeError, ValueError):
                port = {}
    return data, port


class _LinkData(Mapping[str, Any]):
    """A link's kind-specific attributes, decoded by pyroute2 from the raw message only when
    first read (most link reads need none of them; decoding them costs ~0.3 ms)."""

    __slots__ = ("_message", "_port", "_decoded")

    def __init__(self, message: bytes, port: bool) -> None:
        self._message = message
        self._port = port
        self._decoded: dict[str, Any] | None = None

    def _data(self) -> dict[str, Any]:
        if self._decoded is None:
            _teach_pyroute2()
            from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

            msg = ifinfmsg(self._message)
            msg.decode()
            info, port = _link_data(msg)
            self._decoded = port if self._port else info
        return self._decoded

    def __getitem__(self, key: str) -> Any:
        return self._data()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())

    def __repr__(self) -> str:
        return repr(self._data())


@dataclass(frozen=True, slots=True)
class _Request:
    message: bytes
    context: str
    exists_ok: bool  # EEXIST is success (an address or route already there)
    gone_ok: bool = False  # ENODEV/ENOENT is success (a link already deleted)


class Netlink:
    """rtnetlink in one namespace. Use ``Netlink.open(ns)`` as a context manager."""

    def __init__(self, reader: LinkReader, ns_fd: int, label: str) -> None:
        self._iproute: Any = None  # pyroute2's IPRoute, opened on first use (``_ipr``)
        self._reader = reader  # link reads and hot-path requests without pyroute2's machinery
        self._ns_fd = ns_fd  # the namespace, to open IPRoute in later
        self._batch: list[_Request] | None = None
        self.label = label

    @classmethod
    def open(cls, ns: str | int | None = None, *, label: str = "") -> Netlink:
        """Open in the current namespace (``None``) or in ``ns`` (a path or an fd)."""
        _teach_pyroute2()
        with netns.entered(ns) if ns is not None else nullcontext():
            reader = LinkReader(_LinkData)
            try:
                ns_fd = netns.current_netns_fd()
            except BaseException:
                reader.close()
                raise
        if not label:
            label = "host" if ns is None else ns if isinstance(ns, str) else f"netns fd {ns}"
        return cls(reader, ns_fd, label)

    @property
    def _ipr(self) -> Any:
        if self._iproute is None:
            from pyroute2.iproute.linux import IPRoute

            with netns.entered(self._ns_fd, label=self.label):
                self._iproute = IPRoute()
        return self._iproute

    def close(self) -> None:
        self._reader.close()
        os.close(self._ns_fd)
        if self._iproute is None:
            return
        if _KEPT is not None:
            _KEPT.append(self._iproute)
            return
        self._iproute.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """The requests made in the block go to the kernel in one write at its end, which
        raises the first one's error (the kernel still runs the ones after it). Nothing in the
        block may read what an earlier request of the block does; requests pyroute2 makes
        (and reads) are not held back. A block that raises sends nothing."""
        if self._batch is not None or not BATCHES:  # nested: part of the outer batch
            yield
            return
        self._batch = []
        try:
            yield
            pending = self._batch
        finally:
            self._batch = None
        self._send(pending)

    def flush(self) -> None:
        """Send what the current batch holds now (before reading what it changes)."""
        if self._batch:
            pending, self._batch = self._batch, []
            self._send(pending)

    def _request(self, request: _Request) -> None:
        if self._batch is not None:
            self._batch.append(request)
        else:
            self._send([request])

    def _send(self, requests: list[_Request]) -> None:
        if not requests:
            return
        from pyroute2.netlink.exceptions import NetlinkError

        with translate_errors(requests[0].context if len(requests) == 1 else self._ctx("netlink batch")):
            codes = self._reader.transact([r.message for r in requests])
        for request, code in zip(requests, codes, strict=True):
            if code == 0 or (request.exists_ok and code == errno.EEXIST):
                continue
            if request.gone_ok and code in (errno.ENODEV, errno.ENOENT):
                continue
            with translate_errors(request.context):
                raise NetlinkError(code)

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _ctx(self, what: str) -> str:
        return f"{what} in {self.label}"

    # ------------------------------------------------------------ links

    def link(self, name: str) -> Link | None:
        """The link named ``name``, or None. One RTM_GETLINK by name, so the kernel looks it
        up (never a dump of every link: ~0.25 ms per link on the host), read by ``linkget``."""
        if not name or len(name.encode()) > IFNAMSIZ_MAX:
            return None  # no link can have that name
        with translate_errors(self._ctx(f"get link {name}")):
            return self._reader.get(name=name)

    def link_by_index(self, index: int) -> Link | None:
        if index <= 0:
            return None  # the kernel would read 0 as "by name"
        with translate_errors(self._ctx(f"get link #{index}")):
            return self._reader.get(index=index)

    def links(self) -> list[Link]:
        """Every link of the namespace, in ifindex order (one dump, read by ``linkget``)."""
        with translate_errors(self._ctx("list links")):
            return self._reader.dump()

    def require_link(self, name: str) -> Link:
        link = self.link(name)
        if link is None:
            raise LinkNotFound(self._ctx(f"link {name} not found"))
        return link

    def add_link(self, name: str, kind: str, **attrs: Any) -> Link:
        """Create a link (``kind`` as in ``ip link add type``) and return it as the kernel made it."""
        self.create_link(name, kind, **attrs)
        return self.require_link(name)

    def create_link(self, name: str, kind: str, **attrs: Any) -> None:
        """Create a link without reading it back: with ``net_ns_fd`` it is born in another namespace."""
        context = self._ctx(f"create {kind} {name}")
        message = _new_link_message(name, kind, attrs) if RAW_REQUESTS else None
        if message is not None:
            self._request(_Request(message, context, exists_ok=False))
            return
        with translate_errors(context):
            self._ipr.link("add", ifname=name, kind=kind, **attrs)

    def set_link(self, index: int, **attrs: Any) -> None:
        """``ip link set``: state='up'|'down', mtu, address, master, ifname, net_ns_fd, txqlen ..."""
        context = self._ctx(f"set link #{index} {sorted(attrs)}")
        message = _set_link_message(index, attrs) if RAW_REQUESTS else None
        if message is not None:
            self._request(_Request(message, context, exists_ok=False))
            return
        with translate_errors(context):
            self._ipr.link("set", index=index, **attrs)

    def set_flags(self, index: int, *, promisc: bool | None = None, allmulti: bool | None = None) -> None:
        flags = change = 0
        for bit, want in ((IFF_PROMISC, promisc), (IFF_ALLMULTI, allmulti)):
            if want is not None:
                change |= bit
                flags |= bit if want else 0
        if not change:
            return
        context = self._ctx(f"set flags on link #{index}")
        if RAW_REQUESTS:
            fields = {"index": index, "flags": flags, "change": change}
            message = _message("ifinfmsg", RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, fields, [])
            self._request(_Request(message, context, exists_ok=False))
            return
        with translate_errors(context):
            self._ipr.link("set", index=index, flags=flags, change=change)

    def delete_link_if_exists(self, name: str) -> Link | None:
        """Delete ``name``; absence is fine. Returns the link as it was, if it existed."""
        link = self.link(name)
        if link is None:
            return None
        try:
            if RAW_REQUESTS:
                message = _message("ifinfmsg", RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, {"index": link.index}, [])
                self._send([_Request(message, self._ctx(f"delete link {name}"), exists_ok=False)])
            else:
                with translate_errors(self._ctx(f"delete link {name}")):
                    self._ipr.link("del", index=link.index)
        except LinkNotFound:
            return None
        return link

    def set_bridge_port(self, index: int, **attrs: Any) -> None:
        """Bridge port options via IFLA_PROTINFO (``hairpin``/``mode``, ``isolated`` ...)."""
        context = self._ctx(f"set bridge port options {sorted(attrs)} on link #{index}")
        if RAW_REQUESTS and attrs and all(key in _BRPORT_ATTRS and isinstance(v, int) for key, v in attrs.items()):
            port = [(_BRPORT_ATTRS[key], value) for key, value in attrs.items()]
            info = [("IFLA_INFO_KIND", "bridge_slave"), ("IFLA_INFO_SLAVE_DATA", {"attrs": port})]
            message = _message(
                "ifinfmsg",
                RTM_NEWLINK,
                NLM_F_REQUEST | NLM_F_ACK,
                {"index": index},
                [("IFLA_LINKINFO", {"attrs": info})],
            )
            self._request(_Request(message, context, exists_ok=False))
            return
        with translate_errors(context):
            self._ipr.brport("set", index=index, **attrs)

    def bridge_vlan(self, command: str, index: int, vid: int, *, pvid: bool = False, untagged: bool = False) -> None:
        """``bridge vlan add|del dev <index> vid <vid> [pvid] [untagged] master`` (needs VLAN filtering)."""
        info: dict[str, Any] = {"vid": vid}
        flags = [f for f, on in (("pvid", pvid), ("untagged", untagged)) if on]
        if flags:
            info["flags"] = flags
        with translate_errors(self._ctx(f"{command} bridge vlan {vid} on link #{index}")):
            self._ipr.vlan_filter(command, index=index, vlan_info=info)

    # ------------------------------------------------------------ addresses

    def addresses(self, index: int | None = None, family: int | None = None) -> list[Addr]:
        kwargs: dict[str, Any] = {}
        if index is not None:
            kwargs["index"] = index
        if family is not None:
            kwargs["family"] = family
        with translate_errors(self._ctx("list addresses")):
            if RAW_REQUESTS:
                msgs = self._raw_addresses(index, family)
            else:
                msgs = self._dump(lambda: self._ipr.get_addr(**kwargs))
        out = []
        for m in msgs:
            addr = (
                m.get_attr("IFA_ADDRESS")
                if m["family"] == socket.AF_INET6
                else (m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS"))
            )
            if addr is None:
                continue
            flags = m.get_attr("IFA_FLAGS") or m["flags"]
            out.append(
                Addr(
                    index=m["index"],
                    address=ipaddress.ip_interface(f"{addr}/{m['prefixlen']}"),
                    scope=m["scope"],
                    flags=flags,
                )
            )
        return out

    def _raw_addresses(self, index: int | None, family: int | None) -> list[Any]:
        """The address dump over the plain socket, decoded by pyroute2's ``ifaddrmsg``; the
        kernel filters by family and by link (strictly checked: a host with a thousand
        ports would otherwise have it walk them all), and the link is matched here too."""
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

        body = struct.pack("=BBBBI", family or socket.AF_UNSPEC, 0, 0, 0, index or 0)
        out = []
        try:
            messages = self._reader.dump_messages(RTM_GETADDR, body, strict=index is not None)
        except LinkGetError as exc:
            if exc.errno == errno.EAGAIN:
                raise TryAgainLater(self._ctx("netlink dump interrupted repeatedly")) from None
            if exc.errno == errno.ENODEV:
                return []  # no such link: no addresses, as without the filter
            raise
        for data in messages:
            msg = ifaddrmsg(data)
            msg.decode()
            if index is None or msg["index"] == index:
                out.append(msg)
        return out

    def add_address(
        self,
        index: int,
        address: IPInterface,
        *,
        scope: int | None = None,
        nodad: bool = False,
        exists_ok: bool = False,
    ) -> None:
        """``ip addr add``; ``exists_ok``: an address already there is fine."""
        context = self._ctx(f"add address {address} to link #{index}")
        broadcast = None
        if address.version == 4 and address.network.prefixlen < 31:
            broadcast = str(address.network.broadcast_address)
        if RAW_REQUESTS:
            ip = str(address.ip)
            attrs: list[tuple[str, Any]] = [("IFA_ADDRESS", ip)]
            if broadcast is not None:
                attrs.append(("IFA_BROADCAST", broadcast))
            if nodad:
                attrs.append(("IFA_FLAGS", IFA_F_NODAD))
            if address.version == 4:
                attrs.append(("IFA_LOCAL", ip))
            fields = {"family": _family(address.version), "prefixlen": address.network.prefixlen, "index": index}
            if scope is not None:
                fields["scope"] = scope
            flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
            self._request(_Request(_message("ifaddrmsg", RTM_NEWADDR, flags, fields, attrs), context, exists_ok))
            return
        kwargs: dict[str, Any] = {}
        if broadcast is not None:
            kwargs["broadcast"] = broadcast
        if scope is not None:
            kwargs["scope"] = scope
        if nodad:
            kwargs["IFA_FLAGS"] = IFA_F_NODAD
        try:
            with translate_errors(context):
                self._ipr.addr(
                    "add", index=index, address=str(address.ip), prefixlen=address.network.prefixlen, **kwargs
                )
        except LinkExists:
            if not exists_ok:
                raise

    def del_address(self, index: int, address: IPInterface) -> None:
        context = self._ctx(f"delete address {address} from link #{index}")
        if RAW_REQUESTS:
            ip = str(address.ip)
            attrs: list[tuple[str, Any]] = [("IFA_ADDRESS", ip)]
            if address.version == 4:
                attrs.append(("IFA_LOCAL", ip))
            fields = {"family": _family(address.version), "prefixlen": address.network.prefixlen, "index": index}
            self._request(
                _Request(_message("ifaddrmsg", RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, fields, attrs), context, False)
            )
            return
        with translate_errors(context):
            self._ipr.addr("del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)

    # ------------------------------------------------------------ routes

    def routes(self, family: int = socket.AF_UNSPEC, *, table: int | None = RT_TABLE_MAIN) -> list[RouteEntry]:
        """The routes of ``table`` (None: of every table)."""
        where: dict[str, Any] = {} if table is None else {"table": table}
        with translate_errors(self._ctx("list routes")):
            msgs = self._dump(lambda: self._ipr.get_routes(family=family, **where))
        out = []
        for m in msgs:
            fam = m["family"]
            if fam not in (socket.AF_INET, socket.AF_INET6):
                continue
            dst = m.get_attr("RTA_DST")
            any_addr = "0.0.0.0" if fam == socket.AF_INET else "::"
            gw = m.get_attr("RTA_GATEWAY")
            src = m.get_attr("RTA_PREFSRC")
            out.append(
                RouteEntry(
                    dst=ipaddress.ip_network(f"{dst or any_addr}/{m['dst_len']}", strict=False),
                    gw=ipaddress.ip_address(gw) if gw else None,
                    oif=m.get_attr("RTA_OIF"),
                    scope=m["scope"],
                    table=m.get_attr("RTA_TABLE") or m["table"],
                    priority=m.get_attr("RTA_PRIORITY"),
                    src=ipaddress.ip_address(src) if src else None,
                    proto=m["proto"],
                    type=m["type"],
                    **_route_metrics(m),
                )
            )
        return out

    def add_route(
        self,
        dst: IPNetwork,
        *,
        gw: IPAddress | None = None,
        oif: int | None = None,
        scope: int | None = None,
        src: IPAddress | None = None,
        table: int | None = None,
        priority: int | None = None,
        mtu: int | None = None,
        advmss: int | None = None,
        replace: bool = False,
        proto: int = RTPROT_BOOT,
        exists_ok: bool = False,
    ) -> None:
        """``ip route add``; protocol ``boot`` as the reference's netlink library sends it
        (pyroute2 would say ``static``), so ``ip route`` shows the same routes for both.
        ``exists_ok``: a route already there is fine."""
        via = f" via {gw}" if gw else ""
        context = self._ctx(f"add route {dst}{via}")
        if RAW_REQUESTS and not mtu and not advmss and (table is None or 0 < table < 256):
            fields: dict[str, Any] = {
                "family": _family(dst.version),
                "dst_len": dst.prefixlen,
                "table": table or RT_TABLE_MAIN,
                "proto": proto,
                "scope": scope or RT_SCOPE_UNIVERSE,
                "type": RTN_UNICAST,
            }
            rattrs: list[tuple[str, Any]] = [("RTA_DST", str(dst.network_address))] if dst.prefixlen else []
            pairs = (("RTA_GATEWAY", gw), ("RTA_OIF", oif), ("RTA_PREFSRC", src), ("RTA_TABLE", table))
            for name, value in (*pairs, ("RTA_PRIORITY", priority)):  # in pyroute2's order
                if value is not None:
                    rattrs.append((name, value if isinstance(value, int) else str(value)))
            flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | (NLM_F_REPLACE if replace else NLM_F_EXCL)
            self._request(_Request(_message("rtmsg", RTM_NEWROUTE, flags, fields, rattrs), context, exists_ok))
            return
        attrs = _route_to(dst, gateway=gw, oif=oif, scope=scope, prefsrc=src, table=table, priority=priority)
        attrs["proto"] = proto
        metrics = {}
        if mtu:
            metrics["RTAX_MTU"] = mtu
        if advmss:
            metrics["RTAX_ADVMSS"] = advmss
        if metrics:
            attrs["metrics"] = metrics
        try:
            with translate_errors(context):
                self._ipr.route("replace" if replace else "add", **attrs)
        except LinkExists:
            if not exists_ok:
                raise

    def del_route(
        self,
        dst: IPNetwork,
        *,
        gw: IPAddress | None = None,
        oif: int | None = None,
        table: int | None = None,
        scope: int = RT_SCOPE_NOWHERE,
        priority: int | None = None,
    ) -> None:
        """Delete a route; ``scope`` NOWHERE matches any scope (pyroute2 would send universe,
        which misses the kernel's link-scope connected routes)."""
        context = self._ctx(f"delete route {dst}")
        if RAW_REQUESTS and (table is None or 0 < table < 256):
            fields: dict[str, Any] = {
                "family": _family(dst.version),
                "dst_len": dst.prefixlen,
                "table": table or RT_TABLE_MAIN,
                "scope": scope,
            }
            rattrs: list[tuple[str, Any]] = [("RTA_DST", str(dst.network_address))] if dst.prefixlen else []
            for name, value in (
                ("RTA_GATEWAY", gw),
                ("RTA_OIF", oif),
                ("RTA_TABLE", table),
                ("RTA_PRIORITY", priority),
            ):
                if value is not None:
                    rattrs.append((name, value if isinstance(value, int) else str(value)))
            message = _message("rtmsg", RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, fields, rattrs)
            self._request(_Request(message, context, exists_ok=False))
            return
        attrs = _route_to(dst, gateway=gw, oif=oif, scope=scope, table=table, priority=priority)
        with translate_errors(context):
            self._ipr.route("del", **attrs)

    # ------------------------------------------------------------ rules

    def rules(self, family: int = socket.AF_UNSPEC) -> list[RuleEntry]:
        with translate_errors(self._ctx("list rules")):
            msgs = self._dump(lambda: self._ipr.get_rules(family=family))
        out = []
        for m in msgs:
            fam = m["family"]
            if fam not in (socket.AF_INET, socket.AF_INET6):
                continue
            src = m.get_attr("FRA_SRC")
            out.append(
                RuleEntry(
                    family=fam,
                    priority=m.get_attr("FRA_PRIORITY") or 0,
                    table=m.get_attr("FRA_TABLE") or m["table"],
                    src=ipaddress.ip_network(f"{src}/{m['src_len']}", strict=False) if src else None,
                    action=m["action"],
                )
            )
        return out

    def add_rule(self, src: IPNetwork, table: int, *, priority: int | None = None) -> None:
        """``ip rule add from <src> lookup <table>``; without ``priority`` the kernel picks one
        (just above the first rule after ``local``), as the reference leaves it to."""
        family = socket.AF_INET if src.version == 4 else socket.AF_INET6
        with translate_errors(self._ctx(f"add rule from {src} lookup {table}")):
            self._ipr.rule(
                "add",
                family=family,
                src=str(src.network_address),
                src_len=src.prefixlen,
                table=table,
                priority=priority,  # None: no FRA_PRIORITY at all
            )

    def del_rule(self, rule: RuleEntry) -> None:
        """Delete exactly ``rule`` (as ``rules`` read it)."""
        attrs: dict[str, Any] = {"family": rule.family, "priority": rule.priority, "table": rule.table}
        if rule.src is not None:
            attrs.update(src=str(rule.src.network_address), src_len=rule.src.prefixlen)
        with translate_errors(self._ctx(f"delete rule {rule.priority}: from {rule.src or 'all'} lookup {rule.table}")):
            self._ipr.rule("del", **attrs)

    # ------------------------------------------------------------ internals

    def _dump(self, fn: Any) -> list[Any]:
        """Run a dump, retrying when the kernel reports it was interrupted (NLM_F_DUMP_INTR)."""
        _lazy_pyroute2()
        from pyroute2.netlink.exceptions import NetlinkDumpInterrupted

        for _ in range(DUMP_RETRIES - 1):
            try:
                return list(fn())
            except NetlinkDumpInterrupted:
                continue
        try:
            return list(fn())
        except NetlinkDumpInterrupted:
            raise TryAgainLater(self._ctx("netlink dump interrupted repeatedly")) from None


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _message(cls: str, kind: int, flags: int, fields: Mapping[str, Any], attrs: list[tuple[str, Any]]) -> bytes:
    """One request, encoded by pyroute2's message class ``cls`` (its sequence number is set
    when it is sent)."""
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    msg = {"ifinfmsg": ifinfmsg, "ifaddrmsg": ifaddrmsg, "rtmsg": rtmsg}[cls]()
    for key, value in fields.items():
        msg[key] = value
    msg["attrs"] = attrs
    msg["header"]["type"] = kind
    msg["header"]["flags"] = flags
    msg.encode()
    return bytes(msg.data)


_VETH_KEYS = frozenset(("peer", "mtu", "address"))
_VETH_PEER_KEYS = frozenset(("ifname", "net_ns_fd", "mtu"))
_MACVLAN_KEYS = frozenset(("link", "macvlan_mode", "net_ns_fd", "mtu", "address"))
_TOP_ATTRS = {"mtu": "IFLA_MTU", "address": "IFLA_ADDRESS", "link": "IFLA_LINK", "net_ns_fd": "IFLA_NET_NS_FD"}


def _new_link_message(name: str, kind: str, attrs: Mapping[str, Any]) -> bytes | None:
    """RTM_NEWLINK for a veth pair or a macvlan as the plugins make them (None: any other,
    left to pyroute2)."""
    top: list[tuple[str, Any]] = [("IFLA_IFNAME", name)]
    for key, value in attrs.items():  # in the caller's order, as pyroute2 sends them
        if key in _TOP_ATTRS:
            top.append((_TOP_ATTRS[key], value))
    if kind == "veth" and set(attrs) <= _VETH_KEYS and isinstance(attrs.get("peer"), dict):
        peer = attrs["peer"]
        if not set(peer) <= _VETH_PEER_KEYS or "ifname" not in peer:
            return None
        peer_attrs: list[tuple[str, Any]] = [("IFLA_IFNAME", peer["ifname"])]
        if "net_ns_fd" in peer:
            peer_attrs.append(("IFLA_NET_NS_FD", peer["net_ns_fd"]))
        if "mtu" in peer:
            peer_attrs.append(("IFLA_MTU", peer["mtu"]))
        data: list[tuple[str, Any]] = [("VETH_INFO_PEER", {"attrs": peer_attrs})]
    elif kind == "macvlan" and set(attrs) <= _MACVLAN_KEYS and "link" in attrs:
        data = [("IFLA_MACVLAN_MODE", attrs["macvlan_mode"])] if "macvlan_mode" in attrs else []
    else:
        return None
    info: list[tuple[str, Any]] = [("IFLA_INFO_KIND", kind)]
    if data:
        info.append(("IFLA_INFO_DATA", {"attrs": data}))
    top.append(("IFLA_LINKINFO", {"attrs": info}))
    flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    return _message("ifinfmsg", RTM_NEWLINK, flags, {}, top)


_BRPORT_ATTRS = {"mode": "IFLA_BRPORT_MODE", "isolated": "IFLA_BRPORT_ISOLATED"}
_SET_LINK_ATTRS = {
    "master": "IFLA_MASTER",
    "mtu": "IFLA_MTU",
    "ifname": "IFLA_IFNAME",
    "address": "IFLA_ADDRESS",
    "txqlen": "IFLA_TXQLEN",
}


def _set_link_message(index: int, attrs: Mapping[str, Any]) -> bytes | None:
    """RTM_NEWLINK setting one of: state up/down, master, MTU, name, MAC, txqueuelen (None:
    anything else, left to pyroute2)."""
    if len(attrs) != 1:
        return None
    ((key, value),) = attrs.items()
    fields: dict[str, Any] = {"index": index}
    nla: list[tuple[str, Any]] = []
    if key == "state" and value in ("up", "down"):
        fields.update(flags=IFF_UP if value == "up" else 0, change=IFF_UP)
    elif key in _SET_LINK_ATTRS and isinstance(value, int | str) and not isinstance(value, bool):
        nla.append((_SET_LINK_ATTRS[key], value))
    else:
        return None
    return _message("ifinfmsg", RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, fields, nla)


def _route_metrics(msg: Any) -> dict[str, int | None]:
    metrics = msg.get_attr("RTA_METRICS")
    if metrics is None:
        return {}
    return {"mtu": metrics.get_attr("RTAX_MTU"), "advmss": metrics.get_attr("RTAX_ADVMSS")}


def _route_to(dst: IPNetwork, **given: int | IPAddress | None) -> dict[str, Any]:
    """A route's attributes: its destination, and those of ``given`` that are not None
    (addresses as text)."""
    attrs: dict[str, Any] = {
        "dst": str(dst.network_address),
        "dst_len": dst.prefixlen,
        "family": socket.AF_INET if dst.version == 4 else socket.AF_INET6,
    }
    for key, value in given.items():
        if value is not None:
            attrs[key] = value if isinstance(value, int) else str(value)
    return attrs


@contextmanager
def host_and_container(netns_path: str) -> Iterator[tuple[Netlink, Netlink, int, int]]:
    """(host, container, host fd, container fd): netlink in this (host) namespace and in the
    container's at ``netns_path``, and fds of both namespaces (for creating links across
    them and entering the container)."""
    ctr_fd = netns.open_netns(netns_path)
    host_fd = netns.current_netns_fd()
    try:
        with Netlink.open(None) as host, Netlink.open(ctr_fd, label=netns_path) as ctr:
            yield host, ctr, host_fd, ctr_fd
    finally:
        os.close(ctr_fd)
        os.close(host_fd)
