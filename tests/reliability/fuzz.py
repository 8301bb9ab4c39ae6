"""Hypothesis over stdin, ``CNI_ARGS``, ``runtimeConfig`` and the environment, for every
plugin type of ``cni_plugins/protocol/registry.py`` the column has (the cases split evenly
over the types, one hypothesis run per type).

Each case starts from a config that works for its type (``template``) and mutates it:
keys replaced by hostile values (path traversal, over-long names, NUL bytes, lone
surrogates, nft-looking text, numbers out of range, wrong JSON types), keys added,
``runtimeConfig``, ``args`` and ``prevResult`` generated, the JSON itself broken (cut
short, nested up to 5,000 deep, bytes that are not UTF-8, Go's case-insensitive key twins,
duplicate keys), and the environment changed (``CNI_COMMAND``, ``CNI_CONTAINERID``,
``CNI_IFNAME``, ``CNI_ARGS``, ``CNI_NETNS`` as a missing path, a file, a directory, a FIFO,
the caller's own namespace, ``CNI_PATH``, variables removed or added; an environment cannot
carry a NUL, so NULs go in stdin only). The executable is exec'd as a runtime execs it,
from the host stand-in.

Every answer is judged: a non-zero exit with a CNI error JSON on stdout (an object with a
spec code, 1..11, 50, 51, or 100..999, a message, nothing else), or exit 0 with a valid
result (ADD: a result of its cniVersion; VERSION: the versions; anything else: nothing),
never a traceback, never over ``TIME_LIMIT``. The state (``host.py``: links and addresses
of the stand-in and the container namespaces, nftables, reservations, temporary files;
plus every file under the part's work dir and the escape dir that hostile absolute paths
name) is compared after each case. The default data dirs are a tmpfs of the part, and the
case's own data dir when its config names none. Whatever a case changed is taken as the
next base, or the bed is made again when it reached the fixtures.

Counts: ``cases``, ``answered ok``/``answered error``, ``ADDs that succeeded`` (each then
DELeted as a runtime would), ``beds made again``; and the problems, which must be 0:
``traceback``, ``over 5 s``, ``hung (killed)`` (still running after ``KILL_AFTER``),
``stdout is not JSON``, ``error without a CNI error JSON``, ``error JSON without a spec
code and a message``, ``error JSON with other keys``, ``ADD succeeded without a valid
result``, ``VERSION without the versions``, ``changed by an error`` (anything at all,
the case's own namespace included), ``left after ADD and DEL`` (but what a network shares
between its containers: a bridge and its gateway address, tables and chains, the rules of
a chain the ADD made), ``changed outside its namespace and data dir`` (by any other
successful call), ``DEL after a successful ADD failed``; a problem of that DEL is counted
with ``(the DEL after it)``. ``harness errors`` are the fuzzer's own failures.

``named_cases`` are the explicit hostile inputs the test suite runs one by one
(tests/integration/test_fuzz.py); ``size["fuzz_named"]`` runs them instead of the fuzzer:
container IDs, interface names, network names and dataDirs with traversal, slashes, ``..``,
absolute paths and over-long values; NULs in names and raw in stdin; stdin and environment
that are not UTF-8, a lone surrogate; 10 MB of JSON (a string, an array); 1,000 and 5,000
levels of nesting at ``args``, ``prevResult``, ``runtimeConfig``, the top, in objects;
nft-looking ``conditionsV4``, port mappings, bridge names (in the config and in firewall's
``prevResult``) and iptables admin chain names; sysctl traversal; a FIFO, a directory, a
regular file, the caller's own namespace (ADD and DEL) and a mount namespace as ``CNI_NETNS``; a bridge
ADD with no IPAM in ``CNI_PATH``; a 0.2.0 bridge ADD without IPAM (no address to give).
"""

from __future__ import annotations

import collections
import functools
import ipaddress
import json
import os
import re
import shutil
import socket
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from cni_plugins.protocol import registry
from tests.reliability import host
from tests.reliability.runtime import PATH, Column, Exec, Run

LANES, LANES_FROM = 3, 10_000  # a long run keeps the CPUs busy while a lane waits on the kernel
TIME_LIMIT = 5.0  # an answer later than this counts as too slow
KILL_AFTER = 30.0  # a call still running then is killed (and counted as hung)
EXAMPLES = 5
ERROR_KEYS = {"cniVersion", "code", "msg", "details"}
CTR = "fzc"  # the container namespace of the main plugins (interface eth0)
CHAIN = "fzchain"  # the container of chained plugins: eth9, its host end fzh9 on bridge fzbr9
CHAIN_IF, CHAIN_HOST, CHAIN_BRIDGE = "eth9", "fzh9", "fzbr9"
CHAIN_ADDR, CHAIN_GW = "10.98.0.2/24", "10.98.0.1"
MASTER = "fzm0"  # macvlan's master (a veth whose peer stays in the host stand-in)
DEVICE = "fzhd0"  # host-device's device
CHAINED = {"portmap", "firewall", "tuning", "bandwidth", "sbr"}
DEFAULT_DIRS = ("/var/lib/cni", "/run/cni")  # default data and socket dirs: a tmpfs in this part
DEFAULT_DATA = "/var/lib/cni/networks"
ESCAPE = "/tmp/cnipy-fuzz-escape"  # absolute paths in hostile names point here
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
RTM_GETADDR, IFA_ADDRESS, IFA_LOCAL = 22, 1, 2
IFADDRMSG = struct.Struct("=BBBBI")
COUNTER = re.compile(r"counter packets \d+ bytes \d+")
VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def spec_code(code: object) -> bool:
    return (
        isinstance(code, int)
        and not isinstance(code, bool)
        and (1 <= code <= 11 or code in (50, 51) or 100 <= code <= 999)
    )


# ---------------------------------------------------------------- the bed


