#!/usr/bin/env bash
# What the test suite needs besides the daemon's environment, idempotently (`make test` runs it):
#   1. Debian packages for the client tests: chromium + chromium-driver (JupyterLab in a real
#      browser), tmux (jupyter console in a terminal)
#   2. side environments, rebuilt when their requirement file changes:
#      .venv-clients  the Jupyter clients (tests/envs/jupyter-clients.txt)
#      .venv-hypha    a Hypha server (tests/envs/hypha-server.txt)
# They stay apart from .venv (the daemon's environment) on purpose: the daemon never imports them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${KERNELD_BASE_PYTHON:-/usr/bin/python3}
log() { printf 'setup-test-envs: %s\n' "$*" >&2; }

need_pkgs=()
for p in chromium chromium-driver tmux; do
    dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing Debian packages: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

side_env() {  # side_env DIR REQUIREMENTS
    local dir=$1 req=$2 stamp
    stamp=$(sha256sum "$req" | cut -d' ' -f1)
    if [ ! -x "$dir/bin/python" ] || [ "$(cat "$dir/.kerneld-stamp" 2>/dev/null)" != "$stamp" ]; then
        log "building $dir from $req"
        rm -rf "$dir"
        "$PY" -m venv "$dir"
        "$dir/bin/pip" install -q --upgrade pip
        "$dir/bin/pip" install -q -r "$req"
        echo "$stamp" > "$dir/.kerneld-stamp"
    fi
}
side_env .venv-clients tests/envs/jupyter-clients.txt
side_env .venv-hypha tests/envs/hypha-server.txt
log "ready: .venv-clients, .venv-hypha"
