"""``tuning`` (chained): sysctls and attributes of the container interface, restored on DEL.

As the reference (``plugins/meta/tuning``):
* ``sysctl``: ``net.*`` keys only, written inside the container namespace; ``IFNAME`` in a key
  stands for CNI_IFNAME. Keys are dotted names: path separators, empty components and
  duplicates are refused, and a per-interface key (``net.ipv4.conf.<dev>.*`` and the like)
  may name only CNI_IFNAME, ``all`` or ``default``. If ``/etc/cni/tuning/allowlist.conf``
  exists, every key must match one of its regular expressions.
* ``mac``, ``mtu``, ``promisc``, ``allmulti``, ``txQLen`` on CNI_IFNAME. Sources in rising
  priority: the config, CNI_ARGS ``MAC``, ``runtimeConfig.mac``, ``args.cni.*``. The values they
  replace are saved to ``<dataDir>/<containerID>_<ifname>.json`` (the reference's file and
  format, so either plugin can restore the other's) and put back on DEL.
* The result is ``prevResult`` with the new MAC; with nothing to do it is passed on untouched
  (podman chains ``{"type": "tuning"}`` after bridge).

Sysctls are not restored on DEL (the reference does not either: they die with the netns).
No GC: dataDir is shared by every network, and GC's valid-attachments list names one network.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cni_plugins.kernel import netns, sysctl
from cni_plugins.kernel.netns import NetNSGone
from cni_plugins.protocol import log, skel
from cni_plugins.protocol.skel import CmdArgs, Plugin
from cni_plugins.protocol.steps import options_for_del, quietly, step
from cni_plugins.spec.errors import (
    CNIError,
    ErrorList,
    InvalidEnvironment,
    InvalidNetworkConfig,
    IOFailure,
    shown,
)
from cni_plugins.spec.types import Result
from conf import gojson
from conf.fields import (
    abs_path_field,
    bool_field,
    dict_field,
    int_field,
    parse_mac,
    str_field,
)
from conf.gojson import GoObject

if TYPE_CHECKING:
    from cni_plugins.kernel.netlink import Link, Netlink

DEFAULT_DATA_DIR = "/run/cni/tuning"
ALLOWLIST = "/etc/cni/tuning/allowlist.conf"
PER_INTERFACE = ("net.ipv4.conf.", "net.ipv6.conf.", "net.ipv4.neigh.", "net.ipv6.neigh.", "net.mpls.conf.")


@dataclass(frozen=True, slots=True, kw_only=True)
class TuningConf:
    sysctls: tuple[tuple[str, str, str], ...]  # (key as written, /proc/sys relative path, value)
    mac: str
    mtu: int  # 0: leave alone
    promisc: bool | None  # None: not asked; False: leave alone on ADD, must be off on CHECK
    allmulti: bool | None
    txqlen: int | None
    data_dir: str

    @property
    def changes_link(self) -> bool:
        return bool(self.mac or self.mtu or self.promisc or self.allmulti is not None or self.txqlen is not None)

    @classmethod
    def from_json(cls, args: CmdArgs) -> TuningConf:
        raw = args.conf.raw
        cni = dict_field(dict_field(raw, "args"), "cni", "args")
        dups = _duplicate_sysctl_keys(args.stdin)
        if dups:
            raise InvalidNetworkConfig(
                f"sysctl: duplicated keys are not allowed: {', '.join(sorted(dups))}", "give each sysctl once"
            )
        merged = {**_sysctl_map(raw, ""), **_sysctl_map(cni, "args.cni")}
        resolved = tuple((key, resolve_sysctl(key, args.ifname), value) for key, value in merged.items())
        paths = [path for _, path, _ in resolved]
        if len(set(paths)) != len(paths):
            raise InvalidNetworkConfig(
                "sysctl: two keys name the same sysctl (IFNAME and the interface name?)", "give each sysctl once"
            )
        check_allowlist([key for key, _, _ in resolved])
        sources = (
            ("mac", str_field(raw, "mac")),
            ("CNI_ARGS MAC", args.cni_args.get("MAC") or ""),
            ("runtimeConfig.mac", args.conf.runtime_config.mac),
            ("args.cni.mac", str_field(cni, "mac", "", "args.cni")),
        )
        where, mac = next(((w, m) for w, m in reversed(sources) if m), ("mac", ""))
        return cls(
            sysctls=resolved,
            mac=parse_mac(mac, where),
            mtu=_pick(cni, raw, "mtu", lambda o, w: int_field(o, "mtu", 0, w, minimum=0)) or 0,
            promisc=_pick(cni, raw, "promisc", lambda o, w: bool_field(o, "promisc", False, w)),
            allmulti=_pick(cni, raw, "allmulti", lambda o, w: bool_field(o, "allmulti", False, w)),
            txqlen=_pick(cni, raw, "txQLen", lambda o, w: int_field(o, "txQLen", 0, w, minimum=0)),
            data_dir=data_dir_of(args),
        )


def data_dir_of(args: CmdArgs) -> str:
    return abs_path_field(args.conf.raw, "dataDir", DEFAULT_DATA_DIR)


def data_dir_for_del(args: CmdArgs) -> str:
    return options_for_del("tuning", lambda: data_dir_of(args), lambda: DEFAULT_DATA_DIR)


def _pick(cni: dict[str, Any], raw: dict[str, Any], key: str, read: Any) -> Any:
    """``args.cni.<key>`` if given, else the config's ``<key>``, else None."""
    if cni.get(key) is not None:
        return read(cni, "args.cni")
    return read(raw, "") if raw.get(key) is not None else None


