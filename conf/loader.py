"""Network config files on disk, found and read as libcni does (``libcni/conf.go``).

* ``*.conflist`` files are scanned in lexical order; the first whose ``name`` matches wins;
  then the deprecated single-plugin ``*.conf`` / ``*.json`` files, promoted to a list.
* ``*.yaml`` / ``*.yml`` hold either form, for configs people write by hand (a list when
  it has ``plugins``); they are read after the JSON files of their kind.
* Unless ``loadOnlyInlinedPlugins`` is true, plugin configs in ``<dir>/<network name>/*.conf``
  are appended to ``plugins`` (spec 1.1.0, non-inlined plugins).
* ``cniVersions`` is negotiated: the highest supported version among it and ``cniVersion``.

Every error names the file and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni_plugins.spec.errors import CNIError, InvalidNetworkConfig
from cni_plugins.spec.version import (
    DEFAULT_CONFIG_VERSION,
    SUPPORTED_VERSIONS,
    parse_version,
)
from conf.netconf import validate_network_name

LIST_EXTS = (".conflist",)
SINGLE_EXTS = (".conf", ".json")
YAML_EXTS = (".yaml", ".yml")


class NetworkNotFound(InvalidNetworkConfig):
    """No config file in the directory defines that network name."""


class NoConfigsFound(NetworkNotFound):
    """The directory holds no config files at all."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginConf:
    type: str
    capabilities: dict[str, bool]
    raw: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkConfigList:
    name: str
    cni_version: str
    plugins: tuple[PluginConf, ...]
    disable_check: bool = False
    disable_gc: bool = False
    cni_versions: tuple[str, ...] = ()
    raw: dict[str, Any] = field(default_factory=dict)
    bytes: bytes = b""  # what libcni caches as "config"
    source: str = ""


def conf_files(directory: str | Path, exts: tuple[str, ...]) -> list[Path]:
    """Regular files with one of ``exts``, sorted; a missing directory is empty."""
    d = Path(directory)
    try:
        entries = sorted(d.iterdir(), key=lambda p: p.name)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise CNIError(f"read config directory {d}: {exc.strerror}") from None
    return [p for p in entries if p.suffix in exts and p.is_file()]


