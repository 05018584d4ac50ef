#!/usr/bin/env bash
# Install kerneld as a systemd service, running from this checkout.
#
#   scripts/install-systemd.sh               install the unit, the config and the profiles dir
#   scripts/install-systemd.sh --output F    only render the unit into F (nothing installed)
#
# The unit's ExecStart names <checkout>/.venv/bin/kerneld (run scripts/setup.sh first). The
# config goes to /etc/kerneld/kerneld.toml unless one exists already (never overwritten).
# `systemctl daemon-reload` runs only when systemd is the running init; then:
#   systemctl enable --now kerneld
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
UNIT_SRC=systemd/kerneld.service
OUTPUT=""
if [ "${1:-}" = "--output" ]; then
    OUTPUT=${2:?--output needs a file}
fi
log() { printf 'install-systemd: %s\n' "$*" >&2; }

render() {
    sed -e "s#/opt/kerneld/src/.venv/bin/kerneld#$ROOT/.venv/bin/kerneld#" \
        -e "s#file:///opt/kerneld/src/docs#file://$ROOT/docs#" "$UNIT_SRC"
}

if [ -n "$OUTPUT" ]; then
    render > "$OUTPUT"
    exit 0
fi

[ "$(id -u)" = 0 ] || { log "run as root"; exit 1; }
[ -x "$ROOT/.venv/bin/kerneld" ] || { log "$ROOT/.venv/bin/kerneld missing: run scripts/setup.sh"; exit 1; }

render > /etc/systemd/system/kerneld.service.new
if command -v systemd-analyze >/dev/null; then
    systemd-analyze verify /etc/systemd/system/kerneld.service.new
fi
mv /etc/systemd/system/kerneld.service.new /etc/systemd/system/kerneld.service
log "installed /etc/systemd/system/kerneld.service (ExecStart=$ROOT/.venv/bin/kerneld)"

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
