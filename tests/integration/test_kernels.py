"""Worker kernels end to end: real zygote, real confined workers, real ZeroMQ (issue 2)."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import time

import psutil
import pytest

from kerneld import (
    InvalidArgument,
    KernelEvents,
    KernelManager,
    KernelMode,
    KernelNotFound,
    LimitExceeded,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


def texts(result, name="stdout"):
    return "".join(e.data["text"] for e in result.outputs
                   if e.type == "stream" and e.data["name"] == name)


async def test_state_persists_and_count_increments(manager: KernelManager):
    kid = await manager.create_kernel()
    r1 = await manager.execute(kid, "x = 41")
    r2 = await manager.execute(kid, "x + 1")
    assert (r1.status, r1.execution_count) == ("ok", 1)
    assert r2.execution_count == 2
    assert r2.result["data"]["text/plain"] == "42"
    assert [e.type for e in r2.outputs] == ["execute_result"]
    assert r2.success and r2.error is None and r2.started <= r2.finished
    await manager.destroy_kernel(kid)


async def test_streams_stdout_stderr_and_loops(manager: KernelManager):
    kid = await manager.create_kernel()
    r = await manager.execute(kid, "import sys\nprint('hello')\nfor i in range(10): print(i)\n"
                                   "print('oops', file=sys.stderr)")
    assert texts(r) == "hello\n" + "".join(f"{i}\n" for i in range(10))
    assert texts(r, "stderr") == "oops\n"
    assert all(e.kernel_id == kid and e.execution_id == r.execution_id for e in r.outputs)
    await manager.destroy_kernel(kid)


async def test_fd_level_writes_are_captured_in_order(manager: KernelManager):
    kid = await manager.create_kernel()
    r = await manager.execute(kid, "import os\nprint('a')\nos.write(1, b'raw\\n')\nprint('c')\n"
                                   "os.write(2, b'\\xff\\xfebad utf8\\n')")
    assert texts(r) == "a\nraw\nc\n"
    assert texts(r, "stderr") == "\ufffd\ufffdbad utf8\n"
    await manager.destroy_kernel(kid)


async def test_subprocess_output_under_a_profile_that_allows_run(manager: KernelManager):
    kid = await manager.create_kernel(profile="runner")
    r = await manager.execute(kid, "import subprocess\n_ = subprocess.run(['/usr/bin/echo', 'sub'])")
    assert r.status == "ok", r.error
    assert texts(r) == "sub\n"
    # sys.stdout is block-buffered: what it holds is written before a child's output
    r = await manager.execute(kid, "import os, subprocess\nprint('before', end=' ')\n"
                                   "_ = subprocess.run(['/usr/bin/echo', 'child'])\n"
                                   "print('mid')\nos.system('/usr/bin/echo sys')\n"
                                   "print('a', end=' ')\n"
                                   "os.waitpid(os.posix_spawn('/usr/bin/echo', ['echo', 'spawn'],"
                                   " os.environ), 0)\n"
                                   "print('b', end=' ')\npid = os.fork()\n"
                                   "if pid == 0:\n    os.write(1, b'forked\\n'); os._exit(0)\n"
                                   "os.waitpid(pid, 0)\nprint('end')")
    assert r.status == "ok", r.error
    assert texts(r) == "before child\nmid\nsys\na spawn\nb forked\nend\n"
    await manager.destroy_kernel(kid)


async def test_buffered_stdout_keeps_its_order_with_fd_writes(manager: KernelManager):
    kid = await manager.create_kernel()
    r = await manager.execute(kid, "import os, sys\nprint('o1', end='')\nos.write(1, b'|f1|')\n"
                                   "print('e1', file=sys.stderr)\nprint('o2')\n"
                                   "os.write(2, b'e2\\n')\nsys.stdout.write('o3')\n"
                                   "os.write(1, b'|f2')")
    assert texts(r) == "o1|f1|o2\no3|f2"
    assert texts(r, "stderr") == "e1\ne2\n"
    await manager.destroy_kernel(kid)


FORK_WHILE_CHATTY = r"""
import os, sys, threading, time
stop = False
def chatter():
    while not stop:
        sys.stdout.write("x" * 4000)
        time.sleep(0.002)    # ~2 MB/s: well under the default 8 MiB output cap
