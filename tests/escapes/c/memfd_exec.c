/* memfd_exec HOW BINARY NAME ARG...: copy BINARY into an anonymous memfd named NAME and run it
 * with argv ARG... without any path naming the binary:
 *   execveat  execveat(memfd, "", argv, envp, AT_EMPTY_PATH) (what fexecve does);
 *   procfd    execve("/proc/self/fd/N") on the memfd's magic link.
 * Prints "exec=-1 errno=N" if the exec fails; on success the binary's output is all there is. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

extern char **environ;

int main(int argc, char **argv) {
    if (argc < 5) return 2;
    int source = open(argv[2], O_RDONLY);
    struct stat info;
    if (source < 0 || fstat(source, &info) < 0) { perror("source"); return 2; }
    int memfd = memfd_create(argv[3], 0);
    if (memfd < 0) { printf("memfd_create=-1 errno=%d\n", errno); return 1; }
    if (sendfile(memfd, source, NULL, info.st_size) != info.st_size) { perror("copy"); return 2; }
    if (strcmp(argv[1], "procfd") == 0) {
        char path[64];
        snprintf(path, sizeof path, "/proc/self/fd/%d", memfd);
        execve(path, argv + 4, environ);
    } else {
        syscall(SYS_execveat, memfd, "", argv + 4, environ, AT_EMPTY_PATH);
    }
    printf("exec=-1 errno=%d\n", errno);
    return 1;
}
