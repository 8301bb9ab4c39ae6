"""One TCP transfer between two namespaces, measured at the receiver.

The receiver counts what it reads after ``warmup`` seconds (slow start and the shaper's
burst are over by then) for ``window`` seconds, then closes, which stops the sender. The
rate is TCP payload: with 1500-byte frames it is ~4.5% below what a shaper counts (Ethernet,
IP and TCP headers).
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.integration.nsutil import sh

RECEIVER = """
import json, socket, sys, time
addr, port, warmup, window = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((addr, port))
s.listen(1)
s.settimeout(10)
print("ready", flush=True)
c, _ = s.accept()
c.settimeout(10)
buf = bytearray(1 << 16)
total, start, mark = 0, time.monotonic(), None
while True:
    n = c.recv_into(buf)
    if not n:
        break
    total += n
    now = time.monotonic() - start
    if mark is None and now >= warmup:
        mark = (now, total)
    if now >= warmup + window:
        break
end = (time.monotonic() - start, total)
c.close()
rate = (end[1] - mark[1]) * 8 / (end[0] - mark[0]) if mark and end[0] > mark[0] else 0.0
print(json.dumps({"bits_per_s": rate, "seconds": end[0]}), flush=True)
"""

SENDER = """
import socket, sys
addr, port, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
s.settimeout(10)
if source:
    s.bind((source, 0))
s.connect((addr, port))
data = b"x" * (1 << 16)
try:
    while True:
        s.sendall(data)
except OSError:
    pass  # the receiver closed: done
"""


def tcp_rate(
    receiver_ns: str,
    sender_ns: str,
    address: str,
    *,
    source: str = "",
    port: int = 5201,
    warmup: float = 0.5,
    window: float = 1.5,
) -> float:
    """Bits/s of TCP payload from ``sender_ns`` (bound to ``source`` if given) to ``address``
    in ``receiver_ns``."""
    rx = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            receiver_ns,
            sys.executable,
            "-c",
            RECEIVER,
            address,
            str(port),
            str(warmup),
            str(window),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert rx.stdout is not None
        assert rx.stdout.readline().strip() == "ready", rx.stderr.read() if rx.stderr else ""
        sh(sys.executable, "-c", SENDER, address, str(port), source, ns=sender_ns, timeout=warmup + window + 20)
        out, err = rx.communicate(timeout=20)
    finally:
        if rx.poll() is None:
            rx.kill()
            rx.wait()
    assert rx.returncode == 0, err
    rate: float = json.loads(out)["bits_per_s"]
    return rate
