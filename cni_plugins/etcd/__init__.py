"""etcd, the store cluster-wide state lives in: a small v3 client over etcd's HTTP/JSON gateway
(``client``), its watch stream (``watch``) and the ``etcd`` config object (``config``).

Used by ``ipam.cluster_ipam`` (one process per call, or a warm helper's worker) and by the
node agent (``cni_plugins.node``), so it sits below both and imports nothing above ``conf``.
"""
