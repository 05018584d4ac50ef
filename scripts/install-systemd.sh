#!/usr/bin/env bash
# Install kerneld as a systemd service, running from this checkout.
#
#   scripts/install-systemd.sh               install the units, the config and the profiles dir
#   scripts/install-systemd.sh --output F    only render kerneld.service into F (nothing installed)
#
# The units' ExecStart names <checkout>/.venv/bin/kerneld (run scripts/setup.sh first):
# kerneld.service (the daemon) and kerneld-hypha.service (`kerneld hypha`, optional: enable it
# once the [hypha] table is filled in; docs/hypha.md). The config goes to
# /etc/kerneld/kerneld.toml unless one exists already (never overwritten).
# `systemctl daemon-reload` runs only when systemd is the running init; then:
#   systemctl enable --now kerneld            (and, for Hypha: kerneld-hypha)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
UNIT_SRC=systemd/kerneld.service
OUTPUT=""
if [ "${1:-}" = "--output" ]; then
    OUTPUT=${2:?--output needs a file}
fi
log() { printf 'install-systemd: %s\n' "$*" >&2; }

render() {  # render [UNIT_FILE]
    sed -e "s#/opt/kerneld/src/.venv/bin/kerneld#$ROOT/.venv/bin/kerneld#" \
        -e "s#file:///opt/kerneld/src/docs#file://$ROOT/docs#" "${1:-$UNIT_SRC}"
}

if [ -n "$OUTPUT" ]; then
    render > "$OUTPUT"
    exit 0
fi

[ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }
[ -x "$ROOT/.venv/bin/kerneld" ] || { log "$ROOT/.venv/bin/kerneld missing: run scripts/setup.sh"; exit 1; }

for unit in kerneld.service kerneld-hypha.service; do
    render "systemd/$unit" > "/etc/systemd/system/$unit.new"
    mv "/etc/systemd/system/$unit.new" "/etc/systemd/system/$unit"
done
if command -v systemd-analyze >/dev/null; then  # verified together: the second Requires= the first
    systemd-analyze verify /etc/systemd/system/kerneld.service \
        /etc/systemd/system/kerneld-hypha.service
fi
log "installed /etc/systemd/system/kerneld.service and kerneld-hypha.service" \
    "(ExecStart=$ROOT/.venv/bin/kerneld)"

install -d -m 0755 /etc/kerneld /etc/kerneld/profiles
if [ ! -e /etc/kerneld/kerneld.toml ]; then
    install -m 0644 etc/kerneld.toml /etc/kerneld/kerneld.toml
    log "installed /etc/kerneld/kerneld.toml (every key commented: the defaults)"
else
    log "kept the existing /etc/kerneld/kerneld.toml"
fi

if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    log "done: systemctl enable --now kerneld"
else
    log "systemd is not running here: the unit is installed but not loaded"
fi
