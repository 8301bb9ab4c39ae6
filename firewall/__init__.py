"""nftables: pure rule builders and one runner that applies a batch atomically."""
