"""The warm helper's wire protocol, defined once for both ends: the launcher
(``client.py``) sends, the pool manager (``server.py``) and its workers (``worker.py``)
answer. Builtins only: the launcher imports this module on every call.

One call is one ``SOCK_SEQPACKET`` connection to ``socket_path(run dir, install id)``::

    manager  -> launcher  ACCEPTED, or REFUSED + why (nothing was done: the launcher runs the plugin itself)
    launcher -> worker    encode_request(...), with the caller's FDS as SCM_RIGHTS, in that order
    worker   -> launcher  REFUSED + why, or VERSION_TAG + the cniVersion an error of the call is
                          reported in; then the plugin's exit status in decimal

A helper started by a launcher writes READY on the pipe it was given once it listens.
docs/helper.md shows a call from exec to reply.
"""

from __future__ import annotations

PROTOCOL = b"cni-py-helper/2"
ACCEPTED = b"A"  # a worker took the call: send the request
REFUSED = b"N"  # + why: nothing was done, run the plugin here
VERSION_TAG = b"V"  # + the cniVersion an error of this call is reported in
READY = b"R"  # a helper started by a launcher, on its pipe, once it listens
READY_WAIT = 3.0  # seconds a launcher waits for READY; a helper is ready in ~0.25 s here
ACCEPT_WAIT = 1.0  # seconds for a worker to take the call (a ready worker takes it at once)
FDS = ("stdin", "stdout", "stderr", "netns", "mntns", "cwd")  # what a request carries, in this order
MAX_MESSAGE = 1 << 20
# Capabilities (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_SYS_CHROOT) a process needs to start a
# helper, and a helper to serve anyone.
HELPER_NEEDS = (1 << 12) | (1 << 21) | (1 << 18)


def socket_path(run_dir: str, install: str) -> str:
    """An install's helper socket."""
    return f"{run_dir.rstrip('/')}/helper-{install}.sock"


def encode_request(install: str, plugin_type: str, umask: int, run_dir: str, environ: list[bytes]) -> bytes:
    """The request: who (install), what (plugin type) and the caller's umask, run dir and
    environment (``KEY=VALUE`` items)."""
    return b"\0".join(
        [PROTOCOL, install.encode(), plugin_type.encode(), str(umask).encode(), run_dir.encode(), *environ]
    )


def decode_request(data: bytes) -> tuple[str, str, int, str, dict[str, str]]:
    """(install, plugin type, umask, run dir, environment) of a request; ValueError if it is
    not one of this protocol."""
    parts = data.split(b"\0")
    if len(parts) < 5 or parts[0] != PROTOCOL:
        raise ValueError("not a request of this helper's protocol")
    env = {}
    for item in parts[5:]:
        key, sep, value = item.decode("utf-8", "surrogateescape").partition("=")
        if sep:
            env[key] = value
    return (
        parts[1].decode("utf-8", "replace"),
        parts[2].decode("utf-8", "replace"),
        int(parts[3]),
        parts[4].decode("utf-8", "surrogateescape"),
        env,
    )


def declared_version(data: bytes, versions: tuple[str, ...]) -> str:
    """The config's cniVersion if it is one of ``versions``, else the newest of them, found
    without a JSON parser (only ever one of our own constants is returned)."""
    asked = versions[-1] if versions else "1.1.0"
    at = data.find(b'"cniVersion"')
    if at >= 0:
        rest = data[at + len(b'"cniVersion"') :].lstrip()
        if rest.startswith(b":"):
            rest = rest[1:].lstrip()
            if rest.startswith(b'"'):
                value = rest[1:].split(b'"', 1)[0].decode("ascii", "replace")
                if value in versions:
                    asked = value
    return asked
