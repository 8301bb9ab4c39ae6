"""IPAM plugins: host-local (file-locked allocator) and static."""
