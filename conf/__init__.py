"""Network configuration: the per-plugin request (stdin), CNI_ARGS, and config files on disk."""
