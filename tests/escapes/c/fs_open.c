/* fs_open SYSCALL PATH...: open each PATH with one particular syscall and report, one line per
 * path, "SYSCALL:I=read:<first line>",
 * "SYSCALL:I=wrote" or "SYSCALL:I=errno:N". SYSCALL is one of
 *   open     the legacy open(2) (nr 2), read-only
 *   openat   openat(AT_FDCWD), read-only
 *   openat2  openat2 with struct open_how (flags behind a pointer), read-only
 *   creat    the legacy creat(2) (nr 85): creates or truncates, then writes "pwned"
 *   write    openat(O_WRONLY|O_CREAT|O_TRUNC), then writes "pwned"
 *   fdpath   O_PATH descriptor of the path, then reopen it through /proc/self/fd/N
 *   dirfd    O_PATH descriptor of the path's directory, then openat(dirfd, basename) */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int open_with(const char *how, const char *path) {
    if (!strcmp(how, "open")) return (int)syscall(SYS_open, path, O_RDONLY);
    if (!strcmp(how, "openat")) return openat(AT_FDCWD, path, O_RDONLY);
    if (!strcmp(how, "creat")) return (int)syscall(SYS_creat, path, 0644);
    if (!strcmp(how, "write")) return openat(AT_FDCWD, path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (!strcmp(how, "openat2")) {
        struct open_how spec = {.flags = O_RDONLY};
        return (int)syscall(SYS_openat2, AT_FDCWD, path, &spec, sizeof spec);
    }
    char copy[4096], magic[64];
    snprintf(copy, sizeof copy, "%s", path);
    if (!strcmp(how, "fdpath")) {
        int handle = open(path, O_PATH);
        if (handle < 0) return -1;
        snprintf(magic, sizeof magic, "/proc/self/fd/%d", handle);
        return open(magic, O_RDONLY);
    }
    if (!strcmp(how, "dirfd")) {
        int dir = open(dirname(copy), O_PATH | O_DIRECTORY);
        if (dir < 0) return -1;
        snprintf(copy, sizeof copy, "%s", path);
        return openat(dir, basename(copy), O_RDONLY);
    }
    errno = EINVAL;
    return -1;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    for (int i = 2; i < argc; i++) {
        int fd = open_with(argv[1], argv[i]);
        if (fd < 0) { printf("%s:%d=errno:%d\n", argv[1], i - 2, errno); continue; }
        if (!strcmp(argv[1], "creat") || !strcmp(argv[1], "write")) {
            printf("%s:%d=%s\n", argv[1], i - 2, write(fd, "pwned\n", 6) == 6 ? "wrote" : "write-failed");
        } else {
            char buf[256] = {0};
            ssize_t got = read(fd, buf, sizeof buf - 1);
            buf[strcspn(buf, "\n")] = 0;
            printf("%s:%d=read:%s\n", argv[1], i - 2, got >= 0 ? buf : "?");
        }
        close(fd);
    }
    return 0;
}
