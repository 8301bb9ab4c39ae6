"""Typed readers for JSON config objects: every wrong value becomes an error naming its key path.

Plugins read their own options with these (``bool_field(raw, "isGateway", False, "bridge")``),
so a mistyped option is a code-7 error that says which key and what it should be, never a
``KeyError`` or ``TypeError`` that surfaces as code 999.
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

from cni_plugins.spec.errors import InvalidNetworkConfig, shown

T = TypeVar("T")


def _where(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def bool_field(obj: dict[str, Any], key: str, default: bool, where: str = "") -> bool:
    value = obj.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    # libcni accepts the strings "true"/"false" for its own flags; do the same everywhere.
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidNetworkConfig(f"{_where(where, key)}: expected true or false, got {shown(value)}")


def int_field(
    obj: dict[str, Any],
    key: str,
    default: int,
    where: str = "",
    *,
    minimum: int | None = None,
    maximum: int | None = None,
) -> int:
    value = obj.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidNetworkConfig(f"{_where(where, key)}: expected an integer, got {shown(value)}")
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        bounds = (
            f"between {minimum} and {maximum}"
            if minimum is not None and maximum is not None
            else (f"at least {minimum}" if minimum is not None else f"at most {maximum}")
        )
        raise InvalidNetworkConfig(f"{_where(where, key)}: {value} is out of range, must be {bounds}")
    return int(value)


def str_field(
    obj: dict[str, Any], key: str, default: str = "", where: str = "", *, choices: tuple[str, ...] = ()
) -> str:
    value = obj.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidNetworkConfig(f"{_where(where, key)}: expected a string, got {shown(value)}")
    if choices and value not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise InvalidNetworkConfig(f"{_where(where, key)}: {shown(value)} is not one of {options}")
    return value


def dict_field(obj: dict[str, Any], key: str, where: str = "") -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidNetworkConfig(f"{_where(where, key)}: expected a JSON object, got {shown(value)}")
    return value


def list_field(obj: dict[str, Any], key: str, where: str = "") -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidNetworkConfig(f"{_where(where, key)}: expected a JSON list, got {shown(value)}")
    return value


def str_list_field(obj: dict[str, Any], key: str, where: str = "") -> tuple[str, ...]:
    items = list_field(obj, key, where)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise InvalidNetworkConfig(f"{_where(where, key)}[{i}]: expected a string, got {shown(item)}")
    return tuple(items)


def parse_mac(value: str, where: str) -> str:
    """A 6-byte Ethernet address (``c2:11:22:33:44:55``, ``-`` separators accepted) in the
    kernel's lower-case colon form; '' stays ''. The error names where the value came from."""
    if not value:
        return ""
    parts = value.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        raise InvalidNetworkConfig(
            f"{where}: {shown(value)} is not a MAC address", "write it as six hex bytes, e.g. c2:11:22:33:44:55"
        )
    return ":".join(parts).lower()


def abs_path_field(obj: dict[str, Any], key: str, default: str, where: str = "") -> str:
    """A directory we write under (``dataDir``): absolute, no NUL, no ``..``; normalised."""
    text = str_field(obj, key, "", where)
    if not text:
        return default
    name = _where(where, key)
    if "\0" in text:
        raise InvalidNetworkConfig(f"{name}: contains a NUL character", "give an absolute directory path")
    if not text.startswith("/"):
        raise InvalidNetworkConfig(
            f"{name}: {shown(text)} is not an absolute path", f"give an absolute directory path such as {default}"
        )
    if ".." in text.split("/"):
        raise InvalidNetworkConfig(
            f"{name}: {shown(text)} has a '..' component", "give the directory without '..' components"
        )
    return "/" + os.path.normpath(text).lstrip("/")