@dataclass
class Bed:
    """The host stand-in's fixtures for one column: container namespaces, the chain's
    interface and bridge, macvlan's master, host-device's device, the data dir."""

    column: Column
    work: Path
    data: Path = field(init=False)
    cwd: Path = field(init=False)
    base: host.State | None = None
    base_files: dict[str, int] = field(default_factory=dict)
    only: list[str] = field(default_factory=list)  # these types alone (all if empty)
    warm: dict[str, str] = field(default_factory=dict)  # type -> "" or why its template's ADD failed
    netlink: Netlink = field(default_factory=lambda: Netlink())
    nft: Any = None
    base_ruleset: str = ""

    def __post_init__(self) -> None:
        self.data = self.work / "data"
        # relative paths in configs land below it; eight levels of ../ stay inside the work dir
        self.cwd = self.work / "cwd" / "1" / "2" / "3" / "4" / "5" / "6" / "7" / "8"

    def types(self) -> list[str]:
        return [t for t in sorted(registry.PLUGINS) if self.column.has(t) and (not self.only or t in self.only)]

    def setup(self) -> None:
        for d in DEFAULT_DIRS:
            os.makedirs(d, exist_ok=True)
            host.sh("mount", "-t", "tmpfs", "-o", "mode=0755,size=64m", "cnipy-fuzz", d)
        self.cwd.mkdir(parents=True, exist_ok=True)
        os.chdir(self.cwd)
        make_netns_impostors(self.work)
        self.make_fixtures()
        for t in self.types():
            self.warm[t] = self.warm_up(t)
        self.rebase()

    def make_fixtures(self) -> None:
        shutil.rmtree(self.data, ignore_errors=True)
        self.data.mkdir(parents=True)
        shutil.rmtree(ESCAPE, ignore_errors=True)
        host.add_netns([CTR, CHAIN])
        cmds = [
            f"link add {CHAIN_HOST} type veth peer name {CHAIN_IF} netns {CHAIN}",
            f"link add {CHAIN_BRIDGE} type bridge",
            f"link set {CHAIN_HOST} master {CHAIN_BRIDGE} up",
            f"addr add {CHAIN_GW}/24 dev {CHAIN_BRIDGE}",
            f"link set {CHAIN_BRIDGE} up",
            f"link add {MASTER} type veth peer name fzm1",
            f"link set {MASTER} up",
            f"link add {DEVICE} type veth peer name fzhd1",
            f"-n {CTR} link set lo up",
            f"-n {CHAIN} link set lo up",
            f"-n {CHAIN} addr add {CHAIN_ADDR} dev {CHAIN_IF}",
            f"-n {CHAIN} link set {CHAIN_IF} up",
            f"-n {CHAIN} route add default via {CHAIN_GW}",
        ]
        for cmd in cmds:
            host.sh("ip", *cmd.split())

    def reset(self) -> None:
        """Back to the fixtures alone: namespaces and links made again, ruleset flushed,
        the data dirs emptied; the templates' tables made again by a warm-up."""
        self.netlink.close()
        host.del_netns([CTR, CHAIN])
        for name in host.links(None):
            if name != "lo":
                host.sh("ip", "link", "del", name, check=False)
        host.sh("nft", "flush", "ruleset")
        for d in DEFAULT_DIRS:
            for entry in os.listdir(d):
                p = os.path.join(d, entry)
                shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.unlink(p)
        self.make_fixtures()
        for t in self.types():
            if not self.warm.get(t):
                self.warm_up(t)
        self.rebase()

    def warm_up(self, plugin_type: str) -> str:
        """A valid ADD and DEL of the type's template, so that what stays between containers
        (tables, chains) is in the base state; "" or the error."""
        if plugin_type in ("dhcp", "cluster-ipam"):
            return "no server in the bed (its calls fail with a CNI error)"
        conf = template(self, plugin_type)
        env = self.env(plugin_type, "ADD", "fz-warm")
        add = call(self.column, plugin_type, json.dumps(conf).encode(), env)
        call(self.column, plugin_type, json.dumps(conf).encode(), {**env, "CNI_COMMAND": "DEL"})
        return "" if add.rc == 0 else add.text()[-300:]

    def env(self, plugin_type: str, command: str, cid: str) -> dict[str, str]:
        chained = plugin_type in CHAINED
        return {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": host.netns_path(CHAIN if chained else CTR),
            "CNI_IFNAME": CHAIN_IF if chained else "eth0",
            "CNI_PATH": self.column.bin_dir,
            "PATH": PATH,
        }

    def snapshot(self) -> tuple[host.State, dict[str, int]]:
        """``host.snapshot``'s state, links read over netlink sockets kept open in each
        namespace (``ip`` per namespace would cost more than most calls)."""
        dirs = [self.data, Path(DEFAULT_DATA)]
        text = self.ruleset_text()
        same = self.base is not None and text == self.base_ruleset
        state = host.State(
            host_links=self.netlink.links(None),
            nft=self.base.nft if same and self.base is not None else host.nft_state(),
            reserved=[r for d in dirs for r in host.reservations(d)],
            temps=[t for d in dirs for t in host.temp_files(d)],
            containers={c: self.netlink.links(c) for c in (CTR, CHAIN)},
        )
        return state, files_outside(self)

    def ruleset_text(self) -> str:
        """The ruleset as text, counters left out: the same text means the same ruleset, and
        it costs a fraction of the JSON listing ``host.nft_state`` reads."""
        import nftables

        if self.nft is None:
            self.nft = nftables.Nftables()
        rc, out, err = self.nft.cmd("list ruleset")
        if rc != 0:
            raise RuntimeError(f"nft list ruleset: {err}")
        return COUNTER.sub("counter", out)

    def rebase(self) -> None:
        self.base = None
        self.base, self.base_files = self.snapshot()
        self.base_ruleset = self.ruleset_text()


class Netlink:
    """Links and addresses of this namespace and of container namespaces, as ``host.links``
    gives them, from rtnetlink sockets opened once in each namespace (``ip`` per namespace,
    or pyroute2's decoding, would cost more than most calls)."""

    def __init__(self) -> None:
        self.readers: dict[str | None, Any] = {}

    def _reader(self, ns: str | None) -> Any:
        from cni_plugins.kernel import linkget, netns

        if ns not in self.readers:
            if ns is None:
                self.readers[ns] = linkget.LinkReader(lambda _message, _port: {})
            else:
                with netns.entered(host.netns_path(ns)):
                    self.readers[ns] = linkget.LinkReader(lambda _message, _port: {})
        return self.readers[ns]

    def links(self, ns: str | None) -> dict[str, dict[str, Any]]:
        from cni_plugins.kernel import linkget

        reader = self._reader(ns)
        out: dict[str, dict[str, Any]] = {}
        names: dict[int, str] = {}
        for link in reader.dump():
            names[link.index] = link.name
            out[link.name] = {"kind": link.kind, "addrs": []}
        for message in reader.dump_messages(RTM_GETADDR, IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            family, prefixlen, _flags, scope, index = IFADDRMSG.unpack_from(message, 16)
            if scope == 253:  # link scope, which host.links leaves out
                continue
            attrs = linkget._attrs(message, 16 + IFADDRMSG.size, len(message))
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            name = names.get(index)
            if raw and name in out and family in (socket.AF_INET, socket.AF_INET6):
                out[name]["addrs"].append(f"{ipaddress.ip_address(raw)}/{prefixlen}")
        for link in out.values():
            link["addrs"].sort()
        return out

    def close(self) -> None:
        for reader in self.readers.values():
            reader.close()
        self.readers.clear()


def files_outside(bed: Bed) -> dict[str, int]:
    """Every file under the work dir (but the data dir and the part's own output) and the
    escape dir: path -> size. (The default data dirs are the case's data dir when its
    config names none.)"""
    found: dict[str, int] = {}
    skip = {str(bed.data), str(bed.work / "result.json"), str(bed.work / "part.log")}
    for top in (str(bed.work), ESCAPE):
        for dirpath, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if os.path.join(dirpath, d) not in skip]
            for name in files + dirs:
                p = os.path.join(dirpath, name)
                if p in skip:
                    continue
                try:
                    found[p] = os.lstat(p).st_size if name in files else -1
                except OSError:
                    pass
    return found


