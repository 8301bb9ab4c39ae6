"""The reliability suite: plugins killed at random points, flooded by many runtimes, fed
hostile input, put through a simulated reboot and a full, read-only or inode-less disk,
counting what leaks, what is duplicated and what is answered badly.

``python -m tests.reliability`` runs it (``--help``; docs/reliability.md says what each part
does and what its counts mean). Each part runs in a process of its own, in a network and
mount namespace standing for the host (``part.py``), against one column of plugins: ours
with the warm helper, ours without it, or the reference plugins. The short, bounded
version runs in the test suite (tests/integration/test_reliability.py).

    host.py      the host stand-in: container namespaces, and the state that is compared
    runtime.py   plugins run as a runtime runs them (libcni's chain, cache, GC), and killed
    kill.py      kill -9 at random points of ADD and DEL, then DEL as a runtime would
    flood.py     many runtimes, many containers, random order, races of one container
    fuzz.py      hypothesis over stdin, CNI_ARGS, runtimeConfig and the environment
    reboot.py    namespaces and links wiped while the state on disk and in nftables stays
    disk.py      dataDir full, read-only, without inodes
"""
