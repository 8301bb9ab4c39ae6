"""Run a network config list on a namespace the way libcni does (``libcni/api.go``).

* ADD runs the plugins in order, threading each result into the next as ``prevResult``,
  stops at the first error, and caches the final result.
* DEL runs them in reverse with the cached result as ``prevResult`` (0.4.0+), stops at
  the first error, then drops the cache entry.
* CHECK (0.4.0+, unless ``disableCheck``) passes the cached result to each plugin in order.
* STATUS (1.1.0+) asks each plugin in order and stops at the first that is not available.
* GC (unless ``disableGC``) DELs every cached attachment of the network that is not in the
  valid set, then (1.1.0+) sends GC with ``cni.dev/valid-attachments`` to every plugin,
  going on past errors.

Plugins are always exec'd, with ``os.environ`` plus the CNI_* variables, as runtimes do.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cni_plugins.protocol.invoke import find_in_path
from cni_plugins.runtime import cache
from cni_plugins.spec.errors import CNIError, IncompatibleCNIVersion, InternalError
from cni_plugins.spec.errors import from_json as error_from_json
from cni_plugins.spec.version import at_least, convert
from conf.loader import NetworkConfigList, PluginConf


@dataclass(frozen=True, slots=True, kw_only=True)
class RuntimeConf:
    container_id: str
    netns: str
    ifname: str = "eth0"
    cni_args: tuple[tuple[str, str], ...] = ()
    capability_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Attachment:
    container_id: str
    ifname: str


class CNIRunner:
    def __init__(
        self, paths: list[str], cache_dir: str = cache.DEFAULT_CACHE_DIR, environ: Mapping[str, str] | None = None
    ) -> None:
        self.paths = tuple(paths)
        self.cache_dir = cache_dir
        self.environ = dict(os.environ if environ is None else environ)

    # ------------------------------------------------------------ verbs

    def add(self, netlist: NetworkConfigList, rt: RuntimeConf) -> dict[str, Any]:
        prev: dict[str, Any] | None = None
        for plugin in netlist.plugins:
            out = self._exec(plugin, "ADD", self._build(netlist, plugin, prev, rt), rt)
            prev = self._parse_result(out, plugin)
        assert prev is not None
        cache.write(
            self.cache_dir,
            cache.CachedAttachment(
                container_id=rt.container_id,
                ifname=rt.ifname,
                network_name=netlist.name,
                netns=rt.netns,
                cni_args=rt.cni_args,
                capability_args=rt.capability_args,
                config=netlist.bytes,
                result=prev,
            ),
        )
        return prev

    def delete(self, netlist: NetworkConfigList, rt: RuntimeConf) -> None:
        prev = None
        if at_least(netlist.cni_version, "0.4.0"):
            prev = self._cached_result(netlist, rt)
        for plugin in reversed(netlist.plugins):
            self._exec(plugin, "DEL", self._build(netlist, plugin, prev, rt), rt)
        cache.delete(self.cache_dir, netlist.name, rt.container_id, rt.ifname)

    def check(self, netlist: NetworkConfigList, rt: RuntimeConf) -> None:
        if not at_least(netlist.cni_version, "0.4.0"):
            raise IncompatibleCNIVersion(
                f'configuration version "{netlist.cni_version}" does not support the CHECK command'
            )
        if netlist.disable_check:
            return
        prev = self._cached_result(netlist, rt)
        if prev is None:
            raise CNIError(
                f"no cached result for network {netlist.name!r}, container {rt.container_id}, ifname {rt.ifname}",
                "CHECK needs a previous ADD with the same network, netns and ifname",
            )
        for plugin in netlist.plugins:
            self._exec(plugin, "CHECK", self._build(netlist, plugin, prev, rt), rt)

    def status(self, netlist: NetworkConfigList) -> None:
        if not at_least(netlist.cni_version, "1.1.0"):
            return
        rt = RuntimeConf(container_id="", netns="", ifname="")
        for plugin in netlist.plugins:
            self._exec(plugin, "STATUS", self._build(netlist, plugin, None, rt, capabilities=False), rt)

    def gc(self, netlist: NetworkConfigList, valid: list[Attachment] | None) -> None:
        if netlist.disable_gc:
            return
        valid_keys = {(a.container_id, a.ifname) for a in valid or []}
        errors: list[str] = []
        for att in cache.attachments(self.cache_dir, netlist.name):
            if (att.container_id, att.ifname) in valid_keys:
                continue
            rt = RuntimeConf(
                container_id=att.container_id,
                netns=att.netns,
                ifname=att.ifname,
                cni_args=att.cni_args,
                capability_args=att.capability_args,
            )
            try:
                self.delete(netlist, rt)
            except CNIError as exc:
                errors.append(f"DEL {att.container_id}/{att.ifname}: {exc.msg}")
        if at_least(netlist.cni_version, "1.1.0"):
            rt = RuntimeConf(container_id="", netns="", ifname="")
            attachments = [{"containerID": a.container_id, "ifname": a.ifname} for a in valid or []]
            extra = (
                {"cni.dev/valid-attachments": attachments, "cni.dev/attachments": attachments}
                if valid is not None
                else {}
            )
            for plugin in netlist.plugins:
                conf = self._build(netlist, plugin, None, rt, capabilities=False)
                conf.update(extra)
                try:
                    self._exec(plugin, "GC", conf, rt)
                except CNIError as exc:
                    errors.append(f"GC {plugin.type}: {exc.msg}")
        if errors:
            raise CNIError(f"gc of network {netlist.name!r} had {len(errors)} error(s)", "; ".join(errors))

    # ------------------------------------------------------------ internals

    def _cached_result(self, netlist: NetworkConfigList, rt: RuntimeConf) -> dict[str, Any] | None:
        att = cache.read(self.cache_dir, netlist.name, rt.container_id, rt.ifname)
        if att is None or att.result is None:
            return None
        try:
            return convert(att.result, netlist.cni_version)
        except CNIError:
            return None  # an unreadable cache must not block DEL

    def _build(
        self,
        netlist: NetworkConfigList,
        plugin: PluginConf,
        prev: dict[str, Any] | None,
        rt: RuntimeConf,
        *,
        capabilities: bool = True,
    ) -> dict[str, Any]:
        """The per-plugin stdin object (``buildOneConfig`` + ``injectRuntimeConfig``)."""
        conf = dict(plugin.raw)
        conf["name"] = netlist.name
        conf["cniVersion"] = netlist.cni_version
        if prev is not None:
            conf["prevResult"] = prev
        if capabilities:
            runtime = {k: v for k, v in rt.capability_args.items() if plugin.capabilities.get(k)}
            if runtime:
                conf["runtimeConfig"] = runtime
        return conf

    def _env(self, command: str, rt: RuntimeConf) -> dict[str, str]:
        env = dict(self.environ)
        env.update(
            {
                "CNI_COMMAND": command,
                "CNI_CONTAINERID": rt.container_id,
                "CNI_NETNS": rt.netns,
                "CNI_IFNAME": rt.ifname,
                "CNI_ARGS": ";".join(f"{k}={v}" for k, v in rt.cni_args),
                "CNI_PATH": os.pathsep.join(self.paths),
            }
        )
        return env

    def _exec(self, plugin: PluginConf, command: str, conf: dict[str, Any], rt: RuntimeConf) -> bytes:
        path = find_in_path(plugin.type, self.paths)
        stdin = json.dumps(conf).encode()
        env = self._env(command, rt)
        for attempt in range(5):
            try:
                proc = subprocess.run([path], input=stdin, env=env, capture_output=True, check=False)
                break
            except OSError as exc:
                # libcni retries "text file busy": a plugin binary being replaced right now.
                if exc.errno != errno.ETXTBSY or attempt == 4:
                    raise InternalError(f"exec plugin {path}: {exc.strerror}") from None
                time.sleep(1)
        if proc.stderr:
            os.write(2, proc.stderr)
        if proc.returncode != 0:
            err: CNIError
            try:
                err = error_from_json(json.loads(proc.stdout))
            except ValueError:
                text = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip()
                err = InternalError(text or f"exit status {proc.returncode}")
            raise err.with_context(f"plugin type={plugin.type!r} {command}")
        return proc.stdout

    def _parse_result(self, out: bytes, plugin: PluginConf) -> dict[str, Any]:
        try:
            obj = json.loads(out)
        except ValueError as exc:
            raise InternalError(f"plugin type={plugin.type!r} ADD: result is not JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise InternalError(f"plugin type={plugin.type!r} ADD: result is not a JSON object")
        return obj
