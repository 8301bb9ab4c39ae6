"""Test doubles at our own seams: an in-memory IPAM store and an in-memory nftables."""
