"""podman 4.3 (CNI backend, runc) with our plugins as its plugin directory, inside a sandbox
that stands for the host (tests/integration/runtimes.py): the conflist ``podman network
create`` writes, ``podman run`` on it, neighbours and the gateway, ``-p HOST:CONTAINER`` from
the host's loopback and another host address, ``--ip`` and ``--mac-address`` (CNI_ARGS IP= and
MAC=), a second network connected (eth1) and disconnected, ``podman stop`` (DEL from podman's
cleanup process) and ``start``, and ``podman rm -f`` leaving no link, reservation, cached
result, nftables entry or netns behind.
Run with plain launchers and with the warm helper (whose calls are counted)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.integration.images import busybox_rootfs_tar
from tests.integration.runtimes import (
    HOST_ADDR,
    IMAGE,
    Podman,
    Sandbox,
    assert_helper_served,
    install_plugins,
    need,
    wait_for,
)

NET1, SUBNET1, GW1 = "cnipy1", "10.89.7.0/24", "10.89.7.1"
NET2, SUBNET2, GW2 = "cnipy2", "10.89.8.0/24", "10.89.8.1"
STATIC_IP, MAC = "10.89.7.50", "02:42:0a:59:07:32"
HTTPD = "mkdir -p /w && echo {name} > /w/index.html && exec httpd -f -p 80 -h /w"


@pytest.fixture(params=["off", "on"], ids=["helper-off", "helper-on"])
def podman(request: pytest.FixtureRequest, host_untouched: None) -> Iterator[tuple[Podman, Path | None]]:
    need("podman", "runc", "conmon", "nsenter", "unshare")
    sb = Sandbox(f"pm{request.param}")
    try:
        sb.start()
        bin_dir, _sock, calls = install_plugins(sb, request.param)
        pm = Podman(sb, bin_dir)
        pm("import", "--change", 'CMD ["/bin/sh"]', str(busybox_rootfs_tar(sb.work / "rootfs.tar")), IMAGE)
        yield pm, calls
    finally:
        sb.close()


def in_container(pm: Podman, name: str) -> dict[str, Any]:
    """Links and addresses of a container, read with the machine's ip in its netns."""
    out = pm.sb.in_netns_of(pm.pid(name), "ip", "-j", "addr", "show").stdout
    return {
        link["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", []) if a["family"] == "inet"]
        for link in json.loads(out)
    }


def ping(pm: Podman, name: str, target: str) -> bool:
    return pm.exec(name, "ping", "-c", "1", "-W", "2", target).returncode == 0


