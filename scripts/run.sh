#!/usr/bin/env bash
# Start the kerneld daemon on its embedded default config, show it working, keep it running.
# Ctrl-C (or SIGTERM) stops it cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
KERNELD=.venv/bin/kerneld
.venv/bin/kerneld serve "$@" &
daemon=$!
trap 'kill -TERM $daemon 2>/dev/null; wait $daemon' INT TERM
for _ in $(seq 1 100); do
    $KERNELD status >/dev/null 2>&1 && break
    kill -0 $daemon 2>/dev/null || { echo "run: the daemon exited" >&2; exit 1; }
    sleep 0.1
done
echo "run: kerneld is serving (pid $daemon). A confined kernel says hello:" >&2
$KERNELD run -c 'import os, sys; print(f"hello from pid {os.getpid()} as uid {os.getuid()} on Python {sys.version.split()[0]}"); 6 * 7' || true
cat >&2 <<MSG

Try it:   $KERNELD run -c 'print(sum(range(10)))'
          $KERNELD create            # then: $KERNELD exec <ID> -c 'x = 1'
          $KERNELD ls ; $KERNELD status
          python: import kerneld; c = kerneld.connect(); ...
Ctrl-C stops the daemon.
MSG
wait $daemon
