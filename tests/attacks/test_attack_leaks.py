"""Attack class: LEAKS. The daemon's environment, other processes' command lines and
environments, the host's network state (/proc/net/*, /proc/<pid>/net), mount table, kernel
symbols, system information and another kernel's files and sockets are out of reach under the
default profile. Controls: `env`/`sys`/`read` grants, or root on the host."""

from __future__ import annotations

import os
import socket

import pytest
from _attack_support import HOST, Case, Err, Ok, ids, run_on_host, with_child
from conftest import SECRET_ENV, SECRET_VALUE

from kerneld.runtime.threads import THREAD_VARS

pytestmark = pytest.mark.asyncio(loop_scope="session")

# the thread counts of the CPU allowance (kerneld/runtime/threads.py) are set for every kernel
ALLOWED_ENV = {"PATH", "HOME", "LANG", "MPLBACKEND", "MPLCONFIGDIR", *THREAD_VARS}


def p(lab) -> dict:
    return {"mgr": os.getpid(), "zygote": lab.mgr.zygote.proc.pid, "secret": SECRET_VALUE,
            "env": SECRET_ENV, "root": lab.t.root, "read_dir": lab.t.read_dir,
            "unix": lab.t.unix_path}


SCAN_FOR_SECRET = """
hits = [k for k, v in os.environ.items() if P['secret'] in v]
for pid in [d for d in os.listdir('/proc') if d.isdigit()] + ['self', 'thread-self']:
    for name in ('environ', 'cmdline', 'status', 'stat', 'maps', 'mountinfo', 'limits'):
        try:
            data = open(f'/proc/{pid}/{name}', 'rb').read()
        except OSError:
            continue
        if P['secret'].encode() in data:
            hits.append(f'/proc/{pid}/{name}')
return hits
"""

