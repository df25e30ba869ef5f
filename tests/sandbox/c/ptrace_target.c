/* Target for tests/sandbox/test_ptrace_freeze.py: spinning and blocked threads, a child
   process, a forking thread; optionally a seccomp listener on execve and a held exec. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/futex.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { SPIN, SLEEPS, READS, FUTEX_TIMEOUTS, CHILD_SPIN, SIGWAITED, CHILD_HANDLED, FORKS, ERRORS, READY };
static volatile long *c;
static int pipefd[2];
static char **exec_argv;
static int exec_from_thread;

static void *spin(void *a) { for (;;) __atomic_fetch_add(&c[SPIN], 1, __ATOMIC_RELAXED); }
static void *sleeper(void *a) {
    struct timespec t = {0, 20000000};
    for (;;) { if (nanosleep(&t, NULL)) c[ERRORS]++; else c[SLEEPS]++; }
}
static void *writer(void *a) {
    struct timespec t = {0, 10000000};
    for (;;) { nanosleep(&t, NULL); if (write(pipefd[1], "x", 1) != 1) c[ERRORS]++; }
}
static void *reader(void *a) {
    char b;
    for (;;) { if (read(pipefd[0], &b, 1) == 1) c[READS]++; else c[ERRORS]++; }
}
static void *futexer(void *a) {
    int word = 0;
    struct timespec t = {0, 30000000};
    for (;;) {
        long r = syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, &t, NULL, 0);
        if (r == -1 && errno == ETIMEDOUT) c[FUTEX_TIMEOUTS]++; else c[ERRORS]++;
    }
}
static void *forker(void *a) {
    for (;;) {
        pid_t p = fork();
        if (p == 0) _exit(0);
        if (p < 0 || waitpid(p, NULL, 0) != p) c[ERRORS]++; else c[FORKS]++;
    }
}
static void *execer(void *a) {
    usleep(100000);
    execv(exec_argv[0], exec_argv);
    c[ERRORS]++;
    exit(5);
}
static void child_handler(int s) { c[CHILD_HANDLED]++; }

static int install_exec_filter(void) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_execve, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {4, f};
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                   SECCOMP_FILTER_FLAG_NEW_LISTENER | (1UL << 5), &prog);
}

static void send_fd(int sock, int fd) {
    char data = 'L', ctl[CMSG_SPACE(sizeof(int))] = {0};
    struct iovec iov = {&data, 1};
    struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof ctl};
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET; h->cmsg_type = SCM_RIGHTS; h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &fd, sizeof(int));
    if (sendmsg(sock, &m, 0) != 1) exit(3);
}

/* target COUNTERS_FILE [SOCKET_FD leader|thread PROGRAM ARGS...] */
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDWR);
    c = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    sigset_t usr1;
    sigemptyset(&usr1); sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    if (pipe(pipefd)) return 2;
    pid_t child = fork();
    if (child == 0) {
        sigprocmask(SIG_UNBLOCK, &usr1, NULL);
        signal(SIGUSR2, child_handler);
        for (;;) __atomic_fetch_add(&c[CHILD_SPIN], 1, __ATOMIC_RELAXED);
    }
    if (argc > 2) {
        int listener = install_exec_filter();
        if (listener < 0) return 4;
        send_fd(atoi(argv[2]), listener);
        exec_from_thread = !strcmp(argv[3], "thread");
        exec_argv = argv + 4;
    }
    void *(*workers[])(void *) = {spin, sleeper, writer, reader, futexer, forker};
    pthread_t t;
    for (unsigned i = 0; i < sizeof workers / sizeof *workers; i++) pthread_create(&t, NULL, workers[i], NULL);
    c[READY] = 1;
    if (argc > 2) {
        if (exec_from_thread) { pthread_create(&t, NULL, execer, NULL); pause(); }
        if (!strcmp(argv[3], "vfork")) {
            int status;
            usleep(100000);
            pid_t p = vfork();
            if (p == 0) { execv(exec_argv[0], exec_argv); _exit(5); }
            exit(waitpid(p, &status, 0) == p && WIFEXITED(status) ? WEXITSTATUS(status) : 6);
        }
        execer(NULL);
    }
    for (;;) { int s; if (sigwait(&usr1, &s) == 0) c[SIGWAITED]++; }
}
