"""Side by side: our plugin chains and the reference's (Debian's containernetworking-plugins),
exec'd as a runtime execs them, in one run.

    sudo .venv/bin/python bench/chain_bench.py [--quick] [--out bench/out]

What is measured (each implementation in its own throwaway namespace standing for the host,
the implementations taking turns container by container, so drift on the machine hits all
alike; full counts, ``--quick`` in brackets):

1. ``chain``: bridge + host-local + portmap + firewall (podman's default conflist; one tcp
   port mapping per container), 300 [60] containers one after another, then their DELs in
   reverse: per-container ADD and DEL, median and p95 (target: ADD + DEL <= 0.25x).
2. ``first``: the very first container on an empty host (fresh host namespace each time),
   ADD + DEL, 10 [3] trials: ours with a warm helper; with the systemd units run by
   ``systemd-socket-activate`` (the service up before the call, as at boot: target <=
   0.5x; and started by the first call's connection); with no helper running yet (the
   first call starts one and waits: target <= 1.0x); with no helper at all.
3. ``plugins``: each plugin per call, ADD and DEL medians over 100 [20] containers:
   podman's network with tuning (bridge + host-local, portmap, firewall, tuning), ptp
   without and with ipMasq, macvlan, host-local alone, loopback, and a VERSION call per
   network; ours with the native launcher (the default install), ours with the Python
   launcher (``--launcher python``, the same helper) and the reference, taking turns.
4. ``scale``: the chain's ADD against the number of containers attached, up to 1,000 [200],
   next to a kernel-only baseline (``KernelRuntime``: the same links, bridge port,
   addresses and routes made by this warm process over netlink); then 60 [10] paired
   probes: one more container ADDed and DELeted on the full host, taking turns with the
   same on a host holding one container. Target: our growth (ADD at 1,000 - ADD at 1) at
   most the kernel-only growth + 1 ms. Then all of it again with bridge ``disableIPv6``
   (IPv6 off in the baseline's containers too). ``--scale-reference`` fills the
   reference's host as well.
5. ``concurrent``: 8 runtimes (processes) adding 400 [48] containers to one network at
   once: ADD median, throughput, duplicate addresses, failed ADDs (a failed ADD is
   counted, its chain DELeted as a runtime would, and the run goes on).
6. ``memory``: peak RSS of one plugin process (``wait4``); the PSS of our helper and its
   workers sampled every 1,000 [100] of 10,000 [1,000] chain calls through it (target: no
   growth); at the end, the helper's PSS with its idle workers (target <= 60 MiB).

A runtime's view: one process per chain entry, the config with ``prevResult`` threaded on
stdin, DEL in reverse with the final ADD result. Ours are installed into a temporary CNI
bin dir with the warm helper (the default install mode) on a private socket, started here
and stopped at the end; "ours, no helper" rows exec every call in a fresh interpreter.

Output: a table, ``<out>/chain_bench.json`` (every timing) and ``<out>/chain_bench.png``
(the scaling curves; needs matplotlib, the ``bench`` extra). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from our_plugins import install as ours_install
from our_plugins import start_helper, stop_helper

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cni_plugins.kernel import netns  # noqa: E402  (needs the sys.path insert above)

PATH_ENV = "/usr/sbin:/usr/bin:/sbin:/bin"
REFERENCE_PACKAGE = "containernetworking-plugins"
CHAIN_PLUGINS = ("bridge", "host-local", "portmap", "firewall")
PLUGIN_ENV: dict[str, str] = {}  # --plugin-env: added to every plugin call's environment


# ---------------------------------------------------------------- the runtime side


@dataclass
class Impl:
    """One implementation: where its plugins are, and the namespace standing for its host.
    ``kind`` "kernel" is the kernel-only baseline (``KernelRuntime``: no plugin, no exec);
    ``disable_ipv6`` sets bridge's ``disableIPv6`` (IPv6 off in the baseline's containers)."""

    name: str
    bin_dir: str
    host_ns: str = ""  # /var/run/netns/<name>
    kind: str = "exec"
    disable_ipv6: bool = False


def chain_conf(
    name: str, subnet: str, data_dir: str, *, disable_ipv6: bool = False, tuning: bool = False
) -> dict[str, Any]:
    """Podman's default bridge network (87-podman-bridge.conflist), without tuning unless asked."""
    bridge: dict[str, Any] = {
        "type": "bridge",
        "bridge": "cni-podman0",
        "isGateway": True,
        "ipMasq": True,
        "hairpinMode": True,
        "ipam": {
            "type": "host-local",
            "routes": [{"dst": "0.0.0.0/0"}],
            "ranges": [[{"subnet": subnet}]],
            "dataDir": data_dir,
        },
    }
    if disable_ipv6:
        bridge["disableIPv6"] = True
    plugins = [bridge, {"type": "portmap", "capabilities": {"portMappings": True}}, {"type": "firewall"}]
    if tuning:
        plugins.append({"type": "tuning"})
    return {"cniVersion": "1.0.0", "name": name, "plugins": plugins}


def impl_chain(impl: Impl, data_dir: str) -> dict[str, Any]:
    return chain_conf("podman", "10.88.0.0/16", data_dir, disable_ipv6=impl.disable_ipv6)


# The per-plugin scenario's networks: name -> (CNI_IFNAME, the plugin list). The podman
# network (with tuning, as podman ships it) gives the bridge, portmap, firewall and tuning
# rows; the others one plugin each.
PLUGIN_NETWORKS = ("podman", "ptp", "ptp-ipMasq", "macvlan", "host-local", "loopback")


def plugin_network(kind: str, data_dir: str) -> tuple[str, dict[str, Any]]:
    ipam = {"type": "host-local", "ranges": [[{"subnet": "10.90.0.0/16"}]], "dataDir": data_dir}
    plugins: list[dict[str, Any]]
    if kind == "podman":
        return "eth0", chain_conf("podman", "10.88.0.0/16", data_dir, tuning=True)
    if kind in ("ptp", "ptp-ipMasq"):
        plugins = [{"type": "ptp", "ipMasq": kind == "ptp-ipMasq", "ipam": ipam}]
    elif kind == "macvlan":
        plugins = [{"type": "macvlan", "master": "benchm0", "mode": "bridge", "ipam": ipam}]
    elif kind == "host-local":
        plugins = [{"type": "host-local", "ipam": ipam}]
    else:
        return "lo", {"cniVersion": "1.0.0", "name": "bench-lo", "plugins": [{"type": "loopback"}]}
    return "eth0", {"cniVersion": "1.0.0", "name": f"bench-{kind.lower()}", "plugins": plugins}


@dataclass
class Call:
    seconds: float
    maxrss_kb: int
    inner: float = 0.0  # with Runtime.debug: the plugin's own time in skel.run, as ours logs it


# skel.run's closing line with CNI_PY_DEBUG=1: "<verb> <container id> <ifname>: <ms> ms"
SKEL_TIME = re.compile(rb"(?:ADD|DEL|CHECK) \S* \S*: ([0-9.]+) ms$", re.M)


