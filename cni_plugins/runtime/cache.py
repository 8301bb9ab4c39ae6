"""libcni's result cache: ``<cacheDir>/results/<network>-<containerID>-<ifname>``.

Same place and format as libcni (``libcni/api.go`` ``cachedInfo``), so a DEL or CHECK after
a restart, or by the reference cnitool, finds what an ADD of ours stored, and vice versa:
``{"kind": "cniCacheV1", "containerId", "config" (base64 of the conflist bytes), "ifName",
"networkName", "netns", "cniArgs": [[k, v]], "capabilityArgs", "result"}``. The folder is
0700 and files 0600; a file that is not a cniCacheV1 object is read as a bare result.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni_plugins.spec.errors import IOFailure

DEFAULT_CACHE_DIR = "/var/lib/cni"
KIND = "cniCacheV1"


@dataclass(frozen=True, slots=True, kw_only=True)
class CachedAttachment:
    container_id: str
    ifname: str
    network_name: str
    netns: str = ""
    cni_args: tuple[tuple[str, str], ...] = ()
    capability_args: dict[str, Any] = field(default_factory=dict)
    config: bytes = b""
    result: dict[str, Any] | None = None


def results_dir(cache_dir: str) -> Path:
    return Path(cache_dir) / "results"


def cache_path(cache_dir: str, network: str, container_id: str, ifname: str) -> Path:
    return results_dir(cache_dir) / f"{network}-{container_id}-{ifname}"


def write(cache_dir: str, att: CachedAttachment) -> None:
    obj: dict[str, Any] = {
        "kind": KIND,
        "containerId": att.container_id,
        "config": base64.b64encode(att.config).decode(),
        "ifName": att.ifname,
        "networkName": att.network_name,
    }
    if att.netns:
        obj["netns"] = att.netns
    if att.cni_args:
        obj["cniArgs"] = [list(p) for p in att.cni_args]
    if att.capability_args:
        obj["capabilityArgs"] = att.capability_args
    if att.result is not None:
        obj["result"] = att.result
    path = cache_path(cache_dir, att.network_name, att.container_id, att.ifname)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh)
        os.replace(tmp, path)
    except OSError as exc:
        raise IOFailure(f"write result cache {path}: {exc.strerror}") from None


def _parse(obj: Any, network: str, container_id: str, ifname: str) -> CachedAttachment | None:
    if not isinstance(obj, dict):
        return None
    if obj.get("kind") != KIND:
        # Legacy: the file is a bare result.
        return CachedAttachment(container_id=container_id, ifname=ifname, network_name=network, result=obj)
    try:
        config = base64.b64decode(obj.get("config") or "")
    except ValueError:
        config = b""
    result = obj.get("result")
    return CachedAttachment(
        container_id=str(obj.get("containerId", container_id)),
        ifname=str(obj.get("ifName", ifname)),
        network_name=str(obj.get("networkName", network)),
        netns=str(obj.get("netns", "")),
        cni_args=tuple((str(k), str(v)) for k, v in (obj.get("cniArgs") or [])),
        capability_args=obj.get("capabilityArgs") or {},
        config=config,
        result=result if isinstance(result, dict) else None,
    )


def read(cache_dir: str, network: str, container_id: str, ifname: str) -> CachedAttachment | None:
    """The cached attachment, or None when there is none or it cannot be read."""
    path = cache_path(cache_dir, network, container_id, ifname)
    try:
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return _parse(obj, network, container_id, ifname)


def delete(cache_dir: str, network: str, container_id: str, ifname: str) -> None:
    try:
        cache_path(cache_dir, network, container_id, ifname).unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise IOFailure(f"delete result cache: {exc.strerror}") from None


def attachments(cache_dir: str, network: str) -> list[CachedAttachment]:
    """Every cached attachment of ``network`` (libcni ``GetCachedAttachments``)."""
    out = []
    try:
        entries = sorted(results_dir(cache_dir).iterdir())
    except OSError:
        return []
    for path in entries:
        if not path.name.startswith(f"{network}-") or path.name.startswith("."):
            continue
        try:
            obj = json.loads(path.read_bytes())
        except (OSError, ValueError):
            continue
        if not isinstance(obj, dict) or obj.get("kind") != KIND or obj.get("networkName") != network:
            continue
        att = _parse(obj, network, "", "")
        if att is not None and att.container_id and att.ifname:
            out.append(att)
    return out
