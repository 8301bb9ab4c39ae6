"""The ``etcd`` object of a network config (``ipam.etcd`` for cluster-ipam), read into
``client.Options``; every error is code 7 and names its key::

    "etcd": {
        "endpoints": ["https://10.0.0.10:2379", "https://10.0.0.11:2379"],
        "prefix": "/cni-py",
        "caFile": "/etc/cni-py/etcd-ca.pem",
        "certFile": "/etc/cni-py/etcd-client.pem",
        "keyFile": "/etc/cni-py/etcd-client-key.pem",
        "timeout": 5
    }

``timeout`` (seconds) bounds a whole plugin call's time with etcd, retries included.
"""

from __future__ import annotations

from typing import Any

from cni_plugins.etcd.client import DEFAULT_PREFIX, DEFAULT_TIMEOUT, Options, parse_endpoint
from cni_plugins.spec.errors import InvalidNetworkConfig
from conf.fields import abs_path_field, str_field, str_list_field

MAX_TIMEOUT = 600.0


def options_from_json(raw: dict[str, Any], where: str) -> Options:
    texts = str_list_field(raw, "endpoints", where)
    if not texts:
        raise InvalidNetworkConfig(
            f"{where}.endpoints: missing", 'give etcd\'s client URLs, e.g. "endpoints": ["http://10.0.0.10:2379"]'
        )
    endpoints = []
    for i, text in enumerate(texts):
        try:
            endpoints.append(parse_endpoint(text))
        except ValueError as exc:
            raise InvalidNetworkConfig(f"{where}.endpoints[{i}]: {exc}", "write it as http(s)://host:port") from None
    files = {key: abs_path_field(raw, key, "", where) for key in ("caFile", "certFile", "keyFile")}
    if bool(files["certFile"]) != bool(files["keyFile"]):
        raise InvalidNetworkConfig(
            f"{where}: certFile and keyFile go together", "give both (a client certificate and its key) or neither"
        )
    if any(files.values()) and not any(e.scheme == "https" for e in endpoints):
        raise InvalidNetworkConfig(
            f"{where}: TLS files given but every endpoint is http://", "use https:// endpoints, or drop the TLS files"
        )
    return Options(
        endpoints=tuple(endpoints),
        ca_file=files["caFile"],
        cert_file=files["certFile"],
        key_file=files["keyFile"],
        timeout=timeout_field(raw, "timeout", where),
        prefix=prefix_field(raw, "prefix", where),
    )


def timeout_field(raw: dict[str, Any], key: str, where: str) -> float:
    value = raw.get(key, DEFAULT_TIMEOUT)
    if value is None:
        return DEFAULT_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_TIMEOUT:
        raise InvalidNetworkConfig(
            f"{where}.{key}: expected seconds, more than 0 and at most {MAX_TIMEOUT:g}, got {value!r}",
            "how long a call may wait for etcd, retries included",
        )
    return float(value)


def prefix_field(raw: dict[str, Any], key: str, where: str) -> str:
    return check_prefix(str_field(raw, key, DEFAULT_PREFIX, where) or DEFAULT_PREFIX, f"{where}.{key}")


def check_prefix(prefix: str, where: str) -> str:
    """A key prefix: absolute, no empty or dot components; returned without a trailing '/'
    (keys are ``prefix + "/ipam/..."``, so "/" becomes "")."""
    parts = prefix.split("/")
    if not prefix.startswith("/") or any(p in (".", "..") for p in parts) or "\0" in prefix or "//" in prefix:
        raise InvalidNetworkConfig(
            f"{where}: {prefix!r} is not a key prefix", f"give a path-like prefix such as {DEFAULT_PREFIX}"
        )
    return prefix.rstrip("/")
