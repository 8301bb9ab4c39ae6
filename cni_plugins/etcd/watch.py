"""A watch on a key prefix over the gateway: ``POST /v3/watch`` answers with a chunked stream,
one JSON message per chunk (``{"result": {"events": [...]}}``), for as long as the
connection lives. One watch per connection (HTTP/1.1 cannot add requests to a stream).

A watch ends with ``Unavailable`` when etcd goes away (its last message is an error with
gRPC code 14, or the connection just closes) and with ``Compacted`` when the revision it was
asked to start from has been compacted: either way the caller reads the prefix again and
watches from that read's revision + 1, so no change is missed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from cni_plugins.etcd.client import (
    KV,
    Conn,
    EtcdError,
    Options,
    Unavailable,
    b64,
    decode_answer,
    kv_of,
)


class Compacted(EtcdError):
    """The start revision is gone from etcd's history; ``revision`` is the oldest one left."""

    def __init__(self, msg: str, revision: int) -> None:
        super().__init__(msg)
        self.revision = revision


@dataclass(frozen=True, slots=True)
class Event:
    deleted: bool
    kv: KV  # for a delete: the key and the revision it was deleted at


class Watch:
    """Events on [key, end) from ``start_revision`` on. Not thread-safe; ``close`` when done."""

    def __init__(self, options: Options, key: bytes, end: bytes, start_revision: int) -> None:
        self.options = options
        self.revision = start_revision - 1  # the last revision whose events were delivered
        deadline = time.monotonic() + options.timeout
        problems = []
        self._conn: Conn | None = None
        for endpoint in options.endpoints:
            try:
                self._conn = Conn.open(options, endpoint, deadline)
                break
            except OSError as exc:
                problems.append(f"{endpoint}: {exc.strerror or exc}")
        if self._conn is None:
            raise Unavailable("; ".join(problems) or "no endpoint")
        request = {"key": b64(key), "range_end": b64(end), "start_revision": str(start_revision)}
        try:
            self._conn.send("/v3/watch", json.dumps({"create_request": request}).encode(), deadline)
            status, headers = self._conn.read_head(deadline)
            if status != 200 or "chunked" not in headers.get("transfer-encoding", ""):
                body = self._conn.read_body(headers, deadline)
                decode_answer(self._conn.endpoint, status, body)
                raise EtcdError(f"{self._conn.endpoint}: watch: HTTP {status} without a stream")
            while not self._take(self._message(deadline)).get("created"):
                pass
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _message(self, deadline: float) -> dict[str, object]:
        assert self._conn is not None
        try:
            chunk = self._conn.read_chunk(deadline)
        except OSError as exc:
            raise Unavailable(f"{self._conn.endpoint}: watch: {exc.strerror or exc or 'connection lost'}") from None
        if chunk is None:
            raise Unavailable(f"{self._conn.endpoint}: watch: the stream ended")
        answer = decode_answer(self._conn.endpoint, 200, chunk)
        result = answer.get("result", {})
        return result if isinstance(result, dict) else {}

    def _take(self, result: dict[str, object]) -> dict[str, object]:
        if result.get("canceled"):
            compact = int(str(result.get("compact_revision", 0)))
            raise Compacted(f"watch canceled at revision {self.revision + 1} (compacted up to {compact})", compact)
        return result

    def next(self, timeout: float) -> list[Event] | None:
        """The events of the next message, waiting at most ``timeout`` seconds (None: nothing
        came). An empty list is a progress message."""
        if self._conn is None:
            raise Unavailable("watch closed")
        if not self._conn.readable(timeout):
            return None
        try:  # a message has begun: the rest of it follows at once
            result = self._take(self._message(time.monotonic() + self.options.timeout))
        except EtcdError:
            self.close()  # a watch that ended is of no further use
            raise
        events = []
        raw_events = result.get("events", ())
        for raw in raw_events if isinstance(raw_events, list) else ():
            kv = kv_of(raw.get("kv", {}))
            events.append(Event(deleted=raw.get("type") == "DELETE", kv=kv))
            self.revision = max(self.revision, kv.mod_revision)
        header = result.get("header")
        if isinstance(header, dict) and not events:
            self.revision = max(self.revision, int(str(header.get("revision", 0))))
        return events
