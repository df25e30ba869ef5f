/* chattr: change a file's inode flags (chattr) and project attributes through a descriptor opened
 * read-only, on a fresh file in /tmp. Prints "setflags=ok|errno:N", "fssetxattr=ok|errno:N" (each
 * writes back what it read, the flags plus FS_NODUMP_FL) and "setversion=ok|errno:N". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(void) {
    char name[] = "/tmp/chattr-probe-XXXXXX";
    int made = mkstemp(name);
    if (made < 0) { perror("create"); return 2; }
    close(made);
    int fd = open(name, O_RDONLY);
    unlink(name);  /* the descriptor keeps the inode: nothing is left behind, whatever fails */
    if (fd < 0) { perror("open"); return 2; }
    long flags = 0;
    if (ioctl(fd, FS_IOC_GETFLAGS, &flags) < 0) { perror("FS_IOC_GETFLAGS"); return 2; }
    flags |= FS_NODUMP_FL;
    if (ioctl(fd, FS_IOC_SETFLAGS, &flags) < 0) printf("setflags=errno:%d\n", errno); else printf("setflags=ok\n");
    struct fsxattr attrs;
    if (ioctl(fd, FS_IOC_FSGETXATTR, &attrs) < 0) { perror("FS_IOC_FSGETXATTR"); return 2; }
    if (ioctl(fd, FS_IOC_FSSETXATTR, &attrs) < 0) printf("fssetxattr=errno:%d\n", errno); else printf("fssetxattr=ok\n");
    long version = 42;
    if (ioctl(fd, FS_IOC_SETVERSION, &version) < 0) printf("setversion=errno:%d\n", errno); else printf("setversion=ok\n");
    close(fd);
    return 0;
}
