/* tiocsti: push a keystroke into a terminal's input queue with TIOCSTI, the way a sandboxed
 * program would type commands into the shell that started it (CVE-2017-5226). Uses a fresh
 * pseudo-terminal so nothing real is typed into. Prints "tiocsti=ok" or "tiocsti=errno:N". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(void) {
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) || unlockpt(master)) { perror("ptmx"); return 2; }
    int slave = open(ptsname(master), O_RDWR | O_NOCTTY);
    if (slave < 0) { perror("pts"); return 2; }
    char key = 'x';
    if (ioctl(slave, TIOCSTI, &key) < 0) printf("tiocsti=errno:%d\n", errno); else printf("tiocsti=ok\n");
    return 0;
}
