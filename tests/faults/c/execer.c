/* execer PROGRAM MODE CANARY: one execve of PROGRAM with a malformed argument, then an open of
 * CANARY. Prints "exec=-ERRNO" (only reached if the exec failed) and "canary=0|-ERRNO".
 * Modes: argv-unmapped (argv points into a PROT_NONE page), argv-unterminated (the pointer
 * array runs into that page without a NULL), path-unterminated (the program name runs into it),
 * many-args (20000 short arguments), long-arg (one argument longer than 32 pages),
 * many-env (70000 environment entries). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 4)
        return 2;
    long page = sysconf(_SC_PAGESIZE);
    char *area = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *guard = area + page;
    mprotect(guard, page, PROT_NONE);
    const char *mode = argv[2];
    char *path = argv[1], **args = NULL, **env = NULL, *empty[] = {NULL};
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (strcmp(mode, "argv-unmapped") == 0) {
        args = (char **)guard;
    } else if (strcmp(mode, "argv-unterminated") == 0) {
        args = (char **)guard - 4;
        for (int i = 0; i < 4; i++)
            args[i] = path;
    } else if (strcmp(mode, "path-unterminated") == 0) {
        size_t n = strlen(argv[1]);
        path = guard - n;
        memcpy(path, argv[1], n);
        args = empty;
    } else if (strcmp(mode, "many-args") == 0) {
        args = calloc(20001, sizeof *args);
        for (int i = 0; i < 20000; i++)
            args[i] = "a";
    } else if (strcmp(mode, "long-arg") == 0) {
        size_t n = 32 * page + 16;
        char *big = malloc(n + 1);
        memset(big, 'a', n);
        big[n] = 0;
        args = calloc(3, sizeof *args);
        args[0] = path;
        args[1] = big;
    } else if (strcmp(mode, "many-env") == 0) {
        args = empty;
        env = calloc(70001, sizeof *env);
        for (int i = 0; i < 70000; i++)
            env[i] = "A=1";
    } else {
        return 2;
    }
    execve(path, args, env ? env : empty);
    printf("exec=%d\n", -errno);
    int fd = open(argv[3], O_RDONLY | O_CLOEXEC);
    printf("canary=%d\n", fd >= 0 ? 0 : -errno);
    return 0;
}
