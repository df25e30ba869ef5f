/* fanotify: watch opens with fanotify. The kernel opens each event's file for the listener itself
 * (O_RDWR if asked at init), so a file the agent may only read would come back writable. Prints
 * "fanotify_init=ok|errno:N" and "fanotify_mark=ok|errno:N". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/fanotify.h>

int main(void) {
    int fd = fanotify_init(FAN_CLASS_NOTIF, O_RDWR);
    if (fd < 0) printf("fanotify_init=errno:%d\n", errno); else printf("fanotify_init=ok\n");
    if (fanotify_mark(fd, FAN_MARK_ADD, FAN_OPEN, AT_FDCWD, "/tmp") < 0) printf("fanotify_mark=errno:%d\n", errno);
    else printf("fanotify_mark=ok\n");
    return 0;
}
