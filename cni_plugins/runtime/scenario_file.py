"""The scenario file (conf/scenarios/README.md): networks, containers, servers and checks,
read from YAML and validated, every error naming the file and the entry.

A check is one line, ``KIND[6] FROM -> TO[:PORT] [sees WHO] [fails]``; host-local IPAM
without a ``dataDir`` is pointed at the run's own directory.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni_plugins.spec.errors import CNIError
from conf.loader import NetworkConfigList, conflist_from_object, load_file

CHECK_RE = re.compile(
    r"^(?P<kind>ping|tcp|udp)(?P<six>6)?\s+(?P<src>\S+)\s*->\s*(?P<dst>\[[0-9a-fA-F:.]+\]|[^\s:]+)(?::(?P<port>\d+))?"
    r"(?:\s+sees\s+(?P<sees>\S+))?(?P<fails>\s+fails)?\s*$"
)
SERVE_RE = re.compile(r"^(?P<proto>tcp|udp)/(?P<port>\d+)$")


class ScenarioError(Exception):
    """The scenario file is wrong, or a step of the run could not be done."""


# ------------------------------------------------------------ the model


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    kind: str  # ping | tcp | udp
    family: int  # 4 | 6
    src: str
    dst: str
    port: int | None
    sees: str | None
    must_fail: bool
    text: str


@dataclass(slots=True, kw_only=True)
class Container:
    name: str
    networks: list[str]
    ports: list[dict[str, Any]]
    serve: list[tuple[str, int]]
    cni_args: tuple[tuple[str, str], ...]
    netns: str = ""
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # ifname -> result (1.1.0 shape)


@dataclass(slots=True, kw_only=True)
class Scenario:
    name: str
    description: str
    source: str
    networks: dict[str, NetworkConfigList]
    containers: list[Container]
    outside: bool
    outside_serve: list[tuple[str, int]]
    checks: list[Check]


def parse_check(text: str, where: str) -> Check:
    """``KIND[6] FROM -> TO[:PORT] [sees WHO] [fails]``, e.g. ``tcp host -> localhost:8080``."""
    m = CHECK_RE.match(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise ScenarioError(
            f"{where}: {text!r} is not a check; write KIND[6] FROM "
            "-> TO[:PORT] [sees WHO] [fails] (KIND: ping, tcp or udp)"
        )
    kind, dst = m["kind"], m["dst"].strip("[]")
    port = int(m["port"]) if m["port"] else None
    if kind == "ping" and port is not None:
        raise ScenarioError(f"{where}: {text!r}: ping takes no port")
    if kind != "ping" and port is None:
        raise ScenarioError(f"{where}: {text!r}: {kind} needs a port (TO:PORT)")
    if m["sees"] and kind == "ping":
        raise ScenarioError(f"{where}: {text!r}: 'sees' needs tcp or udp (the server reports who it saw)")
    family = 6 if m["six"] else 4
    if literal(dst) is not None:
        family = literal(dst) or family
    return Check(
        kind=kind,
        family=family,
        src=m["src"],
        dst=dst,
        port=port,
        sees=m["sees"],
        must_fail=bool(m["fails"]),
        text=" ".join(text.split()),
    )


def literal(ref: str) -> int | None:
    try:
        return ipaddress.ip_address(ref).version
    except ValueError:
        return None


def _serve_list(raw: Any, where: str) -> list[tuple[str, int]]:
    out = []
    for i, item in enumerate(raw or []):
        m = SERVE_RE.match(str(item))
        if m is None:
            raise ScenarioError(f"{where}.serve[{i}]: {item!r}: write tcp/PORT or udp/PORT")
        out.append((m["proto"], int(m["port"])))
    return out


def _with_data_dirs(netlist: NetworkConfigList, ipam_dir: Path) -> NetworkConfigList:
    """host-local without ``dataDir`` keeps its reservations in the run's directory, not in the
    machine's /var/lib/cni/networks."""
    obj = json.loads(json.dumps(netlist.raw))
    changed = False
    for plugin in obj.get("plugins") or []:
        ipam = plugin.get("ipam") if isinstance(plugin, dict) else None
        if isinstance(ipam, dict) and ipam.get("type") == "host-local" and not ipam.get("dataDir"):
            ipam["dataDir"] = str(ipam_dir)
            changed = True
    if not changed:
        return netlist
    return conflist_from_object(obj, json.dumps(obj).encode(), netlist.source)


