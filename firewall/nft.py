"""The one place that talks to nftables: a batch of libnftables JSON commands, applied as
one kernel transaction, and reads of our own tables.

``LibNftables`` is the only caller of the ``nftables`` binding; its context is created with
it, in the network namespace the calling thread is in at that moment (libnftables opens
its netlink socket in ``nft_ctx_new``), so callers create it where they mean to act
(it costs ~0.1 ms: create one per piece of work rather than carry one around).
``FakeNft`` implements the same ``NftBackend`` protocol in memory for unit tests: it
models tables, chains, rules and set/map elements with the kernel's EEXIST/ENOENT rules
for elements, which is what the ownership logic in ``firewall.owned`` depends on.

Never is a command string built: every command is a JSON object.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
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
            raise NftError(f"{what}: nftables refused the change: {text}", f"{len(commands)} commands, none applied", classify(str(err)))

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


# ---------------------------------------------------------------- the fake


def _key_of(elem: Any) -> str:
    """Canonical key of an element as written in a command (``[key, data]`` for maps)."""
    if isinstance(elem, list) and len(elem) == 2:
        elem = elem[0]
    if isinstance(elem, dict) and "elem" in elem:
        elem = elem["elem"]["val"]
    return json.dumps(elem, sort_keys=True)


def _data_of(elem: Any) -> str | None:
    if isinstance(elem, list) and len(elem) == 2:
        return json.dumps(elem[1], sort_keys=True)
    return None


@dataclass
class _Table:
    chains: dict[str, list[Command]] = field(default_factory=dict)
    chain_specs: dict[str, Command] = field(default_factory=dict)
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> key -> element as written
    set_specs: dict[str, Command] = field(default_factory=dict)


class FakeNft:
    """In-memory NftBackend: records batches and applies them with nftables' semantics for
    tables, chains, rules and elements (add is idempotent for identical elements, EEXIST for a
    different map value, ENOENT when deleting what is absent; a failing batch changes nothing)."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], _Table] = {}
        self.batches: list[list[Command]] = []
        self.handles = 0

    def run(self, commands: list[Command], *, what: str) -> None:
        if not commands:
            return
        saved = copy.deepcopy(self.tables)
        try:
            for cmd in commands:
                self._apply(cmd)
        except NftError as exc:
            self.tables = saved
            raise NftError(f"{what}: {exc.msg}", kind=exc.kind) from None
        self.batches.append(copy.deepcopy(commands))

    def _table(self, obj: Command, create: bool = False) -> _Table:
        key = (str(obj["family"]), str(obj.get("table", obj.get("name"))))
        if key not in self.tables:
            if not create:
                raise NftError(f"no table {key}", kind=ENOENT)
            self.tables[key] = _Table()
        return self.tables[key]

    def _apply(self, cmd: Command) -> None:
        (verb, body), = cmd.items()
        (kind, obj), = body.items()
        if kind == "table":
            if verb in ("add", "create"):
                if verb == "create" and (obj["family"], obj["name"]) in self.tables:
                    raise NftError("table exists", kind=EEXIST)
                self._table(obj, create=True)
            elif verb == "delete":
                if self.tables.pop((obj["family"], obj["name"]), None) is None:
                    raise NftError("no table", kind=ENOENT)
            elif verb == "flush":
                t = self._table(obj)
                for name in t.chains:
                    t.chains[name] = []
            return
        t = self._table(obj)
        if kind == "chain":
            name = obj["name"]
            if verb in ("add", "create"):
                if name in t.chains and verb == "create":
                    raise NftError("chain exists", kind=EEXIST)
                t.chains.setdefault(name, [])
                t.chain_specs[name] = obj
            elif verb == "flush":
                if name not in t.chains:
                    raise NftError("no chain", kind=ENOENT)
                t.chains[name] = []
            elif verb == "delete":
                if name not in t.chains:
                    raise NftError("no chain", kind=ENOENT)
                if t.chains[name]:
                    raise NftError("chain not empty", kind=EBUSY)
                del t.chains[name], t.chain_specs[name]
        elif kind == "rule":
            if obj["chain"] not in t.chains:
                raise NftError("no chain", kind=ENOENT)
            if verb in ("add", "insert"):
                rules = t.chains[obj["chain"]]
                self.handles += 1
                obj = {**obj, "handle": obj.get("handle", self.handles)}
                rules.insert(0 if verb == "insert" else len(rules), obj)
            elif verb == "delete":
                rules = t.chains[obj["chain"]]
                keep = [r for r in rules if r.get("handle") != obj.get("handle")]
                if len(keep) == len(rules):
                    raise NftError("no rule", kind=ENOENT)
                t.chains[obj["chain"]] = keep
        elif kind in ("set", "map"):
            name = obj["name"]
            if verb in ("add", "create"):
                if verb == "create" and name in t.sets:
                    raise NftError("set exists", kind=EEXIST)
                t.sets.setdefault(name, {})
                t.set_specs[name] = {kind: obj}
            elif verb == "flush":
                t.sets[name] = {}
            elif verb == "delete":
                t.sets.pop(name)
                t.set_specs.pop(name)
        elif kind == "element":
            if obj["name"] not in t.sets:
                raise NftError("no set", kind=ENOENT)
            elems = t.sets[obj["name"]]
            for elem in obj["elem"]:
                key = _key_of(elem)
                if verb in ("add", "create"):
                    if key in elems:
                        if verb == "create" or _data_of(elems[key]) != _data_of(elem):
                            raise NftError("element exists", kind=EEXIST)
                        continue
                    elems[key] = elem
                elif verb == "delete":
                    if key not in elems:
                        raise NftError("no element", kind=ENOENT)
                    del elems[key]
        else:
            raise NftError(f"fake nft does not model {kind}")

    def list_table(self, family: str, table: str) -> list[Command]:
        t = self.tables.get((family, table))
        if t is None:
            return []
        out: list[Command] = [{"table": {"family": family, "name": table}}]
        for name, spec in t.set_specs.items():
            (kind, obj), = spec.items()
            out.append({kind: {**obj, "elem": list(t.sets[name].values())}})
        for name, spec in t.chain_specs.items():
            out.append({"chain": spec})
            out.extend({"rule": r} for r in t.chains[name])
        return out

    def list_map(self, family: str, table: str, name: str) -> list[Any]:
        t = self.tables.get((family, table))
        return list(t.sets.get(name, {}).values()) if t else []

    def list_chain(self, family: str, table: str, chain: str) -> list[Command] | None:
        t = self.tables.get((family, table))
        if t is None or chain not in t.chains:
            return None
        return [{"rule": r} for r in t.chains[chain]]

    def elements(self, family: str, table: str, name: str) -> dict[str, Any]:
        t = self.tables.get((family, table))
        return dict(t.sets.get(name, {})) if t else {}
