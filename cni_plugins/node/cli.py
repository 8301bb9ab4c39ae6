"""``cni-plugins node``: a pod network across nodes, on etcd.

cni-plugins node init   --etcd-endpoints URL --network 10.244.0.0/16 --backend vxlan   (once per cluster)
cni-plugins node run    --etcd-endpoints URL --node-name n1 [--public-ip IP]           (on every node)
cni-plugins node unit   ... the same options as run ...        (writes a systemd service that runs it)
cni-plugins node status --etcd-endpoints URL [--json]            (the network and every node's lease)
cni-plugins node leave  ... the same options as run ...  (gives the subnet back, removes the node's part)
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from pathlib import Path

from cni_plugins.etcd.client import Client, EtcdError, Options, parse_endpoint
from cni_plugins.etcd.config import check_prefix
from cni_plugins.node import conflist, leases
from cni_plugins.node.agent import DEFAULT_CONF_DIR, DEFAULT_STATE_DIR, DEFAULT_TTL, Agent, AgentConf
from cni_plugins.node.network import BACKENDS, DEFAULT_PORT, DEFAULT_VNI, VXLAN, ConfigError, NetworkConfig
from cni_plugins.protocol import log
from cni_plugins.spec.errors import CNIError

DEFAULT_UNIT_DIR = "/etc/systemd/system"
DEFAULT_UNIT_NAME = "cni-py-node"


def _etcd_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--etcd-endpoints", required=True, help="comma-separated client URLs, e.g. http://10.0.0.10:2379")
    p.add_argument("--etcd-prefix", default="/cni-py", help="key prefix of this pod network (default /cni-py)")
    p.add_argument("--etcd-ca-file", default="", help="CA bundle for https endpoints")
    p.add_argument("--etcd-cert-file", default="", help="client certificate")
    p.add_argument("--etcd-key-file", default="", help="client key")
    p.add_argument("--etcd-timeout", type=float, default=5.0, help="seconds per request, retries included (default 5)")


def _node_args(p: argparse.ArgumentParser) -> None:
    _etcd_args(p)
    p.add_argument("--node-name", default=os.uname().nodename, help="this node's name (default: the host name)")
    p.add_argument("--public-ip", default="", help="this node's address on the underlay (default: the --iface's)")
    p.add_argument(
        "--iface", default="", help="the underlay link (default: the one holding --public-ip, or the default route's)"
    )
    p.add_argument(
        "--lease-ttl",
        type=int,
        default=DEFAULT_TTL,
        help=f"seconds a lease outlives its last renewal (default {DEFAULT_TTL})",
    )
    p.add_argument("--net-name", default="cluster", help="the CNI network name (default cluster)")
    p.add_argument("--conf-dir", default=DEFAULT_CONF_DIR, help=f"where the conflist goes (default {DEFAULT_CONF_DIR})")
    p.add_argument("--bridge", default="cni0", help="the pods' bridge (default cni0)")
    p.add_argument("--ipam", choices=(conflist.HOST_LOCAL, conflist.CLUSTER_IPAM), default=conflist.HOST_LOCAL)
    p.add_argument("--data-dir", default="", help="host-local's dataDir in the conflist (default: host-local's)")
    p.add_argument(
        "--state-dir", default=DEFAULT_STATE_DIR, help=f"the agent's memory of its subnet (default {DEFAULT_STATE_DIR})"
    )
    p.add_argument("--ip-masq", action="store_true", help="masquerade pod traffic leaving every pod network")
    p.add_argument("--cni-version", default="1.1.0", help="the conflist's cniVersion (default 1.1.0)")
    p.add_argument("--resync", type=float, default=30.0, help="seconds between full reconciliations (default 30)")
    p.add_argument("--vxlan-device", default="", help="the vxlan device's name (default cnipy.<VNI>)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="cni-plugins node", description="a pod network across nodes, on etcd")
    sub = top.add_subparsers(dest="action", required=True)
    p_init = sub.add_parser("init", help="store the cluster's network config in etcd (once per cluster)")
    _etcd_args(p_init)
    p_init.add_argument("--network", required=True, help="the cluster CIDR, e.g. 10.244.0.0/16 (IPv4)")
    p_init.add_argument(
        "--subnet-len", type=int, default=0, help="each node's subnet length (default 24, or network + 2)"
    )
    p_init.add_argument("--subnet-min", default="", help="first subnet to lease (default: the second)")
    p_init.add_argument("--subnet-max", default="", help="last subnet to lease (default: the last)")
    p_init.add_argument("--backend", choices=BACKENDS, default=VXLAN, help="routed (nodes on one L2) or vxlan")
    p_init.add_argument(
        "--vni", type=int, default=DEFAULT_VNI, help=f"vxlan: network identifier (default {DEFAULT_VNI})"
    )
    p_init.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"vxlan: UDP port (default {DEFAULT_PORT})")
    p_init.add_argument("--force", action="store_true", help="replace a config that is already there")
    for name, what in (
        ("run", "run the node agent in the foreground"),
        ("unit", "write a systemd service that runs the node agent"),
        ("leave", "give this node's subnet back and remove its routes, device, firewall entries and conflist"),
    ):
        p = sub.add_parser(name, help=what)
        _node_args(p)
        if name == "unit":
            p.add_argument("--unit-dir", default=DEFAULT_UNIT_DIR, help=f"default {DEFAULT_UNIT_DIR}")
            p.add_argument("--unit-name", default=DEFAULT_UNIT_NAME, help=f"default {DEFAULT_UNIT_NAME}")
    p_status = sub.add_parser("status", help="the network config and every node's lease")
    _etcd_args(p_status)
    p_status.add_argument("--json", action="store_true")
    return top


def _options(args: argparse.Namespace) -> Options:
    try:
        endpoints = tuple(parse_endpoint(e.strip()) for e in args.etcd_endpoints.split(",") if e.strip())
        prefix = check_prefix(args.etcd_prefix, "--etcd-prefix")
    except (ValueError, CNIError) as exc:
        raise SystemExit(f"cni-plugins node: {getattr(exc, 'msg', exc)}") from None
    if not endpoints:
        raise SystemExit("cni-plugins node: --etcd-endpoints: give at least one URL")
    return Options(
        endpoints=endpoints,
        ca_file=args.etcd_ca_file,
        cert_file=args.etcd_cert_file,
        key_file=args.etcd_key_file,
        timeout=args.etcd_timeout,
        prefix=prefix,
    )


def _agent_conf(args: argparse.Namespace) -> AgentConf:
    try:
        public_ip = ipaddress.IPv4Address(args.public_ip) if args.public_ip else None
    except ValueError:
        raise SystemExit(f"cni-plugins node: --public-ip: {args.public_ip!r} is not an IPv4 address") from None
    if args.lease_ttl < 1:
        raise SystemExit("cni-plugins node: --lease-ttl must be at least 1 second")
    return AgentConf(
        etcd=_options(args),
        node=args.node_name,
        public_ip=public_ip,
        iface=args.iface,
        ttl=args.lease_ttl,
        net_name=args.net_name,
        conf_dir=os.path.abspath(args.conf_dir),
        bridge=args.bridge,
        ipam=args.ipam,
        data_dir=args.data_dir,
        state_dir=os.path.abspath(args.state_dir),
        ip_masq=args.ip_masq,
        cni_version=args.cni_version,
        resync=args.resync,
        device=args.vxlan_device,
    )


def _init(args: argparse.Namespace) -> int:
    try:
        config = NetworkConfig.build(
            args.network,
            subnet_len=args.subnet_len,
            subnet_min=args.subnet_min,
            subnet_max=args.subnet_max,
            backend=args.backend,
            vni=args.vni,
            port=args.port,
        )
    except ConfigError as exc:
        print(f"cni-plugins node init: {exc}", file=sys.stderr)
        return 2
    options = _options(args)
    with Client(options) as client:
        if not leases.write_config(client, options.prefix, config, replace_existing=args.force):
            existing = leases.read_config(client, options.prefix)
            if existing == config:
                print(f"{options.prefix}/network/config already says the same")
                return 0
            print(
                f"cni-plugins node init: {options.prefix}/network/config holds another config: "
                f"{existing.to_json().decode() if existing else '?'}; --force replaces it (nodes keep their subnets)",
                file=sys.stderr,
            )
            return 1
    print(config.to_json().decode())
    return 0


def _status(args: argparse.Namespace) -> int:
    options = _options(args)
    with Client(options) as client:
        config = leases.read_config(client, options.prefix)
        current, _ = leases.leases(client, options.prefix)
        rows = []
        for subnet in sorted(current):
            lease = current[subnet]
            ttl = (
                int(client.call("lease/timetolive", {"ID": str(lease.lease_id)}).get("TTL", -1))
                if lease.lease_id
                else -1
            )
            rows.append(
                {
                    "subnet": str(subnet),
                    "node": lease.node,
                    "publicIP": str(lease.public_ip),
                    "backend": lease.backend,
                    "vtepMAC": lease.vtep_mac,
                    "ttl": ttl,
                }
            )
    if args.json:
        print(json.dumps({"config": json.loads(config.to_json()) if config else None, "leases": rows}, indent=2))
        return 0
    if config is None:
        print(f"no network config at {options.prefix}/network/config (run `cni-plugins node init`)")
        return 3
    print(f"network {config.network}, /{config.subnet_len} per node, {config.backend}", end="")
    print(f", VNI {config.vni}, port {config.port}" if config.backend == VXLAN else "")
    for row in rows:
        print(f"  {row['subnet']:<18} {row['node']:<20} {row['publicIP']:<16} TTL {row['ttl']} s")
    return 0


def exec_start(argv: list[str]) -> str:
    """The agent as a service runs it."""
    from cni_plugins.protocol import installed

    return installed.exec_start("cni_plugins.node.cli", ["run", *argv])


def unit_text(name: str, run_argv: list[str]) -> str:
    return (
        "[Unit]\n"
        "Description=cni-py node agent: this node's pod subnet lease, routes and conflist\n"
        "Wants=network-online.target\n"
        "After=network-online.target\n"
        "\n"
        "[Service]\n"
        "Type=notify\n"
        "NotifyAccess=main\n"
        f"ExecStart={exec_start(run_argv)}\n"
        "Restart=always\n"
        "RestartSec=2s\n"
        # The agent only: stopping it leaves routes, vxlan entries and pods as they are.
        "KillMode=process\n"
        f"SyslogIdentifier={name}\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )


def _unit(args: argparse.Namespace, argv: list[str]) -> int:
    _agent_conf(args)  # refuse what `run` would refuse
    run_argv = _strip(argv[1:], ("--unit-dir", "--unit-name"))
    unit_dir = Path(args.unit_dir)
    unit_dir.mkdir(parents=True, exist_ok=True)
    path = unit_dir / f"{args.unit_name}.service"
    tmp = unit_dir / f".{args.unit_name}.service.tmp{os.getpid()}"
    tmp.write_text(unit_text(args.unit_name, run_argv))
    tmp.chmod(0o644)
    os.replace(tmp, path)
    print(path)
    print(f"next: systemctl daemon-reload && systemctl enable --now {args.unit_name}.service", file=sys.stderr)
    return 0


def _strip(argv: list[str], options: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in options:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    log.configure(f"cni-py node {getattr(args, 'node_name', '')}".strip(), os.environ, sys.stderr)
    try:
        if args.action == "init":
            return _init(args)
        if args.action == "status":
            return _status(args)
        if args.action == "unit":
            return _unit(args, argv)
        agent = Agent(_agent_conf(args))
        if args.action == "leave":
            agent.leave()
            return 0
        return agent.run()
    except EtcdError as exc:
        print(f"cni-plugins node {args.action}: {exc.msg}", file=sys.stderr)
        return 1
    except (CNIError, leases.NoSubnet) as exc:
        print(f"cni-plugins node {args.action}: {getattr(exc, 'msg', exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
