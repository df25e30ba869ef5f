/* fd_flood SECRET PUBLIC: fill the descriptor table (soft limit raised to the hard one) with
 * dups until EMFILE, free a single slot, then open SECRET and PUBLIC. A supervisor that failed
 * open when it cannot inject a descriptor would let SECRET through here. Prints
 * "limit=<hard RLIMIT_NOFILE>", "fds=full", "secret=read|errno:N", "public=read|errno:N". */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/resource.h>
#include <unistd.h>

static void try_open(const char *name, const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) printf("%s=errno:%d\n", name, errno); else printf("%s=read\n", name);
    if (fd >= 0) close(fd);
}

int main(int argc, char **argv) {
    if (argc != 3) return 2;
    struct rlimit limit;
    getrlimit(RLIMIT_NOFILE, &limit);
    limit.rlim_cur = limit.rlim_max;
    setrlimit(RLIMIT_NOFILE, &limit);
    long fds = 3, last = -1;
    for (int fd; (fd = dup(0)) >= 0; fds++) last = fd;
    printf("limit=%ld\nfds=%s\n", (long)limit.rlim_max, errno == EMFILE && fds > 3 ? "full" : "not-full");
    close((int)last);
    try_open("secret", argv[1]);
    try_open("public", argv[2]);
    return 0;
}
