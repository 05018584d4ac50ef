/*
 * kerneld-init: PID 1 of one kernel's PID namespace.
 *
 * Why a separate tiny program: PID 1 inherits every orphan and ignores signals it has no
 * handler for. The worker (PID 2) must behave like an ordinary process (RLIMIT_CPU's SIGXCPU
 * kills it, subprocess reaps its own children), so this init does only what PID 1 must:
 * reap orphans until it is killed. When it dies, the kernel kills everything left in the
 * namespace: the supervisor SIGKILLs it to take a kernel's whole process tree down.
 *
 * Usage: kerneld-init UID GID   (spawned as root by the zygote; drops to UID/GID at once)
 * It reads nothing and runs no user code. After the uid switch it holds no capabilities, is
 * not dumpable (so /proc/1/root is closed to the worker) and has no_new_privs set.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_chld(int sig) { (void)sig; }

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    uid_t uid = (uid_t)strtoul(argv[1], NULL, 10);
    gid_t gid = (gid_t)strtoul(argv[2], NULL, 10);
    if (setgroups(0, NULL) != 0 || setresgid(gid, gid, gid) != 0 || setresuid(uid, uid, uid) != 0)
        return 4;
    /* after the uid switch, which clears it: die with the zygote (the supervisor also kills
     * this process whenever the worker exits, which covers the instant before this line) */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) return 3;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_DUMPABLE, 0) != 0) return 5;
    /* fds the zygote let through: one close_range, not a thousand close() calls */
    if (syscall(SYS_close_range, 3, ~0U, 0) != 0)
        for (int fd = 3; fd < 1024; fd++) close(fd);

    sigset_t chld, empty;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    sigemptyset(&empty);
    sigprocmask(SIG_BLOCK, &chld, NULL);
    struct sigaction sa = {0};
    sa.sa_handler = on_chld;
    sigaction(SIGCHLD, &sa, NULL);
    for (;;) {
        while (waitpid(-1, NULL, WNOHANG) > 0) {}
        sigsuspend(&empty);  /* wakes on SIGCHLD; SIGCHLD is blocked otherwise: no lost wakeup */
    }
}
