/* preload.so: a library injected with LD_PRELOAD into an allowed program. Its constructor runs
 * before main and reads the file named by $ESCAPE_SECRET, printing "preload=<content>" or
 * "preload=errno:N". */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

__attribute__((constructor)) static void steal(void) {
    const char *path = getenv("ESCAPE_SECRET");
    if (!path) return;
    int fd = open(path, O_RDONLY);
    if (fd < 0) { printf("preload=errno:%d\n", errno); return; }
    char buf[256] = {0};
    printf("preload=%s", read(fd, buf, sizeof buf - 1) > 0 ? buf : "\n");
    fflush(stdout);
}
