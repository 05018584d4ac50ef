/*
 * kerneld-init: PID 1 of one kernel's PID namespace.
 *
 * Why a separate tiny program: PID 1 inherits every orphan and ignores signals it has no
 * handler for. The worker (PID 2) must behave like an ordinary process (RLIMIT_CPU's SIGXCPU
 * kills it, subprocess reaps its own children), so this init does only what PID 1 must:
 * reap orphans. When it dies, the kernel kills everything left in the namespace: the
 * supervisor SIGKILLs it to take a kernel's whole process tree down.
 *
 * Usage: kerneld-init UID GID, with fd 3 a pidfd of the supervisor (the process that runs
 * the kernel manager: the daemon). Spawned as root by the zygote; drops to UID/GID at once.
 * It exits when the supervisor exits (fd 3 turns readable), which ends the kernel: a kernel
 * lives as long as its supervisor, whether or not the zygote that forked it is still there
 * (no parent-death signal: that would tie the kernel to the zygote). Without fd 3 it exits
 * at once (fail closed: nothing else would end this kernel with its supervisor).
 * It reads nothing and runs no user code. After the uid switch it holds no capabilities, is
 * not dumpable (so /proc/1/root is closed to the worker) and has no_new_privs set.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define SUPERVISOR_FD 3

static void on_chld(int sig) { (void)sig; }

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    uid_t uid = (uid_t)strtoul(argv[1], NULL, 10);
    gid_t gid = (gid_t)strtoul(argv[2], NULL, 10);
    if (setgroups(0, NULL) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0)
        return 4;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_DUMPABLE, 0) != 0) return 5;
    if (fcntl(SUPERVISOR_FD, F_GETFD) < 0) return 3;
    /* other fds the zygote let through: one close_range, not a thousand close() calls */
    if (syscall(SYS_close_range, SUPERVISOR_FD + 1, ~0U, 0) != 0)
        for (int fd = SUPERVISOR_FD + 1; fd < 1024; fd++) close(fd);

    sigset_t chld, empty;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigemptyset(&empty);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    struct sigaction sa = {0};
    sa.sa_handler = on_chld;
    sigaction(SIGCHLD, &sa, NULL);
    struct pollfd supervisor = {.fd = SUPERVISOR_FD, .events = POLLIN};
    for (;;) {
        while (waitpid(-1, NULL, WNOHANG) > 0) {}
        /* SIGCHLD is blocked except inside ppoll, so a child that exits after the reaping
         * above interrupts it: no lost wakeup. A supervisor that died before this line left
         * the pidfd readable: ppoll returns at once. */
        int n = ppoll(&supervisor, 1, NULL, &empty);
        if (n > 0) return 0;  /* the supervisor exited (POLLIN), or fd 3 broke: end the kernel */
        if (n < 0 && errno != EINTR) return 6;
    }
}