@dataclass
class Runtime:
    """A minimal libcni: exec each plugin of a conflist, thread prevResult, DEL in reverse."""

    bin_dir: str
    conflist: dict[str, Any]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # the runtime's result cache
    measure_rss: bool = False
    ifname: str = "eth0"
    debug: bool = False  # ours with CNI_PY_DEBUG=1: the plugin's own time from its log (Call.inner)

    def _exec(
        self,
        plugin: dict[str, Any],
        command: str,
        cid: str,
        ctr_ns: str,
        prev: dict[str, Any] | None,
        ports: list[dict[str, Any]],
    ) -> tuple[bytes, Call]:
        conf = dict(plugin)
        conf["name"] = self.conflist["name"]
        conf["cniVersion"] = self.conflist["cniVersion"]
        if prev is not None:
            conf["prevResult"] = prev
        if plugin.get("capabilities", {}).get("portMappings") and ports:
            conf["runtimeConfig"] = {"portMappings": ports}
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": ctr_ns,
            "CNI_IFNAME": self.ifname,
            "CNI_ARGS": "",
            "CNI_PATH": self.bin_dir,
            "PATH": PATH_ENV,
            **PLUGIN_ENV,
            **({"CNI_PY_DEBUG": "1"} if self.debug else {}),
        }
        start = time.perf_counter()
        argv = [os.path.join(self.bin_dir, plugin["type"])]
        rss_file = ""
        if self.measure_rss:  # GNU time's child: wait4's peak RSS of the plugin process alone
            rss_file = os.path.join(tempfile.gettempdir(), f"cni-bench-rss-{os.getpid()}")
            argv = ["/usr/bin/time", "-f", "%M", "-o", rss_file, *argv]
        code, out, err = spawn(argv, json.dumps(conf).encode(), env)
        maxrss = 0
        if rss_file:
            maxrss = int(Path(rss_file).read_text().split()[-1])
            os.unlink(rss_file)
        elapsed = time.perf_counter() - start
        if code != 0:
            raise RuntimeError(
                f"{self.bin_dir}/{plugin['type']} {command} {cid}: exit {code}: "
                f"{out.decode(errors='replace')} {err.decode(errors='replace')[-2000:]}"
            )
        inner = 0.0
        if self.debug:
            times = SKEL_TIME.findall(err)
            inner = float(times[-1]) / 1000 if times else float("nan")
        return out, Call(elapsed, maxrss, inner)

    def version(self, plugin_type: str) -> float:
        """One VERSION call (the launcher's start and exit: it never reaches a worker)."""
        env = {"CNI_COMMAND": "VERSION", "CNI_PATH": self.bin_dir, "PATH": PATH_ENV, **PLUGIN_ENV}
        start = time.perf_counter()
        code, out, err = spawn([os.path.join(self.bin_dir, plugin_type)], b'{"cniVersion": "1.0.0"}', env)
        elapsed = time.perf_counter() - start
        if code != 0 or b"supportedVersions" not in out:
            raise RuntimeError(f"{self.bin_dir}/{plugin_type} VERSION: exit {code}: {out!r} {err[-2000:]!r}")
        return elapsed

    def add(self, cid: str, ctr_ns: str, ports: list[dict[str, Any]]) -> tuple[float, dict[str, Call]]:
        prev: dict[str, Any] | None = None
        calls: dict[str, Call] = {}
        start = time.perf_counter()
        for plugin in self.conflist["plugins"]:
            out, calls[plugin["type"]] = self._exec(plugin, "ADD", cid, ctr_ns, prev, ports)
            prev = json.loads(out)
        total = time.perf_counter() - start
        assert prev is not None
        self.results[cid] = prev
        return total, calls

    def delete(self, cid: str, ctr_ns: str, ports: list[dict[str, Any]]) -> tuple[float, dict[str, Call]]:
        prev = self.results.pop(cid, None)
        calls: dict[str, Call] = {}
        start = time.perf_counter()
        for plugin in reversed(self.conflist["plugins"]):
            _, calls[plugin["type"]] = self._exec(plugin, "DEL", cid, ctr_ns, prev, ports)
        return time.perf_counter() - start, calls


def ports_for(i: int) -> list[dict[str, Any]]:
    return [{"hostPort": 20000 + i, "containerPort": 80, "protocol": "tcp"}]


@dataclass
class KernelRuntime:
    """The kernel-only baseline: what the chain's bridge + host-local leave in the kernel (a
    veth pair, its host end a hairpin port of the bridge with IPv6 off, the container end
    named ``eth0`` with its address, up, a default route via the bridge's gateway address,
    DAD off or IPv6 off, arp_notify) made by this one warm process over netlink (pyroute2),
    with no plugin, no exec and no runtime. DEL deletes the veth. Same interface as
    ``Runtime``; the calls are made with this thread in the host's namespace."""

    conflist: dict[str, Any]
    disable_ipv6: bool = False
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    _ipr: Any = None
    _bridge: int = 0
    _next: int = 2
    _ports: dict[str, int] = field(default_factory=dict)

    def _host(self) -> Any:
        if self._ipr is None:  # the bridge and its gateway address, as the first bridge ADD makes them
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
            self._ipr.link("add", ifname="cni-podman0", kind="bridge")
            self._bridge = self._ipr.link_lookup(ifname="cni-podman0")[0]
            self._ipr.addr("add", index=self._bridge, address="10.88.0.1", prefixlen=16)
            self._ipr.link("set", index=self._bridge, state="up")
        return self._ipr

    def add(self, cid: str, ctr_ns: str, ports: list[dict[str, Any]]) -> tuple[float, dict[str, Call]]:
        from pyroute2 import IPRoute

        from cni_plugins.kernel import sysctl

        start = time.perf_counter()
        ipr = self._host()
        n, self._next = self._next, self._next + 1
        host_name = f"vk{n:08x}"
        address = f"10.88.{n >> 8}.{n & 255}"
        ctr_fd = os.open(ctr_ns, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ipr.link("add", ifname=host_name, kind="veth", peer={"ifname": "eth0", "net_ns_fd": ctr_fd})
            index = ipr.link_lookup(ifname=host_name)[0]
            sysctl.write(f"net/ipv6/conf/{host_name}/disable_ipv6", "1")
            ipr.link("set", index=index, master=self._bridge)
            ipr.brport("set", index=index, mode=1)  # hairpin
            ipr.link("set", index=index, state="up")
            with netns.entered(ctr_fd):
                off = [("ipv6", "disable_ipv6", "1")] if self.disable_ipv6 else [("ipv6", "accept_dad", "0")]
                for family, leaf, value in [*off, ("ipv4", "arp_notify", "1")]:
                    sysctl.write(f"net/{family}/conf/eth0/{leaf}", value)
                with IPRoute() as ctr:
                    eth0 = ctr.link_lookup(ifname="eth0")[0]
                    ctr.addr("add", index=eth0, address=address, prefixlen=16)
                    ctr.link("set", index=eth0, state="up")
                    ctr.route("add", dst="0.0.0.0/0", gateway="10.88.0.1")
        finally:
            os.close(ctr_fd)
            sysctl.release()
        self._ports[cid] = index
        self.results[cid] = {"ips": [{"address": f"{address}/16"}]}
        total = time.perf_counter() - start
        return total, {"kernel": Call(total, 0)}

    def delete(self, cid: str, ctr_ns: str, ports: list[dict[str, Any]]) -> tuple[float, dict[str, Call]]:
        start = time.perf_counter()
        index = self._ports.pop(cid, 0)
        if index:
            self._host().link("del", index=index)
        self.results.pop(cid, None)
        total = time.perf_counter() - start
        return total, {"kernel": Call(total, 0)}


def make_runtime(impl: Impl, conflist: dict[str, Any], ifname: str = "eth0") -> Runtime | KernelRuntime:
    if impl.kind == "kernel":
        return KernelRuntime(conflist, disable_ipv6=impl.disable_ipv6)
    return Runtime(impl.bin_dir, conflist, ifname=ifname, debug=impl.kind == "debug")


def spawn(argv: list[str], stdin: bytes, env: dict[str, str]) -> tuple[int, bytes, bytes]:
    """Exec ``argv`` with ``stdin`` (posix_spawn, as Go's os/exec forks cheaply): exit code,
    stdout and stderr, read until EOF (a runtime waits for EOF on both)."""
    import selectors

    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    r_err, w_err = os.pipe()
    try:
        pid = os.posix_spawn(
            argv[0],
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, r_in, 0),
                (os.POSIX_SPAWN_DUP2, w_out, 1),
                (os.POSIX_SPAWN_DUP2, w_err, 2),
            ],
        )
    finally:
        for fd in (r_in, w_out, w_err):
            os.close(fd)
    chunks: dict[int, list[bytes]] = {r_out: [], r_err: []}
    try:
        os.write(w_in, stdin)  # configs are far smaller than a pipe's buffer
    except BrokenPipeError:
        pass
    os.close(w_in)
    with selectors.DefaultSelector() as sel:
        for fd in chunks:
            sel.register(fd, selectors.EVENT_READ)
        open_fds = len(chunks)
        while open_fds:
            for key, _ in sel.select():
                data = os.read(key.fd, 65536)
                if data:
                    chunks[key.fd].append(data)
                else:
                    sel.unregister(key.fd)
                    open_fds -= 1
    os.close(r_out)
    os.close(r_err)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks[r_out]), b"".join(chunks[r_err])


# ---------------------------------------------------------------- namespaces and setup


class Namespaces:
    """Every namespace this run makes, deleted at the end whatever happened."""

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.made: list[str] = []
        self.count = 0

    def make(self, n: int, what: str) -> list[str]:
        names = []
        for _ in range(n):
            self.count += 1
            names.append(f"{self.tag}-{what}{self.count}")
        ip_batch([f"netns add {name}" for name in names])
        self.made += names
        return [f"/var/run/netns/{name}" for name in names]

    def drop(self, paths: list[str]) -> None:
        names = [os.path.basename(p) for p in paths]
        ip_batch([f"netns del {name}" for name in names], check=False)
        gone = set(names)
        self.made = [n for n in self.made if n not in gone]

    def drop_all(self) -> None:
        if self.made:
            ip_batch([f"netns del {name}" for name in self.made], check=False)
            self.made = []


def ip_batch(lines: list[str], check: bool = True) -> None:
    for i in range(0, len(lines), 500):
        proc = subprocess.run(
            ["ip", "-force", "-batch", "-"], input="\n".join(lines[i : i + 500]) + "\n", text=True, capture_output=True
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"ip -batch: {proc.stderr.strip()}")


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def new_host(nss: Namespaces, impl: Impl, label: str) -> str:
    """A fresh namespace standing for impl's host: lo up, a macvlan master, nothing else."""
    (host,) = nss.make(1, f"{label}-host")
    name = os.path.basename(host)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    sh("ip", "-n", name, "link", "add", "benchm0", "type", "veth", "peer", "name", "benchm0p")
    sh("ip", "-n", name, "link", "set", "benchm0", "up")
    sh("ip", "-n", name, "link", "set", "benchm0p", "up")
    impl.host_ns = host
    return host