def load(path: Path, ipam_dir: Path) -> Scenario:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise ScenarioError(f"{path}: expected a mapping with networks, containers and checks")
    unknown = set(raw) - {"name", "description", "outside", "networks", "containers", "checks"}
    if unknown:
        raise ScenarioError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
    networks: dict[str, NetworkConfigList] = {}
    for i, item in enumerate(raw.get("networks") or []):
        where = f"{path}: networks[{i}]"
        try:
            if isinstance(item, dict) and "file" in item:
                netlist = load_file((path.parent / str(item["file"])).resolve())
            elif isinstance(item, dict) and isinstance(item.get("conflist"), dict):
                obj = item["conflist"]
                netlist = conflist_from_object(obj, json.dumps(obj).encode(), where)
            else:
                raise ScenarioError(
                    f"{where}: give 'file' (a conflist path, relative to the scenario) or 'conflist' (inline)"
                )
        except CNIError as exc:
            raise ScenarioError(f"{where}: {exc.msg}") from None
        if netlist.name in networks:
            raise ScenarioError(f"{where}: a second network named {netlist.name!r}")
        networks[netlist.name] = _with_data_dirs(netlist, ipam_dir)
    containers: list[Container] = []
    for i, item in enumerate(raw.get("containers") or []):
        where = f"{path}: containers[{i}]"
        if not isinstance(item, dict) or not re.fullmatch(r"[a-z][a-z0-9-]{0,15}", str(item.get("name", ""))):
            raise ScenarioError(f"{where}: needs a name (lower-case letters, digits, '-'; at most 16)")
        name = str(item["name"])
        if name in ("host", "outside", "localhost") or any(c.name == name for c in containers):
            raise ScenarioError(f"{where}: the name {name!r} is taken")
        nets = [str(n) for n in item.get("networks") or []]
        for n in nets:
            if n not in networks:
                raise ScenarioError(f"{where}: unknown network {n!r}; defined: {', '.join(networks) or 'none'}")
        ports = item.get("ports") or []
        if not isinstance(ports, list) or not all(isinstance(p, dict) for p in ports):
            raise ScenarioError(f"{where}.ports: expected a list of {{hostPort, containerPort, protocol}}")
        args = []
        for pair in str(item.get("args") or "").split(";"):
            if pair:
                k, sep, v = pair.partition("=")
                if not sep or not k or not v:
                    raise ScenarioError(f"{where}.args: {pair!r} is not KEY=VALUE")
                args.append((k, v))
        containers.append(
            Container(
                name=name,
                networks=nets,
                ports=[dict(p) for p in ports],
                serve=_serve_list(item.get("serve"), where),
                cni_args=tuple(args),
            )
        )
    outside_raw = raw.get("outside")
    outside = bool(outside_raw)
    outside_serve = _serve_list(outside_raw.get("serve") if isinstance(outside_raw, dict) else None, f"{path}: outside")
    checks = [parse_check(str(c), f"{path}: checks[{i}]") for i, c in enumerate(raw.get("checks") or [])]
    places = {"host", "localhost"} | {c.name for c in containers} | ({"outside"} if outside else set())
    for check in checks:
        for ref in (check.src, check.dst, check.sees or "host"):
            base = ref.split(".")[0]
            if base not in places and literal(ref) is None:
                raise ScenarioError(
                    f"{path}: check {check.text!r}: unknown {ref!r}; known: {', '.join(sorted(places))}"
                )
        if check.src == "localhost" or (check.dst == "localhost" and check.src != "host"):
            raise ScenarioError(
                f"{path}: check {check.text!r}: localhost is the host's own loopback: use 'host -> localhost'"
            )
    return Scenario(
        name=str(raw.get("name") or path.stem),
        description=str(raw.get("description") or ""),
        source=str(path),
        networks=networks,
        containers=containers,
        outside=outside,
        outside_serve=outside_serve,
        checks=checks,
    )


def nft_comment(elem: Any) -> str:
    """The comment of a set element or map entry in ``nft -j`` output ('' if none)."""
    if isinstance(elem, list) and elem:  # a map entry: [key, value]
        elem = elem[0]
    if isinstance(elem, dict) and isinstance(elem.get("elem"), dict):
        return str(elem["elem"].get("comment", ""))
    return ""
