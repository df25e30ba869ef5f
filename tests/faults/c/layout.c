/* layout CMDFD: places strings against an inaccessible page and makes trapped calls on them.
 * Memory: RW_PAGES read-write pages followed by a PROT_NONE guard page. Commands, one per line on
 * CMDFD, each answered with one line on stdout:
 *   put HEX          copy the bytes so the last one sits just before the guard: "addr=0x..."
 *   ptrs N NULLTERM  N pointers (to a "x" string), NULL-terminated if NULLTERM is 1, ending at
 *                    the guard: "addr=0x..."
 *   open HEX         put, then open(O_RDONLY) it: "ret=0" or "ret=-ERRNO"
 *   rename HEX HEX2  put HEX at the guard, HEX2 in a static buffer, rename: "ret=..."
 *   canary PATH      open(PATH, O_RDONLY): "ret=..." (shows the supervisor still answers)
 *   rawopen ADDR     open(O_RDONLY) of the string at address ADDR (hex; "guard" for the guard page)
 * An empty HEX is written as "-". */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define RW_PAGES 160 /* room for more than 16384 pointers */

static char *area, *guard;
static long page;

static size_t unhex(const char *hex, char *out, size_t room) {
    size_t n = 0;
    if (strcmp(hex, "-") == 0)
        return 0;
    for (; hex[0] && hex[1] && n < room; hex += 2) {
        unsigned v;
        sscanf(hex, "%2x", &v);
        out[n++] = (char)v;
    }
    return n;
}

static char *put(const char *hex) {
    static char scratch[3 * 4096 * 4];
    size_t n = unhex(hex, scratch, (size_t)(guard - area));
    char *at = guard - n;
    memcpy(at, scratch, n);
    return at;
}

static void answer(long ret) {
    printf("ret=%ld\n", ret < 0 ? -(long)errno : 0L);
}

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    FILE *cmds = fdopen(atoi(argv[1]), "r");
    page = sysconf(_SC_PAGESIZE);
    area = mmap(NULL, (RW_PAGES + 1) * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED || !cmds)
        return 3;
    guard = area + RW_PAGES * page;
    mprotect(guard, page, PROT_NONE);
    setvbuf(stdout, NULL, _IOLBF, 0);
    static char line[65536], op[16], a[32768], b[32768];
    static char second[16384];
    while (fgets(line, sizeof line, cmds)) {
        b[0] = 0;
        if (sscanf(line, "%15s %32767s %32767s", op, a, b) < 1)
            continue;
        if (strcmp(op, "put") == 0) {
            printf("addr=%p\n", (void *)put(a));
        } else if (strcmp(op, "ptrs") == 0) {
            long n = atol(a), term = atol(b);
            char **at = (char **)guard - n - (term ? 1 : 0);
            strcpy(area, "x");
            for (long i = 0; i < n; i++)
                at[i] = area;
            if (term)
                at[n] = NULL;
            printf("addr=%p\n", (void *)at);
        } else if (strcmp(op, "open") == 0) {
            int fd = open(put(a), O_RDONLY | O_CLOEXEC);
            answer(fd);
            if (fd >= 0)
                close(fd);
        } else if (strcmp(op, "rename") == 0) {
            size_t n = unhex(b, second, sizeof second - 1);
            second[n] = 0;
            answer(rename(put(a), second));
        } else if (strcmp(op, "rawopen") == 0) {
            char *at = strcmp(a, "guard") == 0 ? guard : (char *)strtoul(a, NULL, 16);
            int fd = open(at, O_RDONLY | O_CLOEXEC);
            answer(fd);
            if (fd >= 0)
                close(fd);
        } else if (strcmp(op, "canary") == 0) {
            int fd = open(a, O_RDONLY | O_CLOEXEC);
            answer(fd);
            if (fd >= 0)
                close(fd);
        } else {
            printf("unknown\n");
        }
    }
    return 0;
}