CASES = [
    Case("daemon-env-in-os-environ", "return dict(os.environ)",
         Ok(pred=lambda v: set(v) <= ALLOWED_ENV and SECRET_ENV not in v,
            desc="only PATH/HOME/LANG and the matplotlib defaults"),
         "ctl-env", Ok(pred=lambda v: v.get(SECRET_ENV) == SECRET_VALUE,
                       desc="the granted variable passes")),
    Case("daemon-secret-anywhere-in-proc", SCAN_FOR_SECRET, Ok(value=[]), "ctl-env",
         Ok(pred=lambda v: SECRET_ENV in v, desc="found where it was granted"), params=p),
    Case("proc-self-environ", "return open('/proc/self/environ', 'rb').read().decode()",
         Err("EACCES", "PermissionError"), HOST, Ok(pred=lambda v: "PATH=" in v)),
    Case("proc-1-environ", "return open('/proc/1/environ', 'rb').read().decode()",
         Err("EACCES", "PermissionError"), HOST, Ok(pred=lambda v: "PATH=" in v),
         control_body=with_child("open(f'/proc/{child}/environ', 'rb').read().decode()")),
    Case("proc-1-cmdline", "return open('/proc/1/cmdline', 'rb').read().decode()",
         Err("EACCES", "PermissionError"), HOST, Ok(pred=lambda v: "python" in v),
         control_body=with_child("open(f'/proc/{child}/cmdline', 'rb').read().decode()")),
    Case("proc-1-mountinfo-host-mount-table", "return open('/proc/1/mountinfo').read()",
         Err("EACCES", "PermissionError"), HOST, Ok(pred=lambda v: " / / " in v),
         control_body=with_child("open(f'/proc/{child}/mountinfo').read()")),
    Case("proc-1-net-tcp-host-connections", "return open('/proc/1/net/tcp').read()",
         Err("EACCES", "PermissionError"), HOST, Ok(pred=lambda v: "0100007F" in v),
         control_body=with_child("open(f'/proc/{child}/net/tcp').read()")),
    Case("proc-1-net-unix-host-sockets", "return open('/proc/1/net/unix').read()",
         Err("EACCES", "PermissionError"), HOST, Ok(pred=lambda v: "host.sock" in v),
         control_body=with_child("open(f'/proc/{child}/net/unix').read()")),
    Case("manager-cmdline", "return open(f\"/proc/{P['mgr']}/cmdline\", 'rb').read().decode()",
         Err("ENOENT", "FileNotFoundError"), HOST, Ok(pred=lambda v: "python" in v), params=p),
    Case("zygote-environ", "return open(f\"/proc/{P['zygote']}/environ\", 'rb').read().decode()",
         Err("ENOENT", "FileNotFoundError"), HOST, Ok(pred=lambda v: "PATH=" in v), params=p),
    Case("process-listing", "return sorted(int(d) for d in os.listdir('/proc') if d.isdigit())",
         Ok(pred=lambda v: set(v) <= {1, 2} | set(range(3, 64)) and 2 in v,
            desc="only the kernel's own small pids"),
         HOST, Ok(pred=lambda v: len(v) > 20)),
    Case("proc-net-tcp", "return open('/proc/net/tcp').read()",
         Err("ENOENT", "FileNotFoundError"), HOST, Ok(pred=lambda v: "local_address" in v)),
    Case("proc-net-unix", "return open('/proc/net/unix').read()",
         Err("ENOENT", "FileNotFoundError"), HOST, Ok(pred=lambda v: "host.sock" in v)),
    Case("proc-net-route", "return open('/proc/net/route').read()",
         Err("ENOENT", "FileNotFoundError"), HOST, Ok(pred=lambda v: "Iface" in v)),
    Case("kallsyms", "return open('/proc/kallsyms').read(64)",
         Err("ENOENT", "FileNotFoundError"), HOST, Ok(pred=lambda v: len(v) == 64)),
    Case("proc-partitions", "return open('/proc/partitions').read()",
         Err("ENOENT", "FileNotFoundError"), HOST, Ok(pred=lambda v: "vda" in v)),
    Case("kernel-osrelease", "return open('/proc/sys/kernel/osrelease').read()",
         Err("ENOENT", "FileNotFoundError"), "ctl-sys", Ok(value=os.uname().release + "\n")),
    Case("meminfo", "return open('/proc/meminfo').read()",
         Err("ENOENT", "FileNotFoundError"), "ctl-sys", Ok(pred=lambda v: "MemTotal" in v)),
    Case("cpuinfo", "return open('/proc/cpuinfo').read()",
         Err("ENOENT", "FileNotFoundError"), "ctl-sys", Ok(pred=lambda v: "processor" in v)),
    Case("uptime-file", "return open('/proc/uptime').read()",
         Err("ENOENT", "FileNotFoundError"), "ctl-sys", Ok(pred=lambda v: "." in v)),
    Case("loadavg-file", "return open('/proc/loadavg').read()",
         Err("ENOENT", "FileNotFoundError"), "ctl-sys", Ok(pred=lambda v: "/" in v)),
    Case("sysfs-cpu-topology", "return sorted(os.listdir('/sys/devices/system/cpu'))",
         Err("ENOENT", "FileNotFoundError"), "ctl-sys", Ok(pred=lambda v: "cpu0" in v)),
    Case("sysfs-network-interfaces", "return sorted(os.listdir('/sys/class/net'))",
         Err("ENOENT", "FileNotFoundError"), "trusted", Ok(pred=lambda v: "lo" in v)),
    Case("host-hostname", "return socket.gethostname()", Ok(value="kernel"), "ctl-sys",
         Ok(value=socket.gethostname())),
    Case("network-interfaces", "return [n for _, n in socket.if_nameindex()]",
         Err("EPERM", "PermissionError"), HOST,  # netlink: no profile grants it
         Ok(pred=lambda v: "lo" in v and len(v) >= 2, desc="the host's interfaces")),
    Case("mount-table-names-no-host-paths", "return open('/proc/self/mountinfo').read()",
         Ok(pred=lambda v: P_ROOT_MARK not in v), "ctl-read",
         Ok(pred=lambda v: P_ROOT_MARK in v, desc="a granted host dir shows its path")),
]

P_ROOT_MARK = "kerneld-attack-"  # the host targets' directory prefix (tempfile.mkdtemp)


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
async def test_leak_attack(lab, case: Case) -> None:
    await case.run(lab)


