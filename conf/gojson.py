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
import resource
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

# Go's decoder refuses a document nested deeper than this ("exceeded max depth"); Python's
# stops at its recursion limit (~990 levels), so a deeper document is decoded again under a
# raised limit. The C decoder takes ~150 bytes of C stack a level: that is done only on the
# main thread with a stack of at least STACK_NEEDED (Linux's default is 8 MiB).
MAX_DEPTH = 10_000
STACK_NEEDED = 4 << 20

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


def loads(data: bytes | str, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] = GoObject) -> Any:
    """``json.loads`` with every object a ``GoObject``. Any depth of nesting is answered: up
    to Go's ``MAX_DEPTH`` it is decoded, deeper (or deeper than this thread's stack allows) is
    a ``ValueError``, as every other malformed document."""
    try:
        return json.loads(data, object_pairs_hook=object_pairs_hook)
    except RecursionError:
        pass
    if not _deep_decoding_safe():
        raise ValueError("exceeded max depth: the document is nested deeper than this process can decode")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(_frames() + MAX_DEPTH + 16)  # the decoder counts one a level, a hook a few
    try:
        return json.loads(data, object_pairs_hook=object_pairs_hook)
    except RecursionError:
        raise ValueError(f"exceeded max depth: the document is nested more than {MAX_DEPTH} levels deep") from None
    finally:
        sys.setrecursionlimit(limit)


def _frames() -> int:
    n, frame = 0, sys._getframe()
    while frame.f_back is not None:
        n, frame = n + 1, frame.f_back
    return n + 1


def _deep_decoding_safe() -> bool:
    if threading.current_thread() is not threading.main_thread():
        return False  # a thread's stack is often far smaller than the main thread's
    soft, _hard = resource.getrlimit(resource.RLIMIT_STACK)
    return soft == resource.RLIM_INFINITY or soft >= STACK_NEEDED
