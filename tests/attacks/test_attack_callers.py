"""Attacks by callers who are not root, through a real, confined daemon.

Issue 11, items 1-3: `filesystem.root` was checked by path at request time and mounted by path
later (a symlink swapped in between mounted /etc read-write, idmapped to root); /tmp was a
default mount root; the daemon did not know who was calling, so any socket member could use
any profile and act on anyone's kernels. Each attack here has a positive control (the same
request without the trick works, or works for the right caller).

The callers are real processes of an unprivileged uid (`USER_UID`) connecting to the daemon's
socket through its group; the secret is a root-only file in a root-only directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import kerneld

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from _daemon import PYTHON, ROOT, Daemon

USER_UID = 54_321       # the attacker: no passwd entry needed, only a uid and a group
OTHER_UID = 54_322      # another unprivileged user
SECRET = "root-only-secret-7f3a"

pytestmark = [pytest.mark.sandbox,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (confined daemon)")]

_CLIENT = r"""
import json, sys
import kerneld
address, steps = sys.argv[1], json.loads(sys.argv[2])
out = []
with kerneld.connect(address, timeout=30) as c:
    for step in steps:
        try:
            kid = c.create_kernel(**step)
            r = c.execute(kid, "import os; print(sorted(os.listdir('.')))\n"
                               "for n in os.listdir('.'):\n"
                               "    try: print(open(n).read())\n"
                               "    except OSError as e: print('ERR', e)")
            out.append({"ok": True, "stdout": "".join(
                e.data.get("text", "") for e in r.outputs if e.type == "stream")})
            c.destroy_kernel(kid)
        except kerneld.KernelError as e:
            out.append({"ok": False, "error": type(e).__name__, "message": str(e)})
print(json.dumps(out))
"""


_OPS = r"""
import json, sys
import kerneld
address, steps = sys.argv[1], json.loads(sys.argv[2])
out = []
with kerneld.connect(address, timeout=30) as c:
    for op, args in steps:
        try:
            value = getattr(c, op)(**args)
            out.append({"ok": True, "value": value if op != "execute" else value.status})
        except kerneld.KernelError as e:
            out.append({"ok": False, "error": type(e).__name__, "message": str(e)})
