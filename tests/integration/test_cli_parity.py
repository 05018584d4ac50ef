"""The CLI can do what the API does (issue 16 items 4, 5, 6, 12): the real `kerneld` command in
subprocesses, against real daemons; `input()` answered through a pipe and through a terminal
(a pty), Ctrl-C typed on that terminal, `attach` from a second process."""

from __future__ import annotations

import argparse
import json
import os
import pty
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _daemon import DEV_CONFIG, MOUNT_ROOT, ROOT, Daemon

import kerneld
from kerneld.cli import build_parser
from tests._host import sandbox_missing

KERNELD = str(ROOT / ".venv" / "bin" / "kerneld")
RST = '''description = "restructured text work: no network"
[limits]
memory = "384MiB"
'''

pytestmark = pytest.mark.skipif(not os.access(KERNELD, os.X_OK), reason=f"no {KERNELD}")


@pytest.fixture(scope="module")
def profiles_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="kd-profiles-"))
    (d / "rst.toml").write_text(RST)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(profiles_dir: Path) -> Iterator[Daemon]:
    """The dev daemon, with a profile directory of its own (holding `rst`)."""
    d = Daemon(DEV_CONFIG + f'\n[profiles]\ndirs = ["{profiles_dir}"]\n')
    try:
        yield d.wait_ready()
    finally:
        d.close()


