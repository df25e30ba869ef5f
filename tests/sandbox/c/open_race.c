/* open_race ALLOWED DENIED TRIES [process]: a thread (or, with "process", a forked
 * sibling writing a MAP_SHARED page) flips the path buffer between ALLOWED and DENIED
 * while the main thread opens and reads it TRIES times. Prints how many opens returned
 * DENIED's content ("secret", which holds SECRET-MARKER), ALLOWED's content, or failed. */
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *path;
static char allowed[4096], denied[4096];
static atomic_int stop;

static void *flipper(void *unused) {
    (void)unused;
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        strcpy(path, denied);
        strcpy(path, allowed);
    }
    return NULL;
}

static int slurp(const char *file, char *out, size_t size) {
    int fd = open(file, O_RDONLY);
    if (fd < 0) return -1;
    ssize_t got = read(fd, out, size - 1);
    close(fd);
    if (got < 0) return -1;
    out[got] = 0;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: open_race ALLOWED DENIED TRIES\n"); return 2; }
    char allowed_content[256], denied_content[256], buf[256];
    strcpy(allowed, argv[1]);
    strcpy(denied, argv[2]);
    if (slurp(allowed, allowed_content, sizeof allowed_content)) { perror("allowed"); return 2; }
    /* the denied content is passed as a known marker: the file itself must stay unreadable */
    strcpy(denied_content, "SECRET-MARKER");
    path = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    strcpy(path, allowed);
    int sibling = argc > 4 && strcmp(argv[4], "process") == 0;
    long tries = atol(argv[3]), secret = 0, normal = 0, failed = 0, other = 0;
    pthread_t thread;
    pid_t child = -1;
    if (sibling) {
        child = fork();
        if (child == 0) { flipper(NULL); _exit(0); }
    } else {
        pthread_create(&thread, NULL, flipper, NULL);
    }
    for (long i = 0; i < tries; i++) {
        int fd = open(path, O_RDONLY);
        if (fd < 0) { failed++; continue; }
        ssize_t got = read(fd, buf, sizeof buf - 1);
        close(fd);
        buf[got < 0 ? 0 : got] = 0;
        if (strstr(buf, denied_content)) secret++;
        else if (strcmp(buf, allowed_content) == 0) normal++;
        else other++;
    }
    atomic_store(&stop, 1);
    if (sibling) { kill(child, SIGKILL); waitpid(child, NULL, 0); }
    else pthread_join(thread, NULL);
    printf("secret=%ld allowed=%ld failed=%ld other=%ld\n", secret, normal, failed, other);
    return 0;
}
