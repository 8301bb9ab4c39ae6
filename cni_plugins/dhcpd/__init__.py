"""The DHCP daemon of the ``dhcp`` IPAM plugin: holds and renews leases (``cni-plugins dhcp daemon``)."""
