/* rename2: renameat2(AT_FDCWD, FROM, AT_FDCWD, TO, flags) with flags "plain" (0) or "exchange"
 * (RENAME_EXCHANGE). Prints "rename=ok" or "rename=errno:N". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: rename2 plain|exchange FROM TO\n"); return 2; }
    unsigned flags = strcmp(argv[1], "exchange") == 0 ? RENAME_EXCHANGE : 0;
    if (syscall(SYS_renameat2, AT_FDCWD, argv[2], AT_FDCWD, argv[3], flags) < 0) printf("rename=errno:%d\n", errno);
    else printf("rename=ok\n");
    return 0;
}