def template(bed: Bed, plugin_type: str) -> dict[str, Any]:
    """A config the type accepts in the bed (chained types with a prevResult of the chain's
    container)."""
    data = str(bed.data)
    hl = {"type": "host-local", "ranges": [[{"subnet": "10.99.0.0/24"}]], "dataDir": data}
    prev = {
        "cniVersion": bed.column.version,
        "interfaces": [
            {"name": CHAIN_HOST, "mac": "02:00:00:00:00:01"},
            {"name": CHAIN_IF, "mac": "02:00:00:00:00:02", "sandbox": host.netns_path(CHAIN)},
            {"name": CHAIN_BRIDGE, "mac": "02:00:00:00:00:03"},
        ],
        "ips": [{"address": CHAIN_ADDR, "gateway": CHAIN_GW, "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": CHAIN_GW}],
    }
    bodies: dict[str, dict[str, Any]] = {
        "loopback": {},
        "bridge": {"bridge": "fzbr0", "isGateway": True, "ipMasq": True, "ipam": hl},
        "ptp": {"ipMasq": True, "ipam": hl},
        "veth": {"ipam": hl},
        "macvlan": {"master": MASTER, "mode": "bridge", "ipam": hl},
        "tap": {"ipam": hl},
        "host-device": {"device": DEVICE, "ipam": hl},
        "host-local": {"ipam": hl},
        "static": {"ipam": {"type": "static", "addresses": [{"address": "10.97.0.5/24", "gateway": "10.97.0.1"}]}},
        "dhcp": {"ipam": {"type": "dhcp", "daemonSocketPath": "/run/cni/dhcp.sock"}},
        "cluster-ipam": {
            "ipam": {
                "type": "cluster-ipam",
                "ranges": [[{"subnet": "10.96.0.0/24"}]],
                "etcd": {"endpoints": ["http://127.0.0.1:1"], "timeout": 1},
            }
        },
        "portmap": {
            "capabilities": {"portMappings": True},
            "runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]},
            "prevResult": prev,
        },
        "firewall": {"ingressPolicy": "same-bridge", "prevResult": prev},
        "tuning": {"sysctl": {"net.ipv4.conf.eth9.accept_redirects": "0"}, "mtu": 1400, "prevResult": prev},
        "bandwidth": {
            "ingressRate": 100000,
            "ingressBurst": 10000,
            "egressRate": 100000,
            "egressBurst": 10000,
            "prevResult": prev,
        },
        "sbr": {"prevResult": prev},
    }
    return {"cniVersion": bed.column.version, "name": "fznet", "type": plugin_type, **bodies[plugin_type]}


# ---------------------------------------------------------------- calls and verdicts


def call(column: Column, plugin_type: str, stdin: bytes, env: dict[str, str]) -> Run:
    ex = Exec([os.path.join(column.bin_dir, plugin_type)], env, stdin)
    return ex.finish(timeout=KILL_AFTER)


def answer_problems(command: str, run: Run, timed: bool = True) -> list[str]:
    """What is wrong with an answer ([] if nothing): its shape, a traceback, its time."""
    problems = []
    if b"Traceback (most recent call last)" in run.stdout + run.stderr:
        problems.append("traceback")
    if run.rc < 0 or run.seconds >= KILL_AFTER:
        problems.append("hung (killed)")
    elif timed and run.seconds > TIME_LIMIT:
        problems.append("over 5 s")
    try:
        out = json.loads(run.stdout) if run.stdout.strip() else None
    except ValueError:
        return [*problems, "stdout is not JSON"]
    if run.rc > 0:
        if not isinstance(out, dict):
            problems.append("error without a CNI error JSON")
        elif not spec_code(out.get("code")) or not isinstance(out.get("msg"), str) or not out["msg"]:
            problems.append("error JSON without a spec code and a message")
        elif set(out) - ERROR_KEYS:
            problems.append("error JSON with other keys")
    elif run.rc == 0:
        if command == "ADD":
            if not _valid_result(out):
                problems.append("ADD succeeded without a valid result")
        elif command == "VERSION":
            if not (isinstance(out, dict) and isinstance(out.get("supportedVersions"), list)):
                problems.append("VERSION without the versions")
        elif out is not None:
            problems.append(f"{command} succeeded with output")
    return problems


def _valid_result(out: object) -> bool:
    from cni_plugins.spec import version

    if not isinstance(out, dict) or not isinstance(out.get("cniVersion"), str):
        return False
    try:
        version.result_from_json(out, "result")
    except Exception:
        return False
    return True


def _inside(bed: Bed, ns: str, kind: str, item: str) -> bool:
    """Is this change in the case's own container namespace or data dir (or the host end of
    that namespace's veth, which goes with it)?"""
    if kind in ("reservations", "temp files", "reservations removed", "temp files removed"):
        return True
    if ns and (kind.startswith("links") or kind == "addresses"):
        return item.startswith((f"{ns}: ", f"{ns} ")) or (ns == CHAIN and item.startswith(CHAIN_HOST))
    return False


def _shared(kind: str, item: str) -> bool:
    """State a successful ADD may leave for the next container of its network, as the
    reference does: a bridge and its gateway address, tables and chains (and the rules of
    a chain the ADD made: a network's, shared by its containers), not set elements or the
    rules of existing chains, which belong to the container."""
    if kind == "links":
        return item.endswith(" (bridge)")
    if kind == "addresses":
        return item.split(":", 1)[0] not in (CHAIN_HOST, CHAIN_IF, MASTER, DEVICE)
    return kind == "chains"


