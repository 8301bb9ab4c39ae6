"""The kernel, over netlink and /proc: network namespaces, links, addresses, routes, sysctls,
conntrack. Knows nothing of plugins or their configs.
"""
