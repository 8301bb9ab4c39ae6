"""Network test scenarios: containers (network namespaces), the conflists they join, published
ports, servers, and checks (ping, TCP, UDP, expected failures), described in a YAML file.

    cni-scenario conf/scenarios/bridge-portmap.yaml [--cni-path /opt/cni/bin]

Everything happens in namespaces made for the run: one stands for the host (bridges, rules
and routes live there), one, if asked, for the outside world (a veth away from the host,
with no route back to the containers), and one per container. Containers join their
networks through the libcni-like runner of our ``cnitool`` (plugins exec'd from
``--cni-path`` inside the host namespace); host-local IPAM without a ``dataDir`` and the
result cache are kept in the run's own directory. Each step and check is printed as it
runs, with its timing. At the end every attachment is DELeted, the run checks that no link,
address reservation, nftables entry or cached result is left, and then removes its
namespaces and files, also when a step failed or the run is interrupted. The exit status is
1 when any check failed. conf/scenarios/README.md describes the format.
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, ParamSpec, TypeVar

from cni_plugins.runtime.runner import CNIRunner, RuntimeConf
from cni_plugins.runtime.scenario_file import (
    Check,
    Container,
    Scenario,
    ScenarioError,
    literal,
    load,
    nft_comment,
)
from cni_plugins.spec.errors import CNIError
from cni_plugins.spec.version import at_least, convert

P = ParamSpec("P")
T = TypeVar("T")

HOST_OUT = ("198.18.0.1", "fd00:198:18::1")  # the host's outside address (benchmarking range)
OUTSIDE = ("198.18.0.2", "fd00:198:18::2")  # the outside world
UPLINK = "uplink"  # the host's link to the outside world (a macvlan master, for example)
CHECK_TIMEOUT = 2  # seconds per attempt of a check that must pass
FAIL_TIMEOUT = 1  # seconds to wait for an answer that must not come (all on one machine)
RETRY_FOR = 4.0  # a check that must pass is retried this long (neighbour discovery, DAD)

SERVER = r"""
import socket, sys
proto, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
try:
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    any_addr = "::"
except OSError:
    s = socket.socket(socket.AF_INET, kind)
    any_addr = "0.0.0.0"
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((any_addr, port))
if proto == "tcp":
    s.listen(64)
print("ready", flush=True)
def reply(peer):
    return f"{name} {peer[0].removeprefix('::ffff:')}\n".encode()
while True:
    if proto == "tcp":
        c, peer = s.accept()
        c.sendall(reply(peer))
        c.close()
    else:
        data, peer = s.recvfrom(2048)
        s.sendto(reply(peer), peer)
"""

CLIENT = r"""
import socket, sys
proto, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(timeout)
try:
    if proto == "tcp":
        s.connect((host, port))
        print(s.recv(200).decode().strip())
    else:
        s.sendto(b"hi", (host, port))
        print(s.recvfrom(200)[0].decode().strip())
except socket.timeout:
    print("timed out"); sys.exit(1)
except OSError as exc:
    print(exc.strerror or exc); sys.exit(1)
