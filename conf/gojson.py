"""JSON objects whose keys match as Go's ``encoding/json`` matches them to struct fields.

The reference plugins decode every config with ``encoding/json``: an object key reaches a
struct field whose name equals it, or else one that equals it ignoring case, and when a
field is given twice (``hostPort`` and ``HostPort``) the later key in the document wins.
Callers rely on it: containerd's CRI plugin sends ``runtimeConfig.portMappings`` as
``{"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": ""}``.

``loads`` returns every object of the document as a ``GoObject``: a ``dict`` that keeps
its keys as written (it serialises back unchanged) and answers ``get``, ``[]`` and ``in``
for any spelling of a key. Everything that reads stdin (``NetConf.from_bytes``: the
network config, ``args``, ``runtimeConfig``, ``ipam``, ``prevResult``) and a delegate's
result decodes through here, so no reader needs to know about case.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

# Go folds keys with Unicode simple folding; the only non-ASCII runes that fold to an ASCII
# letter are LATIN SMALL LETTER LONG S (-> s) and KELVIN SIGN (-> k; str.lower already does).
_LONG_S = "\u017f"


def fold(key: str) -> str:
    """The case-folded form under which Go's decoder matches ``key`` to a field name."""
    folded = key.lower()
    return folded if folded.isascii() else folded.replace(_LONG_S, "s")


class GoObject(dict[str, Any]):
    """A decoded JSON object. It holds every key as written (iterating it is iterating the
    object, as a Go map would be), and a lookup by any spelling finds the value of the last
    key that folds to the same name (as a Go struct field would be filled)."""

    __slots__ = ("_spelling",)

    def __init__(self, pairs: Iterable[tuple[str, Any]] = ()) -> None:
        super().__init__()
        self._spelling: dict[str, str] = {}  # folded name -> the key written last
        for key, value in pairs:
            self[key] = value

    def _key(self, key: Any) -> Any:
        return self._spelling.get(fold(key), key) if isinstance(key, str) else key

    def _reindex(self) -> None:
        self._spelling = {fold(k): k for k in self}

    def __setitem__(self, key: str, value: Any) -> None:
        self._spelling[fold(key)] = key
        super().__setitem__(key, value)

    def __getitem__(self, key: str) -> Any:
        return super().__getitem__(self._key(key))

    def __contains__(self, key: object) -> bool:
        return super().__contains__(self._key(key))

    def __delitem__(self, key: str) -> None:
        super().__delitem__(self._key(key))
        self._reindex()

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(self._key(key), default)

    def pop(self, key: str, *default: Any) -> Any:
        value = super().pop(self._key(key), *default)
        self._reindex()
        return value

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def copy(self) -> GoObject:
        return GoObject(self.items())

    def __reduce__(self) -> tuple[type[GoObject], tuple[list[tuple[str, Any]]]]:
        return GoObject, (list(self.items()),)


def loads(data: bytes | str) -> Any:
    """``json.loads`` with every object a ``GoObject``."""
    return json.loads(data, object_pairs_hook=GoObject)
