/* nested_listener PATH: take over mediation from inside. First install a filter of our own
 * with SECCOMP_FILTER_FLAG_NEW_LISTENER (a second supervisor); then a plain filter that allows
 * everything, and make the process non-dumpable; then read PATH, which the outer policy
 * denies. Prints "listener=ok|errno:N", "allow_filter=...", "dumpable=...", "read=<content>"
 * or "read=errno:N". */
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static void report(const char *name, long got) {
    if (got < 0) printf("%s=errno:%d\n", name, errno); else printf("%s=ok\n", name);
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    struct sock_filter notify_getppid[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_getppid, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_filter allow_all[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
    struct sock_fprog listener = {4, notify_getppid}, allow = {1, allow_all};
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    report("listener", syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &listener));
    report("allow_filter", syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &allow));
    report("dumpable", prctl(PR_SET_DUMPABLE, 0, 0, 0, 0));
    char buf[256] = {0};
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { printf("read=errno:%d\n", errno); return 0; }
    printf("read=%s", read(fd, buf, sizeof buf - 1) > 0 ? buf : "\n");
    return 0;
}
