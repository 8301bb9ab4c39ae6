"""``loopback``: bring ``lo`` up in the container (ADD), down (DEL), and verify it (CHECK)."""

from __future__ import annotations

from cni_plugins.kernel.netns import NetNSGone
from cni_plugins.protocol import skel
from cni_plugins.protocol.skel import CmdArgs, Plugin
from cni_plugins.spec.errors import CNIError
from cni_plugins.spec.types import Interface, IPConfig, Result

LOOPBACK = "lo"


def cmd_add(args: CmdArgs) -> Result:
    from cni_plugins.kernel.netlink import Netlink

    with Netlink.open(args.netns) as nl:
        lo = nl.require_link(LOOPBACK)
        nl.set_link(lo.index, state="up")
        addrs = nl.addresses(index=lo.index)
    if args.conf.prev_result is not None:
        return args.conf.prev_result  # chained: pass the previous result through untouched
    ips = []
    for version in (4, 6):
        first = next((a for a in addrs if a.address.version == version), None)
        if first is not None:
            ips.append(IPConfig(address=first.address, interface=0))
    # The reference reports CNI_IFNAME (runtimes pass "lo") although it always configures lo.
    return Result(
        interfaces=(Interface(name=args.ifname, mac="00:00:00:00:00:00", sandbox=args.netns),),
        ips=tuple(ips),
    )


def cmd_del(args: CmdArgs) -> None:
    from cni_plugins.kernel.netlink import Netlink

    if not args.netns:
        return
    try:
        with Netlink.open(args.netns) as nl:
            lo = nl.link(LOOPBACK)
            if lo is not None:
                nl.set_link(lo.index, state="down")
    except NetNSGone:
        return  # the container is gone: nothing to undo


def cmd_check(args: CmdArgs) -> None:
    from cni_plugins.kernel.netlink import Netlink

    with Netlink.open(args.netns) as nl:
        lo = nl.require_link(LOOPBACK)
        if not lo.is_up:
            raise CNIError(f"loopback interface in {args.netns} is down", "run ADD again or bring lo up")
        for addr in nl.addresses(index=lo.index):
            if not addr.address.ip.is_loopback:
                raise CNIError(f"loopback interface in {args.netns} has a non-loopback address {addr.address}")


PLUGIN = Plugin(name="loopback", add=cmd_add, delete=cmd_del, check=cmd_check, about="CNI loopback plugin (cni-py)")


def main() -> None:
    skel.main(PLUGIN)
