"""The daemon's RPC methods over its table of leases, one per attachment (client identifier).

The reference's methods, with the fixes its v1.1.1 daemon needed:

- ``DHCP.Allocate``: the lease of the attachment, acquired once. An ADD repeated for the
  interface the lease lives on, or a CHECK by the reference's plugin (which calls Allocate),
  gets the same lease back without any DHCP traffic; an ADD for a new interface under the
  same identifier (the container's namespace was made again) replaces it.
- ``DHCP.Release``: stops the lease (an acquisition in progress too, without waiting for
  its retries) and sends a DHCPRELEASE, on the link if it is still there, else routed from
  this host; success when there is no lease.

and ours, which the reference's daemon answers with "can't find method" (our plugin then
does what the reference's plugin does):

- ``DHCP.Check``: the lease held, with no traffic; an error when there is none.
- ``DHCP.GC``: releases the leases of the network that ``cni.dev/valid-attachments`` omits.
- ``DHCP.Status``: what ``cni-plugins dhcp status`` shows.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from cni_plugins.dhcpd.client import Request
from cni_plugins.dhcpd.lease import Attachment, Lease, Settings
from cni_plugins.spec.errors import CNIError, DecodingFailure, InvalidNetworkConfig
from cni_plugins.spec.types import Result
from conf import gojson
from ipam import dhcp_conf

log = logging.getLogger("cni-dhcp")


class Service:
    def __init__(self, settings: Settings, host_prefix: str = "") -> None:
        self.settings = settings
        self.host_prefix = host_prefix
        self.started = time.time()
        self._lock = threading.Lock()
        self._leases: dict[str, Lease] = {}
        self.calls = 0

    # ------------------------------------------------------------ reading a call

    @staticmethod
    def _config(args: Mapping[str, Any]) -> dict[str, Any]:
        try:
            conf = gojson.loads(args.get("StdinData") or b"")
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodingFailure(f"error parsing netconf: {exc}") from None
        if not isinstance(conf, dict):
            raise DecodingFailure("error parsing netconf: not a JSON object")
        return conf

    def _attachment(self, args: Mapping[str, Any], conf: Mapping[str, Any]) -> Attachment:
        network = conf.get("name")
        if not isinstance(network, str):
            raise DecodingFailure("error parsing netconf: name: expected a string")
        container_id, ifname = str(args.get("ContainerID", "")), str(args.get("IfName", ""))
        return Attachment(
            key=dhcp_conf.client_id(container_id, network, ifname),
            network=network,
            container_id=container_id,
            ifname=ifname,
            netns=self.host_prefix + str(args.get("Netns", "")),
        )

    # ------------------------------------------------------------ methods

    def allocate(self, args: Mapping[str, Any]) -> Result:
        conf = self._config(args)
        ipam = conf.get("ipam")
        if not isinstance(ipam, dict):
            raise InvalidNetworkConfig("IPAM config missing 'ipam' key")
        options = dhcp_conf.parse(ipam, str(args.get("Args", "")))
        attachment = self._attachment(args, conf)
        request = Request(
            client_id=attachment.key,
            provide=options.provide,
            parameters=options.request,
            broadcast=self.settings.broadcast,
        )
        with self._lock:
            lease = self._leases.get(attachment.key)
            replaced = None
            if (
                lease is not None
                and lease.state != "acquiring"
                and (lease.state in ("expired", "gone", "failed") or not lease.same_place(attachment))
            ):
                replaced, lease = lease, None
            owner = lease is None
            if lease is None:
                lease = self._leases[attachment.key] = Lease(attachment, request, options.priority, self.settings)
        if replaced is not None:
            log.info(f"{attachment.key}: a new interface for this client identifier: the old lease is dropped")
            replaced.stop()
        if owner:
            try:
                lease.acquire()
            except CNIError:
                self._forget(lease)
                raise
        else:
            lease.wait_acquired(self.settings.resend_timeout + 2 * self.settings.timeout)
            log.info(f"{attachment.key}: lease held already: {lease.describe().get('address', '')}")
        return lease.result()

    def check(self, args: Mapping[str, Any]) -> Result:
        attachment = self._attachment(args, self._config(args))
        with self._lock:
            lease = self._leases.get(attachment.key)
        if lease is None or lease.grant is None:
            raise CNIError(f"no DHCP lease is held for {attachment.key}", "ADD the attachment again")
        if lease.state in ("expired", "gone", "failed"):
            raise CNIError(f"the DHCP lease of {attachment.key} is {lease.state}", "ADD the attachment again")
        return lease.result()

    def release(self, args: Mapping[str, Any]) -> None:
        attachment = self._attachment(args, self._config(args))
        with self._lock:
            lease = self._leases.pop(attachment.key, None)
        if lease is None:
            log.info(f"{attachment.key}: release: no lease held")
            return
        self._end(lease)

    def gc(self, args: Mapping[str, Any]) -> None:
        conf = self._config(args)
        network = conf.get("name")
        valid = conf.get("cni.dev/valid-attachments")
        if not isinstance(network, str) or not isinstance(valid, list):
            raise InvalidNetworkConfig("GC needs the network name and cni.dev/valid-attachments")
        keep = {
            dhcp_conf.client_id(str(v.get("containerID", "")), network, str(v.get("ifname", "")))
            for v in valid
            if isinstance(v, dict)
        }
        with self._lock:
            stale = [
                key for key, lease in self._leases.items() if lease.attachment.network == network and key not in keep
            ]
            leases = [self._leases.pop(key) for key in stale]
        for lease in leases:
            log.info(f"{lease.key}: GC: not a valid attachment of {network}")
            self._end(lease)

    def status(self) -> dict[str, Any]:
        with self._lock:
            leases = list(self._leases.values())
        return {
            "pid": os.getpid(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
            "calls": self.calls,
            "leases": [lease.describe() for lease in sorted(leases, key=lambda x: x.key)],
        }

    def shutdown(self) -> None:
        """Stop every lease's thread; the leases are not released (their containers keep using them)."""
        with self._lock:
            leases = list(self._leases.values())
            self._leases.clear()
        for lease in leases:
            lease.stop(timeout=2.0)

    # ------------------------------------------------------------ helpers

    def _forget(self, lease: Lease) -> None:
        with self._lock:
            if self._leases.get(lease.key) is lease:
                del self._leases[lease.key]

    @staticmethod
    def _end(lease: Lease) -> None:
        lease.stop()
        lease.release()
