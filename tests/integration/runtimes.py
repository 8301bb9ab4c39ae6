"""Real container runtimes (podman, containerd) and a libcni harness, driven against our plugins
without touching the machine's own networking or state.

``Sandbox`` is a long-lived init process made with ``unshare --net --mount --pid --fork
--propagation private --mount-proc``: its network namespace stands for the host, its private
mount namespace holds everything the runtimes write (``/run`` is a fresh tmpfs, so podman's
``/run/netns`` bind mounts and containerd's state live there; ``/etc/cni/net.d``,
``/opt/cni/bin`` and ``/var/lib/cni`` are empty directories of the sandbox; a path that does
not exist on the machine is made inside an overlay of its nearest existing parent, so the
machine does not get it either), and its PID namespace holds every process started in it:
killing the init kills podman's conmons, containerd, its shims and every container. Commands
enter all three with ``nsenter -t PID -n -m -p``.

What is left on the machine: nothing but cgroup directories, which runc makes under the
machine's cgroup hierarchy; tests put their containers under ``/cnipy-<tag>`` and
``Sandbox.close`` removes that tree.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cni_plugins.runtime.scenario_file import nft_comment
from tests.integration.nsutil import poll

REQUIRED = os.environ.get("CNI_PY_REQUIRE_INTEGRATION") == "1"
BUSYBOX = "/bin/busybox"  # Debian's busybox-static
IMAGE = "localhost/cnipy-busybox:latest"
CTR_IMAGE = "docker.io/library/cnipy-busybox:latest"
HOST_ADDR = "203.0.113.1"  # an address of the sandbox host besides its bridges (on uplink0)
# Paths runtimes use by default; the sandbox shadows them with empty directories of its own.
SHADOWED = ("/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni", "/var/lib/containers", "/var/lib/containerd")
# What the host-state fixture compares before and after (a runtime test must change none of it).
HOST_PATHS = (
    "/etc/cni",
    "/opt/cni/bin",
    "/var/lib/cni",
    "/var/lib/containers",
    "/var/lib/containerd",
    "/run/containers",
    "/run/containerd",
    "/run/libpod",
    "/etc/containers",
    "/etc/containerd",
)

INIT = r"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("ready", flush=True)
while True:  # PID 1 of the sandbox: reap orphans (conmon, shims) so none lingers as a zombie
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        time.sleep(0.1)
"""

# Count the connections the helper accepts (one per call handed to it) without touching its
# code: the runtime tests prove that the runtime's calls went through the helper, not the
# launcher's in-process fallback. (Whoever accepts, the helper or a worker it forked, runs
# this patched socket class.)
COUNTING_HELPER = r"""
import socket, sys
count_file = sys.argv[1]
real_accept = socket.socket.accept
def accept(self):
    conn, addr = real_accept(self)
    with open(count_file, "a") as fh:
        fh.write("x")
    return conn, addr
socket.socket.accept = accept
from cni_plugins.install import main
sys.exit(main(["helper", "--socket", sys.argv[2], "--idle", "0"]))
"""


def need(*tools: str) -> None:
    """Fail (CI: CNI_PY_REQUIRE_INTEGRATION=1) or skip when a tool is missing, saying which."""
    missing = [t for t in tools if shutil.which(t) is None and not Path(t).exists()]
    if missing:
        why = f"not installed: {', '.join(missing)} (scripts/setup.sh installs them)"
        if REQUIRED:
            pytest.fail(why)
        pytest.skip(why)


def child_pid(pid: int) -> int | None:
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


