"""One attachment's lease: acquired when the plugin asks, kept alive by a thread of its own
until the plugin releases it.

Life of a lease (RFC 2131 4.4.5):

    acquiring ──ACK──▶ bound ──T1──▶ renewing (REQUEST to the server) ──T2──▶ rebinding (REQUEST to all)
        │                ▲                │ ACK                                   │ ACK        │ lease time
        ▼                └────────────────┴───────────────────────────────────────┘            ▼
      failed                                                                     expired: the link is set down

Every attempt of a renewal is spaced by half the time left to the next edge (at least 1 s,
at most 60 s), so a server that does not answer is never asked in a loop. Before each
attempt the thread checks that the namespace at the path is still the one the lease was
acquired in and still has the link (same index): if not, the lease's thread ends there
("gone") and the lease waits for its release. ``stop()`` ends the thread (or an
acquisition in progress) within ``client.POLL_S``.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from cni_plugins.dhcpd import client, packet
from cni_plugins.dhcpd.client import Channel, NoAnswer, Request, Stopped
from cni_plugins.dhcpd.packet import Grant, Message
from cni_plugins.spec.errors import CNIError, InternalError, InvalidNetNS, TryAgainLater
from cni_plugins.spec.types import IPConfig, Result, Route

log = logging.getLogger("cni-dhcp")

RESEND_FAST_DELAY, RESEND_FAST_COUNT, RESEND_DELAY0 = 2.0, 4, 4.0  # the reference's schedule
RENEW_MIN_S, RENEW_MAX_S = 1.0, 60.0
SCOPE_LINK = 253


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    timeout: float = 10.0  # how long one attempt waits for each answer
    resend_max: float = 62.0  # the longest pause between attempts
    resend_timeout: float = 208.0  # an acquisition gives up after this long
    broadcast: bool = False


class LinkGone(CNIError):
    """The interface (or its namespace) is not there."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Attachment:
    key: str  # the client identifier: container ID/network/interface
    network: str
    container_id: str
    ifname: str
    netns: str  # the path the daemon opens (host prefix included)


