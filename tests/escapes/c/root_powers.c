/* root_powers: privileged calls that act on the whole machine rather than on a file, socket or
 * program, so no tool call ever names them: setting the host's clock (to the time it already
 * has) and reading the kernel log. Prints "NAME=ok" or "NAME=errno:N". */
#include <errno.h>
#include <stdio.h>
#include <sys/klog.h>
#include <time.h>

static void report(const char *name, long got) {
    if (got < 0) printf("%s=errno:%d\n", name, errno); else printf("%s=ok\n", name);
}

int main(void) {
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    report("clock_settime", clock_settime(CLOCK_REALTIME, &now));
    char log[64];
    report("syslog_read", klogctl(3, log, sizeof log)); /* SYSLOG_ACTION_READ_ALL */
    return 0;
}
