/* userfaultfd [DEVICE]: get a userfaultfd, the classic way to stall the kernel in the middle of a
 * copy from user memory and widen a race: once with the userfaultfd syscall, once through the
 * /dev/userfaultfd device (USERFAULTFD_IOC_NEW, Linux 6.1), which needs no syscall of its own, or
 * through a node of it at DEVICE. Prints "NAME=ok" or "NAME=errno:N". */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long fd = syscall(SYS_userfaultfd, O_CLOEXEC);
    if (fd < 0) printf("syscall=errno:%d\n", errno); else printf("syscall=ok\n");
    int dev = open(argc > 1 ? argv[1] : "/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0) { printf("device=errno:%d\n", errno); return 0; }
    fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC);
    if (fd < 0) printf("device=errno:%d\n", errno); else printf("device=ok\n");
    return 0;
}
