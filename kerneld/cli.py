"""The `kerneld` command line (SPEC.md "CLI"; every command and flag: docs/cli.md).

    kerneld serve [--config FILE]                     the daemon, in the foreground
    kerneld run [KERNEL OPTIONS] [-n] (-c CODE | FILE)   one-shot: fresh kernel, live output
    kerneld create [KERNEL OPTIONS] [--namespace NS] [--id ID]                prints the id
    kerneld exec ID [-n] (-c CODE | FILE)
    kerneld attach ID [--until-idle]                  watch a kernel's cells from elsewhere
    kerneld ls [--namespace NS] [--json]
    kerneld destroy (ID | --all [--namespace NS])
    kerneld interrupt ID | restart ID
    kerneld status [--json]
    kerneld profile check FILE|NAME [--config FILE]
    kerneld jupyter install|uninstall [--user|--sys-prefix|--prefix P] [--profile NAME ...]
    kerneld hypha --server-url URL --workspace WS --token T [--service-id ID] [--client-id ID]
    kerneld version | bench [ARGS...]

KERNEL OPTIONS (`kerneld._cli_options`): --profile, --env, --mount DIR[:POINT][:ro],
--memory, --cpus, --limit K=V, --allow-read/write/net/env/run/sys, --deny-*, --permission
K=V, --inactivity-timeout, --max-execution-time. `run`/`exec` answer `input()` from stdin and
interrupt the kernel on Ctrl-C (`kerneld._cli_exec`).

Global options (before or after the command): `--address` (default `$KERNELD_ADDRESS`, else
the default endpoint) and `--debug` (tracebacks and debug logs). Errors are one line on stderr
and a non-zero exit status: 1 for errors (and for code that raised), 2 for usage errors,
78 for a bad daemon configuration, 130 after Ctrl-C.

`run` and `profile check NAME` use the daemon when one answers at the address; otherwise
`run` runs the code in an embedded `KernelManager` built from the same configuration the
daemon would use (`$KERNELD_CONFIG` if set, else the built-in defaults, then `KERNELD_*`
variables), so `kerneld run -c 'print(1)'` works on a machine with no daemon, and `profile
check` reads that configuration's profile directories.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

from kerneld._cli_exec import Stdin, attach, follow
from kerneld._cli_options import Usage, add_kernel_options, kernel_options
from kerneld.errors import DaemonUnavailable, InvalidArgument, KernelError

EX_CONFIG = 78


# ====================================================================== output of executions

def render_event(event: Any, out: Any = None, err: Any = None) -> None:
    """Print one event as a terminal user wants it (stdout/stderr kept apart)."""
    out = out or sys.stdout
    err = err or sys.stderr
    kind, data = event.type, event.data
    if kind == "stream":
        (err if data.get("name") == "stderr" else out).write(str(data.get("text", "")))
        (err if data.get("name") == "stderr" else out).flush()
    elif kind in ("display_data", "update_display_data", "execute_result"):
        out.write(_summarise(kind, data.get("data") or {}))
        out.flush()
    elif kind == "execute_error":
        lines = data.get("traceback") or [f"{data.get('ename')}: {data.get('evalue')}"]
        err.write("\n".join(str(line) for line in lines).rstrip("\n") + "\n")
        err.flush()
    elif kind == "execution_stalled":
        err.write(f"[kerneld: execution stalled after {data.get('actual_runtime', 0):.1f} s]\n")
        err.flush()
    elif kind == "input_request":
        err.write(f"[kerneld: input requested: {data.get('prompt', '')!r}]\n")
        err.flush()


def _summarise(kind: str, bundle: dict[str, Any]) -> str:
    text = bundle.get("text/plain")
    others = [mime for mime in bundle if mime != "text/plain"]
    if kind == "execute_result" and not others:
        return f"{text}\n" if text is not None else ""
    head = f"[{kind}: {', '.join(others)}]" if others else ""
    if text is None:
        return head + "\n"
    text = str(text)
    if not head:
        return text + "\n"
    return f"{head} {text}\n" if "\n" not in text else f"{head}\n{text}\n"


# ====================================================================== commands


def _client(args: argparse.Namespace, **options: Any) -> Any:
    from kerneld.client import Client
    return Client(args.address, **options)


def _read_code(args: argparse.Namespace) -> str:
    if args.code is not None:
        return str(args.code)
    if args.file == "-":
        return sys.stdin.read()
    try:
        with open(args.file, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read {args.file}: {exc}") from None


def cmd_serve(args: argparse.Namespace) -> int:
    from kerneld.config import ConfigError, load_daemon_config
    from kerneld.daemon import serve
    from kerneld.systemd import setup_logging
    path = args.config or os.environ.get("KERNELD_CONFIG") or None
    overrides: dict[str, Any] = {}
    if args.address:
        overrides["daemon.address"] = args.address
    if args.debug:
        overrides["daemon.log_level"] = "debug"

    def load() -> Any:
        return load_daemon_config(path, os.environ, overrides)

    try:
        config = load()
    except ConfigError as exc:
        print(f"kerneld: configuration error: {exc}", file=sys.stderr)
        return EX_CONFIG
    setup_logging(config.log_level)
    # The daemon adopts what its zygote leaves when it dies (the kernels live on and are
    # reaped here): only here, not in embedding programs, as it changes who reaps orphans.
    import prctl
    prctl.set_child_subreaper(1)
    return asyncio.run(serve(config, load))


def _stdin(args: argparse.Namespace) -> Stdin:
    return Stdin.of(args.code is None and args.file == "-", args.no_stdin)


def cmd_run(args: argparse.Namespace) -> int:
    code = _read_code(args)
    options = kernel_options(args)
    stdin = _stdin(args)
    try:
        client = _client(args, connect_timeout=2.0)
    except DaemonUnavailable as exc:
        if args.address or os.environ.get("KERNELD_ADDRESS"):
            print(f"kerneld: {exc}; running an embedded kernel instead", file=sys.stderr)
        return asyncio.run(_run_embedded(code, options, stdin, args.debug))
    with client:
        kernel_id = client.create_kernel(**options)
        try:
            stream = client.execute_stream(kernel_id, code, allow_stdin=True)
            return follow(client, kernel_id, stream, stdin, render_event)
        finally:
            try:
                client.destroy_kernel(kernel_id)
            except KernelError:
                pass


async def _run_embedded(code: str, options: dict[str, Any], stdin: Stdin, debug: bool) -> int:
    from kerneld.config import load_daemon_config
    from kerneld.manager import KernelManager
    from kerneld.systemd import setup_logging
    setup_logging("debug" if debug else "warning")
    config = load_daemon_config(os.environ.get("KERNELD_CONFIG") or None)
    async with KernelManager(config.manager) as manager:
        kernel_id = await manager.create_kernel(**options)
        stream = manager.execute_stream(kernel_id, code, allow_stdin=True)
        async for event in stream:
            if event.type == "input_request":
                manager.input_reply(kernel_id, await _answer_later(stdin, event))
            else:
                render_event(event)
        return 0 if stream.result is not None and stream.result.success else 1


async def _answer_later(stdin: Stdin, event: Any) -> str:
    """stdin's answer, read on a daemon thread so the manager's loop runs on meanwhile (and
    Ctrl-C does not wait for a line)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()

    def read() -> None:
        try:
            value = stdin.answer(str(event.data.get("prompt", "")),
                                 bool(event.data.get("password")))
        except BaseException as exc:  # noqa: BLE001  (handed to the loop)
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, value, None)

    threading.Thread(target=read, name="kerneld-stdin", daemon=True).start()
    return await future


