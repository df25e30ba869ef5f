/* root_caps: what a root agent's capabilities reach. Prints whether the bounding set still holds
 * CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_MKNOD and CAP_CHOWN ("cap_NAME=yes|no"), and
 * FITRIM on / with a zero length ("fitrim=errno:N"): EINVAL with CAP_SYS_ADMIN (the range is
 * checked after the capability, so nothing is trimmed), EPERM without it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/fs.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>

static void held(const char *name, int cap) {
    printf("cap_%s=%s\n", name, prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1 ? "yes" : "no");
}

int main(void) {
    held("sys_admin", CAP_SYS_ADMIN);
    held("net_admin", CAP_NET_ADMIN);
    held("mknod", CAP_MKNOD);
    held("chown", CAP_CHOWN);
    int fd = open("/", O_RDONLY | O_DIRECTORY);
    if (fd < 0) { perror("open /"); return 2; }
    struct fstrim_range range = {0, 0, 0};
    if (ioctl(fd, FITRIM, &range) < 0) printf("fitrim=errno:%d\n", errno); else printf("fitrim=ok\n");
    return 0;
}