print(json.dumps(out))
"""


def as_user(daemon: Daemon, steps: list, uid: int = USER_UID, script: str = _CLIENT) -> list:
    """Run `steps` (create_kernel arguments, or (op, args) pairs with `script=_OPS`) as `uid`
    through the daemon's socket."""
    def drop() -> None:
        os.setgroups([USER_UID])  # every test user is in the socket's group
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)

    proc = subprocess.run([PYTHON, "-c", script, daemon.address, json.dumps(steps)],
                          capture_output=True, text=True, timeout=120, preexec_fn=drop,
                          check=False,
                          cwd="/", env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                        "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, Path]]:
    """A mount root with a directory per user, and a root-only secret outside it."""
    base = Path(tempfile.mkdtemp(prefix="kd-mnt-"))
    base.chmod(0o755)
    root = base / "srv"
    root.mkdir(mode=0o755)
    for uid in (USER_UID, OTHER_UID):
        d = root / str(uid)
        d.mkdir(mode=0o700)
        os.chown(d, uid, uid)
        (d / "mine.txt").write_text(f"file of {uid}")
        os.chown(d / "mine.txt", uid, uid)
    vault = base / "vault"       # root-only, outside the mount root
    vault.mkdir(mode=0o700)
    (vault / "secret.txt").write_text(SECRET)
    (vault / "secret.txt").chmod(0o600)
    private = root / "private"   # root-only, inside the mount root
    private.mkdir(mode=0o700)
    (private / str(USER_UID)).mkdir(mode=0o700)
    os.chown(private / str(USER_UID), USER_UID, USER_UID)
    try:
        yield {"base": base, "root": root, "vault": vault, "private": private}
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(lab: dict[str, Path]) -> Iterator[Daemon]:
    d = Daemon(f"""
[daemon]
shutdown_grace = 1
socket_group = "{USER_UID}"
socket_mode = "0660"

[runtime]
preload = []

[kernels]
mount_roots = ["{lab['root']}"]

[access]
profiles = {{ trusted = ["uid:0"] }}
""")
    d.dir.chmod(0o755)  # the users reach the socket through its group only
    try:
        yield d.wait_ready()
    finally:
        d.close()


def fs(path: Path | str, **extra: object) -> dict[str, object]:
    return {"filesystem": {"root": str(path), **extra}}


def test_positive_control_the_caller_mounts_its_own_directory(daemon: Daemon,
                                                              lab: dict[str, Path]) -> None:
    [got] = as_user(daemon, [fs(lab["root"] / str(USER_UID))])
    assert got["ok"], got
    assert f"file of {USER_UID}" in got["stdout"]


def test_a_symlink_to_a_root_only_directory_is_refused(daemon: Daemon,
                                                       lab: dict[str, Path]) -> None:
    mine = lab["root"] / str(USER_UID)
    link, up = mine / "link", mine / "up"
    link.symlink_to(lab["vault"])
    up.symlink_to(lab["base"])  # a symlink in the middle of the path
    try:
        got = as_user(daemon, [fs(link), fs(up / "vault"), fs(lab["vault"])])
    finally:
        link.unlink()
        up.unlink()
    assert [g.get("error") for g in got] == ["PermissionDenied"] * 3, got
    assert "symbolic link" in got[0]["message"] and "symbolic link" in got[1]["message"]
    assert "outside the directories" in got[2]["message"]
    assert not any(SECRET in json.dumps(g) for g in got)


def test_another_users_directory_is_refused(daemon: Daemon, lab: dict[str, Path]) -> None:
    other = lab["root"] / str(OTHER_UID)
    other.chmod(0o755)  # readable by the attacker, yet not its own: idmapping would make the
    try:                # kernel the other user inside the mount
        [got] = as_user(daemon, [fs(other, read_only=True)])
    finally:
        other.chmod(0o700)
    assert got["error"] == "PermissionDenied" and "belongs to uid" in got["message"], got
    [control] = as_user(daemon, [fs(other)], uid=OTHER_UID)
    assert control["ok"] and f"file of {OTHER_UID}" in control["stdout"], control


def test_a_directory_the_caller_cannot_reach_is_refused(daemon: Daemon,
                                                        lab: dict[str, Path]) -> None:
    # owned by the caller, but under a root-only directory: the path is walked as the caller
    [got] = as_user(daemon, [fs(lab["private"] / str(USER_UID))])
    assert got["error"] == "PermissionDenied" and "may not reach" in got["message"], got


def test_read_write_needs_the_write_bit(daemon: Daemon, lab: dict[str, Path]) -> None:
    mine = lab["root"] / str(USER_UID)
    mine.chmod(0o500)
    try:
        rw, ro = as_user(daemon, [fs(mine), fs(mine, read_only=True)])
    finally:
        mine.chmod(0o700)
    assert rw["error"] == "PermissionDenied" and "read_only" in rw["message"], rw
    assert ro["ok"], ro


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o1755])
def test_world_writable_or_sticky_roots_are_refused_even_for_root(
        daemon: Daemon, lab: dict[str, Path], mode: int) -> None:
    shared = lab["root"] / f"shared-{mode:o}"
    shared.mkdir()
    shared.chmod(mode)
    try:
        with kerneld.connect(daemon.address) as client, pytest.raises(kerneld.PermissionDenied,
                                                                      match="shared by every"):
            client.create_kernel(filesystem={"root": str(shared)})
    finally:
        shared.rmdir()


def test_tmp_is_not_a_default_mount_root() -> None:
    from kerneld.config import load_daemon_config
    assert load_daemon_config(None, env={}).manager.mount_roots == ("/srv/kerneld",)


def test_a_swap_after_the_check_is_caught_where_the_worker_mounts(
        daemon: Daemon, lab: dict[str, Path]) -> None:
    """The TOCTOU made deterministic: the daemon checked (and pinned) the caller's directory
    at create time; restart_kernel mounts it again, after the caller swapped it for a symlink
    to the root-only vault, then for another directory. The worker must refuse both."""
    mine = lab["root"] / str(USER_UID)
    with kerneld.connect(daemon.address) as client:
        kid = client.create_kernel(filesystem={"root": str(mine)})
        assert client.restart_kernel(kid)  # positive control: the same directory mounts again
        res = client.execute(kid, "open('mine.txt').read()")
        assert res.success and str(USER_UID) in res.result["data"]["text/plain"], res.error
        moved = lab["root"] / "moved"
        for swap in ("symlink", "directory"):
            mine.rename(moved)
            if swap == "symlink":
                mine.symlink_to(lab["vault"])
            else:
                mine.mkdir(mode=0o700)
                os.chown(mine, USER_UID, USER_UID)
                (mine / "secret.txt").symlink_to(lab["vault"] / "secret.txt")
            try:
                with pytest.raises(kerneld.KernelError) as failed:
                    client.restart_kernel(kid)
                assert "replaced" in str(failed.value) or "symbolic link" in str(failed.value)
                res = client.execute(kid, "open('secret.txt').read()")
                assert res.error["ename"] == "KernelDied" and SECRET not in str(res), res
            finally:
                if mine.is_symlink():
                    mine.unlink()
                else:
                    shutil.rmtree(mine)
                moved.rename(mine)
        client.destroy_kernel(kid)


