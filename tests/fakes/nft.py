"""An in-memory ``NftBackend`` for unit tests: it models tables, chains, rules and set/map
elements with the kernel's EEXIST/ENOENT rules for elements, which is what the ownership
logic in ``firewall.owned`` depends on."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from firewall.nft import EBUSY, EEXIST, ENOENT, Command, NftError


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
        ((verb, body),) = cmd.items()
        ((kind, obj),) = body.items()
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
            ((kind, obj),) = spec.items()
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
