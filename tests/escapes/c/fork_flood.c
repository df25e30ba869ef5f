/* fork_flood N: a bounded fork bomb. Forks up to N children that wait on a pipe, stops at the
 * first failure, prints "forked=K" and "errno=E" (0 when all N were made), then releases and
 * reaps every child. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    long wanted = atol(argv[1]), forked = 0;
    int gate[2], failure = 0;
    if (pipe(gate)) return 2;
    while (forked < wanted) {
        pid_t pid = fork();
        if (pid < 0) { failure = errno; break; }
        if (pid == 0) { char c; close(gate[1]); read(gate[0], &c, 1); _exit(0); }
        forked++;
    }
    printf("forked=%ld\nerrno=%d\n", forked, failure);
    fflush(stdout);
    close(gate[1]);
    while (wait(NULL) > 0) {}
    return 0;
}
