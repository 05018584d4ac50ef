"""Attack class: KERNEL SURFACE. System calls a notebook never needs and exploits love —
io_uring, bpf, userfaultfd, keyrings, perf, modules, kexec, the new mount API, SysV and POSIX
IPC, ldt/iopl, clock setters, fanotify, ... — made directly through libc's syscall() (no
Python-level check on the way). Under the default profile each one fails with the exact
errno of the seccomp allowlist (EPERM; ENOSYS for clone3, so glibc falls back to clone). No
profile grants these: the control runs the very same snippet as root in an unconfined process
on the host, where the call reaches the kernel's real implementation and succeeds, or fails
with a different errno (argument checks, missing kernel features) — never silently harmless
because it was filtered.

Host controls are chosen to be harmless: read-only queries, objects created and destroyed at
once (keys in a process keyring, IPC objects removed with IPC_RMID, mounts in a private
mount namespace), or arguments the kernel rejects before doing anything."""

from __future__ import annotations

import pytest
from _attack_support import HOST, Case, Err, Not, Ok, ids

pytestmark = pytest.mark.asyncio(loop_scope="session")

EPERM = Err("EPERM", "PermissionError")
ANY_FD = Ok(pred=lambda v: isinstance(v, int) and v >= 0, desc="a new fd / id")

