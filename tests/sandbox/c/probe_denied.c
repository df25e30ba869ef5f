/* Calls each hardened syscall with harmless arguments and prints "name errno" (0 = success).
 * Without the filter every call fails with EFAULT/EINVAL/EBADF/ENOENT or succeeds
 * harmlessly, so EPERM/ENOSYS can only come from the filter. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void report(const char *name, long result) {
    printf("%s %d\n", name, result < 0 ? errno : 0);
    fflush(stdout);
}
#define PROBE(name, ...) do { errno = 0; report(name, syscall(__VA_ARGS__)); } while (0)

static void probe_clone(const char *name, unsigned long flags) {
    errno = 0;
    long pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) _exit(0);
    if (pid > 0) waitpid(pid, NULL, 0);
    report(name, pid);
}

int main(void) {
    char tiocsti_byte = 0;
    PROBE("io_uring_setup", 425, 0, NULL);
    PROBE("io_uring_enter", 426, -1, 0, 0, 0, NULL, 0);
    PROBE("io_uring_register", 427, -1, 0, NULL, 0);
    PROBE("clone3", 435, NULL, 0);
    PROBE("ptrace", SYS_ptrace, 0x4206 /* SEIZE */, 0, 0, 0);
    PROBE("process_vm_readv", SYS_process_vm_readv, getpid(), NULL, 0, NULL, 0, 0);
    PROBE("process_vm_writev", SYS_process_vm_writev, getpid(), NULL, 0, NULL, 0, 0);
    PROBE("bpf", SYS_bpf, -1, NULL, 0);
    PROBE("perf_event_open", SYS_perf_event_open, NULL, 0, -1, -1, 0);
    PROBE("mount", SYS_mount, "none", "/nonexistent-probe", "tmpfs", 0, NULL);
    PROBE("umount2", SYS_umount2, "/nonexistent-probe", 0);
    PROBE("pivot_root", SYS_pivot_root, "/nonexistent-probe", "/nonexistent-probe");
    PROBE("move_mount", 429, -1, "", -1, "", 0);
    PROBE("open_tree", 428, -1, "/nonexistent-probe", 0);
    PROBE("open_tree_attr", 467, -1, "/nonexistent-probe", 0, NULL, 0);
    PROBE("fsopen", 430, NULL, 0);
    PROBE("fsconfig", 431, -1, 0, NULL, NULL, 0);
    PROBE("fsmount", 432, -1, 0, 0);
    PROBE("fspick", 433, -1, "", 0);
    PROBE("mount_setattr", 442, -1, "", 0, NULL, 0);
    PROBE("setns", SYS_setns, -1, 0);
    probe_clone("clone_newuser", CLONE_NEWUSER);
    probe_clone("clone_newns", CLONE_NEWNS);
    probe_clone("clone_newpid", CLONE_NEWPID);
    probe_clone("clone_newnet", CLONE_NEWNET);
    probe_clone("clone_newuts", CLONE_NEWUTS);
    probe_clone("clone_newipc", CLONE_NEWIPC);
    probe_clone("clone_newcgroup", CLONE_NEWCGROUP);
    probe_clone("clone_plain", 0);
    PROBE("keyctl", SYS_keyctl, -1, 0, 0, 0, 0);
    PROBE("add_key", SYS_add_key, NULL, NULL, NULL, 0, 0);
    PROBE("request_key", SYS_request_key, NULL, NULL, NULL, 0);
    PROBE("userfaultfd", 323, -1);
    PROBE("personality_linux32", SYS_personality, 0x0008);
    PROBE("personality_no_aslr", SYS_personality, 0x0040000);
    PROBE("personality_query", SYS_personality, 0xffffffffUL);
    PROBE("personality_linux", SYS_personality, 0);
    PROBE("open_by_handle_at", SYS_open_by_handle_at, -1, NULL, 0);
    PROBE("name_to_handle_at", SYS_name_to_handle_at, -1, NULL, NULL, NULL, 0);
    PROBE("kexec_load", SYS_kexec_load, 0, 0, NULL, 0xdead0000UL);
    PROBE("kexec_file_load", 320, -1, -1, 0, NULL, 0xdead0000UL);
    PROBE("init_module", SYS_init_module, NULL, 0, NULL);
    PROBE("finit_module", SYS_finit_module, -1, "", 0);
    PROBE("delete_module", SYS_delete_module, "nonexistent_probe_module", 04000);
    PROBE("ioctl_tiocsti", SYS_ioctl, -1, TIOCSTI, &tiocsti_byte);
    PROBE("ioctl_tiocsti_high_bits", SYS_ioctl, -1, 0x100000000UL | TIOCSTI, &tiocsti_byte);
    PROBE("ioctl_tioclinux", SYS_ioctl, -1, TIOCLINUX, NULL);
    PROBE("ioctl_tiocgwinsz", SYS_ioctl, -1, TIOCGWINSZ, NULL);
    PROBE("io_setup", SYS_io_setup, 0, NULL);
    PROBE("io_submit", SYS_io_submit, 0, 0, NULL);
    PROBE("seccomp_new_listener", SYS_seccomp, 1, 8, NULL);
    PROBE("seccomp_plain", SYS_seccomp, 1, 0, NULL);
    PROBE("acct", SYS_acct, "/nonexistent-probe/acct");
    PROBE("swapon", SYS_swapon, "/nonexistent-probe", 0);
    PROBE("swapoff", SYS_swapoff, "/nonexistent-probe");
    PROBE("reboot", SYS_reboot, 0, 0, 0, NULL);
    PROBE("quotactl", SYS_quotactl, 0, NULL, 0, NULL);
    PROBE("quotactl_fd", 443, -1, 0, 0, NULL);
    PROBE("lookup_dcookie", SYS_lookup_dcookie, 0, NULL, 0);
    PROBE("setxattrat", 463, -1, "", 0, "user.x", NULL, 0);
    PROBE("removexattrat", 466, -1, "", 0, "user.x");
    PROBE("file_setattr", 469, -1, "", NULL, 0, 0);
    PROBE("getpid", SYS_getpid);
    PROBE("unshare", SYS_unshare, CLONE_NEWUSER); /* last: it changes this process */
    return 0;
}