def nc_get(pm: Podman, name: str, host: str, port: int) -> str:
    """GET / from inside a container (busybox nc: its static wget crashes on glibc's NSS)."""
    proc = pm.exec(name, "sh", "-c", f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 3 {host} {port}')
    return (
        proc.stdout.strip().splitlines()[-1]
        if proc.returncode == 0 and proc.stdout.strip()
        else f"FAIL {proc.stderr.strip()}"
    )


def reservations(pm: Podman, network: str) -> dict[str, str]:
    """host-local's reservations of a podman network: address -> container ID. A file that a
    DEL removes between the listing and the read is skipped (gone); an empty one is kept, and
    fails the parse (host-local publishes its files whole)."""
    out = pm.sb.sh(
        f"cd /var/lib/cni/networks/{network} 2>/dev/null && for f in *; do case $f in "
        '[0-9]*) if o=$(head -n1 "$f" 2>/dev/null); then echo "$f $o"; fi;; esac; done',
        check=False,
    ).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def detached(pm: Podman, cid: str) -> bool:
    """The container's DEL is complete: no reservation, no cached result (libcni removes it
    after the last plugin's DEL), no nftables entry."""
    left = pm.sb.leftovers([cid])
    return (
        cid not in reservations(pm, NET1).values() and not [n for n in left["cached"] if cid in n] and not left["nft"]
    )


def test_podman_network_create_writes_the_expected_conflist(podman: tuple[Podman, Path | None]) -> None:
    pm, _ = podman
    pm("network", "create", "--subnet", SUBNET1, NET1)
    conf = json.loads((pm.netdir / f"{NET1}.conflist").read_text())
    assert conf["cniVersion"] == "0.4.0"
    assert [p["type"] for p in conf["plugins"]] == ["bridge", "portmap", "firewall", "tuning"]
    bridge = conf["plugins"][0]
    assert (
        bridge["isGateway"] and bridge["ipMasq"] and bridge["hairpinMode"] and bridge["capabilities"] == {"ips": True}
    )
    assert bridge["ipam"]["type"] == "host-local" and bridge["ipam"]["ranges"] == [
        [{"subnet": SUBNET1, "gateway": GW1}]
    ]
    assert conf["plugins"][1]["capabilities"] == {"portMappings": True}
    assert conf["plugins"][2]["backend"] == ""
    pm("network", "rm", NET1)


def test_podman_lifecycle_on_our_plugins(podman: tuple[Podman, Path | None]) -> None:
    pm, calls = podman
    sb = pm.sb
    pm("network", "create", "--subnet", SUBNET1, NET1)
    pm("network", "create", "--subnet", SUBNET2, NET2)

    # run: one container publishes a port, one asks for a fixed address (CNI_ARGS IP=)
    web_id = pm.run_container("web", "--network", NET1, "-p", "8080:80", IMAGE, "sh", "-c", HTTPD.format(name="web"))
    cli_id = pm.run_container(
        "cli", "--network", NET1, "--ip", STATIC_IP, "--mac-address", MAC, IMAGE, "sh", "-c", HTTPD.format(name="cli")
    )
    web_ip = pm.address("web", NET1)
    assert pm.address("cli", NET1) == STATIC_IP
    assert in_container(pm, "cli")["eth0"] == [f"{STATIC_IP}/24"]
    assert (
        json.loads(sb.in_netns_of(pm.pid("cli"), "ip", "-j", "link", "show", "eth0").stdout)[0]["address"] == MAC
    )  # CNI_ARGS MAC=
    assert reservations(pm, NET1) == {web_ip: web_id, STATIC_IP: cli_id}
    assert sb.leftovers([web_id])["nft"] and sb.leftovers([cli_id])["nft"], "per-container nftables entries are seen"

    # neighbours and the gateway, from inside the containers
    assert ping(pm, "cli", web_ip) and ping(pm, "web", STATIC_IP)
    assert ping(pm, "web", GW1) and ping(pm, "cli", GW1)
    assert nc_get(pm, "cli", web_ip, 80) == "web"

    # the published port: host loopback, another host address, a neighbour through the gateway (hairpin)
    for url in ("http://127.0.0.1:8080/", f"http://{HOST_ADDR}:8080/", f"http://{GW1}:8080/"):
        assert sb.fetch(url) == "web", url
    assert nc_get(pm, "cli", GW1, 8080) == "web"
    assert nc_get(pm, "web", GW1, 8080) == "web"  # the container itself through its own port

    # a second network: connect (eth1), use it, disconnect
    pm("network", "connect", NET2, "cli")
    links = in_container(pm, "cli")
    assert links["eth1"] and links["eth1"][0].startswith("10.89.8."), links
    assert ping(pm, "cli", GW2)
    assert list(reservations(pm, NET2).values()) == [cli_id]
    pm("network", "disconnect", NET2, "cli")
    assert "eth1" not in in_container(pm, "cli")
    assert reservations(pm, NET2) == {}
    assert not [n for n in sb.leftovers()["cached"] if n.startswith(f"{NET2}-")]
    assert ping(pm, "cli", web_ip)  # eth0 untouched

    # stop: podman's cleanup process DELs; start: ADD again, the port works again
    pm("stop", "-t", "0", "web")
    wait_for(lambda: detached(pm, web_id), "the DEL of the stopped container")
    assert sb.fetch("http://127.0.0.1:8080/", timeout=1).startswith("FAIL")
    pm("start", "web")
    assert web_id in reservations(pm, NET1).values()
    wait_for(lambda: sb.fetch("http://127.0.0.1:8080/", timeout=1) == "web", "the published port after podman start")
    assert ping(pm, "cli", pm.address("web", NET1))

    # a container that exits by itself: conmon's exit command (podman container cleanup, a separate
    # process started with podman's global options and CONTAINERS_CONF) does the DEL, no CLI call
    brief_id = pm.run_container("brief", "--network", NET1, IMAGE, "sleep", "1")
    assert brief_id in reservations(pm, NET1).values()
    wait_for(lambda: detached(pm, brief_id), "the cleanup process's DEL of an exited container")
    pm("rm", "brief")

    # rm -f: nothing of either container is left
    pm("rm", "-f", "-t", "0", "web", "cli")
    left = sb.leftovers([web_id, cli_id, brief_id])
    assert left == {"links": [], "reserved": [], "cached": [], "nft": [], "netns": []}, left
    pm("network", "rm", NET1, NET2)
    if calls is not None:
        assert_helper_served(calls, 40)


def test_parallel_podman_runs_and_removals(podman: tuple[Podman, Path | None]) -> None:
    """Eight ``podman run -p`` at once on two new networks (both bridges, their nftables tables
    and the IPAM stores made concurrently), then eight ``rm -f`` at once."""
    pm, _ = podman
    pm("network", "create", "--subnet", SUBNET1, NET1)
    pm("network", "create", "--subnet", SUBNET2, NET2)

    def run(i: int) -> str:
        net = NET1 if i % 2 else NET2
        return pm.run_container(
            f"p{i}", "--network", net, "-p", f"{9000 + i}:80", IMAGE, "sh", "-c", HTTPD.format(name=f"p{i}")
        )

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(run, range(8)))
    for i in range(8):
        wait_for(lambda i=i: pm.sb.fetch(f"http://127.0.0.1:{9000 + i}/", timeout=1) == f"p{i}", f"port {9000 + i}")
    assert len(set(reservations(pm, NET1)) | set(reservations(pm, NET2))) == 8
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: pm("rm", "-f", "-t", "0", f"p{i}"), range(8)))
    left = pm.sb.leftovers(ids)
    assert left == {"links": [], "reserved": [], "cached": [], "nft": [], "netns": []}, left
