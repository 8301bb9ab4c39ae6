"""systemd units for the DHCP daemon, written by ``cni-plugins install --systemd`` beside the
helper's when ``dhcp`` is installed.

They take the reference's names and socket (``cni-dhcp.socket`` listening on
``/run/cni/dhcp.sock``, ``cni-dhcp.service``), so a host set up for the reference's daemon
runs ours with the same ``systemctl`` commands; units in /etc/systemd/system take
precedence over a package's of the same name. systemd owns the socket (fd 3); the service
is started at boot and says READY=1 once it serves. It is restarted only when it fails:
its leases live in its memory, and a restart forgets them.
"""

from __future__ import annotations

import os
from pathlib import Path

from cni_plugins.protocol import installed
from ipam.dhcp_conf import DEFAULT_SOCKET

DEFAULT_NAME = "cni-dhcp"


def exec_start(sock: str) -> str:
    """The daemon as a launcher would run it."""
    return installed.exec_start("cni_plugins.dhcpd.server", ["-socketpath", sock])


def socket_unit(name: str, sock: str) -> str:
    root = installed.package_root()
    return (
        "[Unit]\n"
        f"Description=CNI DHCP daemon socket (cni-py, installed from {root})\n"
        f"PartOf={name}.service\n"
        "\n"
        "[Socket]\n"
        f"ListenStream={sock}\n"
        "SocketMode=0600\n"
        "DirectoryMode=0700\n"
        "RemoveOnStop=true\n"
        f"Service={name}.service\n"
        "\n"
        "[Install]\n"
        "WantedBy=sockets.target\n"
    )


def service_unit(name: str, sock: str) -> str:
    root = installed.package_root()
    return (
        "[Unit]\n"
        f"Description=CNI DHCP daemon: leases for the dhcp IPAM plugin (cni-py, installed from {root})\n"
        f"Requires={name}.socket\n"
        f"After=network.target {name}.socket\n"
        "\n"
        "[Service]\n"
        "Type=notify\n"
        "NotifyAccess=main\n"
        f"ExecStart={exec_start(sock)}\n"
        "Restart=on-failure\n"
        "RestartSec=1s\n"
        "TimeoutStopSec=15s\n"
        "LimitNOFILE=65536\n"
        f"SyslogIdentifier={name}\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def write(unit_dir: Path, name: str = DEFAULT_NAME, sock: str = DEFAULT_SOCKET) -> list[Path]:
    unit_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, text in ((".socket", socket_unit(name, sock)), (".service", service_unit(name, sock))):
        path = unit_dir / f"{name}{suffix}"
        tmp = unit_dir / f".{name}{suffix}.tmp{os.getpid()}"
        tmp.write_text(text)
        tmp.chmod(0o644)
        os.replace(tmp, path)
        written.append(path)
    return written
