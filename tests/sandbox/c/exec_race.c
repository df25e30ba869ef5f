/* exec_race ALLOWED DENIED TRIES SECONDS: per try, fork a child whose second thread
 * flips the exec path between ALLOWED and DENIED and argv[1] between "okay" and "evil"
 * while the child execs. ALLOWED exits 0 (43 if it got "evil"), DENIED exits 42.
 * Prints the tally: allowed, bypass_path (42), bypass_argv (43), eperm, enoent, other. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
static char path[256], arg1[16], allowed[256], denied[256];
static volatile int flipping;

static void *flipper(void *unused) {
    (void)unused;
    flipping = 1;
    for (;;) {
        /* the barriers keep the compiler from sinking the stores past the spins */
        strcpy(path, denied);
        strcpy(arg1, "evil");
        __asm__ volatile("" ::: "memory");
        for (volatile int i = 0; i < 300; i++) { }
        strcpy(path, allowed);
        strcpy(arg1, "okay");
        __asm__ volatile("" ::: "memory");
        for (volatile int i = 0; i < 300; i++) { }
    }
    return NULL;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: exec_race ALLOWED DENIED TRIES SECONDS\n"); return 2; }
    strcpy(allowed, argv[1]);
    strcpy(denied, argv[2]);
    long tries = atol(argv[3]), done = 0, tally[6] = {0};
    double deadline = now() + atof(argv[4]);
    for (; done < tries && now() < deadline; done++) {
        pid_t pid = fork();
        if (pid == 0) {
            strcpy(path, allowed);
            strcpy(arg1, "okay");
            pthread_t thread;
            pthread_create(&thread, NULL, flipper, NULL);
            while (!flipping) { }
            char *child_argv[] = {path, arg1, NULL};
            execve(path, child_argv, environ);
            _exit(errno == EPERM ? 101 : errno == ENOENT ? 102 : 103);
        }
        int status;
        waitpid(pid, &status, 0);
        int code = WIFEXITED(status) ? WEXITSTATUS(status) : 200;
        tally[code == 0 ? 0 : code == 42 ? 1 : code == 43 ? 2 : code == 101 ? 3 : code == 102 ? 4 : 5]++;
    }
    printf("tries=%ld allowed=%ld bypass_path=%ld bypass_argv=%ld eperm=%ld enoent=%ld other=%ld\n",
           done, tally[0], tally[1], tally[2], tally[3], tally[4], tally[5]);
    return 0;
}
