"""One plugin call: environment + stdin -> verb -> stdout (skel), delegation to IPAM (invoke),
the plugin registry, logging, the named steps of an ADD and its rollback, the per-attachment
lock and cancellation.
"""
