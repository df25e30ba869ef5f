/* fd_attrs: change a file's mode, owner and extended attributes through a descriptor opened
 * read-only: fchmod, fchown, fsetxattr, fremovexattr (the file must have user.probe set).
 * Prints "fchmod=ok|errno:N" and so on, one line each. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

static void report(const char *what, int result) {
    if (result < 0) printf("%s=errno:%d\n", what, errno); else printf("%s=ok\n", what);
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: fd_attrs FILE\n"); return 2; }
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0) { printf("open=errno:%d\n", errno); return 0; }
    report("fchmod", fchmod(fd, 0777));
    report("fchown", fchown(fd, 4242, 4242));
    report("fsetxattr", fsetxattr(fd, "user.added", "x", 1, 0));
    report("fremovexattr", fremovexattr(fd, "user.probe"));
    return 0;
}