def _env(address: str | None, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNELD_")}
    if address is not None:
        env["KERNELD_ADDRESS"] = address
    env.update(extra or {})
    return env


def kd(*args: str, address: str | None = None, stdin: str | None = None,
       env: dict[str, str] | None = None, cwd: str | None = None,
       timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `.venv/bin/kerneld ARGS`; stdin is a pipe (given text) or /dev/null."""
    return subprocess.run([KERNELD, *args], capture_output=True, text=True, timeout=timeout,
                          env=_env(address, env), cwd=cwd or str(ROOT), input=stdin,
                          stdin=None if stdin is not None else subprocess.DEVNULL,
                          check=False)


class Tty:
    """`kerneld ARGS` on a pseudo-terminal: its controlling terminal, as in a shell."""

    def __init__(self, *args: str, address: str) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: exec or die
            try:
                os.execve(KERNELD, [KERNELD, *args], _env(address))
            finally:
                os._exit(127)
        self.output = b""

    def expect(self, pattern: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while not re.search(pattern.encode(), self.output):
            left = deadline - time.monotonic()
            if left <= 0 or not self._read(left):
                raise AssertionError(f"no {pattern!r} on the terminal:\n{self.text}")
        return self.text

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.output += data
        return bool(data)

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace").replace("\r\n", "\n")

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 30) -> int:
        """Read to the terminal's end (the child's exit), then its exit status."""
        deadline = time.monotonic() + timeout
        while self._read(0.2):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                os.close(self.fd)
                raise AssertionError(f"kerneld did not exit:\n{self.text}")
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


# ====================================================================== item 4: input()


def test_run_and_exec_answer_input_from_a_pipe(daemon: Daemon) -> None:
    code = "name = input('Name: ')\nprint('hello', name)\nprint(input('Again: '))"
    ran = kd("run", "-c", code, address=daemon.address, stdin="Ada\nBob\n")
    assert (ran.returncode, ran.stdout) == (0, "Name: hello Ada\nAgain: Bob\n"), ran.stderr
    kid = kd("create", address=daemon.address).stdout.strip()
    try:
        done = kd("exec", kid, "-c", "n = input(); n * 2", address=daemon.address,
                  stdin="ab\n")
        assert (done.returncode, done.stdout) == (0, "'abab'\n"), done.stderr
        # the end of the pipe is Python's end of file: EOFError in the kernel
        eof = kd("exec", kid, "-c", "try:\n    input('x? ')\nexcept EOFError:\n    print('EOF')",
                 address=daemon.address, stdin="")
        assert (eof.returncode, eof.stdout) == (0, "x? EOF\n"), eof.stderr
    finally:
        kd("destroy", kid, address=daemon.address)


def test_without_a_usable_stdin_input_fails_in_shell_terms(daemon: Daemon) -> None:
    from_stdin = kd("run", "-", address=daemon.address, stdin="input('Name: ')\n")
    assert from_stdin.returncode == 1
    assert "the code itself was read from stdin" in from_stdin.stderr
    assert "EOFError" in from_stdin.stderr
    assert "allow_stdin" not in from_stdin.stderr  # API wording never reaches a shell
    refused = kd("run", "--no-stdin", "-c", "input('Name: ')", address=daemon.address,
                 stdin="Ada\n")
    assert refused.returncode == 1 and "--no-stdin was given" in refused.stderr
    assert "EOFError" in refused.stderr and "allow_stdin" not in refused.stderr


def test_the_embedded_run_answers_input_too() -> None:
    proc = kd("run", "-c", "print('got', input('? '))", stdin="42\n",
              address="ipc:///tmp/kerneld-nowhere/kerneld.sock",
              env={"KERNELD_KERNELS_CONFINE": "false", "KERNELD_RUNTIME_PRELOAD": ""})
    assert (proc.returncode, proc.stdout) == (0, "? got 42\n"), proc.stderr


def test_exec_on_a_terminal_answers_input_and_getpass(daemon: Daemon) -> None:
    kid = kd("create", address=daemon.address).stdout.strip()
    try:
        tty = Tty("exec", kid, "-c", "import getpass\nn = input('Name: ')\n"
                  "p = getpass.getpass('Secret: ')\nprint('hello', n, len(p))",
                  address=daemon.address)
        tty.expect("Name: ")
        tty.type("Ada\r")
        tty.expect("Secret: ")
        tty.type("s3cret\r")
        assert tty.wait() == 0
        assert "hello Ada 6" in tty.text
        assert "s3cret" not in tty.text  # getpass on a terminal: no echo
    finally:
        kd("destroy", kid, address=daemon.address)


def test_ctrl_c_on_exec_interrupts_the_kernel_which_keeps_its_state(daemon: Daemon) -> None:
    kid = kd("create", address=daemon.address).stdout.strip()
    try:
        assert kd("exec", kid, "-c", "x = 7", address=daemon.address).returncode == 0
        tty = Tty("exec", kid, "-c", "import time\nprint('looping', flush=True)\n"
                  "while True:\n    time.sleep(0.05)", address=daemon.address)
        tty.expect("looping")
        tty.type("\x03")  # Ctrl-C: the terminal sends SIGINT to kerneld
        assert tty.wait() == 130
        assert "KeyboardInterrupt" in tty.text  # the cell ended with the interrupt's traceback
        after = kd("exec", kid, "-c", "x", address=daemon.address)
        assert (after.returncode, after.stdout) == (0, "7\n")
        # and while input() waits for the terminal
        tty = Tty("exec", kid, "-c", "input('Name: ')", address=daemon.address)
        tty.expect("Name: ")
        tty.type("\x03")
        assert tty.wait() == 130 and "KeyboardInterrupt" in tty.text
        assert kd("exec", kid, "-c", "x", address=daemon.address).stdout == "7\n"
    finally:
        kd("destroy", kid, address=daemon.address)


def test_ctrl_c_on_run_interrupts_and_removes_its_kernel(daemon: Daemon) -> None:
    tty = Tty("run", "-c", "import time\nprint('looping', flush=True)\ntime.sleep(60)",
              address=daemon.address)
    tty.expect("looping")
    tty.type("\x03")
    assert tty.wait() == 130 and "KeyboardInterrupt" in tty.text
    assert json.loads(kd("ls", "--json", address=daemon.address).stdout) == []


# ====================================================================== item 4: attach


def test_attach_watches_a_cell_run_by_another_process(daemon: Daemon) -> None:
    kid = kd("create", address=daemon.address).stdout.strip()
    code = ("import sys, time\nfor i in range(12):\n    print('tick', i, flush=True)\n"
            "    time.sleep(0.25)\nprint('oops', file=sys.stderr)\n6 * 7")
    runner = subprocess.Popen([KERNELD, "exec", kid, "-c", code], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env(daemon.address))
    try:
        assert runner.stdout is not None
        assert runner.stdout.readline() == "tick 0\n"  # the cell runs
        watched = kd("attach", kid, "--until-idle", address=daemon.address, timeout=30)
        assert watched.returncode == 0, watched.stderr
        lines = watched.stdout.splitlines()
        assert lines[-1] == "42" and "tick 11" in lines, watched.stdout
        assert watched.stderr == "oops\n"
        assert runner.wait(30) == 0
        idle = kd("attach", kid, "--until-idle", address=daemon.address, timeout=10)
        assert (idle.returncode, idle.stdout) == (0, "")  # nothing runs: returns at once
    finally:
        runner.kill()
        runner.wait()
        kd("destroy", kid, address=daemon.address)


def _popen(*args: str, address: str) -> subprocess.Popen[str]:
    return subprocess.Popen([KERNELD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, env=_env(address))


def test_attach_detaches_on_ctrl_c_and_ends_with_the_kernel(daemon: Daemon) -> None:
    kid = kd("create", address=daemon.address).stdout.strip()
    ticking = ("import time\nfor i in range(600):\n    print('tick', i, flush=True)\n"
               "    time.sleep(0.1)")
    runner = _popen("exec", kid, "-c", ticking, address=daemon.address)
    watcher = _popen("attach", kid, address=daemon.address)
    try:
        assert watcher.stdout is not None and watcher.stderr is not None
        assert watcher.stdout.readline().startswith("tick ")  # attached, watching
        watcher.send_signal(signal.SIGINT)  # Ctrl-C: detach; the cell runs on
        assert watcher.wait(10) == 130
        assert kd("interrupt", kid, address=daemon.address).returncode == 0
        assert runner.wait(10) == 1  # only now, and by the interrupt
        runner = _popen("exec", kid, "-c", ticking, address=daemon.address)
        watcher = _popen("attach", kid, address=daemon.address)
        assert watcher.stdout is not None and watcher.stderr is not None
        assert watcher.stdout.readline().startswith("tick ")
        assert kd("destroy", kid, address=daemon.address).returncode == 0
        assert watcher.wait(10) == 0
        assert "[kerneld: kernel destroyed]" in watcher.stderr.read()
    finally:
        for proc in (runner, watcher):
            proc.kill()
            proc.wait()
        kd("destroy", kid, address=daemon.address)


# ====================================================================== item 4: create flags


def test_create_flags_reach_the_kernel(daemon: Daemon) -> None:
    mount = tempfile.mkdtemp(dir=MOUNT_ROOT)
    Path(mount, "host.txt").write_text("from the host")
    try:
        made = kd("create", "--id", "flags", "--mount", f"{mount}:/data:ro", "-e", "A=1",
                  "--memory", "256MiB", "--cpus", "0.5", "--limit", "cpu_seconds=30",
                  "--permission", "net=", "--deny-env", "SECRET_*",
                  "--inactivity-timeout", "90", "--max-execution-time", "0.3",
                  address=daemon.address)
        assert (made.returncode, made.stdout) == (0, "flags\n"), made.stderr
        with kerneld.connect(daemon.address) as client:
            assert client.get_inactivity_timeout("flags") == 90
        # unconfined (dev daemon): the mount's root is the working directory
        code = ("import os; print(os.environ['A'], open('host.txt').read(), "
                f"os.getcwd() == os.path.realpath({mount!r}))")
        read = kd("exec", "flags", "-c", code, address=daemon.address)
        assert (read.returncode, read.stdout) == (0, "1 from the host True\n"), read.stderr
        stalled = kd("exec", "flags", "-c", "import time; time.sleep(1)",
                     address=daemon.address)
        assert "execution stalled" in stalled.stderr
    finally:
        kd("destroy", "flags", address=daemon.address)
        shutil.rmtree(mount, ignore_errors=True)


def test_create_flags_only_narrow_and_errors_name_the_key(daemon: Daemon) -> None:
    wide = kd("create", "--memory", "8GiB", address=daemon.address)
    assert wide.returncode == 1 and "request:limits.memory: 8GiB exceeds" in wide.stderr
    net = kd("create", "--profile", "networked", "--allow-net", "example.org:443",
             address=daemon.address)
    assert net.returncode == 1 and "request:permissions.net" in net.stderr
    ok = kd("create", "--profile", "networked", "--allow-net", "pypi.org:443",
            "--cpus", "0.25", "--limit", "processes=32", address=daemon.address)
    assert ok.returncode == 0, ok.stderr
    kd("destroy", ok.stdout.strip(), address=daemon.address)
    missing = kd("create", "--mount", "/nonexistent-kerneld-dir", address=daemon.address)
    assert missing.returncode == 1 and "/nonexistent-kerneld-dir" in missing.stderr
    for bad in (("--mount", "a:b:c"), ("--limit", "memory"), ("--cpus", "many"),
                ("--inactivity-timeout", "-1"), ("--permission", "net=true",
                                                 "--allow-net", "x:1")):
        usage = kd("create", *bad, address=daemon.address)
        assert usage.returncode == 2 and "Traceback" not in usage.stderr, (bad, usage.stderr)
    assert json.loads(kd("ls", "--json", address=daemon.address).stdout) == []


CONFINED = f"""
[daemon]
shutdown_grace = 1

[runtime]
preload = []

[kernels]
mount_roots = ["{MOUNT_ROOT}"]
"""


@pytest.mark.sandbox
@pytest.mark.skipif(sandbox_missing(mount=True) is not None,
                    reason=str(sandbox_missing(mount=True)))
def test_create_flags_in_a_confined_kernel() -> None:
    """With confinement, --mount is a real read-only bind mount and the limits are set."""
    d = Daemon(CONFINED)
    mount = tempfile.mkdtemp(dir=MOUNT_ROOT)
    Path(mount, "host.txt").write_text("from the host")
    try:
        d.wait_ready()
        kid = kd("create", "--mount", f"{mount}:/data:ro", "--limit", "cpu_seconds=30",
                 "--limit", "open_files=100", address=d.address)
        assert kid.returncode == 0, kid.stderr
        code = ("import os, resource\nprint(os.getcwd(), open('host.txt').read())\n"
                "print(resource.getrlimit(resource.RLIMIT_CPU)[0], "
                "resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
                "try:\n    open('new.txt', 'w')\nexcept OSError as e:\n    print('refused')")
        out = kd("exec", kid.stdout.strip(), "-c", code, address=d.address)
        assert out.stdout == "/data from the host\n30 100\nrefused\n", out.stderr
        assert not Path(mount, "new.txt").exists()
    finally:
        d.close()
        shutil.rmtree(mount, ignore_errors=True)


# ====================================================================== item 5: profile paths


def test_a_refused_profile_path_says_how_to_allow_it(daemon: Daemon) -> None:
    refused = kd("create", "--profile", "./mine.toml", address=daemon.address)
    assert refused.returncode == 1
    assert "allow_profile_paths = true under [kernels]" in refused.stderr
    assert "KERNELD_KERNELS_ALLOW_PROFILE_PATHS=true" in refused.stderr
    assert refused.stderr.count("\n") == 1


def test_a_profile_path_is_the_callers_when_the_daemon_allows_paths(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text(RST)
    d = Daemon(DEV_CONFIG.replace("[kernels]", "[kernels]\nallow_profile_paths = true"))
    try:
        d.wait_ready()
        made = kd("create", "--profile", "mine.toml", address=d.address, cwd=str(tmp_path))
        assert made.returncode == 0, made.stderr  # relative to the caller, not the daemon
        listed = json.loads(kd("ls", "--json", address=d.address).stdout)
        assert [k["profile"] for k in listed] == ["mine"]
    finally:
        d.close()


def test_the_docs_say_where_profile_paths_work() -> None:
    for doc in ("docs/api.md", "docs/profiles.md", "docs/cli.md"):
        assert "allow_profile_paths" in (ROOT / doc).read_text(), doc


# ====================================================================== item 6: profile check


def test_profile_check_asks_the_daemon(daemon: Daemon, profiles_dir: Path) -> None:
    report = kd("profile", "check", "rst", "--address", daemon.address)
    assert report.returncode == 0, report.stderr
    assert report.stdout.startswith(f"profile: rst ({profiles_dir}/rst.toml)")
    assert "restructured text work" in report.stdout and "memory=384MiB" in report.stdout
    assert f"checked by: the daemon at {daemon.address}" in report.stdout
    assert "NOT confined" in report.stdout  # the dev daemon says so
    missing = kd("profile", "check", "nope", address=daemon.address)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_profile_check_without_a_daemon_reads_the_local_config() -> None:
    nowhere = "ipc:///tmp/kerneld-nowhere/kerneld.sock"
    local = kd("profile", "check", "default", address=nowhere)
    assert local.returncode == 0, local.stderr
    assert "checked by: this process" in local.stdout
    assert "checking the local configuration instead" in local.stderr
    rst = kd("profile", "check", "rst", address=nowhere)
    assert rst.returncode == 1 and "not found" in rst.stderr


# ====================================================================== item 12: ls


def test_ls_shows_the_profile_description(daemon: Daemon) -> None:
    kid = kd("create", "--profile", "rst", address=daemon.address).stdout.strip()
    try:
        table = kd("ls", address=daemon.address).stdout.splitlines()
        assert table[0].split()[-1] == "DESCRIPTION"
        assert table[1].endswith("restructured text work: no network"), table
        [entry] = json.loads(kd("ls", "--json", address=daemon.address).stdout)
        assert entry["profile_description"] == "restructured text work: no network"
    finally:
        kd("destroy", kid, address=daemon.address)


# ====================================================================== docs/cli.md


def _section(text: str, heading: str) -> str:
    assert f"\n## {heading}" in text, heading
    return text.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]


def test_docs_cli_md_covers_every_command_and_flag() -> None:
    """docs/cli.md has a section per command, with an example, naming each of its flags (the
    kernel options of `create` and `run` in their shared section)."""
    text = (ROOT / "docs" / "cli.md").read_text()
    assert "(docs/cli.md)" in (ROOT / "README.md").read_text()
    shared = _section(text, "Kernel options")
    parser = build_parser()

    def commands(p: argparse.ArgumentParser, prefix: str) -> Iterator[tuple[str, Any]]:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from commands(sub, f"{prefix} {name}")
                return
        yield prefix, p

    seen = []
    for name, sub in commands(parser, "kerneld"):
        seen.append(name)
        section = _section(text, f"`{name}")
        if "kernel options" in section:
            section += shared
        assert "```sh" in section, f"{name}: no example"
        for action in sub._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag not in ("--help", "--address", "--debug"):
                    assert f"`{flag}" in section, f"{name} {flag}"
    assert {"kerneld attach", "kerneld profile check", "kerneld create"} <= set(seen)