def _sysctl_map(obj: dict[str, Any], where: str) -> dict[str, str]:
    table = dict_field(obj, "sysctl", where)
    for key, value in table.items():
        if not isinstance(value, str):
            name = f"{where}.sysctl" if where else "sysctl"
            raise InvalidNetworkConfig(
                f"{name}.{key}: expected a string value, got {shown(value)}", 'sysctl values are strings, e.g. "1"'
            )
    return dict(table)


def resolve_sysctl(key: str, ifname: str) -> str:
    """``net.ipv4.conf.IFNAME.arp_filter`` -> ``net/ipv4/conf/<ifname>/arp_filter``, or a
    code-7 error saying why the key is refused."""
    hint = "write a dotted net.* name such as net.ipv4.conf.IFNAME.arp_filter"
    if any(c in key for c in "/\\\0") or any(c.isspace() for c in key):
        raise InvalidNetworkConfig(f"sysctl: {shown(key)} contains a path separator or blank", hint)
    parts = key.split(".")
    if len(parts) < 3 or parts[0] != "net" or "" in parts:
        raise InvalidNetworkConfig(f"sysctl: {shown(key)} is not a net.* sysctl of the container's namespace", hint)
    for prefix in PER_INTERFACE:
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        for dev, name in ((ifname, ifname), ("IFNAME", ifname), ("all", "all"), ("default", "default")):
            leaf = rest[len(dev) + 1 :] if rest.startswith(dev + ".") else ""
            if leaf and "." not in leaf:
                return "/".join([*prefix.rstrip(".").split("."), name, leaf])
        raise InvalidNetworkConfig(
            f"sysctl: {shown(key)} names another interface than {ifname}",
            "per-interface keys may name only the container interface (write IFNAME), 'all' or 'default'",
        )
    return "/".join(parts)


def check_allowlist(keys: list[str], path: str = ALLOWLIST) -> None:
    """With an allowlist file, every key must match one of its regular expressions (re.search)."""
    if not keys:
        return
    try:
        with open(path, encoding="utf-8") as fh:
            patterns = [line.strip() for line in fh if line.strip()]
    except FileNotFoundError:
        return
    except OSError as exc:
        raise IOFailure(f"read sysctl allowlist {path}: {exc.strerror}") from None
    for key in keys:
        try:
            allowed = any(re.search(p, key) for p in patterns)
        except re.error as exc:
            raise InvalidNetworkConfig(f"sysctl allowlist {path}: invalid regular expression: {exc}") from None
        if not allowed:
            raise InvalidNetworkConfig(
                f"sysctl: {shown(key)} is not allowed by {path}", f"allowed patterns: {', '.join(patterns)}"
            )


class _Object(GoObject):
    """A JSON object that remembers which of its keys were given more than once (exactly:
    ``sysctl`` is a map, whose keys Go compares as written)."""

    dups: frozenset[str] = frozenset()


