"""The runtime side: running a network config list on a namespace as libcni does, and cnitool."""
