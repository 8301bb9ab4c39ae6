"""Go's ``encoding/gob``, as much of it as the reference's dhcp plugin and daemon exchange.

A gob stream is a sequence of messages, each a length and then a type id: a negative id
defines the type ``-id`` (a ``wireType`` value), a positive one carries a value of that
type. Numbers are "gob uints" (one byte below 128, else the negated byte count and the
big-endian bytes); signed ints are zig-zagged into them. A struct value is a run of field
deltas (1 = the next field) each followed by the field's value, ended by a 0; fields with
zero values are left out, so a Go struct and ours match by field *name*, and fields one
side lacks are skipped.

The encoder speaks in ``Struct`` and ``Slice`` schemas; each stream (a connection) sends a
type's definition once, before its first value. The decoder reads whatever types the
peer defines (structs, slices, arrays, maps, and the types Go encodes through
``GobEncoder``/``BinaryMarshaler`` as opaque bytes) into dicts, lists, bytes, str and int;
``interface`` values (which neither side here sends) are refused.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

BOOL, INT, UINT, FLOAT, BYTES, STRING, COMPLEX, INTERFACE = 1, 2, 3, 4, 5, 6, 7, 8
FIRST_USER_ID = 65  # ids below are Go's predefined and bootstrap types
MAX_MESSAGE = 16 << 20  # a CNI config is at most a few hundred KiB


class GobError(ValueError):
    """The stream is not gob as this module reads it (or is cut short)."""


@dataclass(frozen=True, slots=True)
class Struct:
    name: str
    fields: tuple[tuple[str, GoType], ...]


@dataclass(frozen=True, slots=True)
class Slice:
    elem: GoType
    name: str  # as Go names an unnamed slice type: "[]string", "[]*types.Route"


GoType: TypeAlias = int | Struct | Slice  # int: a predefined type id (BOOL ... STRING)

# The types a type definition is made of, with the ids Go gives them (encoding/gob/type.go).
_COMMON = Struct("CommonType", (("Name", STRING), ("Id", INT)))
_FIELD = Struct("fieldType", (("Name", STRING), ("Id", INT)))
_FIELDS = Slice(_FIELD, "[]*gob.fieldType")
_ARRAY = Struct("arrayType", (("CommonType", _COMMON), ("Elem", INT), ("Len", INT)))
_SLICE = Struct("sliceType", (("CommonType", _COMMON), ("Elem", INT)))
_STRUCT = Struct("structType", (("CommonType", _COMMON), ("Field", _FIELDS)))
_MAP = Struct("mapType", (("CommonType", _COMMON), ("Key", INT), ("Elem", INT)))
_GOBENC = Struct("gobEncoderType", (("CommonType", _COMMON),))
_WIRE = Struct(
    "wireType",
    (
        ("ArrayT", _ARRAY),
        ("SliceT", _SLICE),
        ("StructT", _STRUCT),
        ("MapT", _MAP),
        ("GobEncoderT", _GOBENC),
        ("BinaryMarshalerT", _GOBENC),
        ("TextMarshalerT", _GOBENC),
    ),
)
_BOOTSTRAP: dict[GoType, int] = {
    _WIRE: 16,
    _ARRAY: 17,
    _COMMON: 18,
    _SLICE: 19,
    _STRUCT: 20,
    _FIELD: 21,
    _FIELDS: 22,
    _MAP: 23,
    _GOBENC: 24,
}


# ---------------------------------------------------------------- numbers


def uint_bytes(n: int) -> bytes:
    if n < 0:
        raise GobError(f"negative uint {n}")
    if n < 0x80:
        return bytes((n,))
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    if len(raw) > 8:
        raise GobError(f"uint {n} does not fit in 64 bits")
    return bytes((256 - len(raw),)) + raw


def int_bytes(i: int) -> bytes:
    return uint_bytes(i << 1 if i >= 0 else (~i << 1) | 1)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if n < 0 or end > len(self.data):
            raise GobError("message cut short")
        out = self.data[self.pos : end]
        self.pos = end
        return out

    def uint(self) -> int:
        first = self.take(1)[0]
        if first < 0x80:
            return first
        size = 256 - first
        if size > 8:
            raise GobError(f"bad uint length byte {first:#x}")
        return int.from_bytes(self.take(size), "big")

    def int(self) -> int:
        u = self.uint()
        return ~(u >> 1) if u & 1 else u >> 1

    def bytes(self) -> bytes:
        return self.take(self.uint())

    @property
    def done(self) -> bool:
        return self.pos >= len(self.data)


# ---------------------------------------------------------------- encoding


class Encoder:
    """One direction of one stream: remembers which types the peer has been told about."""

    def __init__(self) -> None:
        self._ids: dict[GoType, int] = dict(_BOOTSTRAP)
        self._next = FIRST_USER_ID

    def encode(self, gotype: Struct, value: Mapping[str, Any]) -> bytes:
        """The messages for one top-level struct value: definitions not sent yet, then the value."""
        out: list[bytes] = []
        type_id = self._define(gotype, out)
        body = int_bytes(type_id) + self._struct(gotype, value)
        out.append(uint_bytes(len(body)) + body)
        return b"".join(out)

    def _define(self, gotype: GoType, out: list[bytes]) -> int:
        if isinstance(gotype, int):
            return gotype
        known = self._ids.get(gotype)
        if known is not None:
            return known
        type_id = self._ids[gotype] = self._next
        self._next += 1
        common = {"Name": gotype.name, "Id": type_id}
        # Element and field types first: Go's decoder accepts any order, and this one is simplest.
        if isinstance(gotype, Slice):
            wire = {"SliceT": {"CommonType": common, "Elem": self._define(gotype.elem, out)}}
        else:
            fields = [{"Name": name, "Id": self._define(ftype, out)} for name, ftype in gotype.fields]
            wire = {"StructT": {"CommonType": common, "Field": fields}}
        body = int_bytes(-type_id) + self._struct(_WIRE, wire)
        out.append(uint_bytes(len(body)) + body)
        return type_id

    def _struct(self, gotype: Struct, value: Mapping[str, Any]) -> bytes:
        out, last = [], -1
        for number, (name, ftype) in enumerate(gotype.fields):
            item = value.get(name)
            if item is None or (not isinstance(ftype, Struct) and not item):
                continue  # zero values are not sent (structs always are, as Go does)
            out.append(uint_bytes(number - last) + self._value(ftype, item))
            last = number
        out.append(b"\0")
        return b"".join(out)

    def _value(self, gotype: GoType, item: Any) -> bytes:
        if isinstance(gotype, Struct):
            return self._struct(gotype, item)
        if isinstance(gotype, Slice):
            return uint_bytes(len(item)) + b"".join(self._value(gotype.elem, x) for x in item)
        if gotype == BOOL:
            return uint_bytes(1 if item else 0)
        if gotype == INT:
            return int_bytes(int(item))
        if gotype == UINT:
            return uint_bytes(int(item))
        if gotype == STRING:
            raw = item.encode("utf-8", "surrogateescape") if isinstance(item, str) else bytes(item)
            return uint_bytes(len(raw)) + raw
        if gotype == BYTES:
            raw = bytes(item)
            return uint_bytes(len(raw)) + raw
        if gotype == FLOAT:
            return uint_bytes(int.from_bytes(struct.pack("<d", float(item)), "big"))
        raise GobError(f"cannot encode type id {gotype}")


# ---------------------------------------------------------------- decoding


@dataclass(frozen=True, slots=True)
class _Wire:
    kind: str  # struct | slice | array | map | opaque
    name: str
    fields: tuple[tuple[str, int], ...] = ()
    elem: int = 0
    key: int = 0


def _bootstrap_wires() -> dict[int, _Wire]:
    table: dict[int, _Wire] = {}
    for gotype, type_id in _BOOTSTRAP.items():
        if isinstance(gotype, Struct):
            fields = tuple((name, f if isinstance(f, int) else _BOOTSTRAP[f]) for name, f in gotype.fields)
            table[type_id] = _Wire("struct", gotype.name, fields)
        elif isinstance(gotype, Slice):
            table[type_id] = _Wire("slice", gotype.name, elem=_BOOTSTRAP[gotype.elem])
    return table


class Decoder:
    """One direction of one stream: learns the peer's type definitions as they come.

    ``read(n)`` returns exactly ``n`` bytes (or raises); ``next()`` returns the next value
    as (type name, value), after reading any definitions before it."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read
        self._types = _bootstrap_wires()

    def _message(self) -> bytes:
        first = self._read(1)[0]
        size = first
        if first >= 0x80:
            count = 256 - first
            if count > 8:
                raise GobError(f"bad message length byte {first:#x}")
            size = int.from_bytes(self._read(count), "big")
        if size > MAX_MESSAGE:
            raise GobError(f"message of {size} bytes is too large")
        return self._read(size)

    def next(self) -> tuple[str, Any]:
        while True:
            r = _Reader(self._message())
            type_id = r.int()
            if type_id < 0:
                self._learn(-type_id, self._decode(r, 16))
                continue
            wire = self._types.get(type_id)
            if wire is None and type_id >= FIRST_USER_ID:
                raise GobError(f"value of undefined type id {type_id}")
            if wire is None or wire.kind != "struct":
                if r.uint() != 0:  # a top-level non-struct value follows a zero "field delta"
                    raise GobError("bad singleton value")
            value = self._decode(r, type_id)
            return (wire.name if wire else _PREDEFINED_NAMES.get(type_id, str(type_id))), value

    def _learn(self, type_id: int, wire: dict[str, Any]) -> None:
        if type_id < FIRST_USER_ID:
            raise GobError(f"the peer redefines predefined type id {type_id}")
        if "StructT" in wire:
            st = wire["StructT"]
            fields = tuple((f.get("Name", ""), f.get("Id", 0)) for f in st.get("Field", []))
            self._types[type_id] = _Wire("struct", st["CommonType"].get("Name", ""), fields)
        elif "SliceT" in wire:
            st = wire["SliceT"]
            self._types[type_id] = _Wire("slice", st["CommonType"].get("Name", ""), elem=st.get("Elem", 0))
        elif "ArrayT" in wire:
            st = wire["ArrayT"]
            self._types[type_id] = _Wire("array", st["CommonType"].get("Name", ""), elem=st.get("Elem", 0))
        elif "MapT" in wire:
            st = wire["MapT"]
            name = st["CommonType"].get("Name", "")
            self._types[type_id] = _Wire("map", name, key=st.get("Key", 0), elem=st.get("Elem", 0))
        else:
            for key in ("GobEncoderT", "BinaryMarshalerT", "TextMarshalerT"):
                if key in wire:
                    self._types[type_id] = _Wire("opaque", wire[key]["CommonType"].get("Name", ""))
                    return
            raise GobError(f"type {type_id}: a definition of no known kind")

    def _decode(self, r: _Reader, type_id: int) -> Any:
        if type_id == BOOL:
            return r.uint() != 0
        if type_id == INT:
            return r.int()
        if type_id == UINT:
            return r.uint()
        if type_id == FLOAT:
            return struct.unpack("<d", r.uint().to_bytes(8, "big"))[0]
        if type_id == BYTES:
            return r.bytes()
        if type_id == STRING:
            return r.bytes().decode("utf-8", "surrogateescape")
        if type_id == COMPLEX:
            re = struct.unpack("<d", r.uint().to_bytes(8, "big"))[0]
            return complex(re, struct.unpack("<d", r.uint().to_bytes(8, "big"))[0])
        wire = self._types.get(type_id)
        if wire is None:
            raise GobError(f"type id {type_id} is not supported" if type_id < FIRST_USER_ID else "undefined type id")
        if wire.kind == "struct":
            out: dict[str, Any] = {}
            number = -1
            while True:
                delta = r.uint()
                if delta == 0:
                    return out
                number += delta
                if number >= len(wire.fields):
                    raise GobError(f"{wire.name}: field {number} is not defined")
                name, field_type = wire.fields[number]
                out[name] = self._decode(r, field_type)
        if wire.kind in ("slice", "array"):
            count = r.uint()
            if count > len(r.data):
                raise GobError(f"{wire.name}: {count} elements cannot fit in the message")
            return [self._decode(r, wire.elem) for _ in range(count)]
        if wire.kind == "map":
            count = r.uint()
            if count > len(r.data):
                raise GobError(f"{wire.name}: {count} entries cannot fit in the message")
            pairs = [(self._decode(r, wire.key), self._decode(r, wire.elem)) for _ in range(count)]
            return {_hashable(k): v for k, v in pairs}
        return r.bytes()  # opaque: the bytes of the type's own encoding


def _hashable(key: Any) -> Any:
    if isinstance(key, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in key.items()))
    if isinstance(key, list):
        return tuple(_hashable(v) for v in key)
    return key


_PREDEFINED_NAMES = {BOOL: "bool", INT: "int", UINT: "uint", FLOAT: "float", BYTES: "bytes", STRING: "string"}
