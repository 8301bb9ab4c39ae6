"""What the plugins that keep per-attachment nftables state (bridge, ptp, portmap, firewall)
share: the owner of the call's attachment, and a context in the calling (host) namespace."""

from __future__ import annotations

from typing import TYPE_CHECKING

from firewall.model import Owner

if TYPE_CHECKING:
    from cni_plugins.protocol.skel import CmdArgs
    from firewall.nft import NftBackend


def owner(args: CmdArgs) -> Owner:
    """The attachment (network, container ID, ifname) that owns what this call adds."""
    return Owner(network=args.conf.name, container_id=args.container_id, ifname=args.ifname)


def host_nft() -> NftBackend:
    """A libnftables context: made on first use, in the namespace the thread is in then."""
    from firewall.nft import LibNftables

    return LibNftables()
