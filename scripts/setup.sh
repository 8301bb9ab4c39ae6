#!/usr/bin/env bash
# Set up cni-py on a Debian 12 machine (as root), then run the demo or the test suite.
#
#   bash scripts/setup.sh demo     install everything, run the demo scenario on real namespaces
#   bash scripts/setup.sh test     install everything, run the lint, the type check and the whole test suite
#   bash scripts/setup.sh install  install only
#
# Installs: Debian packages (nftables and its Python binding, iproute2, the reference
# plugins used as comparator; for the runtime tests podman, containerd, runc, busybox-static
# for the test image, Go and Debian's libcni sources for the libcni harness; etcd for the
# multi-node bed of cluster-ipam and the node agent, iperf3 for its benchmark), a virtualenv at
# $CNI_PY_VENV (default <checkout>/.venv) made from /usr/bin/python3 with
# --system-site-packages (for python3-nftables), our package into it, and our plugin
# executables into $CNI_PY_BIN (default /opt/cni/bin).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${CNI_PY_VENV:-$ROOT/.venv}
BIN=${CNI_PY_BIN:-/opt/cni/bin}
MODE=${1:-install}

APT_PACKAGES=(
  python3 python3-venv python3-pip python3-nftables nftables iproute2 iptables conntrack
  iputils-ping procps containernetworking-plugins gcc libc6-dev
  podman containerd runc busybox-static golang-go golang-github-appc-cni-dev
  etcd-server etcd-client iperf3
)

log() { printf '\n==> %s\n' "$*" >&2; }

install_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

install_python() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "virtualenv $VENV"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
  fi
  log "pip install $ROOT into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT[test]"
  "$VENV/bin/python" -c "import nftables, pyroute2" # fail early if a binding is missing
}

install_plugins() {
  log "plugins into $BIN"
  "$VENV/bin/cni-plugins" install --dir "$BIN" >/dev/null
  ln -sf "$VENV/bin/cnitool" /usr/local/bin/cnitool
  ln -sf "$VENV/bin/cni-plugins" /usr/local/bin/cni-plugins
  ln -sf "$VENV/bin/cni-scenario" /usr/local/bin/cni-scenario
}

install_apt
install_python
install_plugins

case "$MODE" in
  install) ;;
  demo)
    log "demo: conf/scenarios/bridge-portmap.yaml"
    exec "$VENV/bin/cni-scenario" --cni-path "$BIN" "$ROOT/conf/scenarios/bridge-portmap.yaml"
    ;;
  test)
    log "tests"
    cd "$ROOT"
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/python" -m mypy
    CNI_PY_REQUIRE_INTEGRATION=1 exec "$VENV/bin/python" -m pytest -q
    ;;
  *) echo "usage: $0 demo|test|install" >&2; exit 2 ;;
esac
