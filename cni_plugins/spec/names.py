"""The spec's (and libcni's) rules for names: container IDs and network names
(``ValidateContainerID``, ``ValidateNetworkName``: letters, digits, ``_``, ``.``, ``-``,
starting with a letter or digit) and interface names (at most 15 bytes, Linux's
IFNAMSIZ - 1; no ``/``, ``:``, white space or NUL; not ``.`` or ``..``; UTF-8)."""

from __future__ import annotations

import re

ID_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
IFNAME_MAX = 15


def interface_name_problem(name: str) -> str:
    """What is wrong with ``name`` as a Linux interface name; '' if nothing."""
    if not name:
        return "interface name is empty"
    try:
        size = len(name.encode())
    except UnicodeEncodeError:  # bytes that are not UTF-8 (from the environment), a lone surrogate
        return "interface name is not valid UTF-8 (the result JSON could not carry it)"
    if size > IFNAME_MAX:
        return f"interface name is too long ({len(name)} > {IFNAME_MAX} characters)"
    if name in (".", ".."):
        return "interface name is . or .."
    if "\x00" in name:  # the kernel would cut the name there, and os paths refuse it
        return "interface name contains a NUL character"
    if any(c in name for c in "/:") or any(c.isspace() for c in name):
        return "interface name contains / or : or whitespace characters"
    return ""
