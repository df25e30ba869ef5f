/* path_race MODE ALLOWED DENIED TRIES: open-and-read a path buffer TRIES times while someone
 * else flips it between ALLOWED and DENIED, hoping the kernel opens DENIED after the supervisor
 * checked ALLOWED. MODE names who flips and who opens:
 *   thread  a second thread of this process flips, the main thread opens;
 *   shm     a forked sibling process flips a MAP_SHARED page, this process opens;
 *   vfork   a thread flips, and each open is made by a fresh vfork child sharing our memory.
 * Prints "secret=N allowed=N failed=N" (secret: reads that returned DENIED's content). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static char *path;            /* the contested buffer, in a MAP_SHARED page */
static char allowed[512], denied[512], secret_text[256];
static atomic_int *stop;
static long *counts;          /* secret, allowed, failed: shared with vfork children */

static void hold(void) { /* keep each value about as long as the other */
    for (volatile int i = 0; i < 200; i++) {}
}

static void *flip(void *unused) {
    (void)unused;
    while (!atomic_load_explicit(stop, memory_order_relaxed)) {
        strcpy(path, denied);
        hold();
        strcpy(path, allowed);
        hold();
    }
    return NULL;
}

static void open_once(void) {
    char buf[256] = {0};
    int fd = open(path, O_RDONLY);
    if (fd < 0) { counts[2]++; return; }
    ssize_t got = read(fd, buf, sizeof buf - 1);
    close(fd);
    counts[got > 0 && strcmp(buf, secret_text) == 0 ? 0 : 1]++;
}

int main(int argc, char **argv) {
    if (argc != 5) return 2;
    snprintf(allowed, sizeof allowed, "%s", argv[2]);
    snprintf(denied, sizeof denied, "%s", argv[3]);
    strcpy(secret_text, "TOPSECRET-4711\n");
    char *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    path = shared;
    stop = (atomic_int *)(shared + 1024);
    counts = (long *)(shared + 2048);
    strcpy(path, allowed);
    long tries = atol(argv[4]);
    pthread_t thread;
    pid_t flipper = -1;
    if (strcmp(argv[1], "shm") == 0) {
        flipper = fork();
        if (flipper == 0) { flip(NULL); _exit(0); }
    } else {
        pthread_create(&thread, NULL, flip, NULL);
    }
    for (long i = 0; i < tries; i++) {
        if (strcmp(argv[1], "vfork") == 0) {
            pid_t child = vfork();
            if (child == 0) { open_once(); _exit(0); }
            waitpid(child, NULL, 0);
        } else {
            open_once();
        }
    }
    atomic_store(stop, 1);
    if (flipper > 0) waitpid(flipper, NULL, 0); else pthread_join(thread, NULL);
    printf("secret=%ld allowed=%ld failed=%ld\n", counts[0], counts[1], counts[2]);
    return 0;
}