t = threading.Thread(target=chatter, daemon=True)
t.start()
time.sleep(0.05)
hung = 0
for i in range(200):
    pid = os.fork()
    if pid == 0:
        if os.fork() == 0:   # a fork in the child flushes its streams first
            os._exit(0)
        os._exit(0)
    deadline = time.monotonic() + 2
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            hung += 1
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            break
        time.sleep(0.0002)
stop = True
t.join()
sys.stdout.write("P")        # buffered in the parent when the child is forked
pid = os.fork()
if pid == 0:
    print("child", flush=True)
    os._exit(0)
os.waitpid(pid, 0)
sys.stdout.flush()
hung
"""


async def test_forked_children_get_streams_of_their_own(manager: KernelManager):
    """A child forked while another thread writes to stdout would inherit that thread's lock
    on the stream (and the parent's buffered text): it gets fresh streams, so it can flush,
    fork and print, and nothing is printed twice."""
    kid = await manager.create_kernel()
    r = await manager.execute(kid, FORK_WHILE_CHATTY)
    assert r.status == "ok", r.error
    assert r.result["data"]["text/plain"] == "0", "children hung on an inherited stream lock"
    out = texts(r).replace("x", "")
    assert out.count("P") == 1 and out.count("child\n") == 1, out
    await manager.destroy_kernel(kid)


async def test_multiprocess_pool_workers_print_and_return(manager: KernelManager):
    """The runtime's `multiprocess` (parallelism for notebook code) forks pool workers from
    the kernel: their results come back and what they print is captured, once."""
    kid = await manager.create_kernel()
    r = await manager.execute(kid, "import multiprocess as mp\n"
                                   "def square(x):\n    print('worker', x, flush=True)\n"
                                   "    return x * x\n"
                                   "print('before', end='')\n"
                                   "with mp.get_context('fork').Pool(2) as pool:\n"
                                   "    out = pool.map(square, range(4))\n"
                                   "out")
    assert r.status == "ok", r.error
    assert r.result["data"]["text/plain"] == "[0, 1, 4, 9]"
    lines = texts(r).replace("before", "").split()
    assert texts(r).count("before") == 1
    assert sorted(lines) == ["0", "1", "2", "3"] + ["worker"] * 4, texts(r)
    await manager.destroy_kernel(kid)


async def test_a_partial_line_arrives_while_the_cell_still_runs(manager: KernelManager):
    kid = await manager.create_kernel()
    seen: list[float] = []
    start = time.monotonic()
    async for ev in manager.execute_stream(kid, "import time\nprint('tick', end='')\n"
                                                "time.sleep(1.0)\nprint('tock')"):
        if ev.type == "stream":
            seen.append(time.monotonic() - start)
    assert len(seen) == 2, seen
    assert seen[0] < 0.5 and seen[1] >= 1.0, seen  # flushed within ~40 ms, not at the end
    await manager.destroy_kernel(kid)


async def test_rich_outputs(manager: KernelManager):
    kid = await manager.create_kernel()
    r = await manager.execute(kid, "from IPython.display import HTML, Markdown, display\n"
                                   "display(HTML('<b>hi</b>'))\ndisplay(Markdown('*m*'))")
    assert [e.type for e in r.outputs] == ["display_data", "display_data"]
    assert r.outputs[0].data["data"]["text/html"] == "<b>hi</b>"
    assert r.outputs[1].data["data"]["text/markdown"] == "*m*"

    r = await manager.execute(kid, "h = display('one', display_id=True)\nh.update('two')\n"
                                   "from IPython.display import clear_output\nclear_output(wait=True)")
    kinds = [e.type for e in r.outputs]
    assert kinds == ["display_data", "update_display_data", "clear_output"]
    display_id = r.outputs[0].data["transient"]["display_id"]
    assert r.outputs[1].data["transient"]["display_id"] == display_id
    assert r.outputs[2].data == {"wait": True}

    r = await manager.execute(kid, "class R:\n  def _repr_html_(self): return '<i>r</i>'\n"
                                   "  def _repr_json_(self): return {'a': 1}\nR()")
    assert r.result["data"]["text/html"] == "<i>r</i>"
    assert r.result["data"]["application/json"] == {"a": 1}
    await manager.destroy_kernel(kid)


async def test_matplotlib_figure_is_png_display_data(manager: KernelManager):
    kid = await manager.create_kernel()
    r = await manager.execute(kid, "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\n"
                                   "plt.show()")
    assert r.status == "ok", r.error
    pngs = [e for e in r.outputs if e.type == "display_data" and "image/png" in e.data["data"]]
    assert len(pngs) == 1
    assert base64.b64decode(pngs[0].data["data"]["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    await manager.destroy_kernel(kid)


async def test_errors_are_execute_error_events(manager: KernelManager):
    kid = await manager.create_kernel()
    r = await manager.execute(kid, "1/0")
    assert r.status == "error" and not r.success
    assert r.error["ename"] == "ZeroDivisionError"
    assert r.error["evalue"] == "division by zero"
    assert any("ZeroDivisionError" in line for line in r.error["traceback"])
    assert not any("\x1b[" in line for line in r.error["traceback"])
    assert [e.type for e in r.outputs] == ["execute_error"]

    r = await manager.execute(kid, "def f(:\n  pass")
    assert r.status == "error" and r.error["ename"] == "SyntaxError"
    await manager.destroy_kernel(kid)


async def test_top_level_await_and_magics(manager: KernelManager):
    kid = await manager.create_kernel()
    r = await manager.execute(kid, "import asyncio\nawait asyncio.sleep(0.01)\n'awaited'")
    assert r.result["data"]["text/plain"] == "'awaited'"
    r = await manager.execute(kid, "%%capture cap\nprint('hidden')")
    assert texts(r) == ""
    r = await manager.execute(kid, "cap.stdout")
    assert r.result["data"]["text/plain"] == "'hidden\\n'"
    await manager.destroy_kernel(kid)


async def test_ids_namespaces_and_listing(manager: KernelManager):
    kid = await manager.create_kernel(id="alpha", namespace="team1")
    assert kid == "team1:alpha"
    with pytest.raises(InvalidArgument, match="already exists"):
        await manager.create_kernel(id="alpha", namespace="team1")
    for bad in ("", "a:b", "x" * 129, "sp ace", "ü"):
        with pytest.raises(InvalidArgument):
            await manager.create_kernel(id=bad)
    other = await manager.create_kernel()
    assert len(other) == 36  # a UUID4
    (info,) = manager.list_kernels("team1")
    assert set(info) == {"id", "namespace", "mode", "profile", "profile_description", "status",
                         "created", "pid", "execution_count", "memory_bytes"}
    assert info["id"] == kid and info["namespace"] == "team1" and info["mode"] == "worker"
    assert info["status"] == "idle" and info["profile"] == "default"
    assert info["created"].endswith("+00:00") and info["memory_bytes"] > 0
    assert kid in manager.get_kernel_ids() and other in manager.get_kernel_ids()
    assert await manager.destroy_all("team1") == 1
    assert manager.list_kernels("team1") == [] and other in manager.get_kernel_ids()
    with pytest.raises(KernelNotFound):
        await manager.execute(kid, "1")
    with pytest.raises(KernelNotFound):
        manager.get_kernel(kid)
    assert manager.ping_kernel(kid) is False and manager.interrupt_kernel(kid) is False
    assert await manager.restart_kernel(kid) is False
    await manager.destroy_kernel(other)


async def test_env_with_special_characters(manager: KernelManager):
    env = {"GREETING": "héllo wörld", "QUOTES": "it's \"quoted\" $HOME `x`", "EMPTY": ""}
    kid = await manager.create_kernel(env=env)
    r = await manager.execute(kid, "import os\n{k: os.environ.get(k) for k in "
                                   "('GREETING', 'QUOTES', 'EMPTY', 'KERNELD_SECRET_TEST')}")
    assert eval(r.result["data"]["text/plain"]) == {**env, "KERNELD_SECRET_TEST": None}
    with pytest.raises(InvalidArgument):
        await manager.create_kernel(env={"A=B": "x"})
    await manager.destroy_kernel(kid)


async def test_listeners_receive_events(manager: KernelManager):
    kid = await manager.create_kernel()
    seen, everything = [], []
    manager.on_kernel_event(kid, KernelEvents.STREAM, seen.append)
    manager.on_kernel_event(kid, KernelEvents.ALL, everything.append)
    await manager.execute(kid, "print('x')\n1")
    assert [e.data["text"] for e in seen] == ["x\n"]
    assert [e.type for e in everything] == ["stream", "execute_result"]
    manager.off_kernel_event(kid, KernelEvents.STREAM, seen.append)
    await manager.execute(kid, "print('y')")
    assert len(seen) == 1 and len(everything) == 3
    await manager.destroy_kernel(kid)


async def test_input_round_trip_and_stdin_refused_by_default(manager: KernelManager):
    kid = await manager.create_kernel()
    stream = manager.execute_stream(kid, "name = input('who? ')\nprint('hi', name)",
                                    allow_stdin=True)
    events = []
    async for event in stream:
        events.append(event)
        if event.type == "input_request":
            assert event.data == {"prompt": "who? ", "password": False}
            assert manager.input_reply(kid, "ada")
    assert stream.result.status == "ok"
    assert "hi ada\n" in "".join(e.data.get("text", "") for e in events)
    r = await manager.execute(kid, "input()")
    assert r.error["ename"] == "StdinNotImplementedError"
    await manager.destroy_kernel(kid)


async def test_concurrent_executions_queue_without_interleaving(manager: KernelManager):
    kid = await manager.create_kernel()
    code = "import time\nfor i in range(5):\n    print('{tag}', i)\n    time.sleep(0.01)"
    results = await asyncio.gather(*(manager.execute(kid, code.format(tag=t)) for t in "ABC"))
    for tag, r in zip("ABC", results):
        assert texts(r) == "".join(f"{tag} {i}\n" for i in range(5))
    counts = [r.execution_count for r in results]
    assert counts == sorted(counts) and len(set(counts)) == 3
    assert results[0].finished <= results[1].started
    await manager.destroy_kernel(kid)


async def test_stream_events_arrive_while_running(manager: KernelManager):
    kid = await manager.create_kernel()
    start = time.monotonic()
    arrivals = []
    async for event in manager.execute_stream(kid, "import time\nprint('early', flush=False)\n"
                                                   "time.sleep(0.5)\nprint('late')"):
        if event.type == "stream":
            arrivals.append((event.data["text"], time.monotonic() - start))
    assert arrivals[0][0] == "early\n"
    assert arrivals[0][1] < 0.3  # streamed long before the cell ends
    await manager.destroy_kernel(kid)


async def test_worker_is_a_child_of_the_zygote(manager: KernelManager):
    kid = await manager.create_kernel()
    (info,) = [k for k in manager.list_kernels() if k["id"] == kid]
    assert info["pid"] != os.getpid()
    worker = psutil.Process(info["pid"])
    assert worker.ppid() == manager.zygote.proc.pid
    assert psutil.Process(worker.ppid()).ppid() == os.getpid()
    await manager.destroy_kernel(kid)
    assert not psutil.pid_exists(info["pid"]) or psutil.Process(info["pid"]).status() == "zombie"


async def test_killed_worker_ends_executions_with_kernel_died(manager: KernelManager):
    kid = await manager.create_kernel()
    other = await manager.create_kernel()
    died = []
    manager.on_kernel_event(kid, KernelEvents.KERNEL_DIED, died.append)
    running = asyncio.ensure_future(manager.execute(kid, "import time\ntime.sleep(30)"))
    queued = asyncio.ensure_future(manager.execute(kid, "1"))
    await asyncio.sleep(0.3)
    pid = manager.list_kernels()[[k["id"] for k in manager.list_kernels()].index(kid)]["pid"]
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    r = await running
    assert time.monotonic() - killed_at < 0.2
    assert r.status == "error" and r.error["ename"] == "KernelDied"
    assert "SIGKILL" in r.error["evalue"]
    q = await queued
    assert q.error["ename"] == "KernelDied"
    assert died and died[0].data["signal"] == signal.SIGKILL
    assert [k["status"] for k in manager.list_kernels() if k["id"] == kid] == ["dead"]
    assert (await manager.execute(other, "2")).result["data"]["text/plain"] == "2"
    await manager.destroy_kernel(kid)
    await manager.destroy_kernel(other)


@pytest.mark.parametrize("crash", [
    "import ctypes\nctypes.string_at(0)",
    "import os\nos._exit(3)",
])
async def test_crashing_worker_is_reported(manager: KernelManager, crash: str):
    kid = await manager.create_kernel()
    r = await manager.execute(kid, crash)
    assert r.error["ename"] == "KernelDied"
    assert ("SIGSEGV" in r.error["evalue"]) or ("code 3" in r.error["evalue"])
    await manager.destroy_kernel(kid)


async def test_output_cap_truncates_with_one_notice(manager: KernelManager):
    kid = await manager.create_kernel(limits={"output": "64KiB"})
    r = await manager.execute(kid, "import sys\nfor _ in range(100): sys.stdout.write('x' * 4096)")
    assert len(texts(r)) <= 64 * 1024
    assert texts(r, "stderr").count("output truncated") == 1
    r = await manager.execute(kid, "print('next execution is not truncated')")
    assert texts(r) == "next execution is not truncated\n"
    await manager.destroy_kernel(kid)


async def test_code_size_limit(manager: KernelManager):
    kid = await manager.create_kernel()
    with pytest.raises(LimitExceeded, match="bytes"):
        await manager.execute(kid, "#" * (2 * 1024 * 1024))
    await manager.destroy_kernel(kid)


async def test_complete_inspect_is_complete(manager: KernelManager):
    kid = await manager.create_kernel()
    await manager.execute(kid, "my_variable = 1")
    c = await manager.complete(kid, "my_var")
    assert "my_variable" in c["matches"] and c["cursor_end"] == 6
    i = await manager.inspect(kid, "len", 3)
    assert i["found"] and "text/plain" in i["data"]
    assert (await manager.is_complete(kid, "for x in y:"))["status"] == "incomplete"
    assert (await manager.is_complete(kid, "x = 1"))["status"] == "complete"
    await manager.destroy_kernel(kid)


async def test_in_process_mode(manager: KernelManager):
    kid = await manager.create_kernel(mode=KernelMode.IN_PROCESS, env={"INPROC": "yes"})
    r = await manager.execute(kid, "import os, threading\nprint('in', os.environ['INPROC'])\n"
                                   "os.getpid()")
    assert texts(r) == "in yes\n"
    assert r.result["data"]["text/plain"] == str(os.getpid())
    r = await manager.execute(kid, "from IPython.display import HTML\nHTML('<p>x</p>')")
    assert r.result["data"]["text/html"] == "<p>x</p>"
    assert "INPROC" not in os.environ
    task = asyncio.ensure_future(manager.execute(kid, "while True: pass"))
    await asyncio.sleep(0.2)
    assert manager.interrupt_kernel(kid)
    r = await asyncio.wait_for(task, 2)
    assert r.error["ename"] == "KeyboardInterrupt"
    assert (await manager.execute(kid, "1+1")).result["data"]["text/plain"] == "2"
    await manager.destroy_kernel(kid)
