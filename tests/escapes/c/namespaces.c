/* namespaces DIR: leave the sandbox's namespaces from inside: a new mount namespace, a tmpfs
 * mounted over DIR, setns into a namespace file, clone and clone3 with CLONE_NEWPID, and a new
 * user namespace (last: it would change what the others mean). Prints "NAME=ok" or
 * "NAME=errno:N". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *name, long got) {
    if (got < 0) printf("%s=errno:%d\n", name, errno); else printf("%s=ok\n", name);
}

static long child_in_new_pid_ns(int use_clone3) {
    long pid;
    if (use_clone3) {
        struct clone_args args;
        memset(&args, 0, sizeof args);
        args.flags = CLONE_NEWPID;
        args.exit_signal = SIGCHLD;
        pid = syscall(SYS_clone3, &args, sizeof args);
    } else {
        pid = syscall(SYS_clone, CLONE_NEWPID | SIGCHLD, NULL, NULL, NULL, 0);
    }
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid((pid_t)pid, NULL, 0);
    return pid;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    /* natively the private mount namespace keeps the tmpfs off the host */
    report("unshare_mount", unshare(CLONE_NEWNS));
    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
    report("mount", mount("probe", argv[1], "tmpfs", 0, NULL));
    report("setns", setns(open("/proc/self/ns/net", O_RDONLY), CLONE_NEWNET));
    report("clone_newpid", child_in_new_pid_ns(0));
    report("clone3_newpid", child_in_new_pid_ns(1));
    report("unshare_user", unshare(CLONE_NEWUSER));
    return 0;
}
