"""Side by side: our plugin chains and the reference's (Debian's containernetworking-plugins),
exec'd as a runtime execs them, in one run.

    sudo .venv/bin/python bench/chain_bench.py [--quick] [--out bench/out]

What is measured (each implementation in its own throwaway namespace standing for the host,
the two taking turns call by call, so drift on the machine hits both alike):

1. ``chain``: bridge + host-local + portmap + firewall (podman's default conflist; one tcp
   port mapping per container), N containers (300; ``--quick`` 60) one after another, then
   their DELs in reverse: per-container ADD and DEL, median and p95.
2. ``first``: the very first container on an empty host (fresh host namespace each time):
   ADD + DEL, repeated; ours also with no helper at all, and with none running yet (its
   first call starts one and waits for it, as after boot or ten idle minutes).
3. ``scale``: ADD time against the number of containers already attached, up to 1,000
   (``--quick`` 200), with a port mapping each; then paired probes: one more container
   ADDed and DELeted on that full host, taking turns with the same on a host holding one
   container, 60 times (``--quick`` 10), so that both sides of the ratio see the same
   machine speed; each implementation's probes run in a phase of their own.
4. ``concurrent``: 8 runtimes (processes) adding 400 containers (``--quick`` 96) to one
   network at once: ADD median, throughput, duplicate addresses, failed ADDs (a failed
   ADD is counted, its chain DELeted as a runtime would, and the run goes on).
5. ``ptp``, ``macvlan``: ptp + host-local and macvlan + host-local, N containers each.
6. ``memory``: peak RSS of one plugin process (``wait4``), and the helper's RSS.

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
import shutil
import signal
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
    """One implementation: where its plugins are, and the namespace standing for its host."""

    name: str
    bin_dir: str
    host_ns: str = ""  # /var/run/netns/<name>


def chain_conf(name: str, subnet: str, data_dir: str) -> dict[str, Any]:
    """Podman's default bridge network (87-podman-bridge.conflist), without tuning."""
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
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
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "firewall"},
        ],
    }


def single_conf(kind: str, subnet: str, data_dir: str) -> dict[str, Any]:
    ipam = {"type": "host-local", "ranges": [[{"subnet": subnet}]], "dataDir": data_dir}
    plugin: dict[str, Any] = (
        {"type": "ptp", "ipam": ipam}
        if kind == "ptp"
        else {"type": "macvlan", "master": "benchm0", "mode": "bridge", "ipam": ipam}
    )
    return {"cniVersion": "1.0.0", "name": f"bench-{kind}", "plugins": [plugin]}


@dataclass
class Call:
    seconds: float
    maxrss_kb: int


@dataclass
class Runtime:
    """A minimal libcni: exec each plugin of a conflist, thread prevResult, DEL in reverse."""

    bin_dir: str
    conflist: dict[str, Any]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # the runtime's result cache
    measure_rss: bool = False

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
            "CNI_IFNAME": "eth0",
            "CNI_ARGS": "",
            "CNI_PATH": self.bin_dir,
            "PATH": PATH_ENV,
            **PLUGIN_ENV,
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
        return out, Call(elapsed, maxrss)

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


def helper_pss_kb(sock: str) -> int:
    """Proportional set size of the helper serving ``sock`` and its workers (shared pages
    counted once)."""
    try:
        pid = int(Path(sock + ".lock").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields and int(fields[1]) == pid:
            pids.append(int(stat.parent.name))
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


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
) -> dict[str, Any]:
    """N containers one after another on a fresh host per impl (ADD all, then DEL all in
    reverse), the implementations taking turns container by container. With ``probes``,
    the full hosts are then probed against small ones (``probe_paired``) before the DELs."""
    out: dict[str, Any] = {}
    runtimes: dict[str, Runtime] = {}
    ctrs: dict[str, list[str]] = {}
    for k, impl in enumerate(impls):
        new_host(nss, impl, f"{label}{k}")
        runtimes[impl.name] = Runtime(impl.bin_dir, make_conf(k, str(work / f"ipam-{label}-{k}")))
        ctrs[impl.name] = nss.make(n, f"{label}{k}c")
        out[impl.name] = {"add": [], "del": [], "add_calls": [], "del_calls": []}
    for i in range(n):
        for impl in alternate(impls, i):
            with netns.entered(impl.host_ns):
                total, calls = runtimes[impl.name].add(f"{label}-{i:05d}", ctrs[impl.name][i], ports_for(i))
            out[impl.name]["add"].append(total)
            out[impl.name]["add_calls"].append({p: (c.seconds, c.maxrss_kb) for p, c in calls.items()})
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
                out[impl.name]["del_calls"].append({p: (c.seconds, c.maxrss_kb) for p, c in calls.items()})
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
    full: dict[str, Runtime],
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
    small: dict[str, Runtime] = {}
    probe_ns: dict[tuple[str, str], str] = {}
    throwaway: list[str] = []
    for k, impl in enumerate(impls):
        small_hosts[impl.name] = Impl(impl.name, impl.bin_dir)
        new_host(nss, small_hosts[impl.name], f"{label}{k}")
        small[impl.name] = Runtime(impl.bin_dir, make_conf(k, str(work / f"ipam-{label}-{k}")))
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


