/* by_handle PATH: read PATH by file handle (the "shocker" technique): name_to_handle_at gives
 * an inode handle, open_by_handle_at opens it with no path lookup at all. A handle can also be
 * forged without name_to_handle_at, so the probe tries open_by_handle_at even when the first
 * call fails. Prints "read=<content>" or the errno of each call. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    struct file_handle *handle = calloc(1, sizeof *handle + MAX_HANDLE_SZ);
    handle->handle_bytes = MAX_HANDLE_SZ;
    handle->handle_type = 1; /* FILEID_INO32_GEN: a guessable handle if the first call fails */
    int mount_id, failed = 0;
    if (name_to_handle_at(AT_FDCWD, argv[1], handle, &mount_id, 0) < 0) {
        printf("name_to_handle_at=-1 errno=%d\n", errno);
        handle->handle_bytes = 8;
        failed = 1;
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", argv[1]);
    int mount_fd = open(dirname(dir), O_RDONLY | O_DIRECTORY);
    int fd = open_by_handle_at(mount_fd, handle, O_RDONLY);
    if (fd < 0) { printf("open_by_handle_at=-1 errno=%d\n", errno); return 1; }
    char buf[256] = {0};
    ssize_t got = read(fd, buf, sizeof buf - 1);
    printf("read=%s", got > 0 ? buf : "\n");
    return failed;
}