def _fixtures_touched(changed: dict[str, list[str]]) -> bool:
    """Did a change reach the bed's fixtures (the container namespaces, the chain's links,
    macvlan's master, host-device's device)? Then the bed is made again."""
    fixtures = (f"{CTR}", f"{CHAIN}", CHAIN_HOST, CHAIN_BRIDGE, MASTER, "fzm1", DEVICE, "fzhd1")
    for kind, items in changed.items():
        if kind.startswith("links") or kind == "addresses":
            if any(i.startswith(fixtures) for i in items):
                return True
    return False


# ---------------------------------------------------------------- strategies

TRAVERSAL = [
    "..",
    "../..",
    "../../../../../../../../..",
    "a/../../b",
    "./x",
    "x/..",
    "..\\..",
    f"{ESCAPE}/abs",
    f"../../../../../../../../../..{ESCAPE}/up",
    "%2e%2e%2f",
    "\u2024\u2024/",
]
NFT = [
    '"; flush ruleset; "',
    "} ; table ip pwn { chain c { type filter hook input priority 0; drop; } }",
    "ip saddr 0.0.0.0/0 drop",
    "@allowed",
    "$var",
    "meta mark set 0x1",
    'iifname \\"eth0\\" accept',
    'oifname != lo counter accept comment "x"',
    "tcp dport { 1-65535 } drop",
    "-j ACCEPT",
    "--dport 22 -j DROP",
    "#comment",
    "drop;accept",
]
ODD = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "eth0\x00",
    "\ud800",
    "\udcff",
    "\ufeff",
    "\u202e",
    "\n",
    "a\nb",
    "\t",
    "-",
    "lo",
    "all",
    "default",
    "true",
    "null",
    "0",
    "-1",
    "1e999",
    "eth0:1",
    "eth0.1",
    "x" * 15,
    "x" * 16,
    "x" * 64,
    "x" * 256,
    "x" * 4097,
    "é" * 8,
    "🐳",
    "10.99.0.5",
    "10.99.0.0/24",
    "::1",
    "fe80::1%eth0",
    "999.1.1.1",
    "10.99.0.5/33",
    "02:00:00:00:00:01",
    "ff:ff:ff:ff:ff:ff",
    "/proc/self/ns/net",
    "/dev/null",
]


@functools.cache
def texts() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(TRAVERSAL + NFT + ODD),
        st.text(max_size=24),
        st.text(alphabet=st.sampled_from("abcXYZ019-_.:/;= \\\"'{}[]$@%"), max_size=24),
        st.integers(14, 600).map(lambda n: "n" * n),
        st.tuples(st.sampled_from(TRAVERSAL + NFT + ODD), st.text(max_size=8)).map("".join),
    )


@functools.cache
def scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.sampled_from([0, -1, 1, 65535, 65536, 2**31, 2**63, -(2**63), 1.5, 1e308, -0.0]),
        st.floats(allow_nan=False, allow_infinity=False),
        texts(),
    )


@functools.cache
def values() -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.one_of(st.sampled_from(KEYS), texts()), inner, max_size=4),
        ),
        max_leaves=8,
    )


KEYS = [
    "name",
    "type",
    "cniVersion",
    "bridge",
    "ipam",
    "dataDir",
    "ranges",
    "subnet",
    "gateway",
    "rangeStart",
    "rangeEnd",
    "routes",
    "dst",
    "gw",
    "addresses",
    "address",
    "interface",
    "interfaces",
    "ips",
    "sandbox",
    "mac",
    "mtu",
    "master",
    "mode",
    "device",
    "sysctl",
    "conditionsV4",
    "conditionsV6",
    "backend",
    "ingressPolicy",
    "iptablesAdminChainName",
    "portMappings",
    "hostPort",
    "containerPort",
    "protocol",
    "hostIP",
    "bandwidth",
    "ingressRate",
    "egressRate",
    "table",
    "args",
    "cni",
    "runtimeConfig",
    "prevResult",
    "capabilities",
    "dns",
    "nameservers",
    "isGateway",
    "ipMasq",
    "hairpinMode",
    "vlan",
    "promiscMode",
    "snat",
    "masqAll",
    "etcd",
    "endpoints",
    "timeout",
    "daemonSocketPath",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
    "containerID",
    "ifname",
    "NAME",
    "Name",
    "nAmE",
]
RUNTIME_KEYS = [
    "portMappings",
    "bandwidth",
    "ips",
    "mac",
    "ipRanges",
    "dns",
    "aliases",
    "infinibandGUID",
    "deviceID",
    "cgroupPath",
    "io.kubernetes.cri.pod-annotations",
]
CNI_ARGS_KEYS = [
    "IgnoreUnknown",
    "IP",
    "MAC",
    "K8S_POD_NAME",
    "K8S_POD_NAMESPACE",
    "K8S_POD_INFRA_CONTAINER_ID",
    "GATEWAY",
]


@functools.cache
def runtime_config() -> st.SearchStrategy[Any]:
    port = st.fixed_dictionaries(
        {},
        optional={
            "hostPort": scalars(),
            "containerPort": scalars(),
            "protocol": st.one_of(st.sampled_from(["tcp", "udp", "sctp", "TCP", "icmp"]), texts()),
            "hostIP": st.one_of(st.sampled_from(["0.0.0.0", "127.0.0.1", "::", "10.98.0.1"]), texts()),
        },
    )
    known = st.one_of(
        st.tuples(st.just("portMappings"), st.lists(port, max_size=3)),
        st.tuples(st.just("bandwidth"), st.dictionaries(st.sampled_from(KEYS[37:40] + ["ingressBurst"]), scalars())),
        st.tuples(st.just("ips"), st.lists(texts(), max_size=3)),
        st.tuples(st.sampled_from(RUNTIME_KEYS), values()),
    )
    return st.one_of(st.lists(known, max_size=4).map(dict), values())


@functools.cache
def cni_args() -> st.SearchStrategy[str]:
    pair = st.tuples(st.one_of(st.sampled_from(CNI_ARGS_KEYS), texts()), texts()).map(lambda kv: f"{kv[0]}={kv[1]}")
    return st.one_of(
        st.lists(pair, max_size=5).map(";".join),
        st.lists(pair, max_size=3).map(lambda ps: ";".join(["IgnoreUnknown=1", *ps])),
        texts(),
    )


