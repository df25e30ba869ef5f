/* ptrace_probe PIDFILE: attack another process, then a sibling. PIDFILE is polled until it
 * holds the pid of a process outside the sandbox (the supervisor, or natively a victim). For
 * it: signal 0, SIGSTOP then SIGCONT, PTRACE_ATTACH, open /proc/PID/mem and /proc/PID/environ,
 * process_vm_readv. Then for a forked sibling: PTRACE_ATTACH, process_vm_writev, and a pwrite
 * into its memory through /proc/PID/mem (the sibling reports whether its variable changed).
 * Prints "target_NAME=ok|errno:N" and "sibling_NAME=ok|errno:N". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile long victim_word = 1; /* same address in the forked sibling */

static void report(const char *who, const char *name, long got) {
    if (got < 0) printf("%s_%s=errno:%d\n", who, name, errno); else printf("%s_%s=ok\n", who, name);
}

static long open_proc(pid_t pid, const char *file, int flags) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", pid, file);
    return open(path, flags);
}

static long vm(pid_t pid, int write) {
    long word = 2;
    struct iovec local = {&word, sizeof word}, remote = {(void *)&victim_word, sizeof word};
    return write ? process_vm_writev(pid, &local, 1, &remote, 1, 0) : process_vm_readv(pid, &local, 1, &remote, 1, 0);
}

static long attach(pid_t pid) {
    long got = ptrace(PTRACE_ATTACH, pid, 0, 0);
    if (got == 0) { waitpid(pid, NULL, __WALL); ptrace(PTRACE_DETACH, pid, 0, 0); }
    return got;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    pid_t target = 0;
    for (int i = 0; i < 500 && target <= 0; i++) {
        FILE *f = fopen(argv[1], "r");
        if (f) { if (fscanf(f, "%d", &target) != 1) target = 0; fclose(f); }
        if (target <= 0) usleep(10000);
    }
    if (target <= 0) { printf("no target pid\n"); return 2; }
    report("target", "signal0", kill(target, 0));
    long stopped = kill(target, SIGSTOP);
    report("target", "sigstop", stopped);
    if (stopped == 0) kill(target, SIGCONT);
    report("target", "ptrace_attach", attach(target));
    report("target", "mem_open", open_proc(target, "mem", O_RDWR));
    report("target", "environ_open", open_proc(target, "environ", O_RDONLY));
    report("target", "process_vm_readv", vm(target, 0));

    int ready[2];
    if (pipe(ready)) return 2;
    fflush(stdout); /* or the sibling would print our buffered lines again */
    pid_t sibling = fork();
    if (sibling == 0) { /* waits until the parent is done, then says whether it was changed */
        char c;
        read(ready[0], &c, 1);
        printf("sibling_word_changed=%s\n", victim_word != 1 ? "yes" : "no");
        fflush(stdout);
        _exit(0);
    }
    report("sibling", "ptrace_attach", attach(sibling));
    report("sibling", "process_vm_writev", vm(sibling, 1));
    long mem = open_proc(sibling, "mem", O_RDWR);
    long word = 3;
    report("sibling", "mem_pwrite", mem < 0 ? mem : pwrite((int)mem, &word, sizeof word, (off_t)&victim_word));
    fflush(stdout);
    write(ready[1], "x", 1);
    waitpid(sibling, NULL, 0);
    return 0;
}