def _read_object(path: Path) -> tuple[dict[str, Any], bytes]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidNetworkConfig(f"{path}: cannot read: {exc.strerror}") from None
    if path.suffix in YAML_EXTS:
        import yaml  # only for hand-written files; never on a plugin's hot path

        try:
            obj = yaml.safe_load(data)
        except yaml.YAMLError as exc:
            raise InvalidNetworkConfig(f"{path}: invalid YAML: {exc}") from None
        if not isinstance(obj, dict):
            raise InvalidNetworkConfig(f"{path}: expected a mapping at the top level")
        return obj, json.dumps(obj).encode()
    try:
        obj = json.loads(data)
    except ValueError as exc:
        raise InvalidNetworkConfig(f"{path}: invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidNetworkConfig(f"{path}: expected a JSON object at the top level")
    return obj, data


def _flag(obj: dict[str, Any], key: str, where: str) -> bool:
    value = obj.get(key, False)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidNetworkConfig(f"{where}: {key}: expected true or false, got {value!r}")


def _negotiate(obj: dict[str, Any], where: str) -> tuple[str, tuple[str, ...]]:
    version = obj.get("cniVersion") or DEFAULT_CONFIG_VERSION
    if not isinstance(version, str):
        raise InvalidNetworkConfig(f"{where}: cniVersion: expected a string, got {version!r}")
    try:
        parse_version(version)
    except CNIError as exc:
        raise InvalidNetworkConfig(f"{where}: {exc.msg}") from None
    versions = obj.get("cniVersions", [])
    if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
        raise InvalidNetworkConfig(f"{where}: cniVersions: expected a list of version strings, got {versions!r}")
    for v in versions:
        try:
            parse_version(v)
        except CNIError as exc:
            raise InvalidNetworkConfig(f"{where}: cniVersions: {exc.msg}") from None
    # libcni: ignore versions above what it implements, take the highest of the rest.
    newest = parse_version(SUPPORTED_VERSIONS[-1])
    usable = [v for v in versions if parse_version(v) <= newest]
    if usable:
        best = max(usable, key=parse_version)
        if parse_version(best) > parse_version(version) or "cniVersion" not in obj:
            version = best
    return version, tuple(versions)


def _plugin(obj: object, where: str) -> PluginConf:
    if not isinstance(obj, dict):
        raise InvalidNetworkConfig(f"{where}: expected a JSON object, got {obj!r}")
    ptype = obj.get("type")
    if not isinstance(ptype, str) or not ptype:
        raise InvalidNetworkConfig(
            f"{where}: type: missing plugin type", 'every plugin needs "type", the name of its executable'
        )
    if "/" in ptype or "\\" in ptype:
        raise InvalidNetworkConfig(f"{where}: type: {ptype!r} must be an executable name, not a path")
    caps = obj.get("capabilities", {}) or {}
    if not isinstance(caps, dict) or not all(isinstance(v, bool) for v in caps.values()):
        raise InvalidNetworkConfig(f"{where}: capabilities: expected an object of booleans, got {caps!r}")
    return PluginConf(type=ptype, capabilities=caps, raw=obj)


def conflist_from_object(
    obj: dict[str, Any], data: bytes, source: str, *, directory: Path | None = None
) -> NetworkConfigList:
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidNetworkConfig(f"{source}: name: missing network name", 'add "name" to the config list')
    try:
        validate_network_name(name)
    except CNIError as exc:
        raise InvalidNetworkConfig(f"{source}: {exc.msg}", exc.details) from None
    version, versions = _negotiate(obj, source)
    disable_check = _flag(obj, "disableCheck", source)
    disable_gc = _flag(obj, "disableGC", source)
    inlined_only = _flag(obj, "loadOnlyInlinedPlugins", source)
    raw_plugins = obj.get("plugins")
    if raw_plugins is None and inlined_only:
        raise InvalidNetworkConfig(f"{source}: loadOnlyInlinedPlugins is true but there is no plugins list")
    if raw_plugins is not None and not isinstance(raw_plugins, list):
        raise InvalidNetworkConfig(f"{source}: plugins: expected a list, got {type(raw_plugins).__name__}")
    plugins = [_plugin(p, f"{source}: plugins[{i}]") for i, p in enumerate(raw_plugins or [])]
    if not inlined_only and directory is not None:
        for path in conf_files(directory / name, SINGLE_EXTS):
            pobj, _ = _read_object(path)
            plugins.append(_plugin(pobj, str(path)))
    if not plugins:
        raise InvalidNetworkConfig(
            f"{source}: plugins: no plugins in network {name!r}", "a config list needs at least one plugin"
        )
    return NetworkConfigList(
        name=name,
        cni_version=version,
        cni_versions=versions,
        plugins=tuple(plugins),
        disable_check=disable_check,
        disable_gc=disable_gc,
        raw=obj,
        bytes=data,
        source=source,
    )


def conflist_from_single(obj: dict[str, Any], data: bytes, source: str) -> NetworkConfigList:
    """Promote a single-plugin config to a one-plugin list (``ConfListFromConf``)."""
    plugin = _plugin(obj, source)
    name = obj.get("name")
    version = obj.get("cniVersion") or DEFAULT_CONFIG_VERSION
    listobj = {"cniVersion": version, "name": name, "plugins": [plugin.raw]}
    return conflist_from_object(listobj, json.dumps(listobj).encode(), source)


def load_file(path: str | Path) -> NetworkConfigList:
    """A config file of any supported kind, as a list."""
    p = Path(path)
    obj, data = _read_object(p)
    if p.suffix in SINGLE_EXTS or (p.suffix in YAML_EXTS and "plugins" not in obj):
        return conflist_from_single(obj, data, str(p))
    return conflist_from_object(obj, data, str(p), directory=p.parent)


def load_conflist(directory: str | Path, name: str) -> NetworkConfigList:
    """The network called ``name`` in ``directory`` (``LoadConfList``)."""
    d = Path(directory)
    lists = conf_files(d, LIST_EXTS) + [p for p in conf_files(d, YAML_EXTS)]
    singles = conf_files(d, SINGLE_EXTS)
    if not lists and not singles:
        raise NoConfigsFound(f"no net configurations found in {d}", "put a .conflist file there or set NETCONFPATH")
    for path in lists:
        obj, data = _read_object(path)
        if obj.get("name") != name:
            continue
        if path.suffix in YAML_EXTS and "plugins" not in obj:
            return conflist_from_single(obj, data, str(path))
        return conflist_from_object(obj, data, str(path), directory=d)
    for path in singles:
        obj, data = _read_object(path)
        if obj.get("name") == name:
            return conflist_from_single(obj, data, str(path))
    raise NetworkNotFound(f'no net configuration with name "{name}" in {d}', "check the network name and NETCONFPATH")


def list_networks(directory: str | Path) -> list[NetworkConfigList]:
    """Every loadable network in ``directory`` (first definition of a name wins)."""
    d = Path(directory)
    seen: dict[str, NetworkConfigList] = {}
    for path in conf_files(d, LIST_EXTS) + conf_files(d, YAML_EXTS) + conf_files(d, SINGLE_EXTS):
        netlist = load_file(path)
        seen.setdefault(netlist.name, netlist)
    return list(seen.values())
