/* forker DIR PROCS COUNT: starts PROCS processes at once (released together through a pipe);
 * process p creates DIR/p<p>-<i> for i < COUNT. Prints "fail <path> <errno>" per failed open
 * and "opened=<n>" (the sum over all processes, from their exit statuses). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: forker DIR PROCS COUNT\n");
        return 2;
    }
    int procs = atoi(argv[2]), count = atoi(argv[3]), gate[2];
    if (pipe(gate) != 0)
        return 3;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int p = 0; p < procs; p++) {
        pid_t pid = fork();
        if (pid < 0) {
            printf("fork failed %d\n", errno);
            return 4;
        }
        if (pid == 0) {
            char byte, path[4096];
            int ok = 0;
            close(gate[1]);
            if (read(gate[0], &byte, 1) != 0) /* EOF once the parent closes its end: all start */
                _exit(255);
            for (int i = 0; i < count; i++) {
                snprintf(path, sizeof path, "%s/p%d-%d", argv[1], p, i);
                int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
                if (fd < 0) {
                    printf("fail %s %d\n", path, errno);
                    continue;
                }
                close(fd);
                ok++;
            }
            _exit(ok);
        }
    }
    close(gate[0]);
    close(gate[1]);
    long opened = 0;
    int status;
    while (wait(&status) > 0)
        opened += WIFEXITED(status) ? WEXITSTATUS(status) : 0;
    printf("opened=%ld\n", opened);
    return 0;
}
