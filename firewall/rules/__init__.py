"""What each plugin asks of nftables, as pure builders of libnftables JSON commands: masquerade
(bridge, ptp), the MAC spoof check (bridge), port mappings and their conditions (portmap),
forwarding accepts (firewall).
"""
