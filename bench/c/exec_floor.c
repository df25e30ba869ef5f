/* The least a compiled supervisor can do per trapped execve, for bench/bench_exec_floor.py.
 *
 *   exec_floor MODE [--sync] [--split] -- PROGRAM [ARG...]
 *
 * Forks PROGRAM with a seccomp filter that sends only execve/execveat to a listener
 * (NEW_LISTENER | WAIT_KILLABLE_RECV, as the sandbox loads it), receives the listener over
 * a socket before the filter traps anything the child uses, and answers each notification:
 *   native    no filter at all (the same fork/exec/timing path, for the baseline)
 *   continue  CONTINUE at once
 *   ptrace    + PTRACE_SEIZE(TRACEEXEC|EXITKILL), PTRACE_INTERRUPT before CONTINUE, a
 *             blocking waitpid(__WALL) for the PTRACE_EVENT_EXEC stop, PTRACE_DETACH
 *             (the calls sandbox/freeze.py VerifiedExec makes)
 *   decide    + before CONTINUE: process_vm_readv of the path, the argv pointers and each
 *             argv string, open + fstat + pread of the file's head, ID_VALID
 *   verify    + at the exec stop: readlink and stat of /proc/PID/exe, read /proc/PID/cmdline,
 *             compared with what was decided (a compiled stand-in for VerifiedExec's check)
 * --sync: SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP on the listener. --split: the receiver on one
 * CPU and PROGRAM (with everything it starts) on another. The supervisor's own child (PROGRAM
 * itself) is never traced: its stops would go to our waitpid() for its exit.
 * Prints "SECONDS NOTIFICATIONS MISMATCHES SUPERVISOR_CPU_SECONDS" (fork to exit; the CPU
 * time of this process's threads, not of the program). Not a sandbox: nothing is denied.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP 1
#endif
#define ARGV_MAX 64

enum mode { NATIVE, CONTINUE, PTRACE, DECIDE, VERIFY };
static const char *mode_names[] = {"native", "continue", "ptrace", "decide", "verify"};

static int listener = -1;
static pid_t program_pid;
static enum mode mode;
static long notifications, mismatches;

static void die(const char *what) { perror(what); exit(2); }

static void pin(pid_t tid, int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(tid, sizeof set, &set)) die("sched_setaffinity");
}

static int install_filter(void) {
    struct sock_filter code[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_KILL_PROCESS),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_execve, 2, 0),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_execveat, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
    };
    struct sock_fprog prog = {sizeof code / sizeof code[0], code};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) die("PR_SET_NO_NEW_PRIVS");
    int fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                     SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV, &prog);
    if (fd < 0) die("seccomp");
    return fd;
}

static void send_fd(int sock, int fd) {
    char data = 0, control[CMSG_SPACE(sizeof fd)] = {0};
    struct iovec iov = {&data, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof fd);
    memcpy(CMSG_DATA(cmsg), &fd, sizeof fd);
    if (sendmsg(sock, &msg, 0) != 1) die("sendmsg");
}

static int receive_fd(int sock) {
    char data, control[CMSG_SPACE(sizeof(int))];
    struct iovec iov = {&data, 1};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof control};
    if (recvmsg(sock, &msg, 0) != 1) die("recvmsg");
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    if (!cmsg || cmsg->cmsg_type != SCM_RIGHTS) { fputs("no listener received\n", stderr); exit(2); }
    int fd;
    memcpy(&fd, CMSG_DATA(cmsg), sizeof fd);
    return fd;
}

/* What the "decision" read: the argv strings, NUL-separated, as /proc/PID/cmdline shows them. */
struct decided { char cmdline[8192]; size_t cmdline_len; struct stat file; int have_file; };

static ssize_t remote_read(pid_t pid, uint64_t addr, void *into, size_t len) {
    struct iovec local = {into, len}, remote = {(void *)addr, len};
    return process_vm_readv(pid, &local, 1, &remote, 1, 0);
}

/* A C string of the holder: read up to the end of its page, then on if no NUL came. */
static size_t remote_string(pid_t pid, uint64_t addr, char *into, size_t room) {
    size_t got = 0;
    while (got + 1 < room) {
        size_t chunk = 4096 - (addr + got) % 4096;
        if (chunk > room - 1 - got) chunk = room - 1 - got;
        ssize_t n = remote_read(pid, addr + got, into + got, chunk);
        if (n <= 0) break;
        char *nul = memchr(into + got, 0, n);
        if (nul) return nul - into;
        got += n;
    }
    into[got] = 0;
    return got;
}

static void decide(const struct seccomp_notif *req, struct decided *d) {
    int at = req->data.nr == SYS_execveat;
    char path[4096];
    remote_string(req->pid, req->data.args[at ? 1 : 0], path, sizeof path);
    uint64_t argv[ARGV_MAX];
    ssize_t n = remote_read(req->pid, req->data.args[at ? 2 : 1], argv, sizeof argv);
    d->cmdline_len = 0;
    for (ssize_t i = 0; i < n / 8 && argv[i]; i++) {
        size_t room = sizeof d->cmdline - d->cmdline_len;
        if (room < 2) break;
        d->cmdline_len += remote_string(req->pid, argv[i], d->cmdline + d->cmdline_len, room) + 1;
    }
    d->have_file = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        char head[128];
        d->have_file = fstat(fd, &d->file) == 0 && pread(fd, head, sizeof head, 0) >= 0;
        close(fd);
    }
    uint64_t id = req->id;
    ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id);
}