def _settle(future: asyncio.Future[str], value: str | None, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(str(value))


def cmd_create(args: argparse.Namespace) -> int:
    options = kernel_options(args)
    with _client(args) as client:
        print(client.create_kernel(**options))
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    code = _read_code(args)
    with _client(args) as client:
        stream = client.execute_stream(args.id, code, allow_stdin=True)
        return follow(client, args.id, stream, _stdin(args), render_event)


def cmd_attach(args: argparse.Namespace) -> int:
    with _client(args) as client:
        return attach(client, args.id, args.until_idle, render_event)


def cmd_ls(args: argparse.Namespace) -> int:
    with _client(args) as client:
        kernels = client.list_kernels(args.namespace)
    if args.json:
        print(json.dumps(kernels, indent=2))
        return 0
    rows = [("ID", "STATUS", "PROFILE", "MODE", "PID", "EXECS", "MEMORY", "CREATED",
             "DESCRIPTION")]
    for k in kernels:
        rows.append((k["id"], k["status"], str(k["profile"]), k["mode"], str(k["pid"] or "-"),
                     str(k["execution_count"]), _size(k.get("memory_bytes")),
                     str(k["created"])[:19].replace("T", " "),
                     _first_line(k.get("profile_description"), 60)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_destroy(args: argparse.Namespace) -> int:
    if (args.id is None) == (not args.all):
        raise Usage("destroy needs a kernel ID or --all (not both)")
    if args.namespace and not args.all:
        raise Usage("--namespace goes with --all")
    with _client(args) as client:
        if args.all:
            count = client.destroy_all(args.namespace)
            print(f"destroyed {count} kernel{'s' if count != 1 else ''}")
        else:
            client.destroy_kernel(args.id)
    return 0


def cmd_interrupt(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if not client.interrupt_kernel(args.id):
            raise KernelError(f"kernel {args.id!r} not found (or not running)")
    return 0


def cmd_restart(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if not client.restart_kernel(args.id):
            raise KernelError(f"kernel {args.id!r} not found")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        status = client.status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    k = status["kernels"]
    print(f"kerneld {status['version']} (protocol {status['protocol']}), pid {status['pid']}, "
          f"{status['status']} at {status['address']}")
    if status.get("tcp_address"):
        print(f"tcp:      {status['tcp_address']} (CURVE)")
    print(f"uptime:   {_duration(status['uptime'])}")
    print(f"kernels:  {k['total']} (idle {k['idle']}, busy {k['busy']}, starting "
          f"{k['starting']}, restarting {k.get('restarting', 0)}, dead {k['dead']})")
    print(f"pool:     {status['pool']}")
    print(f"memory:   daemon RSS {_size(status['rss_bytes'])}")
    print(f"confine:  {'yes' if status['confine'] else 'NO (development mode)'}; in_process "
          f"kernels {'allowed' if status['allow_in_process'] else 'refused'}; default profile "
          f"{status['default_profile']}")
    print(f"config:   {status['config_file'] or '(built-in defaults)'}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """A NAME is checked by the daemon when one answers (its profile directories, its host
    features); a FILE, `--config`, or no daemon: here, from the local configuration."""
    name = args.profile
    if not args.config and "/" not in name and not name.endswith(".toml"):
        try:
            client = _client(args, connect_timeout=2.0)
        except DaemonUnavailable as exc:
            if args.address or os.environ.get("KERNELD_ADDRESS"):
                print(f"kerneld: {exc}; checking the local configuration instead",
                      file=sys.stderr)
        else:
            with client:
                answer = client.check_profile(name)
            print(str(answer["report"]).rstrip("\n"))
            print(f"checked by: the daemon at {client.address}")
            return 0
    from kerneld.config import load_daemon_config
    from kerneld.permissions import load_profile, profile_report
    config_file = args.config or os.environ.get("KERNELD_CONFIG") or None
    config = load_daemon_config(config_file)
    profile = load_profile(name, config.manager.profile_dirs)
    print(profile_report(profile).rstrip("\n"))  # against this host's sandbox.probe()
    print(f"checked by: this process (config: {config_file or 'built-in defaults'})")
    return 0


def cmd_version(args: argparse.Namespace) -> int:
    from kerneld import __version__
    print(f"kerneld {__version__}")
    return 0


def cmd_jupyter(args: argparse.Namespace) -> int:
    """`kerneld jupyter install|uninstall`: kernelspecs that run kerneld kernels (one per
    profile; docs/jupyter.md). Writes the files itself: no jupyter_client needed here."""
    from kerneld.jupyter import kernelspec
    where = {"user": args.user, "sys_prefix": args.sys_prefix, "prefix": args.prefix}
    if args.jupyter_command == "install":
        for path in kernelspec.install(args.profiles, address=args.address, **where):
            print(f"installed {path.name} in {path}")
    else:
        removed = kernelspec.uninstall(args.profiles, **where)
        for path in removed:
            print(f"removed {path.name} from {path}")
        if not removed:
            print(f"no kerneld kernelspec in {kernelspec.kernels_dir(**where)}")
    return 0


def cmd_hypha(args: argparse.Namespace) -> int:
    """`kerneld hypha`: attach the daemon to a Hypha server (kerneld/hypha/attach.py)."""
    from kerneld.hypha.attach import main as attach
    return attach(args)


def cmd_bench(args: argparse.Namespace) -> int:
    # the harness is bench/kerneld_bench/ of the source checkout, next to this package
    bench_dir = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "bench")
    if not os.path.isfile(os.path.join(bench_dir, "kerneld_bench", "__init__.py")):
        raise KernelError(f"the benchmarks ship with the source checkout, not with an installed "
                          f"kerneld (no {bench_dir}/kerneld_bench): run `kerneld bench` from a "
                          "clone of the repository (an editable install)")
    sys.path.append(bench_dir)  # last: bench/profile.py must not shadow the stdlib's profile
    import kerneld_bench as bench
    rest = list(args.bench_args or [])
    if args.address:
        rest = ["--address", args.address, *rest]
    return int(bench.main(rest) or 0)


# ====================================================================== parsing


def _size(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "-"


def _first_line(text: Any, width: int) -> str:
    line = str(text or "").strip().split("\n", 1)[0]
    return line if len(line) <= width else line[:width - 1] + "…"


def _duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    return (f"{days}d " if days else "") + f"{hours:d}h {minutes:02d}m {s:02d}s"


def _code_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("-c", dest="code", metavar="CODE", help="the code to run")
    group.add_argument("file", nargs="?", metavar="FILE", help="a file of code ('-': stdin)")
    p.add_argument("-n", "--no-stdin", action="store_true",
                   help="do not answer input() from stdin: it gets end-of-file (by default "
                        "a line of stdin, a terminal or a pipe, answers each input())")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--address", default=argparse.SUPPRESS,
                        help="daemon endpoint (default: $KERNELD_ADDRESS, else the default "
                             "socket)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug logs")
    parser = argparse.ArgumentParser(
        prog="kerneld", parents=[common],
        description="Stateful Python kernels for untrusted code, each confined by the OS.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable[[argparse.Namespace], int], help: str
            ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = add("serve", cmd_serve, "run the daemon in the foreground")
    p.add_argument("--config", metavar="FILE",
                   help="TOML config file (default: $KERNELD_CONFIG, else built-in defaults)")
    p = add("run", cmd_run, "run code in a fresh kernel, print its output, destroy it "
                            "(Ctrl-C interrupts the code)")
    _code_args(p)
    add_kernel_options(p, naming=False)
    p = add("create", cmd_create, "create a kernel and print its id")
    add_kernel_options(p, naming=True)
    p = add("exec", cmd_exec, "run code in an existing kernel (Ctrl-C interrupts the kernel)")
    p.add_argument("id", metavar="ID")
    _code_args(p)
    p = add("attach", cmd_attach, "print a kernel's output as its cells run, whoever runs "
                                  "them (Ctrl-C detaches)")
    p.add_argument("id", metavar="ID")
    p.add_argument("--until-idle", action="store_true",
                   help="stop once no execution is running or queued (at once if idle)")
    p = add("ls", cmd_ls, "list kernels")
    p.add_argument("--namespace")
    p.add_argument("--json", action="store_true")
    p = add("destroy", cmd_destroy, "destroy one kernel, or all (of a namespace)")
    p.add_argument("id", nargs="?", metavar="ID")
    p.add_argument("--all", action="store_true")
    p.add_argument("--namespace")
    p = add("interrupt", cmd_interrupt, "interrupt the running execution of a kernel")
    p.add_argument("id", metavar="ID")
    p = add("restart", cmd_restart, "restart a kernel (same id, fresh state)")
    p.add_argument("id", metavar="ID")
    p = add("status", cmd_status, "daemon health, kernel counts, pool and memory")
    p.add_argument("--json", action="store_true")
    p = add("profile", cmd_profile, "inspect permission profiles")
    psub = p.add_subparsers(dest="profile_command", metavar="check", required=True)
    check = psub.add_parser("check", parents=[common],
                            help="the effective policy and what this host can enforce")
    check.add_argument("profile", metavar="FILE|NAME")
    check.add_argument("--config", metavar="FILE",
                       help="check locally with this daemon config's profile dirs (default: "
                            "ask the daemon if one answers, else $KERNELD_CONFIG)")
    p = add("jupyter", cmd_jupyter, "Jupyter kernelspecs for kerneld kernels (one per profile)")
    jsub = p.add_subparsers(dest="jupyter_command", metavar="install|uninstall", required=True)
    for name, what in (("install", "write"), ("uninstall", "remove")):
        j = jsub.add_parser(name, parents=[common], help=f"{what} kerneld-<profile> kernelspecs")
        where = j.add_mutually_exclusive_group()
        where.add_argument("--user", action="store_true", help="in the user's Jupyter dir")
        where.add_argument("--sys-prefix", action="store_true",
                           help="in this Python environment (sys.prefix/share/jupyter)")
        where.add_argument("--prefix", metavar="P", help="in P/share/jupyter")
        j.add_argument("--profile", dest="profiles", action="append", metavar="NAME",
                       help="a profile (repeatable; default for install: default, "
                            "data-science, networked; for uninstall: every kerneld one)")
    p = add("hypha", cmd_hypha, "attach the daemon to a Hypha server as one instance of a "
                                "shared service (docs/hypha.md; needs kerneld[hypha])")
    p.add_argument("--config", metavar="FILE", help="TOML config with a [hypha] table "
                   "(default: $KERNELD_CONFIG)")
    for flag, meta, what in (("--server-url", "URL", "the Hypha server"),
                             ("--workspace", "WS", "the fleet's workspace"),
                             ("--token", "T", "a read_write token of that workspace"),
                             ("--token-file", "FILE", "a file holding the token"),
                             ("--service-id", "ID", "the shared service id (default kerneld)"),
                             ("--client-id", "ID", "this host's unique client id")):
        p.add_argument(flag, metavar=meta, help=what)
    add("version", cmd_version, "print the version")
    p = add("bench", cmd_bench, "benchmarks against ipykernel (see bench/); arguments after "
                                "`bench` go to the harness (`kerneld bench --help`)")
    p.set_defaults(bench_args=[])
    return parser


def _split_bench(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """`kerneld [global options] bench ARGS...`: ARGS go to the harness untouched."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] == "--address" else 1
    if i < len(argv) and argv[i] == "bench":
        return argv[:i + 1], argv[i + 1:]
    return argv, None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv, bench_args = _split_bench(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(argv)
    if bench_args is not None:
        args.bench_args = bench_args
    args.address = getattr(args, "address", None)
    args.debug = getattr(args, "debug", False)
    try:
        return int(args.func(args))
    except Usage as exc:
        parser.error(str(exc))
    except KernelError as exc:
        if args.debug:
            raise
        print(f"kerneld: {type(exc).__name__}: {exc}" if type(exc) is not KernelError
              else f"kerneld: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug: one line, the traceback with --debug
        if args.debug:
            raise
        print(f"kerneld: internal error: {type(exc).__name__}: {exc} (use --debug for the "
              "traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
