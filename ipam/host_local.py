"""``host-local`` IPAM: addresses from configured ranges, reservations as files under dataDir.

Wiring only: ``ipam.config`` reads the options, ``ipam.allocator`` decides, ``ipam.store``
keeps the reservations in the reference's on-disk layout (so the reference plugin and this
one can share a dataDir in both directions).

Verbs: ADD allocates one address per range set; DEL releases what the container+interface
holds (unknown: success); CHECK verifies a reservation exists (and that the prevResult's
addresses in our ranges are the ones held); GC releases reservations of attachments not in
``cni.dev/valid-attachments``; STATUS reports code 50 when dataDir cannot be used (the
reference answers success without looking).
"""

from __future__ import annotations

import os

from cni_plugins.protocol import log, skel
from cni_plugins.protocol.skel import CmdArgs, Plugin
from cni_plugins.protocol.steps import options_for_del
from cni_plugins.spec.errors import CNIError, IOFailure, PluginNotAvailable
from cni_plugins.spec.types import DNS, IPAddress, Result
from ipam import allocator
from ipam.config import DEFAULT_DATA_DIR, IPAMConf, parse_data_dir
from ipam.store import Key, validate_component
from ipam.store.files import FileStore


def _key(args: CmdArgs) -> Key:
    validate_component(args.container_id, "container ID")
    validate_component(args.ifname, "interface name")
    return Key(args.container_id, args.ifname)


def cmd_add(args: CmdArgs) -> Result:
    conf = IPAMConf.from_netconf(args.conf, args.cni_args)
    key = _key(args)
    dns = parse_resolv_conf(conf.resolv_conf) if conf.resolv_conf else DNS()
    with FileStore(conf.data_dir, conf.name) as store:
        ips = allocator.allocate_all(store, conf.range_sets, key, conf.requested)
    return Result(ips=ips, routes=conf.routes, dns=dns)


def cmd_del(args: CmdArgs) -> None:
    """Only ``dataDir`` is read: what the attachment holds is found by its key, and a DEL does
    not fail on ranges, requested addresses or capabilities it cannot read.

    A store that cannot be written (read-only, full, out of inodes, unreadable) does not fail
    the DEL either, as the reference's does not: libcni would stop the chain's DEL here, and
    the other plugins' links and rules would stay. What can be removed is; what cannot is
    said on stderr (GC releases it once dataDir is writable again)."""
    data_dir = options_for_del("host-local", lambda: parse_data_dir(args.conf.ipam), lambda: DEFAULT_DATA_DIR)
    key = _key(args)
    store = FileStore(data_dir, args.conf.name)
    if not store.exists():
        return  # nothing was ever allocated on this network: nothing to release
    try:
        with store:
            released = allocator.release(store, key)
    except IOFailure as err:
        released = _release_read_only(data_dir, args.conf.name, key, err)
    log.debug(f"released {', '.join(map(str, released)) or 'nothing'} for {key.container_id}/{key.ifname}")


def _release_read_only(data_dir: str, network: str, key: Key, err: IOFailure) -> tuple[IPAddress, ...]:
    log.warning(f"DEL: {err.msg}; releasing {key.container_id}/{key.ifname} without writing the store")
    store = FileStore(data_dir, network, read_only=True)
    try:
        with store:
            released = allocator.release(store, key)
    except IOFailure as again:
        log.warning(f"DEL: {again.msg}; nothing released")
        return ()
    for ip, why in store.unreleased.items():
        log.warning(f"DEL: the reservation of {ip} stays ({why}); GC releases it once dataDir is writable")
    return released


def cmd_check(args: CmdArgs) -> None:
    conf = IPAMConf.from_netconf(args.conf, args.cni_args)
    key = _key(args)
    store = FileStore(conf.data_dir, conf.name)
    held: tuple[IPAddress, ...] = ()
    if store.exists():
        try:
            with store:
                held = allocator.holds(store, key)
        except IOFailure:  # a store that cannot be written can still be read, as by the reference
            with FileStore(conf.data_dir, conf.name, read_only=True) as read_only:
                held = allocator.holds(read_only, key)
    if not held:
        raise CNIError(
            f"host-local: Failed to find address added by container {key.container_id}",
            f"no reservation for interface {key.ifname} in {store.dir}",
        )
    allocator.check_prev_result("host-local", conf.range_sets, key, held, args.conf.prev_result)


def cmd_gc(args: CmdArgs) -> None:
    conf = IPAMConf.from_netconf(args.conf, args.cni_args)
    valid = args.conf.valid_attachments
    if valid is None:
        log.note("GC without cni.dev/valid-attachments: nothing released")
        return
    store = FileStore(conf.data_dir, conf.name)
    if not store.exists():
        return
    with store:
        stale = allocator.gc(store, frozenset(Key(a.container_id, a.ifname) for a in valid))
    if stale:
        log.note(f"GC released {', '.join(map(str, stale))} on network {conf.name}")


def cmd_status(args: CmdArgs) -> None:
    """Code 50 when dataDir (or, before the first ADD, its nearest existing parent) is not a
    writable directory. Reads only: nothing is created."""
    data_dir = os.path.join(parse_data_dir(args.conf.ipam), args.conf.name)
    probe = data_dir
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise PluginNotAvailable(
            f"host-local: dataDir {data_dir} is not usable: {probe} is not a writable directory",
            "fix ipam.dataDir or its permissions",
        )


def parse_resolv_conf(path: str) -> DNS:
    """``nameserver``, ``domain``, ``search`` and ``options`` lines, as the reference reads them."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError as exc:
        raise IOFailure(
            f"ipam.resolvConf: read {path}: {exc.strerror}", "give a readable resolv.conf-style file"
        ) from None
    nameservers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    domain = ""
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or fields[0].startswith(("#", ";")):
            continue
        if fields[0] == "nameserver":
            nameservers.append(fields[1])
        elif fields[0] == "domain":
            domain = fields[1]
        elif fields[0] == "search":
            search += fields[1:]
        elif fields[0] == "options":
            options += fields[1:]
    return DNS(nameservers=tuple(nameservers), domain=domain, search=tuple(search), options=tuple(options))


PLUGIN = Plugin(
    name="host-local",
    add=cmd_add,
    delete=cmd_del,
    check=cmd_check,
    status=cmd_status,
    gc=cmd_gc,
    cni_args=frozenset({"IP"}),
    about="CNI host-local IPAM plugin (cni-py)",
)


def main() -> None:
    skel.main(PLUGIN)
