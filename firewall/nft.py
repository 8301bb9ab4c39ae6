"""The one place that talks to nftables: a batch of libnftables JSON commands, applied as
one kernel transaction, and reads of our own tables.

``LibNftables`` is the only caller of the ``nftables`` binding; its context acts in the
network namespace the calling thread is in when it is made (libnftables opens its netlink
socket in ``nft_ctx_new``), so callers make it where they mean to act, one per piece of
work rather than carried around.
tests/fakes/nft.py implements the same ``NftBackend`` protocol in memory for unit tests.

Never is a command string built: every command is a JSON object.
"""

from __future__ import annotations

import json
import os
from typing import Any, Protocol

from cni_plugins.spec.errors import CNIError

Command = dict[str, Any]

# Freeing a context closes its netlink socket, and the kernel's release of an nftables
# socket waits for the frees queued by recent transactions (an RCU grace period, 10-15 ms
# here) while it holds that network namespace's commit lock: every transaction there, such
# as the next plugin's of the same chain, waits as long. So a helper's worker keeps one
# context per network namespace across its calls (``share_per_namespace``) and frees them
# only once it has been idle a while (``close_shared``). A context reused this way is the
# pattern of firewalld's long-lived one: libnftables refreshes its cache whenever the
# ruleset's generation changed.
_SHARED: dict[tuple[int, int], Any] | None = None
SHARED_MAX = 8  # namespaces; past that the least recently used context is freed


def share_per_namespace() -> None:
    """From now on contexts are kept, one per network namespace, until ``close_shared``."""
    global _SHARED
    if _SHARED is None:
        _SHARED = {}


def shared_count() -> int:
    return len(_SHARED) if _SHARED else 0


def close_shared() -> None:
    """Free the kept contexts (a worker that has been idle: its namespaces are let go too)."""
    while _SHARED:
        _SHARED.popitem()


def _new_context() -> Any:
    import nftables

    ctx = nftables.Nftables()
    ctx.set_json_output(True)
    ctx.set_handle_output(True)
    return ctx


def _context() -> Any:
    """A fresh context, or this network namespace's kept one when contexts are shared."""
    if _SHARED is None:
        return _new_context()
    st = os.stat("/proc/thread-self/ns/net")
    key = (st.st_dev, st.st_ino)  # a kept socket holds its namespace: the inode is not reused meanwhile
    ctx = _SHARED.pop(key, None) or _new_context()
    _SHARED[key] = ctx  # the most recently used last
    while len(_SHARED) > SHARED_MAX:
        del _SHARED[next(iter(_SHARED))]
    return ctx


EEXIST, ENOENT, EBUSY, OTHER = "exists", "missing", "busy", "other"


class NftError(CNIError):
    """libnftables refused a batch; ``kind`` says why when the kernel said so."""

    code = 999

    def __init__(self, msg: str, details: str = "", kind: str = OTHER) -> None:
        super().__init__(msg, details)
        self.kind = kind


def classify(stderr: str) -> str:
    if "File exists" in stderr:
        return EEXIST
    if "No such file or directory" in stderr:
        return ENOENT
    if "Device or resource busy" in stderr:
        return EBUSY
    return OTHER


class NftBackend(Protocol):
    def run(self, commands: list[Command], *, what: str) -> None:
        """Apply ``commands`` in one transaction: all of them or none (raises NftError)."""

    def list_table(self, family: str, table: str) -> list[Command]:
        """Every object of one table (``[]`` when the table does not exist). Not for hot paths."""

    def list_map(self, family: str, table: str, name: str) -> list[Any]:
        """The elements of one set or map (``[]`` when missing). Not for hot paths."""

    def list_chain(self, family: str, table: str, chain: str) -> list[Command] | None:
        """The rules of one chain (each ``{"rule": {...}}`` with its handle), or None when the
        table or chain does not exist. For small chains (a host's FORWARD), not for ours."""


class LibNftables:
    """nftables through its Python binding (Debian's python3-nftables)."""

    def __init__(self) -> None:
        self._ctx = _context()

    def run(self, commands: list[Command], *, what: str) -> None:
        if not commands:
            return
        rc, _, err = self._ctx.json_cmd({"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]})
        if rc != 0:
            text = " ".join(line.strip() for line in str(err).splitlines() if line.strip() and "^" not in line)
            raise NftError(
                f"{what}: nftables refused the change: {text}",
                f"{len(commands)} commands, none applied",
                classify(str(err)),
            )

    def _list(self, obj: Command) -> list[Command]:
        rc, out, err = self._ctx.json_cmd({"nftables": [{"list": obj}]})
        if rc != 0:
            if classify(str(err)) == ENOENT:
                return []
            raise NftError(f"list {json.dumps(obj)}: {str(err).strip()}")
        items = out.get("nftables", []) if isinstance(out, dict) else []
        return [i for i in items if "metainfo" not in i]

    def list_table(self, family: str, table: str) -> list[Command]:
        return self._list({"table": {"family": family, "name": table}})

    def list_map(self, family: str, table: str, name: str) -> list[Any]:
        for kind in ("map", "set"):
            for item in self._list({kind: {"family": family, "table": table, "name": name}}):
                if kind in item:
                    return list(item[kind].get("elem", []))
        return []

    def list_chain(self, family: str, table: str, chain: str) -> list[Command] | None:
        items = self._list({"chain": {"family": family, "table": table, "name": chain}})
        if not any("chain" in i for i in items):
            return None
        return [i for i in items if "rule" in i]