async def test_another_kernels_files_and_sockets_are_invisible(lab) -> None:
    """Kernel A leaves a file in /tmp and /dev/shm and listens on an abstract UNIX socket;
    kernel B (same profile) finds none of them. Control: A sees its own."""
    a = await lab.fresh()
    b = await lab.fresh()
    try:
        setup = """
        open('/tmp/a-secret', 'w').write('from A')
        open('/dev/shm/a-shm', 'w').write('from A')
        s = socket.socket(socket.AF_UNIX); s.bind('\\0kerneld-kernel-a'); s.listen()
        globals()['_a_listener'] = s
        return 1
        """
        Ok(value=1).check(await lab.execute(a, setup), "kernel A sets up")
        look = """
        out = []
        for path in ('/tmp/a-secret', '/dev/shm/a-shm'):
            try:
                out.append(open(path).read())
            except OSError as e:
                out.append(errno.errorcode[e.errno])
        c = socket.socket(socket.AF_UNIX)
        try:
            c.connect('\\0kerneld-kernel-a'); out.append('connected')
        except OSError as e:
            out.append(errno.errorcode[e.errno])
        return out
        """
        Ok(value=["ENOENT", "ENOENT", "ECONNREFUSED"]).check(await lab.execute(b, look),
                                                              "kernel B looks for A's traces")
        Ok(value=["from A", "from A", "connected"]).check(await lab.execute(a, look),
                                                           "control: A sees its own")
    finally:
        await lab.mgr.destroy_kernel(a)
        await lab.mgr.destroy_kernel(b)


async def test_host_abstract_socket_refused_even_on_the_host_network(lab) -> None:
    """Even a kernel on the host's network (`trusted`, net = true) cannot reach the host's
    abstract UNIX sockets: Landlock's abstract-socket scope. Control: root on the host can."""
    params = {"abstract": lab.t.abstract_name}
    body = "s = socket.socket(socket.AF_UNIX); s.connect(P['abstract']); s.close(); return 1"
    Err("EPERM", "PermissionError").check(await lab.run("trusted", body, params),
                                          "trusted kernel → host abstract socket")
    Ok(value=1).check(await run_on_host(body, params), "control: host process")


MEMORY_SCAN = r"""
import re
pat = re.compile(rb"zz-kerneld-leak-{tag}-(\d+)-end")
found = set()
for line in open('/proc/self/maps'):
    parts = line.split()
    if 'r' not in parts[1] or (len(parts) > 5 and (parts[5].startswith('[v') or
                                                    parts[5].startswith('/'))):
        continue                                   # anonymous memory only: heap, arenas
    lo, hi = (int(x, 16) for x in parts[0].split('-'))
    found.update(int(m.group(1)) for m in pat.finditer(ctypes.string_at(lo, hi - lo)))
return sorted(found)
"""


async def test_other_kernels_secrets_are_not_in_a_new_kernels_memory(lab) -> None:
    """Every worker is a fork of the zygote, so it starts with a copy of the zygote's memory.
    Secrets the zygote handled for *other* kernels (the caller's `env`, e.g. API keys; their
    hub tokens) must not be in it: user code can read its own memory (ctypes). Four kernels
    get an env secret each, then a fifth scans its own anonymous memory for any of them.
    Control: each of the four finds its own (it is in its os.environ)."""
    tag = os.urandom(4).hex()
    owners = [await lab.fresh(env={"API_KEY": f"zz-kerneld-leak-{tag}-{i}-end"})
              for i in range(4)]
    victim_free = await lab.fresh()
    try:
        body = MEMORY_SCAN.replace("{tag}", tag)
        out = await lab.execute(owners[2], body)
        Ok(pred=lambda v: 2 in v, desc="a kernel finds its own secret").check(out, "control")
        out = await lab.execute(victim_free, body)
        Ok(value=[], desc="no other kernel's secret").check(out, "a new kernel scans its memory")
    finally:
        for kid in owners + [victim_free]:
            await lab.mgr.destroy_kernel(kid)
