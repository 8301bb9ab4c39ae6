"""The warm helper: the launcher an executable runs (client), the wire protocol, the pool
manager (server), its workers, who the caller is (peer) and systemd units.
"""