# ---------------------------------------------------------------- one case


@dataclass
class Case:
    plugin: str
    command: str
    stdin: bytes
    env: dict[str, str]
    what: list[str]
    ns: str  # the case's own container namespace ("" if CNI_NETNS names none of them)

    def describe(self) -> str:
        shown = {k: v for k, v in self.env.items() if k not in ("PATH",)}
        return f"{self.plugin} {self.command} [{'; '.join(self.what)}] env={shown!r} stdin={self.stdin[:300]!r}"


def _set_path(obj: dict[str, Any], path: list[str], value: Any) -> None:
    for key in path[:-1]:
        nxt = obj.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            obj[key] = nxt
        obj = nxt
    obj[path[-1]] = value


def _paths(obj: Any, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append([*prefix, k])
            if isinstance(v, dict):
                out += _paths(v, (*prefix, k))
    return out


def _nest(depth: int, inner: str) -> str:
    return "[" * depth + inner + "]" * depth


def draw_case(bed: Bed, draw: Callable[..., Any], plugin: str, n: int) -> Case:
    command = draw(st.sampled_from(["ADD"] * 5 + ["DEL"] * 2 + list(COMMANDS[2:]) + ["?"]))
    if command == "?":
        command = draw(texts())
    conf = template(bed, plugin)
    what: list[str] = []
    env = bed.env(plugin, command, f"fz-{n}")
    ns = CHAIN if plugin in CHAINED else CTR
    # the config
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(
            st.sampled_from(["replace", "replace", "add", "runtimeConfig", "args", "prevResult", "drop", "version"])
        )
        if kind == "replace":
            path = _pick(draw, _paths(conf))
            _set_path(conf, path, draw(values()))
            what.append(f"{'.'.join(path)} replaced")
        elif kind == "add":
            paths: list[list[str]] = [[], *(p for p in _paths(conf) if isinstance(_get(conf, p), dict))]
            path = [*_pick(draw, paths), draw(keys())]
            _set_path(conf, path, draw(values()))
            what.append(f"{'.'.join(path)} added")
        elif kind == "runtimeConfig":
            conf["runtimeConfig"] = draw(runtime_config())
            if draw(st.booleans()):
                conf["capabilities"] = {k: True for k in RUNTIME_KEYS}
            what.append("runtimeConfig")
        elif kind == "args":
            conf["args"] = draw(args())
            what.append("args")
        elif kind == "prevResult":
            conf["prevResult"] = draw(values())
            what.append("prevResult")
        elif kind == "drop" and len(conf) > 1:
            key = _pick(draw, sorted(conf))
            del conf[key]
            what.append(f"{key} dropped")
        elif kind == "version":
            conf["cniVersion"] = draw(versions())
            what.append("cniVersion")
    stdin = json.dumps(conf).encode()
    # the JSON itself
    form = draw(st.integers(0, 19))
    if form == 0:
        stdin = stdin[: _pick(draw, range(len(stdin)))] if stdin else stdin
        what.append("cut short")
    elif form == 1:
        depth = draw(st.sampled_from([50, 500, 999, 1000, 1001, 2000, 5000]))
        key = draw(st.sampled_from(["args", "runtimeConfig", "prevResult", "ipam", "x"]))
        stdin = stdin[:-1] + f', "{key}": {_nest(depth, "1")}}}'.encode()
        what.append(f"{depth} deep at {key}")
    elif form == 2:
        stdin = json.dumps(conf, ensure_ascii=False).encode("utf-8", "surrogatepass")
        stdin = stdin.replace(b'"fznet"', b'"fz\xff\xfenet"') + draw(st.sampled_from([b"", b"\xc3", b"\x00"]))
        what.append("not UTF-8")
    elif form == 3:
        stdin = draw(st.binary(max_size=64))
        what.append("bytes")
    elif form == 4:
        stdin = stdin[:-1] + b', "Name": "fz/../../x", "TYPE": "bridge", "cniversion": "9.9.9"}'
        what.append("Go's case-insensitive twins")
    elif form == 5:
        stdin = stdin.replace(b'"fznet"', b'"fznet", "name": "second"')
        what.append("duplicate key")
    elif form == 6:
        stdin = draw(st.sampled_from([b"NaN", b"[1e999]", b"null", b"{}", b"[]", b'"x"', b"", b" \n", b"{" * 3]))
        what.append("odd JSON")
    # the environment
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(
            st.sampled_from(
                ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_ARGS", "CNI_ARGS", "CNI_NETNS", "CNI_PATH", "unset", "extra"]
            )
        )
        if kind == "CNI_ARGS":
            env["CNI_ARGS"] = draw(cni_args())
        elif kind == "CNI_NETNS":
            choice = draw(st.sampled_from(["missing", "file", "dir", "fifo", "self", "host", "proc", "text", "other"]))
            env["CNI_NETNS"] = {
                "missing": "/run/netns/fz-no-such",
                "file": str(bed.work / "netns-file"),
                "dir": str(bed.work / "netns-dir"),
                "fifo": str(bed.work / "netns-fifo"),
                "self": "/proc/self/ns/net",
                "host": f"/proc/{os.getpid()}/ns/net",
                "proc": "/proc/1/ns/mnt",
                "text": draw(texts()),
                "other": host.netns_path(CTR if ns == CHAIN else CHAIN),
            }[choice]
            ns = "" if choice != "other" else (CTR if ns == CHAIN else CHAIN)
            kind = f"CNI_NETNS {choice}"
        elif kind == "unset":
            key = draw(
                st.sampled_from(["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH", "PATH"])
            )
            env.pop(key, None)
            kind = f"{key} unset"
        elif kind == "extra":
            env[
                draw(st.sampled_from(["CNI_PY_DEBUG", "CNI_NETNS_OVERRIDE", "CNI_ARGS", "PYTHONPATH", "PYTHONHOME"]))
            ] = draw(texts())
        else:
            env[kind] = draw(texts())
        what.append(kind)
    env = {k: _env_value(v) for k, v in env.items()}
    return Case(plugin, env.get("CNI_COMMAND", ""), stdin, env, what, ns)


T = TypeVar("T")


def _pick(draw: Callable[..., Any], seq: Sequence[T]) -> T:
    """One of ``seq`` (a strategy made once, an index drawn: building a strategy per draw
    costs more than the call it feeds)."""
    index: int = draw(_index(len(seq)))
    return seq[index]


@functools.cache
def _index(n: int) -> st.SearchStrategy[int]:
    return st.integers(0, n - 1)


@functools.cache
def keys() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(KEYS), texts())


