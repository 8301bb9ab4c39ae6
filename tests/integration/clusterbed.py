"""A multi-node test bed: etcd in a namespace of its own, nodes as namespaces on an underlay
bridge (a namespace of its own too), each node with its own directories (conflist, agent
state, host-local data, result cache), its agent run as ``cni-plugins node run`` in the
foreground, and pods as namespaces attached through the node's conflist by cnitool, run
inside the node as a runtime there would run it.

Nothing touches the machine's own network: every link, route, vxlan device and nftables
table is inside a namespace the bed made. ``close`` stops what it started (agents, etcd),
also when the test failed; the ``namespaces`` fixture removes the namespaces.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cni_plugins.etcd.client import Client, EtcdError, Options, parse_endpoint, prefix_end
from cni_plugins.kernel import netns
from tests.integration.nsutil import Namespaces, PluginRun, path, poll, sh

UNDERLAY_NET = "192.168.23"
ETCD_IP = f"{UNDERLAY_NET}.100"
ETCD_URL = f"http://{ETCD_IP}:2379"
PYTHON = sys.executable
T = TypeVar("T")


def etcd_available() -> str:
    """Why the bed cannot run here ('' when it can)."""
    for tool in ("etcd", "etcdctl", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup.sh installs etcd-server and etcd-client)"
    return ""


@dataclass
class Node:
    bed: Bed
    name: str
    ns: str
    ip: str
    dir: Path
    agent: subprocess.Popen[bytes] | None = None
    agent_args: tuple[str, ...] = ()
    logs: list[Path] = field(default_factory=list)

    @property
    def conf_dir(self) -> Path:
        return self.dir / "conf"

    def sh(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return sh(*argv, ns=self.ns, check=check, timeout=timeout)

    # ------------------------------------------------------------ the agent

    def agent_argv(self, *extra: str, ttl: int = 2, net: str = "cluster", prefix: str = "/cni-py") -> list[str]:
        return [
            "--etcd-endpoints",
            ETCD_URL,
            "--etcd-prefix",
            prefix,
            "--etcd-timeout",
            "1",
            "--node-name",
            self.name,
            "--public-ip",
            self.ip,
            "--lease-ttl",
            str(ttl),
            "--net-name",
            net,
            "--conf-dir",
            str(self.conf_dir),
            "--state-dir",
            str(self.dir / "state"),
            "--data-dir",
            str(self.dir / "data"),
            *extra,
        ]

    def start_agent(
        self, *extra: str, ttl: int = 2, net: str = "cluster", prefix: str = "/cni-py"
    ) -> subprocess.Popen[bytes]:
        """``cni-plugins node run`` in the node, in the foreground; returns once its conflist is written."""
        argv = self.agent_argv(*extra, ttl=ttl, net=net, prefix=prefix)
        log_path = self.dir / f"agent-{net}-{len(self.logs)}.log"
        self.logs.append(log_path)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, PYTHON, "-m", "cni_plugins.install", "node", "run", *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.bed.agents.append(proc)
        self.agent, self.agent_args = proc, tuple(argv)
        ready = poll(lambda: proc.poll() is not None or "ready: " in log_path.read_text(errors="replace"), timeout=20)
        assert ready and proc.poll() is None, f"agent of {self.name} did not start: {self.log_text()}"
        return proc

    def stop_agent(self, sig: int = signal.SIGTERM) -> int:
        assert self.agent is not None
        self.agent.send_signal(sig)
        rc = self.agent.wait(timeout=10)
        self.agent = None
        return rc

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def conflist(self, net: str = "cluster") -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.conf_dir / f"10-{net}.conflist").read_text())
        return data

    def subnet(self, net: str = "cluster") -> str:
        return str(self.conflist(net)["plugins"][0]["ipam"]["ranges"][0][0]["subnet"])

    # ------------------------------------------------------------ pods

    def cnitool(
        self, command: str, pod_ns: str, net: str = "cluster", timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "NETCONFPATH": str(self.conf_dir),
            "CNI_PATH": str(self.bed.cni_bin),
            "CNI_CACHE_DIR": str(self.dir / "cache"),
        }
        cmd = ["ip", "netns", "exec", self.ns, PYTHON, "-m", "cni_plugins.runtime.cnitool", command, net, path(pod_ns)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)

    def pod(self, label: str, net: str = "cluster") -> tuple[str, str]:
        """A pod on this node: (its namespace, its address)."""
        pod_ns = self.bed.namespaces.make(f"{self.name}{label}")
        out = self.cnitool("add", pod_ns, net)
        assert out.returncode == 0, f"ADD of {label} on {self.name}: {out.stdout} {out.stderr}"
        address = json.loads(out.stdout)["ips"][0]["address"].split("/")[0]
        return pod_ns, address

    def plugin(
        self, plugin: str, command: str, conf: dict[str, Any], cid: str, ifname: str = "eth0", timeout: float = 60
    ) -> PluginRun:
        """Exec one installed plugin inside the node, as a runtime there does (nsenter: one exec)."""
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": path(self.bed.pod_ns),
            "CNI_IFNAME": ifname,
            "CNI_PATH": str(self.bed.cni_bin),
        }
        proc = subprocess.run(
            ["nsenter", f"--net={path(self.ns)}", str(self.bed.cni_bin / plugin)],
            input=json.dumps(conf).encode(),
            env=env,
            capture_output=True,
            timeout=timeout,
        )
        return PluginRun(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


class Bed:
    def __init__(self, namespaces: Namespaces, tmp: Path, cni_bin: Path) -> None:
        self.namespaces = namespaces
        self.tmp = tmp
        self.cni_bin = cni_bin
        self.nodes: list[Node] = []
        self.agents: list[subprocess.Popen[bytes]] = []
        self.etcd: subprocess.Popen[bytes] | None = None
        self.etcd_dir = tmp / "etcd"
        self.underlay = namespaces.make("ul")
        sh("ip", "link", "add", "br0", "type", "bridge", ns=self.underlay)
        sh("ip", "link", "set", "br0", "up", ns=self.underlay)
        self.etcd_ns = namespaces.make("etcd")
        self._wire(self.etcd_ns, ETCD_IP)
        self.pod_ns = namespaces.make("ipamctr")  # CNI_NETNS for IPAM-only calls (IPAM never enters it)

    def _wire(self, ns: str, ip: str) -> None:
        """A veth from ``ns`` (as eth0, with ``ip``/24) to the underlay bridge."""
        tag = f"{os.getpid() % 10000}{len(self.nodes)}{ip.rsplit('.', 1)[1]}"
        inner, outer = f"i{tag}", f"o{tag}"
        sh("ip", "link", "add", inner, "netns", ns, "type", "veth", "peer", "name", outer, "netns", self.underlay)
        sh("ip", "link", "set", inner, "name", "eth0", ns=ns)
        sh("ip", "addr", "add", f"{ip}/24", "dev", "eth0", ns=ns)
        sh("ip", "link", "set", "eth0", "up", ns=ns)
        sh("ip", "link", "set", outer, "master", "br0", "up", ns=self.underlay)

    # ------------------------------------------------------------ etcd

    def start_etcd(self, fresh: bool = True) -> None:
        """etcd (single member, fast elections so a lease TTL of 1-2 s holds), healthy on return."""
        if fresh:
            shutil.rmtree(self.etcd_dir, ignore_errors=True)
        log = open(self.tmp / "etcd.log", "ab")  # noqa: SIM115  (the process keeps it)
        self.etcd = subprocess.Popen(
            [
                "ip", "netns", "exec", self.etcd_ns, "etcd",
                "--name", "bed", "--data-dir", str(self.etcd_dir),
                "--listen-client-urls", f"{ETCD_URL},http://127.0.0.1:2379",
                "--advertise-client-urls", ETCD_URL,
                "--listen-peer-urls", "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                "--initial-cluster", "bed=http://127.0.0.1:2380",
                "--initial-cluster-state", "new", "--initial-cluster-token", "bed",
                "--heartbeat-interval", "25", "--election-timeout", "250",
                "--logger", "zap", "--log-outputs", "stderr", "--log-level", "warn",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )  # fmt: skip
        log.close()

        def healthy() -> bool:
            try:
                self.in_etcd(lambda c: c.status(), timeout=0.3)
                return True
            except EtcdError:
                return False

        assert poll(healthy, timeout=20, interval=0.05), (self.tmp / "etcd.log").read_text()

    def stop_etcd(self, sig: int = signal.SIGTERM) -> None:
        if self.etcd is None:
            return
        if sig == signal.SIGSTOP:
            os.killpg(self.etcd.pid, sig)
            return
        os.killpg(self.etcd.pid, signal.SIGCONT)
        os.killpg(self.etcd.pid, sig)
        try:
            self.etcd.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.etcd.pid, signal.SIGKILL)
            self.etcd.wait(timeout=10)
        self.etcd = None

    def resume_etcd(self) -> None:
        assert self.etcd is not None
        os.killpg(self.etcd.pid, signal.SIGCONT)

    @contextmanager
    def etcd_client(self, timeout: float = 2.0) -> Iterator[Client]:
        """A client whose connections are made in the etcd namespace (a socket stays in the
        namespace it was made in: every request runs with this thread in there)."""
        client = Client(Options(endpoints=(parse_endpoint("http://127.0.0.1:2379"),), timeout=timeout))
        try:
            yield client
        finally:
            client.close()

    def in_etcd(self, fn: Callable[[Client], T], timeout: float = 2.0) -> T:
        with netns.entered(path(self.etcd_ns), label="etcd"), self.etcd_client(timeout) as client:
            return fn(client)

    def etcd_keys(self, prefix: str) -> dict[str, str]:
        def read(client: Client) -> dict[str, str]:
            kvs, _ = client.range(prefix.encode(), prefix_end(prefix.encode()))
            return {kv.key.decode(): kv.value.decode(errors="replace") for kv in kvs}

        return self.in_etcd(read)

    def etcdctl(self, *args: str) -> str:
        return sh("etcdctl", "--endpoints", "http://127.0.0.1:2379", *args, ns=self.etcd_ns).stdout

    # ------------------------------------------------------------ nodes

    def add_node(self) -> Node:
        index = len(self.nodes) + 1
        name = f"n{index}"
        ns = self.namespaces.make(name)
        node = Node(self, name, ns, f"{UNDERLAY_NET}.{index}", self.tmp / name)
        for sub in ("conf", "state", "data", "cache"):
            (node.dir / sub).mkdir(parents=True, exist_ok=True)
        self._wire(ns, node.ip)
        self.nodes.append(node)
        return node

    def init_network(self, backend: str, network: str = "10.244.0.0/16", prefix: str = "/cni-py", *extra: str) -> None:
        out = sh(
            PYTHON, "-m", "cni_plugins.install", "node", "init", "--etcd-endpoints", "http://127.0.0.1:2379",
            "--etcd-prefix", prefix, "--network", network, "--backend", backend, *extra,
            ns=self.etcd_ns,
        )  # fmt: skip
        assert network in out.stdout

    def close(self) -> None:
        for proc in self.agents:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=10)
        self.stop_etcd(signal.SIGKILL)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def wait_for(fn: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    start = time.monotonic()
    assert poll(fn, timeout=timeout, interval=0.05), f"{what}: not within {timeout} s"
    _ = start
