/* A getpid through the x32 ABI (syscall number | 0x40000000). */
#include <errno.h>
#include <stdio.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
    long result = syscall(0x40000000L | SYS_getpid);
    printf("x32 getpid=%ld errno=%d\n", result, result < 0 ? errno : 0);
    return 0;
}