@functools.cache
def args() -> st.SearchStrategy[Any]:
    return st.one_of(st.fixed_dictionaries({"cni": values()}), values())


@functools.cache
def versions() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(VERSIONS), texts())


def _get(obj: Any, path: list[str]) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def _env_value(value: str) -> str:
    """What an environment can hold: no NUL (exec cannot pass one), bytes for surrogates."""
    value = value.replace("\x00", "")
    return value.encode("utf-8", "surrogateescape" if _escapable(value) else "replace").decode(
        "utf-8", "surrogateescape"
    )


def _escapable(value: str) -> bool:
    try:
        value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return True


# ---------------------------------------------------------------- the fuzzer


@dataclass
class Tally:
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))
    per_type: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )
    slowest: float = 0.0
    seconds: dict[str, float] = field(default_factory=lambda: collections.defaultdict(float))

    def note(self, label: str, example: str, n: int = 1) -> None:
        self.counts[label] += n
        if n and len(self.examples[label]) < EXAMPLES:
            self.examples[label].append(example[:900])


def judge(bed: Bed, case: Case, tally: Tally) -> None:
    """Run one case and everything a runtime does after it; count what is wrong."""
    assert bed.base is not None
    started = time.monotonic()
    run = call(bed.column, case.plugin, case.stdin, case.env)
    tally.seconds["calls"] += time.monotonic() - started
    tally.slowest = max(tally.slowest, run.seconds)
    verdict = "ok" if run.rc == 0 else "error"
    tally.per_type[case.plugin][verdict] += 1
    tally.counts["cases"] += 1
    tally.counts[f"answered {verdict}"] += 1
    for problem in answer_problems(case.command, run):
        tally.note(problem, f"{case.describe()} -> rc {run.rc}: {run.text()[-600:]}")
    if run.rc == 0 and case.command == "ADD":
        tally.counts["ADDs that succeeded"] += 1
        deleted = call(bed.column, case.plugin, case.stdin, {**case.env, "CNI_COMMAND": "DEL"})
        for problem in answer_problems("DEL", deleted):
            tally.note(
                f"{problem} (the DEL after it)", f"{case.describe()} -> DEL rc {deleted.rc}: {deleted.text()[-600:]}"
            )
        if deleted.rc != 0:
            tally.note("DEL after a successful ADD failed", f"{case.describe()}: {deleted.text()[-600:]}")
    started = time.monotonic()
    state, files = bed.snapshot()
    tally.seconds["state"] += time.monotonic() - started
    changed = host.changes(bed.base, state)
    grown = sorted(set(files) - set(bed.base_files)) + [f"{p} removed" for p in set(bed.base_files) - set(files)]
    if not changed and not grown:
        return
    outside = {k: [i for i in v if not _inside(bed, case.ns, k, i)] for k, v in changed.items()}
    outside = {k: v for k, v in outside.items() if v}
    if grown:
        outside["files"] = grown
    if run.rc != 0:
        tally.note("changed by an error", f"{case.describe()}: {json.dumps({**changed, **outside})[:600]}")
    elif case.command == "ADD":
        new_chains = tuple(f"{c}: " for c in changed.get("chains", []))
        left = {
            k: [i for i in v if not _shared(k, i) and not (k == "nft rules" and i.startswith(new_chains))]
            for k, v in {**changed, **outside}.items()
        }
        left = {k: v for k, v in left.items() if v}
        if left:
            tally.note("left after ADD and DEL", f"{case.describe()}: {json.dumps(left)[:600]}")
    elif outside:
        tally.note("changed outside its namespace and data dir", f"{case.describe()}: {json.dumps(outside)[:600]}")
    if _fixtures_touched(changed) or grown:
        tally.counts["beds made again"] += 1
        bed.reset()
    else:
        bed.rebase()


def fuzz(bed: Bed, cases: int, seed_value: int, tally: Tally, types: list[str]) -> None:
    """``cases`` split evenly over ``types``, one hypothesis run per type (its generation
    must not depend on anything but what it draws)."""
    counter = iter(range(cases * 10))
    for i, plugin_type in enumerate(types):
        share = cases // len(types) + (1 if i < cases % len(types) else 0)
        if not share:
            continue
        try:
            _fuzz_type(bed, plugin_type, share, seed_value * 100 + i, tally, counter)()
        except Exception as exc:  # the harness's own failure: counted, the other types still run
            tally.note("harness errors", f"{plugin_type}: {type(exc).__name__}: {str(exc)[:600]}")


