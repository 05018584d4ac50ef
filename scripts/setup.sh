#!/usr/bin/env bash
# Set up everything kerneld needs on a fresh Debian 12 machine, idempotently:
#   1. Debian packages (libcap-dev for python-prctl, libseccomp2, python3-venv, iproute2)
#   2. the daemon's environment: .venv/ at the repository root (kerneld installed editable)
#   3. the worker runtime: a world-readable prefix (default /opt/kerneld/runtime) that the
#      kernels' unprivileged uids can read; rebuilt when runtime-requirements.txt changes.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${KERNELD_BASE_PYTHON:-/usr/bin/python3}
RUNTIME=${KERNELD_RUNTIME:-/opt/kerneld/runtime}
log() { printf 'setup: %s\n' "$*" >&2; }

need_pkgs=()
for p in libcap-dev libseccomp2 python3-venv python3-dev iproute2 gcc libc6-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
    log "installing Debian packages: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

venv_stamp=$(stamp_of pyproject.toml)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.kerneld-stamp 2>/dev/null)" != "$venv_stamp" ]; then
    log "building the daemon environment in .venv/"
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e ".[dev,hypha]"
    echo "$venv_stamp" > .venv/.kerneld-stamp
fi

rt_stamp=$(stamp_of runtime-requirements.txt)
if [ ! -x "$RUNTIME/bin/python" ] || [ "$(cat "$RUNTIME/.kerneld-stamp" 2>/dev/null)" != "$rt_stamp" ]; then
    log "building the worker runtime in $RUNTIME"
    rm -rf "$RUNTIME.new"
    mkdir -p "$(dirname "$RUNTIME")"
    "$PY" -m venv "$RUNTIME.new"
    "$RUNTIME.new/bin/pip" install -q --upgrade pip
    "$RUNTIME.new/bin/pip" install -q -r runtime-requirements.txt
    # a venv's scripts name their own path: rebuild in place would be cleaner, but the
    # interpreter only needs pyvenv.cfg, which holds no path of the build folder.
    rm -rf "$RUNTIME"
    mv "$RUNTIME.new" "$RUNTIME"
    sed -i "s#$RUNTIME.new#$RUNTIME#g" "$RUNTIME"/bin/* 2>/dev/null || true
    echo "$rt_stamp" > "$RUNTIME/.kerneld-stamp"
    chmod -R a+rX "$(dirname "$RUNTIME")"
fi
# kerneld-init: PID 1 of every kernel's PID namespace (a tiny C reaper; see its source)
# static: it starts while the zygote forks the worker, on a 2-core machine; a dynamic one
# spends ~1 ms in the loader, competing with that fork (measured: fork 4.5 → 3.2 ms)
init_src=kerneld/data/kerneld-init.c
init_flags="-O2 -Wall -Wextra -static"
init_stamp=$( (cat "$init_src"; echo "$init_flags") | sha256sum | cut -d' ' -f1)
if [ ! -x "$RUNTIME/bin/kerneld-init" ] || [ "$(cat "$RUNTIME/.init-stamp" 2>/dev/null)" != "$init_stamp" ]; then
    log "building $RUNTIME/bin/kerneld-init"
    # shellcheck disable=SC2086  # the flags are words
    gcc $init_flags -o "$RUNTIME/bin/kerneld-init.new" "$init_src"
    mv "$RUNTIME/bin/kerneld-init.new" "$RUNTIME/bin/kerneld-init"
    chmod 0755 "$RUNTIME/bin/kerneld-init"
    echo "$init_stamp" > "$RUNTIME/.init-stamp"
fi
log "ready: daemon env $ROOT/.venv, worker runtime $RUNTIME"
