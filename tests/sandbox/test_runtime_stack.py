"""After `apply`, the scientific stack a kernel needs still works: numpy (preloaded), threads,
IPython, pandas, matplotlib (imported lazily from the read-only runtime prefix) and pyzmq
(eventfd, epoll, AF_UNIX, its I/O thread) talking to a ROUTER on the host through a bind-mounted
ipc socket — the worker's real channel."""

from __future__ import annotations

import os
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import zmq
from _support import Driver, confined, result

pytestmark = [pytest.mark.sandbox, *confined]

CODE = textwrap.dedent("""
    import numpy as np
    a = np.arange(250000, dtype=float).reshape(500, 500)
    trace = float((a @ a.T).trace())
    box = []
    t = threading.Thread(target=lambda: box.append(np.linalg.norm(np.ones(9))))
    t.start(); t.join()

    import asyncio
    asyncio.run(asyncio.sleep(0.001))

    from IPython.core.interactiveshell import InteractiveShell
    shell = InteractiveShell.instance()
    cell = shell.run_cell("x = 6 * 7; x")

    import pandas as pd
    df = pd.DataFrame({"a": [1, 2, 3], "b": [4.0, 5.0, 6.0]})

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import io
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    png = io.BytesIO()
    fig.savefig(png, format="png")

    import zmq
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect("ipc:///run/kerneld-worker.sock")
    dealer.send(b"hello from the sandbox")
    reply = dealer.recv() if dealer.poll(5000) else None
    dealer.close(linger=0)
    ctx.term()

    result = {"trace": trace, "thread": box[0], "cell": cell.result,
              "df": int(df["a"].sum()), "png": png.getvalue()[:4].hex(),
              "reply": reply.decode() if reply else None,
              "threads_now": threading.active_count()}
""")


def test_scientific_stack_and_zmq_work_after_apply(driver: Driver, uid: int,
                                                   tmp_path: Path) -> None:
    sock_dir = tmp_path / "ipc"
    sock_dir.mkdir()
    sock = sock_dir / "worker.sock"
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"ipc://{sock}")
    os.chmod(sock, 0o666)  # the worker runs as another uid: connect needs write permission
    got: dict[str, Any] = {}

    def answer() -> None:
        if router.poll(60000):
            ident, msg = router.recv_multipart()
            got["msg"] = msg
            router.send_multipart([ident, b"hello from the host"])

    t = threading.Thread(target=answer)
    t.start()
    try:
        policy = {"uid": uid, "gid": uid, "limits": {"cpu_shares": None},
                  "bind_files": [[str(sock), "/run/kerneld-worker.sock"]],
                  "env": [["HOME", "/tmp"], ["MPLCONFIGDIR", "/tmp/mpl"],
                          ["IPYTHONDIR", "/tmp/ipython"]]}
        r = result(driver.run(policy, CODE, timeout=60))
    finally:
        t.join(timeout=65)
        router.close(linger=0)
        ctx.term()
    assert r["trace"] > 0 and r["thread"] == 3.0 and r["cell"] == 42 and r["df"] == 6
    assert r["png"] == "89504e47"
    assert got["msg"] == b"hello from the sandbox"
    assert r["reply"] == "hello from the host"