# name, body (returns an int or raises), expectation on the host
TABLE: list[tuple[str, str, object]] = [
    ("io_uring_setup",
     "p = ctypes.create_string_buffer(120)\nreturn syscall(425, 4, p)", ANY_FD),
    ("io_uring_register", "return syscall(427, -1, 0, None, 0)", Not("EPERM")),
    ("bpf_map_create",
     ("import struct\nattr = ctypes.create_string_buffer(struct.pack('IIII', 2, 4, 4, 1), 128)\n"
      "return syscall(321, 0, attr, 128)"), ANY_FD),
    ("bpf_prog_load",
     "attr = ctypes.create_string_buffer(128)\nreturn syscall(321, 5, attr, 128)",
     Not("EPERM")),
    ("userfaultfd", "return syscall(323, 0o2000000)", ANY_FD),
    ("keyctl_get_session_keyring", "return syscall(250, 0, -3, 1)", ANY_FD),
    ("add_key_process_keyring",
     "return syscall(248, b'user', b'kerneld-attack', b'x', 1, -2)", ANY_FD),
    ("request_key", "return syscall(249, b'user', b'kerneld-attack-none', None, -2)",
     Not("EPERM")),
    ("perf_event_open_sw_clock",
     ("import struct\nattr = ctypes.create_string_buffer(struct.pack('IIQ', 1, 128, 0), 128)\n"
      "return syscall(298, attr, 0, -1, -1, 0)"), ANY_FD),
    ("init_module_empty", "return syscall(175, None, 0, b'')", Not("EPERM")),
    ("finit_module_bad_fd", "return syscall(313, -1, b'', 0)", Not("EPERM")),
    ("delete_module_absent", "return syscall(176, b'kerneld_attack_none', 0o4000)",
     Not("EPERM")),
    ("kexec_load", "return syscall(246, 0, 0, None, 0xFFFF0000)", Not("EPERM")),
    ("kexec_file_load", "return syscall(320, -1, -1, 0, b'', 0)", Not("EPERM")),
    ("modify_ldt_read",
     "buf = ctypes.create_string_buffer(16)\nreturn syscall(154, 0, buf, 16)", Ok()),
    ("iopl_0", "return syscall(172, 0)", Not("EPERM")),  # ENOSYS: no x86 I/O ports in this VM
    ("ioperm_port_0x80", "return syscall(173, 0x80, 1, 0)", Not("EPERM")),
    ("syslog_dmesg_size", "return syscall(103, 10, None, 0)", Ok(pred=lambda v: v > 0)),
    ("reboot_bad_magic", "return syscall(169, 0, 0, 0, None)", Not("EPERM")),
    ("swapon_absent_file", "return syscall(167, b'/nonexistent-kerneld-swap', 0)",
     Not("EPERM")),
    ("acct_absent_file", "return syscall(163, b'/nonexistent-kerneld-acct')", Not("EPERM")),
    ("quotactl_bad", "return syscall(179, 0, b'/nonexistent', 0, None)", Not("EPERM")),
    ("settimeofday_noop", "return syscall(164, None, None)", Ok(value=0)),
    ("clock_settime_null", "return syscall(227, 0, None)", Not("EPERM")),
    ("adjtimex_read",
     "buf = ctypes.create_string_buffer(208)\nreturn syscall(159, buf)", Ok()),
    ("fanotify_init", "return syscall(300, 0, 0)", ANY_FD),
    ("kcmp_self", "return syscall(312, os.getpid(), os.getpid(), 0, 0, 0)", Ok(value=0)),
    ("pidfd_getfd_self",
     "pfd = os.pidfd_open(os.getpid())\nreturn syscall(438, pfd, 1, 0)", ANY_FD),
    ("process_madvise",
     "pfd = os.pidfd_open(os.getpid())\nreturn syscall(440, pfd, None, 0, 0, 0)", Ok()),
    ("fsopen_tmpfs", "return syscall(430, b'tmpfs', 0)", ANY_FD),
    ("open_tree_clone", "return syscall(428, -100, b'/tmp', 1)", ANY_FD),
    ("move_mount_bad", "return syscall(429, -1, b'', -1, b'', 0)", Not("EPERM")),
    ("mount_setattr_bad", "return syscall(442, -1, b'', 0, None, 0)", Not("EPERM")),
    ("name_to_handle_at",
     ("import struct\nbuf = ctypes.create_string_buffer(struct.pack('Ii', 128, 0) + bytes(128))\n"
      "mid = ctypes.c_int()\nreturn syscall(303, -100, b'/tmp', buf, ctypes.byref(mid), 0)"),
     Ok(value=0)),
    ("shmget_then_rmid",
     "i = syscall(29, 0, 4096, 0o1000 | 0o600)\nsyscall(31, i, 0, None)\nreturn i", ANY_FD),
    ("msgget_then_rmid",
     "i = syscall(68, 0, 0o1000 | 0o600)\nsyscall(71, i, 0, None)\nreturn i", ANY_FD),
    ("semget_then_rmid",
     "i = syscall(64, 0, 1, 0o1000 | 0o600)\nsyscall(66, i, 0, 0)\nreturn i", ANY_FD),
    ("mq_open_then_unlink",
     ("fd = syscall(240, b'kerneld-attack-mq', 0o100 | 2, 0o600, None)\n"
      "syscall(241, b'kerneld-attack-mq')\nreturn fd"), ANY_FD),
    ("io_setup_linux_aio",
     ("ctx = ctypes.c_ulong(0)\nsyscall(206, 1, ctypes.byref(ctx))\n"
      "syscall(207, ctx.value)\nreturn 0"), Ok(value=0)),
    ("mlockall", "r = syscall(151, 1)\nsyscall(152)\nreturn r", Ok(value=0)),
    ("seccomp_get_action_avail",
     "a = ctypes.c_uint(0x7fff0000)\nreturn syscall(317, 2, 0, ctypes.byref(a))", Ok(value=0)),
    ("landlock_abi_query", "return syscall(444, None, 0, 1)", Ok(pred=lambda v: v >= 1)),
    ("memfd_secret", "return syscall(447, 0)", Not("EPERM")),
    ("lookup_dcookie", "return syscall(212, 0, None, 0)", Not("EPERM")),
    ("uselib", "return syscall(134, b'/nonexistent')", Not("EPERM")),
    ("vmsplice_bad_fd", "return syscall(278, -1, None, 0, 0)", Not("EPERM")),
    ("migrate_pages_self", "return syscall(256, 0, 0, None, None)", Not("EPERM")),
    ("sethostname_private_uts",
     ("syscall(272, 0x04000000)  # unshare(CLONE_NEWUTS): the host's name is never touched\n"
      "return syscall(170, b'pwned', 5)"), Ok(value=0)),
    ("nfsservctl", "return syscall(180, 0, None, None)", Not("EPERM")),
]

CASES = [Case(f"syscall-{name}", body, EPERM, HOST, host) for name, body, host in TABLE]
CASES.append(Case("syscall-clone3-plain",
                  "import struct\nargs = ctypes.create_string_buffer(struct.pack('QQQQQ', 0, 0, 0,"
                  " 0, 17) + bytes(48), 88)\npid = syscall(435, args, 88)\nif pid == 0:\n"
                  "    os._exit(0)\nos.waitpid(pid, 0)\nreturn 'cloned'",
                  Err("ENOSYS", "OSError"), HOST, Ok(value="cloned")))


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
async def test_kernel_surface_syscall(lab, case: Case) -> None:
    await case.run(lab)
