/* affinity_watch PATH COUNT [CPU]: open and close PATH COUNT times while a second thread reads
 * the opening thread's CPU set as fast as it can. With CPU, the process first confines itself to
 * that CPU. Prints "before=N held=H other=O after=A": the CPU counts of the set before and after,
 * how many reads saw the set narrowed to one CPU (held) and how many saw any other set than the
 * one before (other, one-CPU sets included), and how many times the opener itself, right after
 * an open returned, saw another set than the one before (own). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static pid_t opener;
static cpu_set_t before;
static volatile int done;
static long held, other, own;

static void *watch(void *unused) {
    (void)unused;
    while (!done) {
        cpu_set_t now;
        if (sched_getaffinity(opener, sizeof now, &now) != 0)
            continue;
        if (!CPU_EQUAL(&now, &before)) {
            other++;
            held += CPU_COUNT(&now) == 1;
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fputs("usage: affinity_watch PATH COUNT [CPU]\n", stderr);
        return 2;
    }
    if (argc > 3) {
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(atoi(argv[3]), &one);
        if (sched_setaffinity(0, sizeof one, &one) != 0) {
            perror("sched_setaffinity");
            return 2;
        }
    }
    opener = (pid_t)syscall(SYS_gettid);
    sched_getaffinity(0, sizeof before, &before);
    pthread_t watcher;
    pthread_create(&watcher, NULL, watch, NULL);
    for (long i = 0, count = atol(argv[2]); i < count; i++) {
        int fd = open(argv[1], O_RDONLY);
        if (fd < 0) {
            perror("open");
            return 1;
        }
        close(fd);
        cpu_set_t now;
        own += sched_getaffinity(0, sizeof now, &now) != 0 || !CPU_EQUAL(&now, &before);
    }
    done = 1;
    pthread_join(watcher, NULL);
    cpu_set_t after;
    sched_getaffinity(0, sizeof after, &after);
    printf("before=%d held=%ld other=%ld own=%ld after=%d same=%d\n", CPU_COUNT(&before), held, other, own,
           CPU_COUNT(&after), CPU_EQUAL(&before, &after));
    return 0;
}
