/* open_read PATH [cloexec|legacy]: open PATH read-only and print its first line,
 * or "errno=N". "legacy" uses the raw open(2) syscall instead of openat. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *how = argc > 2 ? argv[2] : "";
    int flags = O_RDONLY | (strcmp(how, "cloexec") == 0 ? O_CLOEXEC : 0);
    int fd = strcmp(how, "legacy") == 0 ? (int)syscall(SYS_open, argv[1], flags, 0) : open(argv[1], flags);
    if (fd < 0) { printf("errno=%d\n", errno); return 1; }
    char buf[256] = {0};
    ssize_t got = read(fd, buf, sizeof buf - 1);
    if (got < 0) { printf("read errno=%d\n", errno); return 1; }
    buf[strcspn(buf, "\n")] = 0;
    printf("cloexec=%d content=%s\n", (fcntl(fd, F_GETFD) & FD_CLOEXEC) ? 1 : 0, buf);
    return 0;
}