def _duplicate_sysctl_keys(data: bytes) -> set[str]:
    """Keys given twice in ``sysctl`` or ``args.cni.sysctl`` (json.loads would keep the last)."""
    if b"sysctl" not in data.lower():
        return set()

    def pairs(items: list[tuple[str, Any]]) -> _Object:
        out = _Object()
        seen: set[str] = set()
        for key, value in items:
            if dict.__contains__(out, key):
                seen.add(key)
            out[key] = value
        out.dups = frozenset(seen)
        return out

    raw = gojson.loads(data, object_pairs_hook=pairs)
    cni = (raw.get("args") or {}).get("cni") or {}  # shapes already checked by NetConf
    tables = (raw.get("sysctl"), cni.get("sysctl"))
    return {key for table in tables if isinstance(table, _Object) for key in table.dups}


def cmd_add(args: CmdArgs) -> Result:
    conf = TuningConf.from_json(args)
    prev = _require_prev(args)
    if not conf.sysctls and not conf.changes_link:
        return prev  # nothing to tune (podman's bare {"type": "tuning"}): pass through untouched
    with (
        _netns_fd(args.netns) as fd,
        _container_link(fd, args, conf.changes_link) as (nl, link),
        contextlib.ExitStack() as undo,
    ):
        for key, path, value in conf.sysctls:
            with netns.entered(fd, label=args.netns):
                old = sysctl.read(path)
                with step(f"set sysctl {key}={value}"):
                    sysctl.write(path, value)
            undo.callback(_restore_sysctl, fd, path, old)
        if nl is not None and link is not None:
            backup = backup_path(conf.data_dir, args)
            if save_backup(backup, conf, link):
                undo.callback(_remove_quietly, backup)
            apply_link(nl, link, conf, undo)
        undo.pop_all()
    if not conf.mac:
        return prev
    return prev.replace(
        interfaces=tuple(dataclasses.replace(i, mac=conf.mac) if i.name == args.ifname else i for i in prev.interfaces)
    )


def apply_link(nl: Netlink, link: Link, conf: TuningConf, undo: contextlib.ExitStack) -> None:
    """Change the interface as asked, registering each change's undo (reference order)."""
    i = link.index
    changes = (
        (bool(conf.mac), "MAC", nl.set_link, {"address": conf.mac}, {"address": link.mac}),
        (bool(conf.promisc), "promiscuous mode", nl.set_flags, {"promisc": True}, {"promisc": link.promisc}),
        (bool(conf.mtu), "MTU", nl.set_link, {"mtu": conf.mtu}, {"mtu": link.mtu}),
        (
            conf.allmulti is not None,
            "all-multicast mode",
            nl.set_flags,
            {"allmulti": conf.allmulti},
            {"allmulti": link.allmulti},
        ),
        (conf.txqlen is not None, "txqueuelen", nl.set_link, {"txqlen": conf.txqlen}, {"txqlen": link.txqlen}),
    )
    for asked, what, setter, new, old in changes:
        if asked:
            with step(f"set {what} of {link.name} to {next(iter(new.values()))}"):
                setter(i, **new)
            undo.callback(quietly, f"restore {what}", setter, i, **old)


def cmd_del(args: CmdArgs) -> None:
    """Put back what ADD saved. Only dataDir is read from the config: a DEL must not fail on
    an option that made ADD fail. Gone netns or link: nothing to restore, the file goes."""
    path = backup_path(data_dir_for_del(args), args)
    saved = load_backup(path)
    if saved is None:
        return
    errors = ErrorList("tuning DEL")
    if args.netns:
        from cni_plugins.kernel.netlink import Netlink

        with errors.step(f"restore {args.ifname} in {args.netns}"):
            try:
                with Netlink.open(args.netns) as nl:
                    link = nl.link(args.ifname)
                    if link is not None:
                        restore(nl, link, saved, errors)
            except NetNSGone:
                pass
    if not errors.errors:
        _remove_quietly(path)
    errors.raise_if_any()  # the file stays: a retried DEL tries again


def restore(nl: Netlink, link: Link, saved: dict[str, Any], errors: ErrorList) -> None:
    """The reference's order; ``mtu``/``mac`` are omitted when empty, the others when absent."""
    steps = (
        ("mtu", "MTU", nl.set_link, "mtu"),
        ("mac", "MAC address", nl.set_link, "address"),
        ("promisc", "promiscuous mode", nl.set_flags, "promisc"),
        ("allmulti", "all-multicast mode", nl.set_flags, "allmulti"),
        ("txQLen", "txqueuelen", nl.set_link, "txqlen"),
    )
    for key, what, setter, attr in steps:
        value = saved.get(key)
        if value is None or key in ("mtu", "mac") and not value:
            continue
        with errors.step(f"restore {what} of {link.name} to {value}"):
            setter(link.index, **{attr: value})


