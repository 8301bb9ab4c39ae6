"""What the plugins that keep per-attachment nftables state (bridge, ptp, portmap, firewall)
share: the owner of the call's attachment, and a context in the calling (host) namespace."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from cni_plugins.spec.errors import ErrorList
from firewall.model import Owner

if TYPE_CHECKING:
    from cni_plugins.protocol.skel import CmdArgs
    from firewall.nft import NftBackend
    from firewall.owned import OwnedMaps


def owner(args: CmdArgs) -> Owner:
    """The attachment (network, container ID, ifname) that owns what this call adds."""
    return Owner(network=args.conf.name, container_id=args.container_id, ifname=args.ifname)


def valid_owners(args: CmdArgs) -> list[Owner] | None:
    """GC: the owners of the attachments in ``cni.dev/valid-attachments`` (None: no list, and
    then nothing of ours may be collected)."""
    valid = args.conf.valid_attachments
    if valid is None:
        return None
    return [Owner(network=args.conf.name, container_id=a.container_id, ifname=a.ifname) for a in valid]


def gc_owned(args: CmdArgs, plugin: str, tables: Iterable[tuple[OwnedMaps, tuple[str, ...]]]) -> None:
    """GC: drop this network's entries of ``tables`` (owners map, data maps) whose owner is not
    in ``cni.dev/valid-attachments``; nothing when the list is absent."""
    from firewall.model import network_prefix
    from firewall.owned import gc

    owners = valid_owners(args)
    if owners is None:
        return
    keep = {o.prefix for o in owners}
    nft, errors = host_nft(), ErrorList(f"{plugin} GC")
    for maps, data_maps in tables:
        with errors.step(f"GC of {maps.owners}"):
            gc(nft, maps, data_maps, keep, network_prefix(args.conf.name), what=f"{plugin} GC of {args.conf.name}")
    errors.raise_if_any()


def host_nft() -> NftBackend:
    """A libnftables context: made on first use, in the namespace the thread is in then."""
    from firewall.nft import LibNftables

    return LibNftables()
