"""Who owns a firewall entry: one attachment (network, container ID, interface).

Every per-container element carries a comment naming its owner (readable with
``nft list``) and is registered in an ``owners`` map under a 32-bit mark derived from the
owner; DEL removes an element only when the owners map still holds *its* mark for that key
(see ``firewall.owned``). Owners are never inferred from addresses: a newer container that
got the same IP owns its entries, and the older container's late DEL leaves them alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

COMMENT_MAX = 127  # nftables' comment limit is 128 bytes including the terminator


def short_hash(text: str, length: int = 16) -> str:
    return hashlib.sha512(text.encode()).hexdigest()[:length]


@dataclass(frozen=True, slots=True, kw_only=True)
class Owner:
    network: str
    container_id: str
    ifname: str

    @property
    def prefix(self) -> str:
        """``<hash(network)>-<hash(ifname:containerID)>``, the reference's masquerade tag."""
        return f"{short_hash(self.network)}-{short_hash(f'{self.ifname}:{self.container_id}')}"

    @property
    def comment(self) -> str:
        text = f"{self.prefix} net:{self.network} if:{self.ifname} id:{self.container_id}"
        return text[:COMMENT_MAX]

    @property
    def mark(self) -> int:
        """A 32-bit id for the owners map (nonzero)."""
        digest = hashlib.sha512(f"{self.network}\0{self.ifname}\0{self.container_id}".encode()).digest()
        return int.from_bytes(digest[:4], "big") or 1

    def matches_comment(self, comment: str) -> bool:
        return comment.startswith(self.prefix)


def network_prefix(network: str) -> str:
    return short_hash(network)


def owner_prefix_of(comment: str) -> str:
    """The ``<net>-<attachment>`` hash pair at the start of one of our comments, or ''."""
    head = comment.split(" ", 1)[0]
    parts = head.split("-")
    if len(parts) == 2 and all(len(p) == 16 for p in parts):
        return head
    return ""