"""


class Interrupted(BaseException):
    pass


# ------------------------------------------------------------ the run


class Run:
    def __init__(self, sc: Scenario, cni_path: list[str], work: Path, tag: str) -> None:
        self.sc = sc
        self.work = work
        self.tag = tag
        self.host = f"cnisc-{tag}-host"
        self.outside = f"cnisc-{tag}-outside"
        self.cni = CNIRunner(cni_path, str(work / "cache"))
        self.namespaces: list[str] = []
        self.servers: list[subprocess.Popen[str]] = []
        self.attached: list[tuple[Container, str, str]] = []  # container, network, ifname
        self.passed = 0
        self.failed = 0
        for c in sc.containers:
            c.netns = f"cnisc-{tag}-{c.name}"

    # ------------------------------------------------------------ output

    def report(self, mark: str, text: str, started: float | None = None) -> None:
        timing = f"  ({(time.monotonic() - started) * 1000:.0f} ms)" if started is not None else ""
        print(f"{mark:<4} {text}{timing}", flush=True)

    def outcome(self, ok: bool, text: str, started: float) -> None:
        if ok:
            self.passed += 1
        else:
            self.failed += 1
        self.report("ok" if ok else "FAIL", text, started)

    # ------------------------------------------------------------ commands

    def sh(
        self, *argv: str, ns: str | None = None, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ScenarioError(f"{' '.join(cmd)}: no answer in {timeout:.0f} s") from None
        if check and proc.returncode != 0:
            raise ScenarioError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def in_host(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        from cni_plugins.kernel import netns

        with netns.entered(f"/var/run/netns/{self.host}"):
            return fn(*args, **kwargs)

    # ------------------------------------------------------------ setup

    def make_namespaces(self) -> None:
        for ns in [self.host] + ([self.outside] if self.sc.outside else []) + [c.netns for c in self.sc.containers]:
            self.sh("ip", "netns", "add", ns)
            self.namespaces.append(ns)
        for ns in [self.host] + ([self.outside] if self.sc.outside else []):
            self.sh("ip", "link", "set", "lo", "up", ns=ns)
        if not self.sc.outside:
            return
        self.sh(
            "ip", "link", "add", UPLINK, "type", "veth", "peer", "name", "eth0", "netns", self.outside, ns=self.host
        )
        for ns, dev, idx in ((self.host, UPLINK, 0), (self.outside, "eth0", 1)):
            self.sh("ip", "addr", "add", f"{(HOST_OUT, OUTSIDE)[idx][0]}/24", "dev", dev, ns=ns)
            self.sh("ip", "-6", "addr", "add", f"{(HOST_OUT, OUTSIDE)[idx][1]}/64", "dev", dev, "nodad", ns=ns)
            self.sh("ip", "link", "set", dev, "up", ns=ns)

    def describe(self) -> None:
        parts = [f"host {self.host}"]
        if self.sc.outside:
            parts.append(
                f"outside world {self.outside} ({OUTSIDE[0]}, {OUTSIDE[1]}; the host is {HOST_OUT[0]}, {HOST_OUT[1]})"
            )
        parts.append("containers " + ", ".join(c.name for c in self.sc.containers))
        print(f"     namespaces: {'; '.join(parts)}", flush=True)

    def runtime_conf(self, c: Container, ifname: str) -> RuntimeConf:
        caps: dict[str, Any] = {"portMappings": c.ports} if c.ports else {}
        return RuntimeConf(
            container_id=f"cnisc-{self.tag}-{c.name}",
            netns=f"/var/run/netns/{c.netns}",
            ifname=ifname,
            cni_args=c.cni_args,
            capability_args=caps,
        )

    def attach(self) -> None:
        for c in self.sc.containers:
            for i, net in enumerate(c.networks):
                ifname = f"eth{i}"
                netlist = self.sc.networks[net]
                rt = self.runtime_conf(c, ifname)
                started = time.monotonic()
                self.attached.append((c, net, ifname))  # DEL even if ADD failed half-way
                try:
                    result = self.in_host(self.cni.add, netlist, rt)
                except CNIError as exc:
                    self.outcome(False, f"{c.name} joins {net} as {ifname}: {exc.msg}", started)
                    raise ScenarioError(f"{c.name} could not join {net}") from None
                c.results[ifname] = convert(result, "1.1.0")
                self.report("+", f"{c.name} joins {net} as {ifname}: {self.addresses_text(c, ifname)}", started)
                if c.ports:
                    maps = ", ".join(
                        f"{p.get('hostPort')}->{p.get('containerPort')}/{p.get('protocol', 'tcp')}" for p in c.ports
                    )
                    print(f"     publishes {maps}", flush=True)

    def addresses_text(self, c: Container, ifname: str) -> str:
        ips = c.results[ifname].get("ips") or []
        if not ips:
            return "no address (L2 only)"
        return ", ".join(ip["address"] + (f" via {ip['gateway']}" if ip.get("gateway") else "") for ip in ips)

    def check_attachments(self) -> None:
        for c, net, ifname in self.attached:
            netlist = self.sc.networks[net]
            if not at_least(netlist.cni_version, "0.4.0") or netlist.disable_check:
                continue
            started = time.monotonic()
            try:
                self.in_host(self.cni.check, netlist, self.runtime_conf(c, ifname))
                self.outcome(True, f"CHECK {c.name} on {net}", started)
            except CNIError as exc:
                self.outcome(False, f"CHECK {c.name} on {net}: {exc.msg}", started)

    def start_servers(self) -> None:
        places = [(c.netns, c.name, c.serve) for c in self.sc.containers]
        if self.sc.outside:
            places.append((self.outside, "outside", self.sc.outside_serve))
        for ns, name, serve in places:
            for proto, port in serve:
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", ns, sys.executable, "-I", "-c", SERVER, proto, str(port), name],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                self.servers.append(proc)
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    err = proc.stderr.read().strip().splitlines() if proc.stderr else []
                    raise ScenarioError(
                        f"{name}: {proto} server on port {port} did not start: {err[-1] if err else 'no output'}"
                    )
                print(f"     {name} serves {proto}/{port}", flush=True)

    # ------------------------------------------------------------ checks

    def container(self, name: str) -> Container | None:
        return next((c for c in self.sc.containers if c.name == name), None)

    def address(self, ref: str, family: int) -> str:
        """An address for ``ref``: a literal, ``host`` (its outside address), ``localhost``,
        ``outside``, ``NAME`` / ``NAME.IFNAME`` (a container's address) or ``NAME[.IFNAME].gateway``."""
        if literal(ref) is not None:
            return ref
        idx = 0 if family == 4 else 1
        if ref == "host":
            return HOST_OUT[idx]
        if ref == "outside":
            return OUTSIDE[idx]
        if ref == "localhost":
            return ("127.0.0.1", "::1")[idx]
        parts = ref.split(".")
        gateway = parts[-1] == "gateway"
        if gateway:
            parts = parts[:-1]
        c = self.container(parts[0])
        if c is None or len(parts) > 2:
            raise ScenarioError(f"{ref!r}: not a container, host, localhost or outside")
        ifnames = [parts[1]] if len(parts) == 2 else sorted(c.results)
        for ifname in ifnames:
            result = c.results.get(ifname)
            if result is None:
                raise ScenarioError(f"{ref!r}: {c.name} has no {ifname}")
            for ip in result.get("ips") or []:
                addr = (
                    str(ip["gateway" if gateway else "address"]).split("/")[0]
                    if (ip.get("gateway") or not gateway)
                    else ""
                )
                if addr and ipaddress.ip_address(addr).version == family:
                    return addr
        raise ScenarioError(f"{ref!r}: no IPv{family} {'gateway' if gateway else 'address'}")

    def place(self, ref: str) -> str:
        if ref == "host":
            return self.host
        if ref == "outside":
            return self.outside
        c = self.container(ref)
        if c is None:
            raise ScenarioError(f"{ref!r}: checks run from a container, host or outside")
        return c.netns

    def attempt(self, check: Check, ns: str, addr: str) -> tuple[bool, str]:
        wait = FAIL_TIMEOUT if check.must_fail else CHECK_TIMEOUT
        if check.kind == "ping":
            proc = self.sh(
                "ping", *(["-6"] if check.family == 6 else []), "-c", "1", "-W", str(wait), addr, ns=ns, check=False
            )
            return proc.returncode == 0, "" if proc.returncode == 0 else "no reply"
        proc = self.sh(
            sys.executable,
            "-I",
            "-c",
            CLIENT,
            check.kind,
            addr,
            str(check.port),
            str(wait),
            ns=ns,
            check=False,
            timeout=wait + 10,
        )
        answer = proc.stdout.strip() or proc.stderr.strip()
        if proc.returncode != 0:
            return False, answer
        server, _, peer = answer.partition(" ")
        detail = f"answered by {server}, which sees {peer}"
        if check.sees:
            want = self.address(check.sees, check.family)
            if peer != want:
                return False, f"{detail}, not {check.sees} ({want})"
        return True, detail

    def run_check(self, check: Check) -> None:
        started = time.monotonic()
        try:
            ns = self.place(check.src)
            addr = self.address(check.dst, check.family)
        except ScenarioError as exc:
            self.outcome(False, f"{check.text}: {exc}", started)
            return
        shown = check.text + (f"  [{addr}]" if addr != check.dst else "")
        ok, detail = self.attempt(check, ns, addr)
        if check.must_fail:
            passed = not ok
            detail = "no connection, as expected" if passed else f"connected: {detail}"
        else:
            while not ok and time.monotonic() - started < RETRY_FOR:
                ok, detail = self.attempt(check, ns, addr)
            passed = ok
        self.outcome(passed, f"{shown}: {detail}" if detail else shown, started)

    # ------------------------------------------------------------ teardown

    def detach(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        self.servers.clear()
        for c, net, ifname in reversed(self.attached):
            started = time.monotonic()
            try:
                self.in_host(self.cni.delete, self.sc.networks[net], self.runtime_conf(c, ifname))
                self.report("-", f"{c.name} leaves {net} ({ifname})", started)
            except CNIError as exc:
                self.outcome(False, f"DEL {c.name} from {net}: {exc.msg}", started)
        self.attached.clear()

    def leftovers(self) -> list[str]:
        left = []
        links = json.loads(self.sh("ip", "-j", "-d", "link", "show", ns=self.host).stdout or "[]")
        for link in links:
            kind = (link.get("linkinfo") or {}).get("info_kind")
            if kind in ("veth", "macvlan", "ipvlan") and link["ifname"] != UPLINK:
                left.append(f"host link {link['ifname']}")
        for c in self.sc.containers:
            for link in json.loads(self.sh("ip", "-j", "link", "show", ns=c.netns).stdout or "[]"):
                if link["ifname"] != "lo":
                    left.append(f"{c.name} link {link['ifname']}")
        ipam = self.work / "ipam"
        if ipam.is_dir():
            for net_dir in sorted(ipam.iterdir()):
                left += [
                    f"{net_dir.name} reservation {p.name}"
                    for p in sorted(net_dir.iterdir())
                    if literal(p.name) is not None
                ]
        results = self.work / "cache" / "results"
        if results.is_dir():
            left += [f"cached result {p.name}" for p in sorted(results.iterdir())]
        # Per-attachment nftables entries carry "id:<container ID>" in their comment; per-network
        # entries (a bridge's ingress policy) stay by design, as the reference keeps its chains.
        nft = json.loads(self.sh("nft", "-j", "list", "ruleset", ns=self.host).stdout or '{"nftables": []}')["nftables"]
        mine = f"id:cnisc-{self.tag}-"
        for item in nft:
            for kind in ("set", "map"):
                obj = item.get(kind) or {}
                ours = [e for e in obj.get("elem") or [] if mine in nft_comment(e)]
                if ours:
                    left.append(f"nft {obj['family']} {obj['table']} {kind} {obj['name']}: {len(ours)} entries")
        return left

    def verify_clean(self) -> None:
        started = time.monotonic()
        left = self.leftovers()
        self.outcome(
            not left,
            "nothing left behind (links, reservations, nftables entries, cached results)"
            + (f": {'; '.join(left)}" if left else ""),
            started,
        )

    def remove_namespaces(self) -> None:
        for ns in reversed(self.namespaces):
            for pid in self.sh("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            self.sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()


_runs = itertools.count()


def run_scenario(path: Path, cni_path: list[str]) -> bool:
    """Run one scenario file; True when every check passed."""
    # Names say which process made them: cnisc-<pid>-<n>-<container>, /tmp/cni-scenario-<pid>-<n>-*
    tag = f"{os.getpid()}-{next(_runs)}"
    work = Path(tempfile.mkdtemp(prefix=f"cni-scenario-{tag}-"))
    begun = time.monotonic()
    run: Run | None = None
    try:
        sc = load(path, work / "ipam")
        print(f"== {sc.name}" + (f": {sc.description}" if sc.description else ""), flush=True)
        print(f"     file: {sc.source}; plugins from {os.pathsep.join(cni_path)}", flush=True)
        run = Run(sc, cni_path, work, tag)
        run.make_namespaces()
        run.describe()
        run.attach()
        run.check_attachments()
        run.start_servers()
        for check in sc.checks:
            run.run_check(check)
    except ScenarioError as exc:
        if run is None:
            print(f"FAIL {exc}", flush=True)
            shutil.rmtree(work, ignore_errors=True)
            return False
        run.outcome(False, f"stopped: {exc}", time.monotonic())
    except Interrupted:
        if run is not None:
            run.outcome(False, "interrupted", time.monotonic())
    finally:
        if run is not None:
            _hold_signals()  # a second Ctrl-C must not cut the teardown short
            try:
                run.detach()
                if run.namespaces:
                    run.verify_clean()
            except (ScenarioError, CNIError, OSError, ValueError) as exc:
                run.outcome(False, f"teardown: {exc}", time.monotonic())
            finally:
                run.remove_namespaces()
                shutil.rmtree(work, ignore_errors=True)
    assert run is not None
    total = run.passed + run.failed
    took = time.monotonic() - begun
    if run.failed:
        print(f"== FAILED: {run.failed} of {total} checks failed ({took:.1f} s)", flush=True)
    else:
        print(f"== all {total} checks passed ({took:.1f} s)", flush=True)
    return run.failed == 0


def _hold_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cni-scenario", description="Run network test scenarios (YAML) on throwaway namespaces."
    )
    parser.add_argument("scenarios", nargs="+", type=Path, help="scenario files (see conf/scenarios/README.md)")
    parser.add_argument(
        "--cni-path",
        default=os.environ.get("CNI_PATH") or "/opt/cni/bin",
        help="plugin directories, ':'-separated (default: CNI_PATH or /opt/cni/bin)",
    )
    opts = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("cni-scenario: needs root (it makes network namespaces)", file=sys.stderr)
        return 2
    paths = [p for p in opts.cni_path.split(os.pathsep) if p]
    ok = True
    for i, path in enumerate(opts.scenarios):
        if i:
            print(flush=True)
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
        ok = run_scenario(path, paths) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