def test_racing_a_symlink_against_create_never_mounts_the_vault(
        daemon: Daemon, lab: dict[str, Path]) -> None:
    """The issue's attack: flip the caller's directory and a symlink to the vault as fast as
    possible while creating kernels on it (the hole mounted the vault on the 15th try)."""
    home = lab["root"] / str(USER_UID)
    mine, real, link = home / "flip", home / "flip.dir", home / "flip.link"
    real.mkdir(mode=0o700)
    os.chown(real, USER_UID, USER_UID)
    (real / "mine.txt").write_text("mine")
    link.symlink_to(lab["vault"])
    stop = threading.Event()

    def flip() -> None:  # `flip` is: the caller's directory, nothing, the symlink, nothing
        while not stop.is_set():
            for entry in (real, link):
                os.rename(entry, mine)
                os.rename(mine, entry)

    flipper = threading.Thread(target=flip, daemon=True)
    flipper.start()
    try:
        t0 = time.monotonic()
        got = as_user(daemon, [fs(mine)] * 60)
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        flipper.join()
        shutil.rmtree(real, ignore_errors=True)
        link.unlink()
    assert not any(SECRET in json.dumps(g) for g in got), got
    refused = [g for g in got if not g["ok"]]
    reasons = {g["error"] for g in refused}
    # refused at the request (the path was absent or a symlink), or at the mount (the worker
    # found another inode or none, and exited: SandboxUnavailable, or KernelStartError when
    # its exit beat its report)
    assert reasons <= {"PermissionDenied", "ProfileError", "InvalidArgument",
                       "SandboxUnavailable", "KernelStartError"}, refused
    print(f"race: {len(got)} creates in {elapsed:.1f} s, {len(got) - len(refused)} mounted "
          f"the caller's directory, {len(refused)} refused ({sorted(reasons)}), 0 reached "
          "the vault")


def test_profile_access_follows_the_callers_uid(daemon: Daemon) -> None:
    trusted, default = as_user(daemon, [{"profile": "trusted"}, {"profile": "default"}])
    assert trusted["error"] == "PermissionDenied" and f"uid={USER_UID}" in trusted["message"]
    assert default["ok"], default
    with kerneld.connect(daemon.address) as client:  # root may use every profile
        client.destroy_kernel(client.create_kernel(profile="trusted"))


def test_each_create_is_logged_with_the_callers_uid(daemon: Daemon) -> None:
    as_user(daemon, [{}])
    assert f"caller=uid={USER_UID} gid={USER_UID}" in daemon.log


def test_a_caller_sees_and_acts_on_its_own_kernels_only(daemon: Daemon) -> None:
    [made] = as_user(daemon, [("create_kernel", {})], script=_OPS)
    kid = made["value"]
    with kerneld.connect(daemon.address) as root:
        roots = root.create_kernel()
        try:
            probes = [("execute", {"kernel_id": kid, "code": "1"}),
                      ("interrupt_kernel", {"kernel_id": kid}),
                      ("restart_kernel", {"kernel_id": kid}),
                      ("destroy_kernel", {"kernel_id": kid})]
            theirs = as_user(daemon, [("get_kernel_ids", {}), ("list_kernels", {}),
                                      ("destroy_all", {}), *probes], uid=OTHER_UID, script=_OPS)
            assert theirs[0] == {"ok": True, "value": []} and theirs[1]["value"] == []
            assert theirs[2] == {"ok": True, "value": 0}
            assert {t.get("error") for t in theirs[3:]} == {"KernelNotFound"}, theirs
            assert "not found" in theirs[3]["message"]  # as for an id that does not exist
            assert root.execute(kid, "1").success and root.execute(roots, "1").success
            # positive control: the owner can do all of it, and sees only its own kernel
            mine = as_user(daemon, [("get_kernel_ids", {}), *probes[:3], ("destroy_all", {})],
                           script=_OPS)
            assert mine[0]["value"] == [kid] and all(m["ok"] for m in mine), mine
            assert mine[-1]["value"] == 1 and kid not in root.get_kernel_ids()
            assert roots in root.get_kernel_ids()  # root's kernel was not the caller's to end
        finally:
            root.destroy_kernel(roots)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
