"""Privilege drop: capabilities, securebits, groups, uid/gid, no_new_privs, dumpable.

Why each step, in order:
1. securebits NOROOT (+locked), KEEP_CAPS locked off, NO_CAP_AMBIENT_RAISE (+locked): uid 0 in
   this process tree never regains capabilities implicitly (needs CAP_SETPCAP, so first).
2. Bounding set: PR_CAPBSET_DROP for every capability the *kernel* knows (loop until EINVAL:
   python-prctl's `capbset` only knows the capabilities it was compiled with, missing e.g.
   CAP_PERFMON, CAP_BPF, CAP_CHECKPOINT_RESTORE on this kernel). Needs CAP_SETPCAP.
3. Ambient set cleared.
4. setgroups([]) and setresgid/setresuid to the policy's ids (root only; the kernel clears the
   effective and permitted sets when all uids leave 0).
5. capset() with empty effective/permitted/inheritable: setuid does not clear the inheritable
   set, and a worker that keeps its uid (non-root mode, in its user namespace) still holds the
   full set of that namespace.
Then `no_new_privs()` (setuid binaries and file capabilities stop working; required before
Landlock and seccomp) and `not_dumpable()` (no core dumps, no same-uid ptrace attach).
"""

from __future__ import annotations

import os

from . import _syscalls as sc

SECUREBITS = (sc.SECBIT_NOROOT | sc.SECBIT_NOROOT_LOCKED | sc.SECBIT_KEEP_CAPS_LOCKED
              | sc.SECBIT_NO_CAP_AMBIENT_RAISE | sc.SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED)


def drop(uid: int | None, gid: int | None, *, switch_ids: bool) -> None:
    """Drop every capability and, when `switch_ids`, become uid/gid with no extra groups."""
    sc.prctl(sc.PR_SET_SECUREBITS, SECUREBITS)
    sc.drop_bounding_set()
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    if switch_ids and uid is not None:
        g = gid if gid is not None else uid
        os.setgroups([])
        os.setresgid(g, g, g)
        os.setresuid(uid, uid, uid)
    sc.capset_empty()


def no_new_privs() -> None:
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)


def not_dumpable() -> None:
    sc.prctl(sc.PR_SET_DUMPABLE, 0)
