"""A pod network across nodes: each node leases its pod subnet from a cluster CIDR kept in
etcd, and a per-node agent (``cni-plugins node run``) keeps the node's routes (``routed``)
or vxlan FDB and neighbour entries (``vxlan``) in step with the other nodes' leases, and
writes the node's conflist. ``network`` holds the records, ``leases`` the subnet leases,
``dataplane`` the kernel side, ``isolation`` the nftables table that keeps pod networks
apart, ``agent`` the loop, ``cli`` the command.
"""
