"""Filesystem mounting end to end (SPEC: `filesystem`): a real `KernelManager` with the default
config (confined workers, a unique unprivileged uid per kernel) mounts a host directory that
belongs to the requesting user (root here, mode 0700) at /home/kernel. The kernel reads and
writes it as its working directory, and what it writes is on the host owned by the directory's
owner (the mount is idmapped: see sandbox/mounts.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

import sandbox
from kerneld import KernelManager, SandboxUnavailable
from kerneld.config import ManagerConfig
from sandbox import _syscalls as sc

RUNTIME = ManagerConfig().runtime_python
FEATURES = sandbox.probe()

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (confined kernels, idmapped mounts)"),
    pytest.mark.skipif(not os.access(RUNTIME, os.X_OK), reason=f"no worker runtime at {RUNTIME}"),
    pytest.mark.skipif(
        bool(sandbox.check(sandbox.Policy(uid=64000, gid=64000,
                                          mounts=(sandbox.Mount("/x", "/home/kernel"),)),
                           FEATURES)),
        reason="host cannot enforce the default policy with a filesystem mount"),
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def manager() -> AsyncIterator[KernelManager]:
    async with KernelManager() as mgr:
        yield mgr


@pytest.fixture
def host_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="kd-fs-"))  # root:root, mode 0700
    (d / "host.txt").write_text("from the host")
    (d / "host.txt").chmod(0o600)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def value(manager: KernelManager, kid: str, code: str) -> str:
    r = await manager.execute(kid, code)
    assert r.status == "ok", r.error
    return str(r.result["data"]["text/plain"]) if r.result else ""


async def test_root_owned_dir_is_the_working_directory_and_files_land_as_root(
        manager: KernelManager, host_dir: Path) -> None:
    owner = host_dir.stat()
    assert (owner.st_uid, owner.st_gid, owner.st_mode & 0o777) == (0, 0, 0o700)
    kid = await manager.create_kernel(filesystem={"enabled": True, "root": str(host_dir),
                                                  "mount_point": "/home/kernel"})
    try:
        assert await value(manager, kid, "import os; os.getcwd()") == "'/home/kernel'"
        assert int(await value(manager, kid, "os.getuid()")) >= 200000  # unprivileged kernel
        assert await value(manager, kid, "open('host.txt').read()") == "'from the host'"
        assert await value(manager, kid, "open('out.txt','w').write('x')") == "1"
        assert await value(manager, kid, "os.makedirs('a/b'); open('a/b/c','w').write('yz')") \
            == "2"
    finally:
        await manager.destroy_kernel(kid)
    for rel, content in (("out.txt", "x"), ("a/b/c", "yz")):
        assert (host_dir / rel).read_text() == content
    for p in ("out.txt", "a", "a/b", "a/b/c"):
        st = (host_dir / p).lstat()
        assert (st.st_uid, st.st_gid) == (owner.st_uid, owner.st_gid), p


async def test_dir_of_another_user_gets_files_owned_by_that_user(
        manager: KernelManager, host_dir: Path) -> None:
    os.chown(host_dir / "host.txt", 1234, 1234)
    os.chown(host_dir, 1234, 1234)
    kid = await manager.create_kernel(filesystem={"root": str(host_dir)})
    try:
        assert await value(manager, kid, "open('host.txt').read()") == "'from the host'"
        await value(manager, kid, "open('out.txt','w').write('x')")
    finally:
        await manager.destroy_kernel(kid)
    st = (host_dir / "out.txt").stat()
    assert (st.st_uid, st.st_gid) == (1234, 1234)


async def test_read_only_mount(manager: KernelManager, host_dir: Path) -> None:
    kid = await manager.create_kernel(filesystem={"root": str(host_dir), "read_only": True})
    try:
        assert await value(manager, kid, "open('host.txt').read()") == "'from the host'"
        r = await manager.execute(kid, "open('out.txt','w')")
        assert r.status == "error" and "Read-only file system" in str(r.error)
    finally:
        await manager.destroy_kernel(kid)
    assert sorted(p.name for p in host_dir.iterdir()) == ["host.txt"]


async def test_filesystem_that_cannot_be_idmapped_fails_closed(manager: KernelManager,
                                                               caplog) -> None:
    """ramfs has no idmapped mounts: the default (strict) profile refuses to start the kernel
    rather than give it a directory it could not use as its owner. Every attempt says why
    (the worker's report reaches the manager before its exit does), and a kernel that never
    started is not reported as a kernel that died."""
    d = tempfile.mkdtemp(prefix="kd-ramfs-")
    sc.mount("ramfs", d, "ramfs", 0, "mode=0700")
    try:
        for _ in range(6):
            with pytest.raises(SandboxUnavailable, match="idmapped mount unsupported on ramfs"):
                await manager.create_kernel(filesystem={"root": d})
        await asyncio.sleep(0.2)  # any late exit report has arrived
        assert "kernel died" not in caplog.text
        assert manager.get_kernel_ids() == []
    finally:
        sc.umount2(d, sc.MNT_DETACH)
        os.rmdir(d)


async def test_trusted_profile_mounts_at_the_default_point_inside_the_hosts_home(
        manager: KernelManager, host_dir: Path) -> None:
    """Issue 11 item 12: under `read = true` the view binds the host's /home, where
    /home/kernel does not exist; the view now covers /home with a tmpfs that re-binds each of
    its entries, so the mount point can be made without writing to the host."""
    assert not os.path.exists("/home/kernel")
    entry = Path(tempfile.mkdtemp(prefix="kd-home-", dir="/home"))
    (entry / "seen.txt").write_text("host home entry")
    entry.chmod(0o755)
    (entry / "seen.txt").chmod(0o644)
    try:
        kid = await manager.create_kernel(profile="trusted",
                                          filesystem={"enabled": True, "root": str(host_dir)})
        got = await value(manager, kid, (
            "import os\n"
            "w = True\ntry: os.mkdir('/home/planted')\nexcept OSError: w = False\n"
            f"(os.getcwd(), open('host.txt').read(), open('{entry}/seen.txt').read(), w)"))
        assert got == "('/home/kernel', 'from the host', 'host home entry', False)"
        await manager.destroy_kernel(kid)
    finally:
        shutil.rmtree(entry, ignore_errors=True)
    assert not os.path.exists("/home/kernel") and not os.path.exists("/home/planted")