def scenario_first(
    impls: list[Impl], nss: Namespaces, work: Path, trials: int, before: dict[str, Callable[[], object]] | None = None
) -> dict[str, Any]:
    """The first container on an empty host: a fresh host namespace per trial, ADD then DEL.
    ``before[name]()`` runs ahead of each of that implementation's trials."""
    out: dict[str, Any] = {impl.name: {"add": [], "del": []} for impl in impls}
    for t in range(trials):
        for k, impl in enumerate(alternate(impls, t)):
            if before and impl.name in before:
                before[impl.name]()
            new_host(nss, impl, f"first{t}-{k}")
            (ctr,) = nss.make(1, f"first{t}-{k}c")
            rt = Runtime(impl.bin_dir, chain_conf("podman", "10.88.0.0/16", str(work / f"ipam-first-{t}-{k}")))
            with netns.entered(impl.host_ns):
                add, _ = rt.add(f"first-{t}", ctr, ports_for(0))
                delete, _ = rt.delete(f"first-{t}", ctr, ports_for(0))
            out[impl.name]["add"].append(add)
            out[impl.name]["del"].append(delete)
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
            "<= 0.5x",
            0.5,
        )
        tenth = max(1, n // 10)
        pair(f"chain ADD median, first {tenth}", med(o["add"][:tenth]), med(r["add"][:tenth]))
        pair(f"chain ADD median, last {tenth}", med(o["add"][-tenth:]), med(r["add"][-tenth:]))
    if "first" in res:
        f = res["first"]
        o, r = f[ours], f[ref]
        k = len(o["add"])
        pair(f"first container on an empty host, ADD (median of {k})", med(o["add"]), med(r["add"]))
        pair("first container on an empty host, DEL", med(o["del"]), med(r["del"]))
        pair(
            "first container on an empty host, ADD + DEL",
            med(o["add"]) + med(o["del"]),
            med(r["add"]) + med(r["del"]),
            "<= 1.0x",
            1.0,
        )
        for other in (name for name in f if name not in (ours, ref)):
            pair(f"  ({other}) first container ADD", med(f[other]["add"]), med(r["add"]))
            pair(
                f"  ({other}) first container ADD + DEL",
                med(f[other]["add"]) + med(f[other]["del"]),
                med(r["add"]) + med(r["del"]),
            )
    if "scale" in res:
        s = res["scale"]
        n = len(s[ours]["add"])
        size, o_first, o_last = _blocks(s[ours]["add"])
        _, r_first, r_last = _blocks(s[ref]["add"])
        pair(f"scale: ADD median, containers 1-{size}", o_first, r_first)
        pair(f"scale: ADD median, containers {n - size + 1}-{n}", o_last, r_last)
        growth_o, growth_r = o_last / o_first, r_last / r_first
        rows.append(
            Row(
                f"scale: ADD at {n} / ADD at first, during the fill",
                f"{growth_o:.2f}x",
                f"{growth_r:.2f}x",
                unit="",
                target="<= 1.1x",
                met=growth_o <= 1.1,
            )
        )
        if "probe" in s[ours]:
            po, pr = s[ours]["probe"], s[ref]["probe"]
            k = len(po["full"]["add"])
            pair(f"scale probe: ADD at {n} attached (median of {k})", med(po["full"]["add"]), med(pr["full"]["add"]))
            pair(
                "scale probe: ADD at 1 attached, taking turns with it", med(po["small"]["add"]), med(pr["small"]["add"])
            )
            growth_o, growth_r = (
                med(po["full"]["add"]) / med(po["small"]["add"]),
                med(pr["full"]["add"]) / med(pr["small"]["add"]),
            )
            settle = res["meta"]["counts"].get("settle_s", 0)
            rows.append(
                Row(
                    f"scale probe: ADD at {n} / at 1, paired" + (f", {settle:.0f} s after fill" if settle else ""),
                    f"{growth_o:.2f}x",
                    f"{growth_r:.2f}x",
                    unit="",
                    target="<= 1.1x",
                    met=growth_o <= 1.1,
                )
            )
            for plugin in po["full"].get("add_calls", [{}])[0]:
                grew_o, grew_r = (_call_growth(probe, plugin) for probe in (po, pr))
                pair(f"  scale probe: {plugin} ADD, at {n} minus at 1", grew_o, grew_r)
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
    for kind in ("ptp", "macvlan"):
        if kind in res:
            o, r, n = res[kind][ours], res[kind][ref], len(res[kind][ours]["add"])
            pair(f"{kind} + host-local ADD median ({n} containers)", med(o["add"]), med(r["add"]))
            pair(f"{kind} + host-local ADD p95", p95(o["add"]), p95(r["add"]))
            pair(f"{kind} + host-local DEL median", med(o["del"]), med(r["del"]))
            pair(f"{kind} + host-local DEL p95", p95(o["del"]), p95(r["del"]))
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
    return rows


def _fmt(v: object) -> str:
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def print_table(rows: list[Row], header: str) -> str:
    lines = [
        header,
        "",
        f"| {'measure':<58} | {'ours':>9} | {'reference':>9} | {'unit':<5} | {'ours/ref':>8} | {'target':<8} | met |",
        f"|{'-' * 60}|{'-' * 11}|{'-' * 11}|{'-' * 7}|{'-' * 10}|{'-' * 10}|-----|",
    ]
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        met = "" if row.met is None else ("yes" if row.met else "NO")
        lines.append(
            f"| {row.what:<58} | {_fmt(row.ours):>9} | {_fmt(row.ref):>9} "
            f"| {row.unit:<5} | {ratio:>8} | {row.target:<8} | {met:<3} |"
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
    s = res["scale"]
    fig, ax = plt.subplots(figsize=(9, 5.2), dpi=110)
    for name, color in ((ref, "tab:red"), (ours, "tab:blue")):
        adds = [a * 1000 for a in s[name]["add"]]
        xs = list(range(len(adds)))
        ax.scatter(xs, adds, s=3, alpha=0.25, color=color)
        w = max(5, len(adds) // 40)
        rolling = [statistics.median(adds[max(0, i - w) : i + w + 1]) for i in xs]
        ax.plot(xs, rolling, color=color, label=f"{name} (rolling median)")
    ax.set_xlabel("containers already attached")
    ax.set_ylabel("chain ADD, ms (bridge + host-local + portmap + firewall)")
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
    parser.add_argument("--quick", action="store_true", help="smaller counts (about a minute or two)")
    parser.add_argument(
        "--out", default=str(ROOT / "bench" / "out"), help="where chain_bench.json and chain_bench.png go"
    )
    parser.add_argument("--reference", default="/usr/lib/cni", help="the reference plugins' directory")
    parser.add_argument("--no-install", action="store_true", help="do not apt-get install the reference when missing")
    parser.add_argument(
        "--only", default="", help="comma-separated scenarios: chain,first,scale,concurrent,ptp,macvlan,memory"
    )
    parser.add_argument("--chain", type=int, help="containers in the chain scenario (300; quick 60)")
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
    parser.add_argument("--concurrent", type=int, help="containers added by the concurrent runtimes (400; quick 96)")
    parser.add_argument("--runtimes", type=int, default=8, help="concurrent runtimes (8)")
    parser.add_argument("--single", type=int, help="containers in the ptp and macvlan scenarios (100; quick 30)")
    parser.add_argument("--first", type=int, help="fresh-host trials for the first container (10; quick 4)")
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
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.worker:
        return worker_main(opts.worker)
    PLUGIN_ENV.update(kv.split("=", 1) for kv in opts.plugin_env if "=" in kv)
    if os.geteuid() != 0:
        raise SystemExit("needs root: network namespaces")
    q = opts.quick
    counts = {
        "chain": opts.chain or (60 if q else 300),
        "scale": opts.scale or (200 if q else 1000),
        "probes": opts.probes if opts.probes is not None else (10 if q else 60),
        "settle_s": opts.settle,
        "concurrent": opts.concurrent or (96 if q else 400),
        "single": opts.single or (30 if q else 100),
        "first": opts.first or (4 if q else 10),
    }
    only = {s for s in opts.only.split(",") if s} or {
        "chain",
        "first",
        "scale",
        "concurrent",
        "ptp",
        "macvlan",
        "memory",
    }
    ref_version = ensure_reference(opts.reference, not opts.no_install)
    out_dir = Path(opts.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cni-py-chain-bench-"))
    nss = Namespaces(f"cb{os.getpid()}")
    helper: subprocess.Popen[bytes] | None = None
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    try:
        sock = str(work / "run" / "helper.sock")
        # auto, as installed by default: if the helper exits (it does when our code changes on
        # disk), the next call starts a new one and waits for it
        ours_install(work / "warm", helper="auto", helper_socket=sock)
        ours_install(work / "cold")
        # auto with no helper running yet, as after boot or ten idle minutes: stopped before
        # each trial, so the trial's first call starts one and waits for it
        idle_sock = str(work / "run-idle" / "helper.sock")
        ours_install(work / "idle", helper="auto", helper_socket=idle_sock)
        helper = start_helper(sock)
        ref = Impl("reference", opts.reference)
        ours = Impl("ours", str(work / "warm"))
        cold = Impl("ours, no helper", str(work / "cold"))
        idle = Impl("ours, helper not running yet", str(work / "idle"))
        impls = [ref, ours]
        meta = {
            "reference": f"{REFERENCE_PACKAGE} {ref_version} ({opts.reference})",
            "kernel": os.uname().release,
            "cpus": os.cpu_count(),
            "quick": q,
            "counts": counts,
            "runtimes": opts.runtimes,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "commit": subprocess.run(
                ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
            ).stdout.strip(),
        }
        res: dict[str, Any] = {"meta": meta}
        print(
            f"reference: {meta['reference']}; ours: {ROOT} ({meta['commit']}), warm "
            f"helper on a private socket; kernel {meta['kernel']}, {meta['cpus']} CPUs",
            flush=True,
        )
        scenario_sequential(
            impls, nss, work, "warm", lambda k, d: chain_conf("podman", "10.88.0.0/16", d), 3
        )  # warm-up, not counted
        if "first" in only:
            print(f"first container on an empty host: {counts['first']} trials ...", flush=True)
            res["first"] = scenario_first(
                impls + [cold, idle],
                nss,
                work,
                counts["first"],
                before={idle.name: lambda: stop_helper(None, idle_sock)},
            )
        if "chain" in only:
            print(f"chain: {counts['chain']} containers ...", flush=True)
            res["chain"] = scenario_sequential(
                impls,
                nss,
                work,
                "chain",
                lambda k, d: chain_conf("podman", "10.88.0.0/16", d),
                counts["chain"],
                progress="chain",
            )
        for kind in ("ptp", "macvlan"):
            if kind in only:
                print(f"{kind}: {counts['single']} containers ...", flush=True)
                res[kind] = scenario_sequential(
                    impls,
                    nss,
                    work,
                    kind,
                    lambda k, d, kind=kind: single_conf(kind, "10.90.0.0/16", d),
                    counts["single"],
                )
        if "concurrent" in only:
            print(f"concurrent: {opts.runtimes} runtimes, {counts['concurrent']} containers ...", flush=True)
            res["concurrent"] = scenario_concurrent(impls, nss, work, opts.runtimes, counts["concurrent"], rounds=2)
        if "scale" in only:
            print(f"scale: {counts['scale']} containers ...", flush=True)
            res["scale"] = scenario_sequential(
                impls,
                nss,
                work,
                "scale",
                lambda k, d: chain_conf("podman", "10.88.0.0/16", d),
                counts["scale"],
                do_del=False,
                progress="scale",
                probes=counts["probes"],
                settle=opts.settle,
            )
        if "memory" in only:
            res["memory"] = scenario_memory(impls, nss, work, cold, sock)
        meta["wall_s"] = round(time.monotonic() - started, 1)
        header = (
            f"cni-py chain benchmark, {meta['date']}, commit "
            f"{meta['commit']}{' (--quick)' if q else ''}: ours (warm helper) vs {meta['reference']}\n"
            f"kernel {meta['kernel']}, {meta['cpus']} CPUs; each implementation in "
            f"its own fresh host namespace, calls interleaved; wall {meta['wall_s']} s"
        )
        print()
        table = print_table(build_rows(res, ours.name, ref.name), header)
        res["table"] = table
        (out_dir / "chain_bench.json").write_text(json.dumps(res, indent=1, default=str))
        print(f"\nJSON: {out_dir / 'chain_bench.json'}")
        if "scale" in res:
            print(f"PNG:  {plot(res, ours.name, ref.name, out_dir / 'chain_bench.png')}")
        return 0
    finally:
        if helper is not None:
            stop_helper(helper, str(work / "run" / "helper.sock"))  # also one a launcher restarted (auto mode)
        stop_helper(None, str(work / "run-idle" / "helper.sock"))
        nss.drop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
