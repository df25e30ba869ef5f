/* A debugger on the host: seizes PID (argv[1]), passes every signal on, until PID ends. For
 * tests/sandbox/test_exec_race.py: the supervisor's own PTRACE_SEIZE then fails with EPERM. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <sys/wait.h>

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    pid_t pid = (pid_t)atoi(argv[1]);
    if (ptrace(PTRACE_SEIZE, pid, 0, 0) != 0) {
        perror("PTRACE_SEIZE");
        return 1;
    }
    printf("seized\n");
    fflush(stdout);
    for (;;) {
        int status;
        if (waitpid(pid, &status, __WALL) < 0)
            return errno == ECHILD ? 0 : 1;
        if (WIFEXITED(status) || WIFSIGNALED(status))
            return 0;
        int event = status >> 16, signum = WSTOPSIG(status);
        /* a group stop is left with LISTEN, as a debugger does; a signal stop passes its signal on */
        if (event == PTRACE_EVENT_STOP)
            ptrace(PTRACE_LISTEN, pid, 0, 0);
        else
            ptrace(PTRACE_CONT, pid, 0, (void *)(long)(event ? 0 : signum));
    }
}