def cmd_check(args: CmdArgs) -> None:
    conf = TuningConf.from_json(args)
    _require_prev(args)
    with _netns_fd(args.netns) as fd:
        with netns.entered(fd, label=args.netns):
            for key, path, want in conf.sysctls:
                got = sysctl.read(path)
                if got != want:
                    raise CNIError(f"sysctl {key} is {got}, the config says {want}")
        with _container_link(fd, args, True) as (_nl, link):
            if link is not None:
                validate_link(link, conf)


def validate_link(link: Link, conf: TuningConf) -> None:
    name = link.name
    checks = (
        (conf.mac != "", "MAC address", conf.mac, link.mac.lower()),
        (conf.promisc is not None, "promiscuous mode", conf.promisc, link.promisc),
        (conf.mtu != 0, "MTU", conf.mtu, link.mtu),
        (conf.allmulti is not None, "all-multicast mode", conf.allmulti, link.allmulti),
        (conf.txqlen is not None, "txqueuelen", conf.txqlen, link.txqlen),
    )
    for asked, what, want, got in checks:
        if asked and want != got:
            raise CNIError(f"{name}: {what} is {got}, the config says {want}")


# ------------------------------------------------------------ backup file (reference format)


def backup_path(data_dir: str, args: CmdArgs) -> str:
    for value, what in ((args.container_id, "CNI_CONTAINERID"), (args.ifname, "CNI_IFNAME")):
        if not value or "/" in value or "\0" in value or value.startswith("."):
            raise InvalidEnvironment(
                f"{what}={shown(value)} cannot name a file under dataDir",
                f"{what} must not contain '/' or start with '.'",
            )
    return os.path.join(data_dir, f"{args.container_id}_{args.ifname}.json")


def save_backup(path: str, conf: TuningConf, link: Link) -> bool:
    """Save the values ADD replaces; True if the file is new. A file left by an earlier ADD
    (no DEL between) holds older, truer originals: its values win, and it is kept on rollback."""
    fresh: dict[str, Any] = {}
    if conf.mac:
        fresh["mac"] = link.mac
    if conf.promisc:
        fresh["promisc"] = link.promisc
    if conf.mtu:
        fresh["mtu"] = link.mtu
    if conf.allmulti is not None:
        fresh["allmulti"] = link.allmulti
    if conf.txqlen is not None:
        fresh["txQLen"] = link.txqlen
    earlier = load_backup(path)
    data = {**fresh, **(earlier or {})}
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            os.fchmod(fh.fileno(), 0o600)
            fh.write(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError as exc:
        raise IOFailure(f"save original interface settings to {path}: {exc.strerror}", "check dataDir") from None
    return earlier is None


def load_backup(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning(f"ignoring unreadable backup {path}: {exc}")
        return {}
    return data if isinstance(data, dict) else {}


# ------------------------------------------------------------ small pieces


def _require_prev(args: CmdArgs) -> Result:
    if args.conf.prev_result is None:
        raise InvalidNetworkConfig(
            "tuning: required prevResult missing",
            "tuning is a chained plugin: put it after a plugin that creates the interface",
        )
    return args.conf.prev_result


@contextlib.contextmanager
def _netns_fd(path: str) -> Iterator[int]:
    fd = netns.open_netns(path)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _container_link(fd: int, args: CmdArgs, wanted: bool) -> Iterator[tuple[Netlink | None, Link | None]]:
    if not wanted:
        yield None, None
        return
    from cni_plugins.kernel.netlink import Netlink

    with Netlink.open(fd, label=args.netns) as nl:
        link = nl.link(args.ifname)
        if link is None:
            raise CNIError(
                f"container interface {args.ifname} not found in {args.netns}",
                "tuning runs after the plugin that creates it",
            )
        yield nl, link


def _restore_sysctl(fd: int, path: str, value: str) -> None:
    try:
        with netns.entered(fd):
            sysctl.write(path, value)
    except CNIError as err:
        log.warning(f"rollback: {err.msg}")


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning(f"remove {path}: {exc.strerror}")


PLUGIN = Plugin(
    name="tuning",
    add=cmd_add,
    delete=cmd_del,
    check=cmd_check,
    cni_args=frozenset({"MAC"}),
    about="CNI tuning plugin (cni-py)",
)


def main() -> None:
    skel.main(PLUGIN)
