/* stuck STUCK_PATH DIR COUNT: one thread creates STUCK_PATH (its decision never comes) while the
 * main thread and a forked child each create DIR/m-<i> and DIR/c-<i> for i < COUNT. Prints
 * "stuck ret=..." if the stuck open ever returns, then "others=<opened>" and exits at once. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *stuck_path;

static void *stuck(void *arg) {
    (void)arg;
    int fd = open(stuck_path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    printf("stuck ret=%d\n", fd >= 0 ? 0 : -errno);
    fflush(stdout);
    return NULL;
}

static int create_all(const char *dir, char tag, int count) {
    char path[4096];
    int ok = 0;
    for (int i = 0; i < count; i++) {
        snprintf(path, sizeof path, "%s/%c-%d", dir, tag, i);
        int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        if (fd >= 0) {
            close(fd);
            ok++;
        }
    }
    return ok;
}

int main(int argc, char **argv) {
    if (argc != 4)
        return 2;
    stuck_path = argv[1];
    int count = atoi(argv[3]), status = 0;
    pthread_t id;
    pthread_create(&id, NULL, stuck, NULL);
    usleep(200000); /* the stuck decision has started */
    pid_t child = fork();
    if (child == 0)
        _exit(create_all(argv[2], 'c', count));
    int mine = create_all(argv[2], 'm', count);
    waitpid(child, &status, 0);
    printf("others=%d\n", mine + (WIFEXITED(status) ? WEXITSTATUS(status) : 0));
    fflush(stdout);
    _exit(0);
}