def ensure_reference(ref_dir: str, install: bool) -> str:
    """Debian's containernetworking-plugins (the comparator), installed with apt if missing."""
    missing = [p for p in CHAIN_PLUGINS + ("ptp", "macvlan") if not os.path.exists(os.path.join(ref_dir, p))]
    if missing and install and ref_dir == "/usr/lib/cni":
        print(f"installing Debian's {REFERENCE_PACKAGE} (missing: {', '.join(missing)}) ...", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "-q", REFERENCE_PACKAGE, "iptables"], check=False, env=env, capture_output=True
        )
        if any(not os.path.exists(os.path.join(ref_dir, p)) for p in missing):
            subprocess.run(["apt-get", "update", "-q"], check=False, env=env, capture_output=True)
            subprocess.run(
                ["apt-get", "install", "-y", "-q", REFERENCE_PACKAGE, "iptables"],
                check=True,
                env=env,
                capture_output=True,
            )
    missing = [p for p in CHAIN_PLUGINS + ("ptp", "macvlan") if not os.path.exists(os.path.join(ref_dir, p))]
    if missing:
        raise SystemExit(f"reference plugins missing in {ref_dir}: {', '.join(missing)}")
    version = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", REFERENCE_PACKAGE], capture_output=True, text=True
    ).stdout.strip()
    return version or "unknown version"


