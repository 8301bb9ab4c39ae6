"""The one place that talks to nftables: a batch of libnftables JSON commands, applied as
one kernel transaction, and reads of our own tables.

``LibNftables`` is the only caller of the ``nftables`` binding; its context is created with
it, in the network namespace the calling thread is in at that moment (libnftables opens
its netlink socket in ``nft_ctx_new``), so callers create it where they mean to act
(it costs ~0.1 ms: create one per piece of work rather than carry one around).
tests/fakes/nft.py implements the same ``NftBackend`` protocol in memory for unit tests.

Never is a command string built: every command is a JSON object.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from cni_plugins.spec.errors import CNIError

Command = dict[str, Any]

# Contexts kept open until the process exits (``keep_open_until_exit``): freeing a context
# closes its netlink socket, which waits for a kernel RCU grace period (~15 ms) after a
# transaction that deleted or replaced something. The warm helper's workers let go of the
# caller first and exit afterwards, so the wait happens after the reply.
_KEPT: list[Any] | None = None


def keep_open_until_exit() -> None:
    """From now on no context is freed before the process exits (for short-lived workers)."""
    global _KEPT
    if _KEPT is None:
        _KEPT = []


def release_kept() -> None:
    """Free the contexts kept so far (a reused worker, after its reply)."""
    if _KEPT:
        _KEPT.clear()


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
        import nftables

        ctx = nftables.Nftables()
        ctx.set_json_output(True)
        ctx.set_handle_output(True)
        self._ctx = ctx
        if _KEPT is not None:
            _KEPT.append(ctx)

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
