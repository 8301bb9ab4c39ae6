"""Who calls the helper: the launcher at the other end of its socket, as the kernel sees it.

The helper does a call only for a caller that could do it itself: the caller must hold, in
the same user namespace as the helper, every capability the helper holds (effective, and in
its bounding set, which is what a program it execs could get back), be root, have no seccomp
filter and the same LSM label, and live in the helper's PID namespace (a worker that joins a
mount namespace whose ``/proc`` belongs to another PID namespace cannot find itself there).
Any other caller is told no before anything is done, and runs the plugin in its own process,
where the kernel decides exactly as for the reference plugin.

Everything is read from ``/proc/<pid>`` of the pid the kernel recorded at ``connect``; the
pidfd it also recorded (``SO_PEERPIDFD``, Linux 6.5+) proves afterwards that this pid was
still that process, not a reused one. On older kernels the process must have started no
later than the connection was accepted.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from dataclasses import dataclass

SO_PEERPIDFD = 77


@dataclass(frozen=True, slots=True)
class Credentials:
    """What decides what a process may do, as far as the helper compares it."""

    uid: int
    cap_eff: int
    cap_bnd: int
    seccomp: int
    userns: str
    pidns: str
    label: bytes | None

    @classmethod
    def of(cls, pid: int | str) -> Credentials:
        """Read from ``/proc/<pid>`` (``"self"`` for this process); OSError if it is gone."""
        fields: dict[str, str] = {}
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh.read().decode("ascii", "replace").splitlines():
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        return cls(
            uid=int(fields["Uid"].split()[1]),  # effective
            cap_eff=int(fields["CapEff"], 16),
            cap_bnd=int(fields["CapBnd"], 16),
            seccomp=int(fields.get("Seccomp", "0")),
            userns=os.readlink(f"/proc/{pid}/ns/user"),
            pidns=os.readlink(f"/proc/{pid}/ns/pid"),
            label=_label(pid),
        )

    def lacks(self, helper: Credentials) -> str:
        """Why this caller may not be served by ``helper``; "" if it may."""
        if self.userns != helper.userns:
            return "the caller is in another user namespace"
        if self.uid != 0:
            return f"the caller is not root (uid {self.uid})"
        missing = helper.cap_eff & ~self.cap_eff
        if missing:
            return f"the caller lacks capabilities the helper holds (CapEff misses {missing:#x})"
        missing = helper.cap_bnd & ~self.cap_bnd
        if missing:
            return f"the caller's bounding set lacks capabilities the helper holds ({missing:#x})"
        if self.seccomp != 0 and self.seccomp != helper.seccomp:
            return "the caller runs under a seccomp filter"
        if self.label != helper.label:
            return "the caller has another LSM label"
        if self.pidns != helper.pidns:
            return "the caller is in another PID namespace"
        return ""


def _label(pid: int | str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/attr/current", "rb") as fh:
            return fh.read().strip(b"\0\n ")
    except OSError:
        return None  # no LSM that reports a label


def refusal(conn: socket.socket, helper: Credentials, accepted_at: float) -> str:
    """Why the peer of ``conn`` may not be served; "" if it may. ``accepted_at``: when the
    connection was accepted, ``time.clock_gettime(CLOCK_BOOTTIME)`` (used without pidfds)."""
    try:
        pid, _uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    except OSError as exc:
        return f"no peer credentials: {exc.strerror}"
    if pid <= 0:
        return "the caller is in a PID namespace the helper cannot see"
    pidfd = -1
    try:
        try:
            pidfd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
        except OSError:
            pidfd = -1  # before Linux 6.5
        try:
            creds = Credentials.of(pid)
            if pidfd >= 0:
                signal.pidfd_send_signal(pidfd, 0)  # still the process that connected
            elif _started_at(pid) > accepted_at:
                return "the caller's pid was reused"
        except (OSError, KeyError, ValueError, IndexError):
            return "the caller is gone"
        return creds.lacks(helper)
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def _started_at(pid: int) -> float:
    """The process's start, in seconds of CLOCK_BOOTTIME."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        after_name = fh.read().rsplit(b")", 1)[1].split()
    return int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in clock ticks


def boottime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)