class Sandbox:
    """A host stand-in: net + private mount + PID namespaces, held by an init process."""

    def __init__(self, tag: str) -> None:
        self.tag = f"{tag}-{os.getpid()}"  # cgroups and temp dirs say which test process made them
        self.cgroup_parent = f"/cnipy-{tag}"
        self.work = Path(tempfile.mkdtemp(prefix=f"cnipy-{self.tag}-"))
        self.init: subprocess.Popen[str] | None = None
        self.pid = 0
        self.procs: list[subprocess.Popen[str]] = []  # started with popen(): reaped in close()

    def start(self) -> Sandbox:
        self.init = subprocess.Popen(
            [
                "unshare",
                "--net",
                "--mount",
                "--pid",
                "--fork",
                "--propagation",
                "private",
                "--mount-proc",
                sys.executable,
                "-I",
                "-c",
                INIT,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.init.stdout is not None
        if self.init.stdout.readline().strip() != "ready":
            raise AssertionError("the sandbox's init did not start")
        pid = child_pid(self.init.pid)
        assert pid, "no init process under unshare"
        self.pid = pid
        self.sh(self._mount_script())
        self.run("ip", "link", "set", "lo", "up")
        # A host address besides the bridges' (this kernel has no dummy links: a veth pair).
        self.run("ip", "link", "add", "uplink0", "type", "veth", "peer", "name", "uplink0p")
        self.run("ip", "addr", "add", f"{HOST_ADDR}/24", "dev", "uplink0")
        self.run("ip", "link", "set", "uplink0p", "up")
        self.run("ip", "link", "set", "uplink0", "up")
        return self

    def _mount_script(self) -> str:
        lines = [
            "set -eu",
            # Copies of the machine's /run mounts (netns bind mounts among them) go first, so the
            # sandbox holds no reference to the machine's namespaces; then /run is a fresh tmpfs.
            "findmnt -rn -o TARGET | grep '^/run/' | sort -r | while read -r m; do umount -l \"$m\" || true; done",
            "mount -t tmpfs -o mode=0755 cnipy-run /run",
            "mkdir -p /run/netns /run/lock",
        ]
        overlaid: list[str] = []
        binds: list[str] = []  # after every overlay: an overlay on /var/lib would hide a bind below it
        for i, target in enumerate(SHADOWED):
            empty = self.work / "shadow" / str(i)
            empty.mkdir(parents=True)
            binds.append(f"mount --bind {empty} {target}")
            if not Path(target).exists():
                parent = Path(target)
                while not parent.exists():
                    parent = parent.parent
                if not any(str(parent) == o or str(parent).startswith(o + "/") for o in overlaid):
                    upper, wd = self.work / "overlay" / str(i) / "upper", self.work / "overlay" / str(i) / "work"
                    upper.mkdir(parents=True)
                    wd.mkdir(parents=True)
                    lines.append(
                        f"mount -t overlay cnipy-overlay -o lowerdir={parent},upperdir={upper},workdir={wd} {parent}"
                    )
                    overlaid.append(str(parent))
                lines.append(f"mkdir -p {target}")
        return "\n".join(lines + binds)

    def outside(self, path: str) -> str:
        """The path by which the test process reaches ``path`` of the sandbox's mount
        namespace (a socket in the sandbox's own /run, say)."""
        return f"/proc/{self.pid}/root{path}"

    def shadow(self, path: str) -> Path:
        """The directory of this test that the sandbox sees at ``path`` (one of SHADOWED)."""
        return self.work / "shadow" / str(SHADOWED.index(path))

    # ------------------------------------------------------------ running things inside

    def argv(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-n", "-m", "-p", "--", *argv]

    def run(
        self,
        *argv: str,
        env: dict[str, str] | None = None,
        check: bool = True,
        timeout: float = 120,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "TMPDIR": str(self.work / "tmp"),
            **(env or {}),
        }
        (self.work / "tmp").mkdir(exist_ok=True)
        proc = subprocess.run(self.argv(*argv), env=full, capture_output=True, text=True, timeout=timeout, input=input)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def sh(self, script: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-c", script, **kw)

    def popen(self, *argv: str, env: dict[str, str] | None = None, log: Path | None = None) -> subprocess.Popen[str]:
        full = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "TMPDIR": str(self.work / "tmp"),
            **(env or {}),
        }
        (self.work / "tmp").mkdir(exist_ok=True)
        out = open(log, "a") if log else None
        try:
            proc = subprocess.Popen(
                self.argv(*argv),
                env=full,
                stdin=subprocess.DEVNULL,
                stdout=out if out is not None else subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                text=True,
            )
            self.procs.append(proc)
            return proc
        finally:
            if out is not None:
                out.close()

    def in_netns_of(self, pid: int, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command of the machine (ip, python) in the network namespace of a container's pid."""
        return self.run("nsenter", "-t", str(pid), "-n", "--", *argv, check=check)

    def fetch(self, url: str, *, in_pid: int | None = None, in_netns: str | None = None, timeout: float = 3) -> str:
        """GET ``url`` from the sandbox host (or a container's netns, or a named netns of the
        sandbox); the body, or 'FAIL ...'."""
        code = (
            "import sys, urllib.request\n"
            "try:\n print(urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])).read().decode().strip())\n"
            "except Exception as exc:\n print(f'FAIL {exc}')"
        )
        argv = [sys.executable, "-I", "-c", code, url, str(timeout)]
        if in_netns:
            argv = ["ip", "netns", "exec", in_netns, *argv]
        proc = self.in_netns_of(in_pid, *argv, check=False) if in_pid else self.run(*argv, check=False)
        return proc.stdout.strip() or f"FAIL {proc.stderr.strip()}"

    # ------------------------------------------------------------ what the plugins left

    def leftovers(self, container_ids: Sequence[str] = ()) -> dict[str, list[str]]:
        """Per-container state in the sandbox host: veths/macvlans, IP reservations, cached
        results, netns bind mounts, and the entries of our nftables sets and maps that belong
        to ``container_ids`` (per-attachment entries name their owner ``id:<container ID>`` in
        their comment; per-table and per-bridge entries are not per container)."""
        links = json.loads(self.run("ip", "-j", "-d", "link", "show").stdout or "[]")
        stray = [
            link["ifname"]
            for link in links
            if (link.get("linkinfo") or {}).get("info_kind") in ("veth", "macvlan", "ipvlan")
            and not link["ifname"].startswith("uplink0")
        ]
        reserved = []
        for d in [p.name for p in self._list("/var/lib/cni/networks")]:
            reserved += [f"{d}/{n}" for n in self._names(f"/var/lib/cni/networks/{d}") if n[0].isdigit() or ":" in n]
        cached = self._names("/var/lib/cni/results")
        nft = json.loads(self.run("nft", "-j", "list", "ruleset").stdout or '{"nftables": []}')["nftables"]
        owners = [f"id:{cid[:12]}" for cid in container_ids]
        elements = []
        for item in nft:
            for kind in ("set", "map"):
                obj = item.get(kind) or {}
                theirs = [e for e in obj.get("elem") or [] if any(o in nft_comment(e) for o in owners)]
                if theirs:
                    elements.append(f"{obj['table']}/{obj['name']}: {len(theirs)}")
        netns = self._names("/run/netns")
        return {"links": stray, "reserved": reserved, "cached": cached, "nft": elements, "netns": netns}

    def _names(self, path: str) -> list[str]:
        proc = self.run("ls", "-A", path, check=False)
        return proc.stdout.split() if proc.returncode == 0 else []

    def _list(self, path: str) -> list[Path]:
        return [Path(path) / n for n in self._names(path)]

    # ------------------------------------------------------------ teardown

    def close(self) -> None:
        if self.init is not None:
            if self.pid:
                try:
                    os.kill(self.pid, signal.SIGKILL)  # PID 1 of the sandbox: every process in it dies
                except ProcessLookupError:
                    pass
            self.init.kill()
            self.init.wait(timeout=30)
            if self.init.stdout:
                self.init.stdout.close()
            self.init = None
        for proc in self.procs:  # nsenter parents: their children died with the sandbox
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        remove_cgroups(self.cgroup_parent)
        shutil.rmtree(self.work, ignore_errors=True)


def remove_cgroups(parent: str) -> None:
    """rmdir ``parent`` (and what is under it) in every cgroup hierarchy, deepest first."""
    for root in Path("/sys/fs/cgroup").iterdir():
        top = root / parent.lstrip("/")
        if not top.is_dir():
            continue

        def gone(top: Path = top) -> bool:
            for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass
            return not top.exists()

        poll(gone, timeout=10, interval=0.2)  # processes killed a moment ago may still be exiting


def host_snapshot() -> dict[str, Any]:
    """What a runtime test must not change on the machine: files under the runtimes' default
    paths, the host's links and nftables ruleset, cgroup trees our tests create."""
    files: dict[str, Any] = {}
    for top in HOST_PATHS:
        entries = []
        for dirpath, dirnames, filenames in os.walk(top):
            for name in sorted(dirnames + filenames):
                p = Path(dirpath) / name
                try:
                    st = p.lstat()
                except OSError:
                    continue
                entries.append((str(p), st.st_size if p.is_file() else -1, st.st_mtime_ns if p.is_file() else 0))
        files[top] = sorted(entries) if Path(top).exists() else None
    links = sorted(
        link["ifname"]
        for link in json.loads(
            subprocess.run(["ip", "-j", "link", "show"], capture_output=True, text=True).stdout or "[]"
        )
    )
    nft = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    cgroups = sorted(str(p) for p in Path("/sys/fs/cgroup").glob(f"*/cnipy-*-{os.getpid()}"))
    return {"files": files, "links": links, "nft": nft, "cgroups": cgroups}


# ------------------------------------------------------------ plugins for a runtime


def install_plugins(sb: Sandbox, helper: str, bin_dir: Path | None = None) -> tuple[Path, Path | None, Path | None]:
    """Our plugins in a bin dir by the real installer; with ``helper == "on"`` a warm helper is
    started inside the sandbox on a private socket; with ``"auto"`` (the installer's default)
    the first call starts one on the default socket, which is in the sandbox's /run. Returns
    (bin dir, socket, call-count file)."""
    bin_dir = bin_dir or sb.work / "cnibin"
    args = ["--helper", "auto" if helper == "auto" else "off"]
    sock = count = None
    if helper == "on":
        sock = sb.work / "helper" / "helper.sock"
        count = sb.work / "helper-calls"
        args = ["--helper", "on", "--helper-socket", str(sock)]
    subprocess.run(
        [sys.executable, "-m", "cni_plugins.install", "install", "--dir", str(bin_dir), *args],
        check=True,
        capture_output=True,
    )
    if sock is not None and count is not None:
        count.write_text("")
        sb.popen(
            sys.executable,
            "-c",
            COUNTING_HELPER,
            str(count),
            str(sock),
            env={"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
            log=sb.work / "helper.log",
        )
        assert poll(sock.exists, timeout=30), f"the helper did not start: {(sb.work / 'helper.log').read_text()}"
    return bin_dir, sock, count


def assert_helper_served(calls: Path, expected: int) -> None:
    """The warm helper took the calls: all of them while it ran; it stops by design when our
    code changes on disk (someone editing the tree), and the launchers then run in-process."""
    served = len(calls.read_text())
    still_serving = (calls.parent / "helper" / "helper.sock").exists()
    assert served >= (expected if still_serving else 1), f"the warm helper served {served} calls"


# ------------------------------------------------------------ podman


class Podman:
    """podman (CNI backend) with its own containers.conf, storage and CNI config dir."""

    def __init__(self, sb: Sandbox, plugin_dir: Path) -> None:
        self.sb = sb
        self.netdir = sb.work / "podman-net.d"
        self.netdir.mkdir()
        graph = sb.work / "podman-storage"
        conf = sb.work / "containers.conf"
        conf.write_text(
            "[containers]\n"
            'default_sysctls = ["net.ipv4.ping_group_range=0 0"]\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f'cni_plugin_dirs = ["{plugin_dir}"]\n'
            f'network_config_dir = "{self.netdir}"\n'
            'default_network = "cnipy-default"\n'
            "[engine]\n"
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{sb.work}/podman-events.log"\n'
            'runtime = "runc"\n'
            'tmp_dir = "/run/libpod"\n'
            f'static_dir = "{graph}/libpod"\n'
            f'volume_path = "{graph}/volumes"\n'
            f'image_copy_tmp_dir = "{sb.work}/tmp"\n'
        )
        storage = sb.work / "storage.conf"
        storage.write_text(f'[storage]\ndriver = "vfs"\ngraphroot = "{graph}"\nrunroot = "/run/containers/storage"\n')
        self.env = {"CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}

    def __call__(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.sb.run("podman", *args, env=self.env, check=check, timeout=timeout)

    def run_container(self, name: str, *args: str) -> str:
        """``podman run -d`` under the sandbox's cgroup parent; the container ID."""
        return self("run", "-d", "--name", name, "--cgroup-parent", self.sb.cgroup_parent, *args).stdout.strip()

    def inspect(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self("inspect", name).stdout)[0]
        return found

    def pid(self, name: str) -> int:
        return int(self.inspect(name)["State"]["Pid"])

    def address(self, name: str, network: str) -> str:
        return str(self.inspect(name)["NetworkSettings"]["Networks"][network]["IPAddress"])

    def exec(self, name: str, *argv: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self("exec", name, *argv, check=check)


# ------------------------------------------------------------ containerd


@dataclass(frozen=True)
class CriConfig:
    """containerd's CRI plugin as a node runs it: the CNI dirs it reads (the first conflist of
    ``conf_dir``, plugins from ``bin_dir``) and the local image every pod's sandbox runs."""

    bin_dir: str
    conf_dir: str
    sandbox_image: str

    def toml(self) -> str:
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        return (
            f"[{cri}]\n"
            f'  sandbox_image = "{self.sandbox_image}"\n'
            "  restrict_oom_score_adj = true\n"  # root here lacks CAP_SYS_RESOURCE
            "  disable_apparmor = true\n"
            '  stream_server_address = "127.0.0.1"\n'  # the sandbox's loopback
            '  stream_server_port = "0"\n'
            f"[{cri}.containerd]\n"
            '  snapshotter = "native"\n'
            '  default_runtime_name = "runc"\n'
            f"[{cri}.containerd.runtimes.runc]\n"
            '  runtime_type = "io.containerd.runc.v2"\n'
            f"[{cri}.containerd.runtimes.runc.options]\n"
            "  SystemdCgroup = false\n"  # systemd is not PID 1 here: cgroupfs
            f"[{cri}.cni]\n"
            f'  bin_dir = "{self.bin_dir}"\n'
            f'  conf_dir = "{self.conf_dir}"\n'
            "  max_conf_num = 1\n"
        )


class Containerd:
    """A containerd daemon in the sandbox with its own root, state, socket and config; its CRI
    plugin is disabled unless ``cri`` configures it."""

    def __init__(self, sb: Sandbox, cri: CriConfig | None = None) -> None:
        self.sb = sb
        self.state = "/run/cnipy-containerd"  # the sandbox's tmpfs
        self.address = f"{self.state}/containerd.sock"
        self.config = sb.work / "containerd.toml"
        self.config.write_text(
            "version = 2\n"
            f'root = "{sb.work}/containerd-root"\n'
            f'state = "{self.state}"\n'
            + ("" if cri else 'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
            + "[grpc]\n"
            f'  address = "{self.address}"\n'
            '[plugins."io.containerd.internal.v1.opt"]\n'
            f'  path = "{sb.work}/containerd-opt"\n' + (cri.toml() if cri else "")
        )
        self.log = sb.work / "containerd.log"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Containerd:
        self.proc = self.sb.popen("containerd", "-c", str(self.config), log=self.log)
        ok = poll(lambda: self.ctr("version", check=False).returncode == 0, timeout=30, interval=0.2)
        assert ok, f"containerd did not start: {self.log.read_text()[-2000:]}"
        return self

    def daemon_pid(self) -> int | None:
        return child_pid(self.proc.pid) if self.proc else None

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Signal the daemon (SIGTERM: a clean stop) and wait for it; its exit status (None if
        it was not running). Shims and the containers they hold keep running."""
        if self.proc is None:
            return None
        pid = self.daemon_pid()
        if pid:
            os.kill(pid, sig)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        return rc

    def ctr(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.sb.run("ctr", "--address", self.address, *args, check=check, timeout=timeout)

    def run_popen(self, cid: str, *argv: str, log: Path) -> subprocess.Popen[str]:
        """``ctr run --rm --cni`` in the foreground (as a user runs it): it sets the network up
        before the task starts and tears it down (DEL with an empty CNI_NETNS) after it exits."""
        return self.sb.popen(
            "ctr",
            "--address",
            self.address,
            "run",
            "--rm",
            "--cni",
            "--snapshotter",
            "native",
            "--cgroup",
            f"{self.sb.cgroup_parent}/{cid}",
            CTR_IMAGE,
            cid,
            *argv,
            log=log,
        )

    def task_pid(self, cid: str) -> int | None:
        for line in self.ctr("task", "ls", check=False).stdout.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 3 and parts[0] == cid and parts[2] == "RUNNING":
                return int(parts[1])
        return None


# ------------------------------------------------------------ the libcni harness


LIBCNI_SRC = Path("/usr/share/gocode/src/github.com/containernetworking/cni/libcni")


def build_refcnitool(work: Path) -> Path:
    """Build the libcni harness offline (GOPATH mode, Debian's Go sources, no proxy)."""
    need("go")
    if not LIBCNI_SRC.is_dir():
        need(str(LIBCNI_SRC))
    src = work / "gopath" / "src" / "refcnitool"
    src.mkdir(parents=True)
    shutil.copy(Path(__file__).with_name("refcnitool.go"), src / "main.go")
    out = work / "refcnitool"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "GO111MODULE": "off",
        "GOPATH": f"{work / 'gopath'}:/usr/share/gocode",
        "GOPROXY": "off",  # offline: everything comes from Debian's packages
        "GOFLAGS": "",
        "GOCACHE": str(work / "gocache"),
        "CGO_ENABLED": "0",
    }
    proc = subprocess.run(
        ["go", "build", "-o", str(out), "refcnitool"], cwd=src, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"go build of the libcni harness failed: {proc.stderr}"
    return out


def wait_for(fn: Any, what: str, timeout: float = 30) -> None:
    assert poll(fn, timeout=timeout, interval=0.2), f"timed out waiting for {what}"
