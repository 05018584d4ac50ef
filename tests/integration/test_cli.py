"""The `kerneld` command line as users run it: subprocesses against a real daemon."""

from __future__ import annotations

import json

from _daemon import Daemon, cli


def test_run_streams_stdout_and_stderr_apart(daemon: Daemon) -> None:
    code = ("import sys\nprint('to out')\nprint('to err', file=sys.stderr)\n"
            "from IPython.display import HTML, display\n"
            "display(HTML('<b>x</b>'))\n6 * 7")
    proc = cli("run", "-c", code, address=daemon.address)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "to out", "[display_data: text/html] <IPython.core.display.HTML object>", "42"]
    assert proc.stderr == "to err\n"


def test_run_exits_1_with_the_traceback_on_stderr(daemon: Daemon, tmp_path: object) -> None:
    import pathlib
    script = pathlib.Path(str(tmp_path)) / "fail.py"
    script.write_text("print('before')\nraise ValueError('bad value')\n")
    proc = cli("run", str(script), address=daemon.address)
    assert proc.returncode == 1
    assert proc.stdout == "before\n"
    assert "ValueError" in proc.stderr and "bad value" in proc.stderr
    stdin = cli("run", "-", address=daemon.address, stdin="print('from stdin')")
    assert stdin.returncode == 0 and stdin.stdout == "from stdin\n"


def test_run_leaves_no_kernel_behind(daemon: Daemon) -> None:
    cli("run", "-c", "1", address=daemon.address)
    listed = cli("ls", "--json", address=daemon.address)
    assert json.loads(listed.stdout) == []


def test_create_exec_ls_destroy(daemon: Daemon) -> None:
    created = cli("create", "--namespace", "team", "--id", "k1", "--env", "COLOUR=green",
                  "--profile", "default", address=daemon.address)
    assert created.returncode == 0, created.stderr
    assert created.stdout == "team:k1\n"
    out = cli("exec", "team:k1", "-c", "import os; print(os.environ['COLOUR'])",
              address=daemon.address)
    assert (out.returncode, out.stdout) == (0, "green\n")
    other = cli("--address", daemon.address, "create").stdout.strip()  # global flag first
    listed = json.loads(cli("ls", "--json", "--namespace", "team", address=daemon.address).stdout)
    assert [k["id"] for k in listed] == ["team:k1"]
    assert listed[0]["execution_count"] == 1 and listed[0]["status"] == "idle"
    table = cli("ls", "--address", daemon.address).stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "STATUS", "PROFILE"] and len(table) == 3
    assert cli("interrupt", "team:k1", address=daemon.address).returncode == 0
    assert cli("restart", "team:k1", address=daemon.address).returncode == 0
    failed = cli("exec", "team:k1", "-c", "COLOUR", address=daemon.address)
    assert failed.returncode == 1 and "NameError" in failed.stderr
    assert cli("destroy", other, address=daemon.address).returncode == 0
    gone = cli("destroy", "--all", "--namespace", "team", address=daemon.address)
    assert gone.stdout == "destroyed 1 kernel\n"
    assert json.loads(cli("ls", "--json", address=daemon.address).stdout) == []


def test_errors_are_one_line_without_traceback(daemon: Daemon) -> None:
    for args in (("exec", "nope", "-c", "1"), ("destroy", "nope"), ("interrupt", "nope"),
                 ("restart", "nope"), ("create", "--id", "bad:id")):
        proc = cli(*args, address=daemon.address)
        assert proc.returncode == 1, args
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("kerneld: ")
    debug = cli("--debug", "destroy", "nope", address=daemon.address)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    usage = cli("destroy", address=daemon.address)
    assert usage.returncode == 2


def test_status(daemon: Daemon) -> None:
    status = json.loads(cli("status", "--json", address=daemon.address).stdout)
    assert status["pid"] == daemon.pid and status["status"] == "running"
    assert set(status["kernels"]) >= {"total", "idle", "busy", "starting", "dead"}
    assert status["rss_bytes"] > 0 and "pool" in status and status["uptime"] > 0
    text = cli("status", address=daemon.address)
    assert text.returncode == 0 and "kernels:" in text.stdout and "uptime:" in text.stdout


def test_commands_without_a_daemon_fail_clearly() -> None:
    proc = cli("status", address="ipc:///tmp/kerneld-nowhere/kerneld.sock")
    assert proc.returncode == 1
    assert "kerneld-nowhere" in proc.stderr and proc.stderr.count("\n") == 1


def test_run_falls_back_to_an_embedded_kernel() -> None:
    proc = cli("run", "-c", "print('embedded'); 1+1",
               address="ipc:///tmp/kerneld-nowhere/kerneld.sock",
               env={"KERNELD_KERNELS_CONFINE": "false", "KERNELD_RUNTIME_PRELOAD": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "embedded\n2\n"
    assert "running an embedded kernel instead" in proc.stderr


def test_version_profile_check_and_bench() -> None:
    import kerneld
    assert cli("version").stdout == f"kerneld {kerneld.__version__}\n"
    report = cli("profile", "check", "default")
    assert report.returncode == 0, report.stderr
    assert "default" in report.stdout
    missing = cli("profile", "check", "no-such-profile")
    assert missing.returncode == 1 and "not found" in missing.stderr
    bench = cli("bench", "--help")
    assert bench.returncode == 0, bench.stderr  # from a checkout: bench/kerneld_bench
    assert "usage: kerneld bench" in bench.stdout
