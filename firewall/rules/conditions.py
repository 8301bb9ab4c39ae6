"""``conditionsV4`` / ``conditionsV6``: extra match conditions written in nft syntax, parsed
into a small, validated set of match expressions (libnftables JSON). Text from a config is
never handed to nft: anything outside this grammar is refused with an error naming the
token, so a condition can only narrow which packets a mapping applies to.

Grammar (tokens may be split over list items as the reference allows, ``["ip saddr",
"10.0.0.0/8"]`` or ``["ip", "saddr", "10.0.0.0/8"]``; matches are ANDed)::

    condition := selector [ "==" | "!=" ] value
    selector  := ip saddr | ip daddr                (conditionsV4 only)
               | ip6 saddr | ip6 daddr              (conditionsV6 only)
               | [meta] iifname | [meta] oifname    (name, or prefix with a trailing *)
               | [meta] mark                        (0 ... 0xffffffff)
               | fib saddr type | fib daddr type    (local, unicast, broadcast, multicast, ...)
    value     := one | "{" one { "," one } "}"

The reference decides between syntaxes by the first token: starting with ``-`` or ``!`` it
is iptables syntax, which means nothing on nftables; ``IptablesSyntax`` says so.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any

from cni_plugins.spec.errors import InvalidNetworkConfig, UnsupportedField

Expr = dict[str, Any]

TOKEN_RE = re.compile(r'"[^"]*"|[{},]|==|!=|[^\s{},"]+')
IFNAME_RE = re.compile(r"^[A-Za-z0-9_.@+-]{1,15}\*?$")
FIB_TYPES = ("unspec", "unicast", "local", "broadcast", "anycast", "multicast", "blackhole", "unreachable", "prohibit")
SUPPORTED = (
    "ip/ip6 saddr|daddr <address, prefix or {set}>, iifname|oifname "
    "<name>, meta mark <number>, fib saddr|daddr type <type>"
)


class IptablesSyntax(UnsupportedField):
    """Conditions in iptables syntax (the reference's iptables backend)."""


def is_iptables_syntax(items: Iterable[str]) -> bool:
    """The reference's rule: the first token starts with '-' or '!'."""
    tokens = " ".join(items).split()
    return bool(tokens) and tokens[0][0] in "-!"


def parse(items: Iterable[str], version: int, where: str) -> tuple[Expr, ...]:
    """The match expressions for ``items`` (a conditionsV4/V6 list) or a code-7 error."""
    items = list(items)
    if is_iptables_syntax(items):
        raise IptablesSyntax(
            f"{where}: {' '.join(items)!r} is iptables syntax, which nftables cannot use",
            f'write it in nft syntax, e.g. ["ip", "saddr", "10.0.0.0/8"]; supported: {SUPPORTED}',
        )
    tokens = TOKEN_RE.findall(" ".join(items))
    leftover = TOKEN_RE.sub(" ", " ".join(items)).strip()
    if leftover:
        raise InvalidNetworkConfig(f"{where}: cannot read {leftover!r}", f"supported conditions: {SUPPORTED}")
    out: list[Expr] = []
    pos = 0
    while pos < len(tokens):
        pos = _condition(tokens, pos, version, where, out)
    return tuple(out)


def _err(where: str, msg: str) -> InvalidNetworkConfig:
    return InvalidNetworkConfig(f"{where}: {msg}", f"supported conditions: {SUPPORTED}")


def _condition(tokens: list[str], pos: int, version: int, where: str, out: list[Expr]) -> int:
    word = tokens[pos]
    if word == "meta" and pos + 1 < len(tokens) and tokens[pos + 1] in ("iifname", "oifname", "mark"):
        pos, word = pos + 1, tokens[pos + 1]
    left: Expr
    convert: Callable[[str], Any]
    if word in ("ip", "ip6"):
        fam = 4 if word == "ip" else 6
        if fam != version:
            other = "conditionsV6" if fam == 6 else "conditionsV4"
            raise _err(where, f"{word!r} matches IPv{fam} packets; put it in {other}")
        field = tokens[pos + 1] if pos + 1 < len(tokens) else ""
        if field not in ("saddr", "daddr"):
            raise _err(where, f"{word} {field!r}: only saddr and daddr can be matched")
        left, convert, pos = (
            {"payload": {"protocol": word, "field": field}},
            lambda t: _address(t, version, where),
            pos + 2,
        )
    elif word in ("iifname", "oifname"):
        left, convert, pos = {"meta": {"key": word}}, lambda t: _ifname(t, where), pos + 1
    elif word == "mark":
        left, convert, pos = {"meta": {"key": "mark"}}, lambda t: _mark(t, where), pos + 1
    elif word == "fib":
        flag = tokens[pos + 1] if pos + 1 < len(tokens) else ""
        if flag not in ("saddr", "daddr") or pos + 2 >= len(tokens) or tokens[pos + 2] != "type":
            raise _err(where, "fib: write 'fib saddr type <type>' or 'fib daddr type <type>'")
        left, convert, pos = {"fib": {"result": "type", "flags": [flag]}}, lambda t: _fib_type(t, where), pos + 3
    else:
        raise _err(where, f"{word!r} is not a supported condition")
    op = "=="
    if pos < len(tokens) and tokens[pos] in ("==", "!="):
        op, pos = tokens[pos], pos + 1
    if pos >= len(tokens):
        raise _err(where, f"missing value after {word!r}")
    if tokens[pos] == "{":
        values, pos = [], pos + 1
        while True:
            if pos >= len(tokens) or tokens[pos] in ("{", "}", ","):
                raise _err(where, "a set is written { value, value, ... }")
            values.append(convert(tokens[pos]))
            pos += 1
            if pos < len(tokens) and tokens[pos] == ",":
                pos += 1
                continue
            if pos < len(tokens) and tokens[pos] == "}":
                pos += 1
                break
            raise _err(where, "a set is written { value, value, ... }")
        right: Any = {"set": values}
    elif tokens[pos] in ("}", ",", "==", "!="):
        raise _err(where, f"unexpected {tokens[pos]!r} after {word!r}")
    else:
        right, pos = convert(tokens[pos]), pos + 1
    out.append({"match": {"op": op, "left": left, "right": right}})
    return pos


def _address(token: str, version: int, where: str) -> Any:
    try:
        value = ipaddress.ip_network(token, strict=True) if "/" in token else ipaddress.ip_address(token)
    except ValueError:
        raise _err(where, f"{token!r} is not an IPv{version} address or prefix (without host bits)") from None
    if value.version != version:
        raise _err(where, f"{token!r} is not an IPv{version} address or prefix")
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        if value.prefixlen == value.max_prefixlen:
            return str(value.network_address)
        return {"prefix": {"addr": str(value.network_address), "len": value.prefixlen}}
    return str(value)


def _ifname(token: str, where: str) -> str:
    name = token[1:-1] if len(token) >= 2 and token[0] == token[-1] == '"' else token
    if not IFNAME_RE.match(name) or name in (".", ".."):
        raise _err(
            where, f"{token!r} is not an interface name (letters, digits, _ . @ + -, at most 15, optional trailing *)"
        )
    return name


def _mark(token: str, where: str) -> int:
    try:
        value = int(token, 0)
    except ValueError:
        raise _err(where, f"mark {token!r} is not a number") from None
    if not 0 <= value <= 0xFFFFFFFF:
        raise _err(where, f"mark {token!r} is out of range (0 ... 0xffffffff)")
    return value


def _fib_type(token: str, where: str) -> str:
    if token not in FIB_TYPES:
        raise _err(where, f"fib type {token!r} is not one of {', '.join(FIB_TYPES)}")
    return token