/* At the exec stop: is the new image the file and argv that were decided? */
static int matches(pid_t pid, const struct decided *d) {
    char proc[64], link[4096], cmdline[8192];
    struct stat exe;
    snprintf(proc, sizeof proc, "/proc/%d/exe", pid);
    if (readlink(proc, link, sizeof link) < 0 || stat(proc, &exe) || !d->have_file) return 0;
    if (exe.st_dev != d->file.st_dev || exe.st_ino != d->file.st_ino) return 0;
    snprintf(proc, sizeof proc, "/proc/%d/cmdline", pid);
    int fd = open(proc, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    ssize_t n = read(fd, cmdline, sizeof cmdline);
    close(fd);
    return n == (ssize_t)d->cmdline_len && memcmp(cmdline, d->cmdline, n) == 0;
}

static void answer_continue(uint64_t id) {
    struct seccomp_notif_resp resp = {.id = id, .flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE};
    ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);  /* ENOENT: the holder died; nothing to do */
}

static void handle(const struct seccomp_notif *req) {
    pid_t tid = req->pid;
    struct decided d;
    if (mode == CONTINUE || tid == program_pid) { answer_continue(req->id); return; }
    if (ptrace(PTRACE_SEIZE, tid, 0, PTRACE_O_TRACEEXEC | PTRACE_O_EXITKILL)) die("PTRACE_SEIZE");
    if (ptrace(PTRACE_INTERRUPT, tid, 0, 0)) die("PTRACE_INTERRUPT");
    if (mode >= DECIDE) decide(req, &d);
    answer_continue(req->id);
    int status;
    if (waitpid(tid, &status, __WALL) != tid) die("waitpid");
    if (!WIFSTOPPED(status)) return;  /* gone */
    int event = status >> 16;
    if (event == PTRACE_EVENT_EXEC && mode == VERIFY && !matches(tid, &d)) mismatches++;
    if (ptrace(PTRACE_DETACH, tid, 0, event ? 0 : WSTOPSIG(status))) die("PTRACE_DETACH");
}

static void *receive(void *unused) {
    (void)unused;
    for (;;) {
        struct seccomp_notif req;
        memset(&req, 0, sizeof req);  /* RECV wants a zeroed buffer */
        if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &req)) {
            if (errno == EINTR || errno == ENOENT) continue;  /* ENOENT: the holder died first */
            die("SECCOMP_IOCTL_NOTIF_RECV");
        }
        __atomic_add_fetch(&notifications, 1, __ATOMIC_RELAXED);
        handle(&req);
    }
    return NULL;
}

int main(int argc, char **argv) {
    int sync = 0, split = 0, first = 2;
    if (argc < 4) { fputs("usage: exec_floor native|continue|ptrace|decide|verify [--sync] [--split] -- PROGRAM...\n", stderr); return 2; }
    for (mode = NATIVE; mode <= VERIFY && strcmp(argv[1], mode_names[mode]); mode++) {}
    if (mode > VERIFY) { fprintf(stderr, "exec_floor: unknown mode %s\n", argv[1]); return 2; }
    for (; first < argc && strcmp(argv[first], "--"); first++) {
        if (!strcmp(argv[first], "--sync")) sync = 1;
        else if (!strcmp(argv[first], "--split")) split = 1;
        else { fprintf(stderr, "exec_floor: unknown option %s\n", argv[first]); return 2; }
    }
    if (++first >= argc) { fputs("exec_floor: no PROGRAM after --\n", stderr); return 2; }
    int sockets[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sockets)) die("socketpair");
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    program_pid = fork();
    if (program_pid < 0) die("fork");
    if (program_pid == 0) {
        if (split) pin(0, 1);
        if (mode != NATIVE) {
            int fd = install_filter();
            send_fd(sockets[1], fd);
            close(fd);  /* the program must never hold its own listener */
        }
        execvp(argv[first], argv + first);
        die("execvp");
    }
    if (mode != NATIVE) {
        listener = receive_fd(sockets[0]);
        if (sync && ioctl(listener, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, 0))
            die("SECCOMP_IOCTL_NOTIF_SET_FLAGS");
        if (split) pin(0, 0);  /* inherited by the receiver; the main thread only waits */
        pthread_t receiver;
        if (pthread_create(&receiver, NULL, receive, NULL)) die("pthread_create");
    }
    int status;
    if (waitpid(program_pid, &status, 0) != program_pid) die("waitpid");
    clock_gettime(CLOCK_MONOTONIC, &end);
    struct rusage own;
    getrusage(RUSAGE_SELF, &own);
    double cpu = own.ru_utime.tv_sec + own.ru_stime.tv_sec + (own.ru_utime.tv_usec + own.ru_stime.tv_usec) / 1e6;
    printf("%.6f %ld %ld %.6f\n", end.tv_sec - start.tv_sec + (end.tv_nsec - start.tv_nsec) / 1e9,
           __atomic_load_n(&notifications, __ATOMIC_RELAXED), mismatches, cpu);
    fflush(stdout);
    _exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
}
