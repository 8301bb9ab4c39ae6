"""systemd units for the warm helper, written by ``cni-plugins install --systemd``.

As the reference ships for its dhcp daemon: a ``.socket`` (systemd owns the listening
socket, from boot on, and hands it to the helper as fd 3) and a ``.service`` started at boot
as well, so the first container does not wait for the helper's imports. The service runs
in its own cgroup with its own limits, logs to the journal, and is restarted when it exits
(when its code changed on disk, say). Where there is no systemd, the first call starts the
helper instead (``--helper auto``), with the same socket.
"""

from __future__ import annotations

import os
from pathlib import Path

from cni_plugins.protocol import installed


def exec_start(sock: str, ident: str) -> str:
    """The helper as the launchers start it."""
    return installed.exec_start("cni_plugins.helper.server", ["--socket", sock, "--install-id", ident, "--idle", "0"])


def socket_unit(name: str, sock: str) -> str:
    root = installed.package_root()
    return (
        "[Unit]\n"
        f"Description=cni-py warm helper socket (plugins installed from {root})\n"
        f"Documentation=file://{root}/docs/helper.md\n"
        "\n"
        "[Socket]\n"
        f"ListenSequentialPacket={sock}\n"
        "SocketMode=0600\n"
        "DirectoryMode=0700\n"
        "RemoveOnStop=true\n"
        f"Service={name}.service\n"
        "\n"
        "[Install]\n"
        "WantedBy=sockets.target\n"
    )


def service_unit(name: str, sock: str, ident: str) -> str:
    root = installed.package_root()
    return (
        "[Unit]\n"
        f"Description=cni-py warm helper (serves the CNI plugin calls of the plugins installed from {root})\n"
        f"Documentation=file://{root}/docs/helper.md\n"
        f"Requires={name}.socket\n"
        f"After={name}.socket\n"
        "\n"
        "[Service]\n"
        "Type=notify\n"
        "NotifyAccess=main\n"
        f"ExecStart={exec_start(sock, ident)}\n"
        "Restart=always\n"
        "RestartSec=1s\n"
        "TimeoutStopSec=30s\n"
        # A busy worker ignores SIGTERM until its call is done; the others stop at once.
        "KillMode=control-group\n"
        # Its own limits: the helper and its workers take ~100 MiB on a small node.
        "MemoryMax=1G\n"
        "TasksMax=256\n"
        "LimitNOFILE=65536\n"
        f"SyslogIdentifier={name}\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def write(unit_dir: Path, name: str, sock: str, ident: str) -> list[Path]:
    unit_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for suffix, text in ((".socket", socket_unit(name, sock)), (".service", service_unit(name, sock, ident))):
        path = unit_dir / f"{name}{suffix}"
        tmp = unit_dir / f".{name}{suffix}.tmp{os.getpid()}"
        tmp.write_text(text)
        tmp.chmod(0o644)
        os.replace(tmp, path)
        written.append(path)
    return written