def helper_pss(sock: str) -> dict[str, int]:
    """Proportional set size (KiB) of the helper serving ``sock`` (``manager``) and of its
    workers (``workers``: its children; shared pages counted once in ``total``)."""
    try:
        pid = int(Path(sock + ".lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return {"total": 0, "manager": 0, "workers": 0, "worker_count": 0}
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields and int(fields[1]) == pid:
            children.append(int(stat.parent.name))

    def sizes(p: int) -> tuple[int, int]:
        """(PSS, USS): USS, the pages no other process shares, does not move with how many
        workers share the rest, so a leak shows in it."""
        pss = uss = 0
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                    uss += int(line.split()[1])
        except OSError:
            pass
        return pss, uss

    (manager, manager_uss), workers = sizes(pid), [sizes(c) for c in children]
    return {
        "total": manager + sum(w[0] for w in workers),
        "manager": manager,
        "workers": sum(w[0] for w in workers),
        "worker_count": len(workers),
        "manager_uss": manager_uss,
        "workers_uss": sum(w[1] for w in workers),
    }


def helper_pss_kb(sock: str) -> int:
    """Proportional set size of the helper serving ``sock`` and its workers (shared pages
    counted once)."""
    return helper_pss(sock)["total"]


# ---------------------------------------------------------------- statistics


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p95(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def alternate(impls: list[Impl], i: int) -> list[Impl]:
    """Take turns, and swap who goes first every round."""
    return impls if i % 2 == 0 else list(reversed(impls))


# ---------------------------------------------------------------- scenarios


def scenario_sequential(
    impls: list[Impl],
    nss: Namespaces,
    work: Path,
    label: str,
    make_conf: Any,
    n: int,
    *,
    do_del: bool = True,
    progress: str = "",
    probes: int = 0,
    settle: float = 0.0,
    ifname: str = "eth0",
    versions: str = "",
) -> dict[str, Any]:
    """N containers one after another on a fresh host per impl (ADD all, then DEL all in
    reverse), the implementations taking turns container by container. With ``probes``,
    the full hosts are then probed against small ones (``probe_paired``) before the DELs.
    ``make_conf(impl, data_dir)`` gives an implementation's conflist. With ``versions``, each
    container's turn also times a VERSION call of that plugin type (in ``version``)."""
    out: dict[str, Any] = {}
    runtimes: dict[str, Runtime | KernelRuntime] = {}
    ctrs: dict[str, list[str]] = {}
    for k, impl in enumerate(impls):
        new_host(nss, impl, f"{label}{k}")
        runtimes[impl.name] = make_runtime(impl, make_conf(impl, str(work / f"ipam-{label}-{k}")), ifname)
        ctrs[impl.name] = nss.make(n, f"{label}{k}c")
        out[impl.name] = {"add": [], "del": [], "add_calls": [], "del_calls": [], "version": []}
    for i in range(n):
        for impl in alternate(impls, i):
            rt = runtimes[impl.name]
            if versions and isinstance(rt, Runtime):
                out[impl.name]["version"].append(rt.version(versions))
            with netns.entered(impl.host_ns):
                total, calls = runtimes[impl.name].add(f"{label}-{i:05d}", ctrs[impl.name][i], ports_for(i))
            out[impl.name]["add"].append(total)
            out[impl.name]["add_calls"].append({p: (c.seconds, c.maxrss_kb, c.inner) for p, c in calls.items()})
        if progress and (i + 1) % max(1, n // 10) == 0:
            print(f"  {progress}: {i + 1}/{n} ADDs", flush=True)
    if probes:
        if settle:
            print(f"  settling {settle:.0f} s before the probes", flush=True)
            time.sleep(settle)
        probe_paired(impls, nss, work, runtimes, f"{label}p", make_conf, n, probes, out)
    if do_del:
        for i in reversed(range(n)):
            for impl in alternate(impls, i):
                with netns.entered(impl.host_ns):
                    total, calls = runtimes[impl.name].delete(f"{label}-{i:05d}", ctrs[impl.name][i], ports_for(i))
                out[impl.name]["del"].append(total)
                out[impl.name]["del_calls"].append({p: (c.seconds, c.maxrss_kb, c.inner) for p, c in calls.items()})
    for impl in impls:
        nss.drop(ctrs[impl.name])
        nss.drop([impl.host_ns])
    return out


PROBE_PHASE_GAP_S = 2.0  # before each implementation's probes, for the previous calls' kernel work to end


def _call_growth(probe: dict[str, Any], plugin: str) -> float:
    """How much longer one plugin's ADD took on the full host than on the small one (median, s)."""
    full, small = (
        statistics.median(float(c[plugin]) for c in probe[side]["add_calls"] if plugin in c)
        for side in ("full", "small")
    )
    return full - small


def probe_paired(
    impls: list[Impl],
    nss: Namespaces,
    work: Path,
    full: dict[str, Runtime | KernelRuntime],
    label: str,
    make_conf: Any,
    n: int,
    probes: int,
    out: dict[str, Any],
) -> None:
    """ADD and DEL of one more container on each impl's full host (``n`` attached), taking
    turns with the same on a small host (1 attached, so its bridge exists as on the full one).
    Consecutive calls see the same machine speed, so the full/small ratio is the cost of the
    attached containers alone; the fill's first-vs-last blocks, minutes apart, also carry this
    VM's CPU speed drift (up to 2x over minutes here). Each implementation is probed in a
    phase of its own: taking turns with the reference, our full-host probe ran right after
    the reference's full-host calls (hundreds of ms of iptables-nft commits on 1,000-rule
    chains) in every other round, and was 2 to 7.6 ms slower in those rounds, in four runs."""
    small_hosts: dict[str, Impl] = {}
    small: dict[str, Runtime | KernelRuntime] = {}
    probe_ns: dict[tuple[str, str], str] = {}
    throwaway: list[str] = []
    for k, impl in enumerate(impls):
        small_hosts[impl.name] = Impl(impl.name, impl.bin_dir, kind=impl.kind, disable_ipv6=impl.disable_ipv6)
        new_host(nss, small_hosts[impl.name], f"{label}{k}")
        small[impl.name] = make_runtime(impl, make_conf(impl, str(work / f"ipam-{label}-{k}")))
        made = nss.make(3, f"{label}{k}c")
        first, probe_small, probe_full = made
        throwaway += [*made, small_hosts[impl.name].host_ns]
        probe_ns[impl.name, "small"], probe_ns[impl.name, "full"] = probe_small, probe_full
        with netns.entered(small_hosts[impl.name].host_ns):
            small[impl.name].add(f"{label}-first", first, ports_for(0))
        out[impl.name]["probe"] = {side: {"add": [], "del": [], "add_calls": []} for side in ("full", "small")}
    for impl in impls:  # one implementation at a time: the other's calls leave kernel work behind
        time.sleep(PROBE_PHASE_GAP_S)
        for r in range(probes):
            sides = [
                ("full", impl.host_ns, full[impl.name]),
                ("small", small_hosts[impl.name].host_ns, small[impl.name]),
            ]
            for side, host, rt in sides if r % 2 == 0 else reversed(sides):
                cid, ports = f"{label}-probe-{r}", ports_for(n + 1 + r)
                with netns.entered(host):
                    add, calls = rt.add(cid, probe_ns[impl.name, side], ports)
                    delete, _ = rt.delete(cid, probe_ns[impl.name, side], ports)
                out[impl.name]["probe"][side]["add"].append(add)
                out[impl.name]["probe"][side]["add_calls"].append({p: c.seconds for p, c in calls.items()})
                out[impl.name]["probe"][side]["del"].append(delete)
    nss.drop(throwaway)


class SystemdUnits:
    """Our install's systemd units as systemd runs them, without systemd as PID 1: the
    .service's ExecStart= under ``systemd-socket-activate`` listening on the .socket's path
    (the socket as fd 3, LISTEN_FDS), a datagram socket standing for systemd's notify socket.
    ``boot``: the service is started, and has said READY=1, before the first call (the units
    are WantedBy=multi-user.target: it starts at boot); else the first call's connection
    starts it (socket activation)."""

    def __init__(self, units: Path, sock: str, work: Path, boot: bool) -> None:
        line = next(t for t in (units / "cni-py-helper.service").read_text().splitlines() if t.startswith("ExecStart="))
        self.exec_start = [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(line.split("=", 1)[1])]
        self.sock, self.notify_path, self.boot = sock, str(work / f"notify-{int(boot)}"), boot
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: socket.socket | None = None

    def start(self) -> None:
        os.makedirs(os.path.dirname(self.sock), mode=0o700, exist_ok=True)
        for path in (self.sock, self.notify_path):
            if os.path.exists(path):
                os.unlink(path)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(30)
        self.proc = subprocess.Popen(
            [
                "systemd-socket-activate",
                "--seqpacket",
                "-l",
                self.sock,
                "-E",
                f"NOTIFY_SOCKET={self.notify_path}",
                "--",
                *self.exec_start,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while not os.path.exists(self.sock):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("systemd-socket-activate did not listen on our socket")
            time.sleep(0.01)
        if self.boot:
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as probe:
                probe.connect(self.sock)  # what systemd's start of the service at boot does
            while b"READY=1" not in self.notify.recv(4096):
                pass

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # the helper itself: systemd-socket-activate execs the service
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.notify is not None:
            self.notify.close()
            self.notify = None
        stop_helper(None, self.sock)  # its workers, should any outlive it


def scenario_first(
    impls: list[Impl],
    nss: Namespaces,
    work: Path,
    trials: int,
    before: dict[str, Callable[[], object]] | None = None,
    after: dict[str, Callable[[], object]] | None = None,
) -> dict[str, Any]:
    """The first container on an empty host: a fresh host namespace per trial, ADD then DEL.
    ``before[name]()`` runs ahead of each of that implementation's trials, ``after[name]()``
    after it, also when it fails."""
    out: dict[str, Any] = {impl.name: {"add": [], "del": [], "add_calls": [], "del_calls": []} for impl in impls}
    for t in range(trials):
        for k, impl in enumerate(alternate(impls, t)):
            try:
                if before and impl.name in before:
                    before[impl.name]()
                new_host(nss, impl, f"first{t}-{k}")
                (ctr,) = nss.make(1, f"first{t}-{k}c")
                rt = Runtime(impl.bin_dir, chain_conf("podman", "10.88.0.0/16", str(work / f"ipam-first-{t}-{k}")))
                with netns.entered(impl.host_ns):
                    add, add_calls = rt.add(f"first-{t}", ctr, ports_for(0))
                    delete, del_calls = rt.delete(f"first-{t}", ctr, ports_for(0))
            finally:
                if after and impl.name in after:
                    after[impl.name]()
            out[impl.name]["add"].append(add)
            out[impl.name]["del"].append(delete)
            out[impl.name]["add_calls"].append({p: c.seconds for p, c in add_calls.items()})
            out[impl.name]["del_calls"].append({p: c.seconds for p, c in del_calls.items()})
            nss.drop([ctr, impl.host_ns])
    return out


def worker_main(spec_path: str) -> int:
    """One of the concurrent runtimes (a process of its own): its containers, one after another."""
    spec = json.loads(Path(spec_path).read_text())
    PLUGIN_ENV.update(spec.get("plugin_env", {}))
    rt = Runtime(spec["bin_dir"], spec["conflist"])
    adds, ips, failed = [], [], []
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()  # go
    with netns.entered(spec["host_ns"]):
        for cid, ctr, port in spec["containers"]:
            try:
                total, _ = rt.add(cid, ctr, ports_for(port))
            except RuntimeError as exc:  # as a runtime does: report it, DEL what the chain left
                failure = {"cid": cid, "add": " ".join(str(exc).split())[:400], "del": ""}
                try:
                    rt.delete(cid, ctr, ports_for(port))
                except RuntimeError as cleanup:
                    failure["del"] = " ".join(str(cleanup).split())[:400]
                failed.append(failure)
                continue
            adds.append(total)
            ips += [ip["address"] for ip in rt.results[cid].get("ips", [])]
    Path(spec_path).write_text(json.dumps({"adds": adds, "ips": ips, "failed": failed}))
    return 0


def scenario_concurrent(
    impls: list[Impl], nss: Namespaces, work: Path, runtimes: int, total: int, rounds: int
) -> dict[str, Any]:
    """``runtimes`` processes adding ``total`` containers to one network at once, in rounds;
    the implementations take turns round by round (ABBA)."""
    out: dict[str, Any] = {}
    conflists = {}
    for k, impl in enumerate(impls):
        new_host(nss, impl, f"conc{k}")
        conflists[impl.name] = chain_conf("podman", "10.88.0.0/16", str(work / f"ipam-conc-{k}"))
        out[impl.name] = {"adds": [], "ips": [], "wall": [], "failed": []}
    per_round = total // rounds
    made: list[str] = []
    for r in range(rounds):
        for k, impl in enumerate(alternate(impls, r)):
            ctrs = nss.make(per_round, f"conc{r}-{k}c")
            made += ctrs
            procs = []
            for w in range(runtimes):
                mine = [(f"conc-{r}-{j:05d}", ctrs[j], r * per_round + j) for j in range(w, per_round, runtimes)]
                spec = work / f"worker-{impl.name.replace(' ', '_').replace(',', '')}-{r}-{w}.json"
                spec.write_text(
                    json.dumps(
                        {
                            "bin_dir": impl.bin_dir,
                            "conflist": conflists[impl.name],
                            "host_ns": impl.host_ns,
                            "containers": mine,
                            "plugin_env": PLUGIN_ENV,
                        }
                    )
                )
                proc = subprocess.Popen(
                    [sys.executable, __file__, "--worker", str(spec)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
                procs.append((proc, spec))
            for proc, _ in procs:
                assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            start = time.perf_counter()
            for proc, _ in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            for proc, _ in procs:
                proc.wait()
            out[impl.name]["wall"].append(time.perf_counter() - start)
            for proc, spec in procs:
                if proc.returncode != 0:
                    raise RuntimeError(f"concurrent runtime for {impl.name} failed (exit {proc.returncode})")
                data = json.loads(spec.read_text())
                out[impl.name]["adds"] += data["adds"]
                out[impl.name]["ips"] += data["ips"]
                out[impl.name]["failed"] += data["failed"]
    for impl in impls:
        ips = out[impl.name]["ips"]
        out[impl.name]["duplicates"] = len(ips) - len(set(ips))
        out[impl.name]["containers"] = len(out[impl.name]["adds"])
        out[impl.name]["throughput"] = len(out[impl.name]["adds"]) / sum(out[impl.name]["wall"])
    nss.drop(made)
    for impl in impls:
        nss.drop([impl.host_ns])
    return out


def scenario_plugins(impls: list[Impl], nss: Namespaces, work: Path, n: int) -> dict[str, Any]:
    """Each plugin on its own, per call: for every network of ``PLUGIN_NETWORKS``, ``n``
    containers ADDed one after another and DELeted in reverse, the implementations taking
    turns container by container, each turn also timing a VERSION call of the network's
    first plugin."""
    out: dict[str, Any] = {}
    for kind in PLUGIN_NETWORKS:
        print(f"  plugins: {kind}, {n} containers ...", flush=True)
        ifname, _ = plugin_network(kind, "")
        out[kind] = scenario_sequential(
            impls,
            nss,
            work,
            f"pl{PLUGIN_NETWORKS.index(kind)}",
            lambda impl, d, kind=kind: plugin_network(kind, d)[1],
            n,
            ifname=ifname,
            versions=plugin_network(kind, "")[1]["plugins"][0]["type"],
        )
    return out


def scenario_memory_growth(
    impl: Impl, nss: Namespaces, work: Path, sock: str, calls: int, every: int
) -> dict[str, Any]:
    """``calls`` plugin calls through our helper: the chain's ADD and DEL of one container, over
    and over; the PSS of the helper and its workers sampled before and every ``every`` calls."""
    new_host(nss, impl, "memg")
    (ctr,) = nss.make(1, "memgc")
    rt = Runtime(impl.bin_dir, impl_chain(impl, str(work / "ipam-memg")))
    per_cycle = 2 * len(rt.conflist["plugins"])
    samples = [{"calls": 0, **helper_pss(sock), "pid": helper_pid(sock)}]
    done = 0
    with netns.entered(impl.host_ns):
        while done < calls:
            rt.add("memg", ctr, ports_for(0))
            rt.delete("memg", ctr, ports_for(0))
            done += per_cycle
            if done // every != (done - per_cycle) // every:
                samples.append({"calls": done, **helper_pss(sock), "pid": helper_pid(sock)})
                print(f"  memory: {done}/{calls} calls, helper {samples[-1]['total'] / 1024:.1f} MiB", flush=True)
    nss.drop([ctr, impl.host_ns])
    return {"samples": samples, "calls": done}


def helper_pid(sock: str) -> int:
    try:
        return int(Path(sock + ".lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


# ---------------------------------------------------------------- report


@dataclass
class Row:
    what: str
    ours: float | int | str
    ref: float | int | str
    unit: str = "ms"
    target: str = ""
    met: bool | None = None
    ratio: float | None = None


def _blocks(adds: list[float]) -> tuple[int, float, float]:
    size = max(5, len(adds) // 20)
    return size, med(adds[:size]), med(adds[-size:])


# names of our other installs in the results, and the issue's target for their first container
FIRST_TARGETS = {
    "ours, systemd, service up at boot": ("<= 0.5x", 0.5),
    "ours, helper not running yet": ("<= 1.0x", 1.0),
}


def _scale_rows(rows: list[Row], res: dict[str, Any], key: str, tag: str) -> None:
    s = res[key]
    ours, kernel, ref = s["names"]["ours"], s["names"]["kernel"], s["names"].get("reference")
    n = len(s[ours]["add"])
    size, o_first, o_last = _blocks(s[ours]["add"])
    _, k_first, k_last = _blocks(s[kernel]["add"])
    cols = "ours | kernel-only"
    rows.append(Row(f"scale{tag}: fill ADD median, 1-{size} ({cols})", o_first * 1000, k_first * 1000))
    rows.append(Row(f"scale{tag}: fill ADD median, {n - size + 1}-{n} ({cols})", o_last * 1000, k_last * 1000))
    if "probe" not in s[ours]:
        return
    po, pk = s[ours]["probe"], s[kernel]["probe"]
    k = len(po["full"]["add"])
    rows.append(
        Row(
            f"scale{tag}: probe ADD at 1 attached ({cols})",
            med(po["small"]["add"]) * 1000,
            med(pk["small"]["add"]) * 1000,
        )
    )
    rows.append(
        Row(
            f"scale{tag}: probe ADD at {n} attached (median of {k})",
            med(po["full"]["add"]) * 1000,
            med(pk["full"]["add"]) * 1000,
        )
    )
    go, gk = _growth(po), _growth(pk)
    rows.append(
        Row(
            f"scale{tag}: growth, ADD at {n} - at 1, paired ({cols})",
            go * 1000,
            gk * 1000,
            target="<= k+1 ms",
            met=go <= gk + 0.001,
        )
    )
    for plugin in po["full"].get("add_calls", [{}])[0]:
        rows.append(Row(f"  scale{tag}: ours' {plugin} ADD, at {n} minus at 1", _call_growth(po, plugin) * 1000, "-"))
    if ref:
        pr = s[ref]["probe"]
        _, r_first, r_last = _blocks(s[ref]["add"])
        rows.append(
            Row(f"scale{tag}: reference fill ADD median, 1-{size} / {n - size + 1}-{n}", r_first * 1000, r_last * 1000)
        )
        rows.append(Row(f"scale{tag}: reference growth, paired (ours | reference)", go * 1000, _growth(pr) * 1000))


def _growth(probe: dict[str, Any]) -> float:
    """Median over the rounds of (ADD on the full host - ADD on the small one), seconds:
    the two are seconds apart in each round."""
    return med([f - m for f, m in zip(probe["full"]["add"], probe["small"]["add"], strict=True)])


# The pool grows and shrinks by a worker with the calls' overlap, and a process's PSS with
# the number of processes sharing its pages: a leak is judged on private memory (USS), of
# the manager and of one worker (the pool's mean); the PSS total is shown, not judged.
MEMORY_MEASURES: tuple[tuple[str, str, Callable[[dict[str, Any]], float], bool], ...] = (
    ("PSS of the helper and its workers", "total", lambda x: x["total"], False),
    ("USS of the helper's manager process", "manager_uss", lambda x: x["manager_uss"], True),
    (
        "USS of one worker (mean over the pool)",
        "workers_uss",
        lambda x: x["workers_uss"] / max(1, x["worker_count"]),
        True,
    ),
)


def memory_growth(samples: list[dict[str, Any]]) -> list[tuple[str, str, float, float, bool]]:
    """Per measure of ``MEMORY_MEASURES`` the samples have: (what, the calls compared, median of
    the first third, of the last third, judged), the first sample (before any call) left out."""
    later = samples[1:] or samples
    if not later:
        return []
    third = max(1, len(later) // 3)
    calls = f"{later[0]['calls']}-{later[third - 1]['calls']} calls / {later[-third]['calls']}-{later[-1]['calls']}"
    return [
        (what, calls, med([value(x) for x in later[:third]]), med([value(x) for x in later[-third:]]), judged)
        for what, key, value, judged in MEMORY_MEASURES
        if all(key in x for x in later)
    ]


def build_rows(res: dict[str, Any], ours: str, ref: str) -> list[Row]:
    rows: list[Row] = []

    def pair(what: str, a: float, b: float, target: str = "", limit: float | None = None) -> None:
        ratio = a / b if b else None
        met = None if limit is None or ratio is None else ratio <= limit
        rows.append(Row(what, a * 1000, b * 1000, target=target, met=met, ratio=ratio))

    if "chain" in res:
        c, n = res["chain"], len(res["chain"][ours]["add"])
        o, r = c[ours], c[ref]
        pair(f"chain ADD median ({n} containers)", med(o["add"]), med(r["add"]))
        pair("chain ADD p95", p95(o["add"]), p95(r["add"]))
        pair("chain DEL median", med(o["del"]), med(r["del"]))
        pair("chain DEL p95", p95(o["del"]), p95(r["del"]))
        pair(
            "chain ADD + DEL (sum of medians)",
            med(o["add"]) + med(o["del"]),
            med(r["add"]) + med(r["del"]),
            "<= 0.25x",
            0.25,
        )
        tenth = max(1, n // 10)
        pair(f"chain ADD median, first {tenth}", med(o["add"][:tenth]), med(r["add"][:tenth]))
        pair(f"chain ADD median, last {tenth}", med(o["add"][-tenth:]), med(r["add"][-tenth:]))
        for other in (name for name in c if name not in (ours, ref)):
            pair(
                f"  ({other}) chain ADD + DEL",
                med(c[other]["add"]) + med(c[other]["del"]),
                med(r["add"]) + med(r["del"]),
            )
    if "first" in res:
        f = res["first"]
        o, r = f[ours], f[ref]
        k = len(o["add"])
        pair(f"first container on an empty host, ADD (median of {k})", med(o["add"]), med(r["add"]))
        pair("first container on an empty host, DEL", med(o["del"]), med(r["del"]))
        pair(
            "first container on an empty host, ADD + DEL", med(o["add"]) + med(o["del"]), med(r["add"]) + med(r["del"])
        )

        def by_plugin(name: str) -> str:
            calls = f[name].get("add_calls") or [{}]
            return " / ".join(f"{med([c[p] for c in calls]) * 1000:.0f}" for p in calls[0])

        if o.get("add_calls"):
            rows.append(
                Row("  first container ADD by plugin (bridge / portmap / firewall)", by_plugin(ours), by_plugin(ref))
            )
        for other in (name for name in f if name not in (ours, ref)):
            target, limit = FIRST_TARGETS.get(other, ("", None))
            if other in FIRST_TARGETS and f[other].get("add_calls"):
                rows.append(Row(f"  ({other}) first container ADD by plugin", by_plugin(other), by_plugin(ref)))
            pair(f"  ({other}) first container ADD", med(f[other]["add"]), med(r["add"]))
            pair(
                f"  ({other}) first container ADD + DEL",
                med(f[other]["add"]) + med(f[other]["del"]),
                med(r["add"]) + med(r["del"]),
                target,
                limit,
            )
    if "scale" in res:
        _scale_rows(rows, res, "scale", "")
    if "scale_v6off" in res:
        _scale_rows(rows, res, "scale_v6off", " (disableIPv6)")
    if "concurrent" in res:
        c = res["concurrent"]
        o, r = c[ours], c[ref]
        runtimes = res["meta"]["runtimes"]
        pair(
            f"{runtimes} runtimes, {o['containers']} containers: ADD median",
            med(o["adds"]),
            med(r["adds"]),
            "<= 0.5x",
            0.5,
        )
        pair(f"{runtimes} runtimes: ADD p95", p95(o["adds"]), p95(r["adds"]))
        rows.append(
            Row(
                f"{runtimes} runtimes: throughput",
                round(o["throughput"], 1),
                round(r["throughput"], 1),
                unit="ADD/s",
                ratio=o["throughput"] / r["throughput"],
            )
        )
        rows.append(
            Row(
                f"{runtimes} runtimes: duplicate addresses",
                o["duplicates"],
                r["duplicates"],
                unit="",
                target="0",
                met=o["duplicates"] == 0,
            )
        )
        rows.append(
            Row(
                f"{runtimes} runtimes: failed ADDs (reported, then DELeted)",
                len(o.get("failed", [])),
                len(r.get("failed", [])),
                unit="",
            )
        )
    if "memory" in res:
        m = res["memory"]
        for label, ours_kb, ref_kb in m["rows"]:
            rows.append(
                Row(
                    label,
                    round(ours_kb / 1024, 1) if isinstance(ours_kb, (int, float)) else ours_kb,
                    round(ref_kb / 1024, 1) if isinstance(ref_kb, (int, float)) else ref_kb,
                    unit="MiB",
                )
            )
    if "memory_growth" in res:
        samples = res["memory_growth"]["samples"]
        for what, calls, first, last, judged in memory_growth(samples):
            rows.append(
                Row(
                    f"{what}: {calls}",
                    f"{first / 1024:.1f} / {last / 1024:.1f}",
                    "-",
                    unit="MiB",
                    target="no growth" if judged else "",
                    met=(last - first) <= 1024 if judged else None,
                )
            )
        restarts = len({x["pid"] for x in samples}) - 1
        if restarts:
            rows.append(Row("  the helper was restarted during those calls (times)", restarts, "-", unit=""))
    if "helper_after_busy" in res:
        h = res["helper_after_busy"]
        rows.append(
            Row(
                f"PSS of our helper + {h['worker_count']} workers, 2 s after the last call",
                round(h["total"] / 1024, 1),
                "-",
                unit="MiB",
            )
        )
    if "helper_after" in res:
        h = res["helper_after"]
        idle = res["meta"].get("idle_wait_s", 0)
        rows.append(
            Row(
                f"PSS of our helper + {h['worker_count']} idle workers, {idle + 2:.0f} s after the last call",
                round(h["total"] / 1024, 1),
                "-",
                unit="MiB",
                target="<= 60",
                met=h["total"] / 1024 <= 60,
            )
        )
    return rows


def plugin_table(res: dict[str, Any], names: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """Per plugin and verb, median ms of each implementation (``names``: reference, ours,
    ours with the Python launcher, and with ``--breakdown`` ours with CNI_PY_DEBUG=1, whose
    log gives the plugin's own time in the worker), over the ``plugins`` scenario's containers."""
    ref, native, python = names[:3]
    debug = names[3] if len(names) > 3 else ""
    data: list[dict[str, Any]] = []
    p = res["plugins"]
    for kind in PLUGIN_NETWORKS:
        if kind not in p:
            continue
        net = p[kind]
        for plugin in net[ref]["add_calls"][0] if net[ref]["add_calls"] else []:
            label = {"ptp": "ptp", "ptp-ipMasq": "ptp, ipMasq", "macvlan": "macvlan"}.get(kind, plugin)
            if label != "host-local" and plugin in ("bridge", "ptp", "macvlan"):
                label += " (+ host-local)"
            for verb, key in (("ADD", "add_calls"), ("DEL", "del_calls")):
                row: dict[str, Any] = {"plugin": label, "verb": verb, "n": len(net[ref][key])}
                row.update({name: med([c[plugin][0] for c in net[name][key]]) for name in names})
                if debug:
                    calls = [c[plugin] for c in net[debug][key]]
                    row["in plugin"] = med([c[2] for c in calls])
                    row["outside"] = med([c[0] - c[2] for c in calls])
                data.append(row)
        first = plugin_network(kind, "")[1]["plugins"][0]["type"]
        if net[ref].get("version") and kind != "ptp-ipMasq":
            row = {"plugin": first, "verb": "VERSION", "n": len(net[ref]["version"])}
            row.update({name: med(net[name]["version"]) for name in names})
            data.append(row)
    extra = f" {'in plugin':>9} | {'outside':>7} |" if debug else ""
    lines = [
        "",
        "Per plugin, per call (medians, ms; ours = native launcher, the default install; "
        "python = `--launcher python`; met: ours <= 1.0x the reference"
        + (
            "; in plugin / outside: ours with CNI_PY_DEBUG=1, skel.run's own time in the worker "
            "and the rest (launcher, hand-over, worker set-up)"
            if debug
            else ""
        )
        + ")",
        "",
        f"| {'plugin':<26} | {'verb':<7} | {'ours':>7} | {'python':>7} | {'ref':>7} | "
        f"{'ours/ref':>8} | {'py/ref':>7} | met |" + extra,
        f"|{'-' * 28}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 9}|{'-' * 10}|{'-' * 9}|-----|"
        + (f"{'-' * 11}|{'-' * 9}|" if debug else ""),
    ]
    for d in data:
        r = d[ref] or float("nan")
        met = "yes" if d[native] <= r else "NO"
        tail = ""
        if debug:
            tail = (
                f" {d['in plugin'] * 1000:9.1f} | {d['outside'] * 1000:7.1f} |"
                if "in plugin" in d
                else f" {'':9} | {'':7} |"
            )
        lines.append(
            f"| {d['plugin']:<26} | {d['verb']:<7} | {d[native] * 1000:7.1f} | {d[python] * 1000:7.1f} | "
            f"{d[ref] * 1000:7.1f} | {d[native] / r:7.2f}x | {d[python] / r:6.2f}x | {met:<3} |" + tail
        )
    text = "\n".join(lines)
    print(text)
    return text, data


def summary(res: dict[str, Any]) -> str:
    """The README's speed table, a dozen rows in Markdown, from a run's JSON (``--summary``)."""
    meta, out = res["meta"], []
    ref, ours = "reference", "ours"

    def line(what: str, o: str, r: str, ratio: str = "", target: str = "") -> None:
        out.append(f"| {what} | {o} | {r} | {ratio} | {target} |")

    def verdict(ok: bool, target: str) -> str:
        return f"{target}: {'met' if ok else '**not met**'}"

    if "chain" in res:
        c = res["chain"]
        n = len(c[ours]["add"])
        for verb in ("add", "del"):
            o, r = med(c[ours][verb]), med(c[ref][verb])
            line(f"chain {verb.upper()} median, {n} containers one after another", ms(o), ms(r), f"{o / r:.2f}x")
        o = med(c[ours]["add"]) + med(c[ours]["del"])
        r = med(c[ref]["add"]) + med(c[ref]["del"])
        line("chain ADD + DEL", ms(o), ms(r), f"{o / r:.2f}x", verdict(o / r <= 0.25, "<= 0.25x"))
    if "first" in res:
        f = res["first"]
        r = med(f[ref]["add"]) + med(f[ref]["del"])
        for name, what in (
            (ours, "first container, ADD + DEL, helper running"),
            ("ours, systemd, service up at boot", "the same, systemd units, service up at boot"),
            ("ours, helper not running yet", "the same, no helper running yet (the call starts it)"),
        ):
            if name in f:
                o = med(f[name]["add"]) + med(f[name]["del"])
                target, limit = FIRST_TARGETS.get(name, ("", None))
                line(what, ms(o), ms(r), f"{o / r:.2f}x", verdict(o / r <= limit, target) if limit else "")
    for key, tag in (("scale", ""), ("scale_v6off", ", bridge disableIPv6")):
        if key in res and "probe" in res[key][res[key]["names"]["ours"]]:
            s = res[key]
            go, gk = _growth(s[s["names"]["ours"]]["probe"]), _growth(s[s["names"]["kernel"]]["probe"])
            n = len(s[s["names"]["ours"]]["add"])
            line(
                f"one more ADD at {n:,} containers minus at 1 (paired probes){tag}",
                ms(go),
                f"{ms(gk)} (kernel-only)",
                "",
                verdict(go <= gk + 0.001, f"<= {ms(gk)} + 1 ms"),
            )
    if "plugin_rows" in res:
        rows = [d for d in res["plugin_rows"] if d["verb"] != "VERSION"]
        over = [d for d in rows if d[ours] > d[ref]]
        worst = max(rows, key=lambda d: d[ours] / d[ref])
        line(
            f"each plugin per call, ADD and DEL ({len(rows)} rows): the slowest against the reference "
            f"({worst['plugin']} {worst['verb']})",
            ms(worst[ours]),
            ms(worst[ref]),
            f"{worst[ours] / worst[ref]:.2f}x",
            verdict(not over, "every one <= 1.0x") + (f" ({len(over)} above)" if over else ""),
        )
        for d in rows:
            if d["plugin"].startswith(("ptp (", "macvlan")) and d["verb"] == "ADD":
                line(f"{d['plugin']} ADD median", ms(d[ours]), ms(d[ref]), f"{d[ours] / d[ref]:.2f}x")
        version = next((d for d in res["plugin_rows"] if d["verb"] == "VERSION"), None)
        if version:
            py = version["ours, Python launcher"]
            line(
                "VERSION call (the launcher's start): native / Python launcher",
                f"{ms(version[ours])} / {ms(py)}",
                ms(version[ref]),
                f"{version[ours] / version[ref]:.2f}x",
            )
    if "concurrent" in res:
        c = res["concurrent"]
        o, r = med(c[ours]["adds"]), med(c[ref]["adds"])
        line(
            f"{meta['runtimes']} runtimes adding {c[ours]['containers']} containers: ADD median",
            ms(o),
            ms(r),
            f"{o / r:.2f}x",
        )
    judged = [m for m in memory_growth(res.get("memory_growth", {}).get("samples", [])) if m[4]]
    if judged:  # runs before the samples had USS have no verdict here
        line(
            f"the helper's manager / one worker, USS over {res['memory_growth']['calls']:,} calls, MiB",
            " / ".join(f"{first / 1024:.1f} -> {last / 1024:.1f}" for _, _, first, last, _ in judged),
            "-",
            "",
            verdict(all(last - first <= 1024 for _, _, first, last, _ in judged), "no growth"),
        )
    if "helper_after" in res:
        h = res["helper_after"]["total"] / 1024
        idle = meta.get("idle_wait_s", 0) + 2
        line(
            f"the helper with its idle workers, {idle:.0f} s after the benchmark's last call, PSS, MiB",
            f"{h:.1f}",
            "-",
            "",
            verdict(h <= 60, "<= 60"),
        )
    head = [
        f"`bench/chain_bench.py`, {meta['date']}, commit {meta['commit']}, {meta['cpus']} CPUs, "
        f"load average {meta['loadavg_start'][0]:.2f} -> {meta['loadavg_end'][0]:.2f}, "
        f"wall {meta['wall_s']:.0f} s (ms):",
        "",
        "| measure | ours | reference | ours/ref | target |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    return "\n".join(head + out)


def _fmt(v: object) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def print_table(rows: list[Row], header: str) -> str:
    lines = [
        header,
        "",
        f"| {'measure':<72} | {'ours':>11} | {'reference':>9} | {'unit':<5} | {'ours/ref':>8} | {'target':<9} | met |",
        f"|{'-' * 74}|{'-' * 13}|{'-' * 11}|{'-' * 7}|{'-' * 10}|{'-' * 11}|-----|",
    ]
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        met = "" if row.met is None else ("yes" if row.met else "NO")
        lines.append(
            f"| {row.what:<72} | {_fmt(row.ours):>11} | {_fmt(row.ref):>9} "
            f"| {row.unit:<5} | {ratio:>8} | {row.target:<9} | {met:<3} |"
        )
    text = "\n".join(lines)
    print(text)
    return text


def scenario_memory(
    impls: list[Impl], nss: Namespaces, work: Path, cold: Impl, sock: str, n: int = 3
) -> dict[str, Any]:
    """Peak RSS (GNU time, i.e. wait4 of the plugin process alone) of each chain plugin, ADD
    and DEL of a few containers; ours through the helper and without it."""
    peaks: dict[str, dict[str, int]] = {}
    for k, impl in enumerate([*impls, cold]):
        new_host(nss, impl, f"mem{k}")
        ctrs = nss.make(n, f"mem{k}c")
        rt = Runtime(impl.bin_dir, chain_conf("podman", "10.88.0.0/16", str(work / f"ipam-mem-{k}")), measure_rss=True)
        peak = peaks.setdefault(impl.name, {})
        with netns.entered(impl.host_ns):
            for i, ctr in enumerate(ctrs):
                for _, calls in (rt.add(f"mem-{i}", ctr, ports_for(i)), rt.delete(f"mem-{i}", ctr, ports_for(i))):
                    for plugin, call in calls.items():
                        peak[plugin] = max(peak.get(plugin, 0), call.maxrss_kb)
        nss.drop([*ctrs, impl.host_ns])
    ours, ref = impls[1].name, impls[0].name
    rows: list[tuple[str, Any, Any]] = []
    for plugin in ("bridge", "portmap", "firewall"):
        rows.append(
            (f"peak RSS of one {plugin} process (ours: via the helper)", peaks[ours][plugin], peaks[ref][plugin])
        )
    for plugin in ("bridge", "portmap", "firewall"):
        rows.append(
            (f"peak RSS of one {plugin} process (ours: no helper)", peaks[cold.name][plugin], peaks[ref][plugin])
        )
    rows.append(("PSS of our warm helper and its workers (one per host)", helper_pss_kb(sock), "-"))
    return {"peaks": peaks, "rows": rows}


def plot(res: dict[str, Any], ours: str, ref: str, path: Path) -> str:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no PNG"
    fig, ax = plt.subplots(figsize=(9, 5.2), dpi=110)
    colors = iter(["tab:blue", "tab:green", "tab:red", "tab:orange", "tab:purple", "tab:brown"])
    curves = [(res[k], name) for k in ("scale", "scale_v6off") if k in res for name in res[k]["names"].values()]
    for (s, name), color in zip(curves, colors, strict=False):
        adds = [a * 1000 for a in s[name]["add"]]
        xs = list(range(len(adds)))
        ax.scatter(xs, adds, s=3, alpha=0.25, color=color)
        w = max(5, len(adds) // 40)
        rolling = [statistics.median(adds[max(0, i - w) : i + w + 1]) for i in xs]
        ax.plot(xs, rolling, color=color, label=f"{name} (rolling median)")
    ax.set_xlabel("containers already attached")
    ax.set_ylabel("ADD, ms (chain: bridge + host-local + portmap + firewall)")
    ax.set_title(
        "ADD time vs containers on the host, one port mapping "
        f"each ({res['meta']['kernel']}, {res['meta']['cpus']} CPUs)"
    )
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return str(path)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller counts (a few minutes)")
    parser.add_argument(
        "--out", default=str(ROOT / "bench" / "out"), help="where chain_bench.json and chain_bench.png go"
    )
    parser.add_argument("--reference", default="/usr/lib/cni", help="the reference plugins' directory")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install the reference when missing")
    parser.add_argument("--only", default="", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    parser.add_argument("--chain", type=int, help="containers in the chain scenario (300; quick 60)")
    parser.add_argument("--plugins", type=int, help="containers per network in the per-plugin scenario (100; quick 20)")
    parser.add_argument("--scale", type=int, help="containers in the scaling scenario (1000; quick 200)")
    parser.add_argument(
        "--probes", type=int, help="paired probes of the full scaling host against a small one (60; quick 10)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds to wait between the scaling fill and the probes (default 0: probe at once)",
    )
    parser.add_argument(
        "--scale-reference",
        action="store_true",
        help="fill the reference's host to --scale too (adds ~8 minutes at 1,000; its growth is not a target)",
    )
    parser.add_argument("--concurrent", type=int, help="containers added by the concurrent runtimes (400; quick 96)")
    parser.add_argument("--runtimes", type=int, default=8, help="concurrent runtimes (8)")
    parser.add_argument("--first", type=int, help="fresh-host trials for the first container (10; quick 3)")
    parser.add_argument(
        "--memory-calls", type=int, help="calls through the helper while its PSS is sampled (10000; quick 1000)"
    )
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="per-plugin scenario: ours also with CNI_PY_DEBUG=1, for the plugin's own time in the worker",
    )
    parser.add_argument(
        "--idle-wait",
        type=float,
        default=35.0,
        help="idle seconds before the helper's PSS is taken at the end (35: it keeps 2 ready workers after 30)",
    )
    parser.add_argument(
        "--plugin-env",
        action="append",
        default=[],
        metavar="K=V",
        help=(
            "add to every plugin call's environment, e.g. CNI_PY_DEBUG=1 "
            "and CNI_PY_LOG_FILE=/tmp/x.log for ours' step timings"
        ),
    )
    parser.add_argument(
        "--summary", metavar="JSON", help="print the README's speed table from a run's chain_bench.json, and exit"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.worker:
        return worker_main(opts.worker)
    if opts.summary:
        print(summary(json.loads(Path(opts.summary).read_text())))
        return 0
    PLUGIN_ENV.update(kv.split("=", 1) for kv in opts.plugin_env if "=" in kv)
    if os.geteuid() != 0:
        raise SystemExit("needs root: network namespaces")
    q = opts.quick
    counts = {
        "chain": opts.chain or (60 if q else 300),
        "plugins": opts.plugins or (20 if q else 100),
        "scale": opts.scale or (200 if q else 1000),
        "probes": opts.probes if opts.probes is not None else (10 if q else 60),
        "settle_s": opts.settle,
        "concurrent": opts.concurrent or (48 if q else 400),
        "first": opts.first or (3 if q else 10),
        "memory_calls": opts.memory_calls or (1000 if q else 10000),
    }
    only = {s for s in opts.only.split(",") if s} or set(SCENARIOS)
    if only - set(SCENARIOS):
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(only - set(SCENARIOS)))}")
    ref_version = ensure_reference(opts.reference, not opts.no_install)
    out_dir = Path(opts.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cni-py-chain-bench-"))
    nss = Namespaces(f"cb{os.getpid()}")
    helper: subprocess.Popen[bytes] | None = None
    units: list[SystemdUnits] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    sock = str(work / "run" / "helper.sock")
    idle_sock = str(work / "run-idle" / "helper.sock")
    try:
        # auto, as installed by default (the native launcher where cc builds it): if the helper
        # exits (it does when our code changes on disk), the next call starts a new one and
        # waits for it. The Python launchers' install is the same code: it shares the helper.
        ours_install(work / "warm", helper="auto", helper_socket=sock)
        ours_install(work / "python", helper="auto", helper_socket=sock, launcher="python")
        ours_install(work / "cold")
        # auto with no helper running yet, as after boot or ten idle minutes: stopped before
        # each trial, so the trial's first call starts one and waits for it
        ours_install(work / "idle", helper="auto", helper_socket=idle_sock)
        helper = start_helper(sock)
        ref = Impl("reference", opts.reference)
        ours = Impl("ours", str(work / "warm"))
        python = Impl("ours, Python launcher", str(work / "python"))
        debug = Impl("ours, CNI_PY_DEBUG=1", str(work / "warm"), kind="debug")
        cold = Impl("ours, no helper", str(work / "cold"))
        idle = Impl("ours, helper not running yet", str(work / "idle"))
        impls = [ref, ours]
        native = (work / "warm" / "bridge").read_bytes()[:4] == b"\x7fELF"
        meta = {
            "reference": f"{REFERENCE_PACKAGE} {ref_version} ({opts.reference})",
            "kernel": os.uname().release,
            "cpus": os.cpu_count(),
            "quick": q,
            "counts": counts,
            "runtimes": opts.runtimes,
            "launcher": "native" if native else "python (no C compiler: the native launcher was not built)",
            "loadavg_start": os.getloadavg(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "commit": subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip(),
            "helper_pid_start": helper_pid(sock),
            "idle_wait_s": opts.idle_wait,
        }
        res: dict[str, Any] = {"meta": meta}
        phase_start: dict[str, float] = {}
        print(
            f"reference: {meta['reference']}; ours: {ROOT} ({meta['commit']}), {meta['launcher']} launcher, warm "
            f"helper on a private socket; kernel {meta['kernel']}, {meta['cpus']} CPUs; "
            f"load average {meta['loadavg_start'][0]:.2f}",
            flush=True,
        )
        scenario_sequential(impls + [python], nss, work, "warm", impl_chain, 3)  # warm-up, not counted
        if "first" in only:
            phase_start["first"] = time.monotonic()
            print(f"first container on an empty host: {counts['first']} trials ...", flush=True)
            firsts = [ref, ours, cold, idle]
            before: dict[str, Callable[[], object]] = {idle.name: lambda: stop_helper(None, idle_sock)}
            after: dict[str, Callable[[], object]] = {}
            if shutil.which("systemd-socket-activate"):
                for boot, name in (
                    (True, "ours, systemd, service up at boot"),
                    (False, "ours, systemd, socket-activated"),
                ):
                    sd_dir = work / f"sd{int(boot)}"
                    sd_sock = str(sd_dir / "run" / "helper.sock")
                    ours_install(
                        sd_dir / "bin",
                        helper="auto",
                        helper_socket=sd_sock,
                        extra=("--systemd", "--unit-dir", str(sd_dir / "units")),
                    )
                    unit = SystemdUnits(sd_dir / "units", sd_sock, sd_dir, boot)
                    units.append(unit)
                    firsts.append(Impl(name, str(sd_dir / "bin")))
                    before[name], after[name] = unit.start, unit.stop
            else:
                print("  systemd-socket-activate not found: no systemd rows", flush=True)
            res["first"] = scenario_first(firsts, nss, work, counts["first"], before=before, after=after)
        if "chain" in only:
            phase_start["chain"] = time.monotonic()
            print(f"chain: {counts['chain']} containers ...", flush=True)
            res["chain"] = scenario_sequential(impls, nss, work, "chain", impl_chain, counts["chain"], progress="chain")
        if "plugins" in only:
            phase_start["plugins"] = time.monotonic()
            print(f"plugins: {counts['plugins']} containers per network ...", flush=True)
            plugin_impls = [ref, ours, python] + ([debug] if opts.breakdown else [])
            res["plugins"] = scenario_plugins(plugin_impls, nss, work, counts["plugins"])
        if "concurrent" in only:
            phase_start["concurrent"] = time.monotonic()
            print(f"concurrent: {opts.runtimes} runtimes, {counts['concurrent']} containers ...", flush=True)
            res["concurrent"] = scenario_concurrent(impls, nss, work, opts.runtimes, counts["concurrent"], rounds=2)
        if "scale" in only:
            phase_start["scale"] = time.monotonic()
            for key, v6off in (("scale", False), ("scale_v6off", True)):
                tag = ", disableIPv6" if v6off else ""
                group = [
                    Impl("ours" + tag, ours.bin_dir, disable_ipv6=v6off),
                    Impl("kernel only" + tag, "", kind="kernel", disable_ipv6=v6off),
                ]
                if opts.scale_reference and not v6off:
                    group.append(Impl("reference", ref.bin_dir))
                print(f"{key}: {counts['scale']} containers, {' / '.join(i.name for i in group)} ...", flush=True)
                res[key] = scenario_sequential(
                    group,
                    nss,
                    work,
                    key.replace("_", ""),
                    impl_chain,
                    counts["scale"],
                    do_del=False,
                    progress=key,
                    probes=counts["probes"],
                    settle=opts.settle,
                )
                res[key]["names"] = {"ours": group[0].name, "kernel": group[1].name}
                if len(group) > 2:
                    res[key]["names"]["reference"] = group[2].name
        if "memory" in only:
            phase_start["memory"] = time.monotonic()
            res["memory"] = scenario_memory(impls, nss, work, cold, sock)
            print(f"memory: {counts['memory_calls']} calls through the helper ...", flush=True)
            res["memory_growth"] = scenario_memory_growth(
                ours, nss, work, sock, counts["memory_calls"], max(1, counts["memory_calls"] // 10)
            )
        ends = sorted(phase_start.items(), key=lambda kv: kv[1]) + [("", time.monotonic())]
        meta["scenario_s"] = {k: round(ends[i + 1][1] - t, 1) for i, (k, t) in enumerate(ends[:-1])}
        time.sleep(2)  # the last call's worker back in the pool
        res["helper_after_busy"] = helper_pss(sock)
        if opts.idle_wait:
            print(f"waiting {opts.idle_wait:.0f} s: the helper's pool shrinks to its idle size ...", flush=True)
            time.sleep(opts.idle_wait)
        res["helper_after"] = helper_pss(sock)
        meta["helper_pid_end"] = helper_pid(sock)
        meta["loadavg_end"] = os.getloadavg()
        meta["wall_s"] = round(time.monotonic() - started, 1)
        header = (
            f"cni-py chain benchmark, {meta['date']}, commit "
            f"{meta['commit']}{' (--quick)' if q else ''}: ours ({meta['launcher']} launcher, warm helper) "
            f"vs {meta['reference']}\n"
            f"kernel {meta['kernel']}, {meta['cpus']} CPUs; each implementation in "
            f"its own fresh host namespace, calls interleaved; wall {meta['wall_s']} s; load average "
            f"{meta['loadavg_start'][0]:.2f} at the start, {meta['loadavg_end'][0]:.2f} at the end"
        )
        header += "\nwall per scenario (s): " + ", ".join(f"{k} {v}" for k, v in meta["scenario_s"].items())
        if meta["helper_pid_start"] != meta["helper_pid_end"]:
            header += "\nnote: our helper was restarted during the run (our code changed on disk?)"
        print()
        res["table"] = print_table(build_rows(res, ours.name, ref.name), header)
        if "plugins" in res:
            res["plugin_table"], res["plugin_rows"] = plugin_table(
                res, [ref.name, ours.name, python.name] + ([debug.name] if opts.breakdown else [])
            )
        (out_dir / "chain_bench.json").write_text(json.dumps(res, indent=1, default=str))
        print(f"\nJSON: {out_dir / 'chain_bench.json'}")
        if "scale" in res:
            print(f"PNG:  {plot(res, ours.name, ref.name, out_dir / 'chain_bench.png')}")
        return 0
    finally:
        for unit in units:
            unit.stop()
        if helper is not None:
            stop_helper(helper, sock)  # also one a launcher restarted (auto mode)
        stop_helper(None, idle_sock)
        nss.drop_all()
        shutil.rmtree(work, ignore_errors=True)


SCENARIOS = ("chain", "first", "plugins", "scale", "concurrent", "memory")

if __name__ == "__main__":
    sys.exit(main())
