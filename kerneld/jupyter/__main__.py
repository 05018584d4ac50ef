"""`python -m kerneld.jupyter -f CONNECTION_FILE --profile NAME [--address ADDR]`.

What a kerneld kernelspec's argv runs (`kerneld jupyter install`): read the connection file,
fork the reaper (before any ZeroMQ context or thread exists), then run the adapter until the
client shuts the kernel down. Exit status: 0 after a shutdown, 1 when the daemon is missing,
refuses the kernel or loses it (the message on stderr says which), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import uuid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kerneld.jupyter",
        description="A Jupyter kernel backed by a confined kerneld kernel (docs/jupyter.md).")
    parser.add_argument("-f", dest="connection_file", required=True,
                        help="the connection file written by the Jupyter client")
    parser.add_argument("--profile", default="default",
                        help="the kerneld permission profile of the kernel (default: default)")
    parser.add_argument("--address", default=None,
                        help="the daemon's endpoint (default: $KERNELD_ADDRESS, else the "
                             "default socket)")
    parser.add_argument("--debug", action="store_true", help="debug logs on stderr")
    args = parser.parse_args(argv)
    # A client's interrupt (SIGINT to our process group) may come before the kernel exists:
    # it must not kill the adapter with a traceback; the loop's handler replaces this.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        with open(args.connection_file, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")  # noqa: TRY004  (reported as unreadable)
    except (OSError, ValueError) as exc:
        print(f"kerneld.jupyter: cannot read the connection file {args.connection_file}: "
              f"{exc}", file=sys.stderr)
        return 2

    from kerneld.config import client_default_address
    from kerneld.jupyter import adapter, reaper
    try:
        conn = adapter.ConnectionInfo(data, args.connection_file)
    except ValueError as exc:
        print(f"kerneld.jupyter: bad connection file: {exc}", file=sys.stderr)
        return 2
    address = args.address or os.environ.get("KERNELD_ADDRESS") or client_default_address()
    kernel_id = f"jupyter:{uuid.uuid4().hex[:16]}"  # namespace:id, as `kerneld ls` shows it
    reaper_fd = reaper.start(address, kernel_id)
    return adapter.run(conn, args.profile, address, kernel_id, reaper_fd)


if __name__ == "__main__":
    sys.exit(main())
