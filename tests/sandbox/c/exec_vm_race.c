/* exec_vm_race ALLOWED DENIED TRIES SECONDS: per try, fork a child whose memory a CLONE_VM
 * sibling shares (another process: the child stays single-threaded) and rewrites while the child
 * execs "ALLOWED -c SCRIPT": the path flips between ALLOWED and DENIED, SCRIPT between "exit 00"
 * and "exit 42". With ALLOWED a shell and DENIED /usr/bin/false, the exit code tells what ran.
 * A refused exec (EPERM, ENOENT) is retried by the same child: each execve is a try.
 * Prints the tally: allowed (0), bypass_path (1), bypass_argv (42), eperm, enoent, killed, other. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
static char path[256], script[16], allowed[256], denied[256];
static volatile int flipping;

static int flipper(void *unused) {
    (void)unused;
    flipping = 1;
    for (;;) {
        strcpy(path, denied);
        strcpy(script, "exit 42");
        __asm__ volatile("" ::: "memory");
        for (volatile int i = 0; i < 300; i++) { }
        strcpy(path, allowed);
        strcpy(script, "exit 00");
        __asm__ volatile("" ::: "memory");
        for (volatile int i = 0; i < 300; i++) { }
    }
    return 0;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: exec_vm_race ALLOWED DENIED TRIES SECONDS\n"); return 2; }
    strcpy(allowed, argv[1]);
    strcpy(denied, argv[2]);
    long tries = atol(argv[3]), done = 0, tally[7] = {0};
    double deadline = now() + atof(argv[4]);
    /* shared with the children: the sibling's pid, then the refused tries */
    volatile long *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    volatile long *sibling = shared, *refused = shared + 1;
    char *stack = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED || stack == MAP_FAILED) { perror("mmap"); return 2; }
    for (; done + refused[0] + refused[1] < tries && now() < deadline; done++) {
        *sibling = 0;
        pid_t pid = fork();
        if (pid == 0) {
            strcpy(path, allowed);
            strcpy(script, "exit 00");
            /* CLONE_PARENT: the sibling is ours to kill and reap once the child is done */
            pid_t flipper_pid = clone(flipper, stack + 65536, CLONE_VM | CLONE_PARENT | SIGCHLD, NULL);
            if (flipper_pid < 0) _exit(104);
            *sibling = flipper_pid;
            while (!flipping) { }
            char *child_argv[] = {path, "-c", script, NULL};
            for (;;) {
                execve(path, child_argv, environ);
                if (errno != EPERM && errno != ENOENT)
                    _exit(103);
                __atomic_add_fetch(&refused[errno == EPERM ? 0 : 1], 1, __ATOMIC_SEQ_CST);
                if (done + refused[0] + refused[1] >= tries || now() >= deadline)
                    _exit(100);
            }
        }
        int status;
        waitpid(pid, &status, 0);
        if (*sibling > 0) {
            kill(*sibling, SIGKILL);
            waitpid(*sibling, NULL, 0);
        }
        int code = WIFEXITED(status) ? WEXITSTATUS(status) : WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL ? 137 : 200;
        if (code == 100) { /* out of tries while refused: not a try of its own */
            done--;
            continue;
        }
        tally[code == 0 ? 0 : code == 1 ? 1 : code == 42 ? 2 : code == 137 ? 5 : 6]++;
    }
    tally[3] = refused[0], tally[4] = refused[1];
    done += refused[0] + refused[1];
    printf("tries=%ld allowed=%ld bypass_path=%ld bypass_argv=%ld eperm=%ld enoent=%ld killed=%ld other=%ld\n",
           done, tally[0], tally[1], tally[2], tally[3], tally[4], tally[5], tally[6]);
    return 0;
}
