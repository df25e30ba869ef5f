/* opener DIR THREADS COUNT [wait]: each thread t creates DIR/t<t>-<i> (i < COUNT) with O_CREAT,
 * writes the name into it and closes it. Prints one "fail <path> <errno>" line per failed open,
 * then "opened=<n>". With "wait", prints "ready" and reads a line from stdin before starting. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *dir;
static int count;
static long opened;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void *run(void *arg) {
    long thread = (long)arg, mine = 0;
    char path[4096], name[64];
    for (int i = 0; i < count; i++) {
        int len = snprintf(name, sizeof name, "t%ld-%d", thread, i);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) {
            int err = errno;
            pthread_mutex_lock(&out_lock);
            printf("fail %s %d\n", path, err);
            pthread_mutex_unlock(&out_lock);
            continue;
        }
        if (write(fd, name, len) != len) {
            pthread_mutex_lock(&out_lock);
            printf("short %s\n", path);
            pthread_mutex_unlock(&out_lock);
        }
        close(fd);
        mine++;
    }
    __atomic_add_fetch(&opened, mine, __ATOMIC_SEQ_CST);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: opener DIR THREADS COUNT [wait]\n");
        return 2;
    }
    dir = argv[1];
    int threads = atoi(argv[2]);
    count = atoi(argv[3]);
    if (argc > 4 && strcmp(argv[4], "wait") == 0) {
        char line[16];
        printf("ready\n");
        fflush(stdout);
        if (!fgets(line, sizeof line, stdin))
            return 3;
    }
    pthread_t ids[256];
    for (long t = 0; t < threads && t < 256; t++)
        pthread_create(&ids[t], NULL, run, (void *)t);
    for (int t = 0; t < threads && t < 256; t++)
        pthread_join(ids[t], NULL);
    printf("opened=%ld\n", opened);
    return 0;
}