class Lease:
    def __init__(self, attachment: Attachment, request: Request, priority: int, settings: Settings) -> None:
        self.attachment = attachment
        self.request = request
        self.priority = priority
        self.settings = settings
        self.state = "acquiring"
        self.grant: Grant | None = None
        self.mac = b""
        self.ifindex = 0
        self.namespace: tuple[int, int] | None = None
        self.bound_at = 0.0  # monotonic time of the last ACK
        self.expires_wall = 0.0
        self.renewals = 0
        self.exchanges = 0  # DHCP exchanges started for this lease (acquisitions and renewals)
        self.error: CNIError | None = None
        self._stop = threading.Event()
        self._settled = threading.Event()  # the acquisition is over, one way or the other
        self._thread: threading.Thread | None = None

    @property
    def key(self) -> str:
        return self.attachment.key

    def same_place(self, attachment: Attachment) -> bool:
        """Whether a new ADD for this key names the interface this lease lives on."""
        a = self.attachment
        return (
            a.netns == attachment.netns
            and a.ifname == attachment.ifname
            and self.namespace is not None
            and client.namespace_id(attachment.netns) == self.namespace
            and self._link_index() == self.ifindex
        )

    # ------------------------------------------------------------ acquiring

    def acquire(self) -> None:
        """Get a lease (in the calling thread), then keep it in a thread of its own."""
        try:
            self._acquire()
        except Stopped:
            self.error = TryAgainLater(f"{self.key}: the lease was released while it was being acquired")
        except CNIError as err:
            self.error = err
        except Exception as exc:
            log.exception(f"{self.key}: acquiring a lease failed")
            self.error = InternalError(f"{self.key}: acquiring a lease failed: {exc}")
        if self.error is not None:
            self.state = "failed"
            self._settled.set()
            raise self.error
        self._thread = threading.Thread(target=self._maintain, name=f"lease {self.key}", daemon=True)
        self._thread.start()
        self._settled.set()

    def wait_acquired(self, timeout: float) -> None:
        """For a second ADD of the same attachment while the first is acquiring."""
        if not self._settled.wait(timeout):
            raise TryAgainLater(f"{self.key}: the lease is still being acquired", "try again in a few seconds")
        if self.error is not None:
            raise self.error

    def _acquire(self) -> None:
        a, settings = self.attachment, self.settings
        log.info(f"{self.key}: acquiring lease")
        self.namespace = client.namespace_id(a.netns)
        if self.namespace is None:
            raise InvalidNetNS(f"failed to open netns {a.netns!r}: no such file or directory", "check CNI_NETNS")
        self._bring_up()
        start = time.monotonic()
        deadline = start + settings.resend_timeout
        fast, delay0, attempts = RESEND_FAST_COUNT, RESEND_DELAY0, 0
        while True:
            attempts += 1
            self.exchanges += 1
            wait = max(0.1, min(settings.timeout, deadline - time.monotonic()))
            try:
                with Channel(a.netns, a.ifname) as chan:
                    self.mac = chan.mac
                    ack = client.acquire(chan, self.request, wait, self._stop)
                self._commit(ack, time.monotonic())
                log.info(
                    f"{self.key}: lease acquired: {self.grant.address if self.grant else ''}, {self._expiry_text()}"
                )
                return
            except (NoAnswer, OSError, ValueError) as exc:
                last = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if fast:
                pause = RESEND_FAST_DELAY + random.uniform(-1.0, 1.0)
                fast -= 1
            else:
                pause = min(delay0, settings.resend_max) + random.uniform(-1.0, 1.0)
                delay0 *= 2
            if time.monotonic() + pause >= deadline:
                raise TryAgainLater(
                    f"no DHCP lease for {a.ifname} in {a.netns} after {attempts} attempts in "
                    f"{time.monotonic() - start:.0f}s: {last}",
                    "check that a DHCP server answers on the interface's network",
                )
            log.info(f"{self.key}: {last}; retrying in {pause:.1f}s")
            if self._stop.wait(pause):
                raise Stopped()

    def _bring_up(self) -> None:
        from cni_plugins.kernel.netlink import Netlink

        a = self.attachment
        with Netlink.open(a.netns) as nl:
            link = nl.link(a.ifname)
            if link is None:
                raise LinkGone(f'error looking up "{a.ifname}" in {a.netns}: Link not found', "check CNI_IFNAME")
            self.ifindex = link.index
            if not link.is_up:
                log.info(f"{self.key}: link {a.ifname!r} down; setting it up")
                nl.set_link(link.index, state="up")

    def _commit(self, ack: Message, now: float) -> None:
        grant = packet.grant(ack)
        if self.grant is not None and grant.address.ip != self.grant.address.ip:
            log.warning(
                f"{self.key}: the server now grants {grant.address}, not {self.grant.address}: keeping the latter"
            )
            grant = dataclasses.replace(grant, address=self.grant.address)
        self.grant = grant
        self.bound_at = now
        self.expires_wall = time.time() + grant.lease_time
        self.state = "bound"

    def _expiry_text(self) -> str:
        return "expires " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.expires_wall))

    # ------------------------------------------------------------ keeping it

    def _edges(self) -> tuple[float, float, float]:
        assert self.grant is not None
        g = self.grant
        return self.bound_at + g.renewal_time, self.bound_at + g.rebinding_time, self.bound_at + g.lease_time

    def _link_index(self) -> int:
        """The index of the lease's link in its namespace, 0 if either is gone."""
        from cni_plugins.kernel.netlink import Netlink

        a = self.attachment
        if client.namespace_id(a.netns) != self.namespace:
            return 0
        try:
            with Netlink.open(a.netns) as nl:
                link = nl.link(a.ifname)
        except CNIError:
            return 0
        return link.index if link is not None else 0

    def _maintain(self) -> None:
        try:
            while True:
                renew_at, rebind_at, expire_at = self._edges()
                if self._stop.wait(max(0.0, renew_at - time.monotonic())):
                    return
                self._renew_until_bound(rebind_at, expire_at)
                if self.state != "bound":
                    return
        except Stopped:
            return
        except Exception:
            log.exception(f"{self.key}: lease maintenance failed")
            self.state = "failed"

    def _renew_until_bound(self, rebind_at: float, expire_at: float) -> None:
        a = self.attachment
        assert self.grant is not None
        while True:
            now = time.monotonic()
            if self._link_index() != self.ifindex:
                self.state = "gone"
                log.info(f"{self.key}: {a.ifname} in {a.netns} is gone: lease maintenance ends")
                return
            if now >= expire_at:
                self.state = "expired"
                log.info(f"{self.key}: lease expired, bringing interface DOWN")
                self._set_down()
                return
            rebinding = now >= rebind_at
            self.state = "rebinding" if rebinding else "renewing"
            self.exchanges += 1
            wait = min(self.settings.timeout, max(0.1, expire_at - now))
            try:
                with Channel(a.netns, a.ifname) as chan:
                    ack = client.renew(
                        chan,
                        self.request,
                        self.grant.address.ip,
                        None if rebinding else self.grant.server,
                        wait,
                        self._stop,
                    )
                self._commit(ack, time.monotonic())
                self.renewals += 1
                log.info(f"{self.key}: lease {'rebound' if rebinding else 'renewed'}, {self._expiry_text()}")
                return
            except (NoAnswer, OSError, ValueError, CNIError) as exc:
                log.info(f"{self.key}: {self.state}: {exc}")
            edge = expire_at if rebinding or time.monotonic() >= rebind_at else rebind_at
            pause = min(RENEW_MAX_S, max(RENEW_MIN_S, (edge - time.monotonic()) / 2))
            if self._stop.wait(pause):
                raise Stopped()

    def _set_down(self) -> None:
        from cni_plugins.kernel.netlink import Netlink

        try:
            with Netlink.open(self.attachment.netns) as nl:
                nl.set_link(self.ifindex, state="down")
        except CNIError as err:
            log.warning(f"{self.key}: failed to bring {self.attachment.ifname} DOWN: {err.msg}")

    # ------------------------------------------------------------ ending it

    def stop(self, timeout: float = 5.0) -> None:
        """End the acquisition or the maintenance thread (no message is sent)."""
        self._stop.set()
        self._settled.wait(timeout)
        if self._thread is not None:
            self._thread.join(timeout)

    def release(self) -> str:
        """Send a DHCPRELEASE: on the link if it is still there, else routed from this host.
        Returns how it was sent ('' if there was nothing to release)."""
        g = self.grant
        if g is None or self.state == "expired":
            return ""
        a = self.attachment
        message = client.release_message(self.request, self.mac, g.address.ip, g.server)
        try:
            if self._link_index() == self.ifindex:
                with Channel(a.netns, a.ifname) as chan:
                    client.release_on_link(chan, message, g.address.ip, g.server)
                how = f"on {a.ifname}"
            else:
                client.release_routed(message, g.server)
                how = f"to {g.server} from the host ({a.ifname} is gone)"
        except (OSError, CNIError) as exc:
            log.warning(
                f"{self.key}: could not send DHCPRELEASE for {g.address.ip}: {exc}; "
                "the server frees the address when the lease expires"
            )
            return ""
        log.info(f"{self.key}: released {g.address.ip} {how}")
        return how

    # ------------------------------------------------------------ what the plugin gets

    def result(self) -> Result:
        g = self.grant
        if g is None:
            raise InternalError(f"{self.key}: no lease")
        priority = self.priority or None
        routes: list[Route] = []
        if g.classless_routes:  # RFC 3442: option 121 replaces option 33 and the routers
            for dst, router in g.classless_routes:
                on_link = router == IPv4Address(0)
                routes.append(
                    Route(
                        dst=dst,
                        gw=None if on_link else router,
                        scope=SCOPE_LINK if on_link else None,
                        priority=priority,
                    )
                )
        else:
            routes += [Route(dst=dst, gw=router, priority=priority) for dst, router in g.static_routes]
            if g.routers:
                routes.append(Route(dst=IPv4Network("0.0.0.0/0"), gw=g.routers[0], priority=priority))
        return Result(
            ips=(IPConfig(address=g.address, gateway=g.routers[0] if g.routers else None),), routes=tuple(routes)
        )

    def describe(self) -> dict[str, Any]:
        a, g = self.attachment, self.grant
        out: dict[str, Any] = {
            "clientID": a.key,
            "network": a.network,
            "containerID": a.container_id,
            "ifname": a.ifname,
            "netns": a.netns,
            "state": self.state,
            "renewals": self.renewals,
            "exchanges": self.exchanges,
        }
        if g is not None:
            renew_at, _, expire_at = self._edges()
            now = time.monotonic()
            out |= {
                "address": str(g.address),
                "server": str(g.server),
                "leaseTime": g.lease_time,
                "renewIn": round(max(0.0, renew_at - now), 1),
                "expiresIn": round(max(0.0, expire_at - now), 1),
            }
        if self.error is not None:
            out["error"] = self.error.msg
        return out