def _fuzz_type(
    bed: Bed, plugin_type: str, cases: int, seed_value: int, tally: Tally, counter: Iterator[int]
) -> Callable[[], None]:
    @seed(seed_value)
    @settings(
        max_examples=cases,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def one(data: st.DataObject) -> None:
        judge(bed, draw_case(bed, data.draw, plugin_type, next(counter)), tally)

    return one


def run(column: Column, work: Path, size: dict[str, Any]) -> dict[str, Any]:
    """``size``: ``fuzz_cases``, ``seed``, optionally ``fuzz_lanes`` (that many host stand-ins
    side by side, each with its share of the cases and a seed of its own; by default
    ``LANES`` from ``LANES_FROM`` cases on), ``fuzz_types`` (only these types),
    ``fuzz_named`` (the named cases with these ids, [] for all)."""
    lanes = int(size.get("fuzz_lanes") or (LANES if int(size.get("fuzz_cases", 0)) >= LANES_FROM else 1))
    if lanes > 1 and size.get("fuzz_named") is None:
        return run_lanes(column, work, size, lanes)
    bed = Bed(column, work, only=list(size.get("fuzz_types") or []))
    bed.setup()
    tally = Tally()
    named = size.get("fuzz_named")
    started = time.monotonic()
    if named is not None:
        results = run_named(bed, list(named))
        elapsed = time.monotonic() - started
        bed.reset()
        bed.netlink.close()
        return {"counts": {"named cases": len(results)}, "named": results, "seconds fuzzing": round(elapsed, 1)}
    types = bed.types()
    fuzz(bed, int(size["fuzz_cases"]), seed_number(size.get("seed", 0)), tally, types)
    elapsed = time.monotonic() - started
    bed.reset()
    bed.netlink.close()
    counts = dict(tally.counts)
    return {
        "counts": counts,
        "cases/s": round(counts.get("cases", 0) / elapsed, 1) if elapsed else 0,
        "slowest answer (s)": round(tally.slowest, 2),
        "seconds in": {k: round(v, 1) for k, v in tally.seconds.items()} | {"all": round(elapsed, 1)},
        "types": types,
        "templates that did not ADD": {t: why for t, why in bed.warm.items() if why},
        "per type": {t: dict(c) for t, c in sorted(tally.per_type.items())},
        "examples": dict(tally.examples),
    }


def seed_number(value: object) -> int:
    text = str(value)
    return int(text) if text.isdigit() else zlib.crc32(text.encode())


def run_lanes(column: Column, work: Path, size: dict[str, Any], lanes: int) -> dict[str, Any]:
    """The cases split over ``lanes`` parts run at once, each in a host stand-in of its own
    (``part.run_part``), their counts added up."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.reliability.part import run_part

    total, base_seed = int(size["fuzz_cases"]), seed_number(size.get("seed", 0))
    shares = [total // lanes + (1 if i < total % lanes else 0) for i in range(lanes)]
    started = time.monotonic()
    with ThreadPoolExecutor(lanes) as pool:
        futures = [
            pool.submit(
                run_part,
                "fuzz",
                column,
                {**size, "fuzz_cases": n, "seed": base_seed * 1000 + i, "fuzz_lanes": 1},
                work / f"lane{i}",
            )
            for i, n in enumerate(shares)
        ]
        results = [f.result() for f in futures]
    elapsed = time.monotonic() - started
    counts: collections.Counter[str] = collections.Counter()
    per_type: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    examples: dict[str, list[str]] = collections.defaultdict(list)
    errors = [r["error"] for r in results if r.get("error")]
    for r in results:
        counts.update(r.get("counts", {}))
        for t, c in r.get("per type", {}).items():
            per_type[t].update(c)
        for label, items in r.get("examples", {}).items():
            examples[label] += items[: max(0, EXAMPLES - len(examples[label]))]
    out: dict[str, Any] = {
        "counts": dict(counts),
        "cases/s": round(counts.get("cases", 0) / elapsed, 1) if elapsed else 0,
        "lanes": lanes,
        "slowest answer (s)": max((r.get("slowest answer (s)", 0) for r in results), default=0),
        "types": results[0].get("types", []) if results else [],
        "templates that did not ADD": results[0].get("templates that did not ADD", {}) if results else {},
        "per type": {t: dict(c) for t, c in sorted(per_type.items())},
        "examples": dict(examples),
        "lane results": [{k: r.get(k) for k in ("counts", "cases/s", "seconds in", "seconds")} for r in results],
    }
    if errors:
        out["error"] = "\n".join(errors)[-4000:]
    return out


# ---------------------------------------------------------------- named cases


@dataclass(frozen=True)
class Named:
    """One hostile input: ``build(bed)`` gives (plugin, stdin, env changes)."""

    id: str
    build: Callable[[Bed], tuple[str, bytes, dict[str, str]]]
    timed: bool = True  # a 10 MB stdin is not held to the 5 s of an ordinary answer


def _conf(bed: Bed, plugin: str, **changes: Any) -> bytes:
    conf = template(bed, plugin)
    for path, value in changes.items():
        _set_path(conf, path.split("__"), value)
    return json.dumps(conf).encode()


Build = Callable[[Bed], tuple[str, bytes, dict[str, str]]]


def _with_env(plugin: str, env: dict[str, str], **changes: Any) -> Build:
    return lambda bed: (plugin, _conf(bed, plugin, **changes), env)


def _with_data_dir(suffix: str) -> Build:
    return lambda bed: ("host-local", _conf(bed, "host-local", ipam__dataDir=f"{bed.data}/{suffix}"), {})


def _with_stdin(plugin: str, make: Callable[[bytes], bytes]) -> Build:
    return lambda bed: (plugin, make(_conf(bed, plugin)), {})


def _deep_at(where: str, depth: int) -> Callable[[bytes], bytes]:
    return lambda stdin: stdin[:-1] + f', "{where}": {_nest(depth, "1")}}}'.encode()


def _firewall_bridge(bridge: Any) -> Build:
    def build(bed: Bed) -> tuple[str, bytes, dict[str, str]]:
        conf = template(bed, "firewall")
        conf["prevResult"]["interfaces"][2]["name"] = bridge
        return "firewall", json.dumps(conf).encode(), {}

    return build


def _netns_impostor(kind: str, command: str) -> Build:
    return lambda bed: (
        "bridge",
        _conf(bed, "bridge"),
        {"CNI_NETNS": str(bed.work / f"netns-{kind}"), "CNI_COMMAND": command},
    )


def named_cases() -> list[Named]:
    cases: list[Named] = []
    for label, cid in [
        ("traversal", "../../etc/x"),
        ("slash", "a/b"),
        ("dotdot", ".."),
        ("absolute", f"{ESCAPE}/cid"),
        ("long", "x" * 5000),
    ]:
        cases.append(Named(f"containerid-{label}", _with_env("bridge", {"CNI_CONTAINERID": cid})))
    for label, ifname in [
        ("traversal", "../eth0"),
        ("slash", "a/b"),
        ("dotdot", ".."),
        ("dot", "."),
        ("long", "x" * 16),
        ("space", "eth 0"),
        ("colon", "eth0:1"),
    ]:
        cases.append(Named(f"ifname-{label}", _with_env("bridge", {"CNI_IFNAME": ifname})))
    for label, name in [
        ("traversal", "../../../x"),
        ("slash", "a/b"),
        ("dotdot", ".."),
        ("long", "n" * 300),
        ("absolute", f"{ESCAPE}/net"),
    ]:
        cases.append(Named(f"netname-{label}", _with_env("host-local", {}, name=name)))
    cases.append(Named("datadir-dotdot", _with_data_dir("../" * 12 + ESCAPE.lstrip("/") + "/dd")))
    cases.append(Named("datadir-nul", _with_data_dir("data\x00x")))
    for label, name in [("traversal", "../x"), ("long", "b" * 16), ("nft", '"; flush ruleset; "'), ("slash", "a/b")]:
        cases.append(Named(f"bridge-name-{label}", _with_env("bridge", {}, bridge=name)))
    cases.append(Named("nul-in-name", _with_env("bridge", {}, name="fz\x00net")))
    cases.append(Named("nul-in-bridge", _with_env("bridge", {}, bridge="fz\x00br")))
    cases.append(Named("nul-raw-stdin", _with_stdin("bridge", lambda b: b.replace(b"fznet", b"fz\x00net"))))
    cases.append(Named("non-utf8-stdin", _with_stdin("bridge", lambda b: b.replace(b"fznet", b"fz\xff\xfenet"))))
    cases.append(Named("lone-surrogate", _with_stdin("bridge", lambda b: b.replace(b"fznet", b"fz\\ud800net"))))
    cases.append(
        Named("non-utf8-env", _with_env("bridge", {"CNI_CONTAINERID": "fz\udcff", "CNI_ARGS": "K8S_POD_NAME=\udcfe"}))
    )
    big = _with_stdin("bridge", lambda b: b[:-1] + b', "args": {"pad": "' + b"x" * (10 << 20) + b'"}}')
    cases.append(Named("json-10mb", big, timed=False))
    array = _with_stdin("bridge", lambda b: b[:-1] + b', "args": {"pad": [' + b"0," * (5 << 20) + b"0]}}")
    cases.append(Named("json-10mb-array", array, timed=False))
    for depth in (1000, 5000):
        for where in ("args", "prevResult", "runtimeConfig"):
            cases.append(Named(f"json-{depth}-deep-{where}", _with_stdin("bridge", _deep_at(where, depth))))
    cases.append(Named("json-5000-deep-top", _with_stdin("bridge", lambda _: _nest(5000, "1").encode())))
    cases.append(
        Named("json-5000-deep-objects", _with_stdin("bridge", lambda _: ('{"a":' * 5000 + "1" + "}" * 5000).encode()))
    )
    for label, cond in [
        ("flush", ['"; flush ruleset; "']),
        ("table", ["} ; table ip pwn { chain c { } }"]),
        ("semicolon", ["ip saddr 10.0.0.0/8; drop"]),
        ("jump", ["jump x"]),
        ("not-list", "ip saddr 1.2.3.4"),
    ]:
        cases.append(Named(f"portmap-conditionsV4-{label}", _with_env("portmap", {}, conditionsV4=cond)))
    for label, bridge in [
        ("nft", '"; flush ruleset; "'),
        ("dotdot", "x/.."),
        ("true", True),
        ("long", "b" * 16),
        ("brace", "br}0"),
    ]:
        cases.append(Named(f"firewall-bridge-{label}", _firewall_bridge(bridge)))
    cases.append(Named("firewall-admin-chain-nft", _with_env("firewall", {}, iptablesAdminChainName='X"; flush')))
    mapping = {"hostPort": 1, "containerPort": 2, "protocol": "tcp; drop", "hostIP": "1.2.3.4; drop"}
    cases.append(Named("portmap-mapping-nft", _with_env("portmap", {}, runtimeConfig__portMappings=[mapping])))
    traversal = {"net/../../../../etc/hostname": "x"}
    cases.append(Named("tuning-sysctl-traversal", _with_env("tuning", {}, sysctl=traversal)))
    cases.append(Named("tuning-sysctl-global", _with_env("tuning", {}, sysctl={"net.ipv4.conf.all.forwarding": "1"})))
    for kind in ("fifo", "dir", "file"):
        cases.append(Named(f"netns-{kind}", _netns_impostor(kind, "ADD")))
        cases.append(Named(f"netns-{kind}-del", _netns_impostor(kind, "DEL")))
    old = {"cniVersion": "0.2.0", "ipam": None}  # a result without an address, which 0.2.0 cannot carry
    cases.append(Named("result-0.2.0-without-ip", _with_env("bridge", {}, **old)))
    cases.append(Named("cni-path-without-ipam", _with_env("bridge", {"CNI_PATH": "/nonexistent"}, bridge="fzbrnew")))
    cases.append(Named("netns-own", _with_env("bridge", {"CNI_NETNS": f"/proc/{os.getpid()}/ns/net"})))
    own_del = {"CNI_NETNS": f"/proc/{os.getpid()}/ns/net", "CNI_COMMAND": "DEL"}
    cases.append(Named("netns-own-del-loopback", _with_env("loopback", own_del)))
    cases.append(Named("netns-own-del-bridge", _with_env("bridge", own_del)))
    cases.append(Named("netns-mnt", _with_env("bridge", {"CNI_NETNS": "/proc/self/ns/mnt"})))
    return cases


def make_netns_impostors(work: Path) -> None:
    """A FIFO, a directory and a regular file, each given as CNI_NETNS (and a file named in
    the fuzzer's choices)."""
    fifo = work / "netns-fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    (work / "netns-dir").mkdir(exist_ok=True)
    (work / "netns-file").write_text("not a namespace\n")


def run_named(bed: Bed, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Each named case (all if ``ids`` is empty) as ADD (or the verb it names): its answer,
    what is wrong with it, and what it changed."""
    out: dict[str, dict[str, Any]] = {}
    for case in named_cases():
        if ids and case.id not in ids:
            continue
        plugin, stdin, changes = case.build(bed)
        if not bed.column.has(plugin):
            out[case.id] = {"skipped": f"no {plugin} in the column"}
            continue
        env = {**bed.env(plugin, "ADD", f"fz-{case.id}"), **changes}
        env = {k: _env_value(v) for k, v in env.items()}
        command = env["CNI_COMMAND"]
        run = call(bed.column, plugin, stdin, env)
        problems = answer_problems(command, run, timed=case.timed)
        cleanup = None
        added: dict[str, list[str]] = {}
        assert bed.base is not None
        if run.rc == 0 and command == "ADD":
            added = host.changes(bed.base, bed.snapshot()[0])
            cleanup = call(bed.column, plugin, stdin, {**env, "CNI_COMMAND": "DEL"})
        state, files = bed.snapshot()
        changed = host.changes(bed.base, state)
        grown = sorted(set(files) - set(bed.base_files))
        if grown:
            changed["files"] = grown
        answer = run.json
        out[case.id] = {
            "rc": run.rc,
            "code": answer.get("code") if isinstance(answer, dict) else None,
            "msg": (answer.get("msg") if isinstance(answer, dict) else run.stdout[:300].decode("utf-8", "replace")),
            "seconds": round(run.seconds, 2),
            "problems": problems,
            "changed": changed,
            "added by the ADD": added,
            "cleanup DEL rc": None if cleanup is None else cleanup.rc,
            "stderr": run.stderr[-500:].decode("utf-8", "replace"),
        }
        if changed:
            bed.reset()
    return out
