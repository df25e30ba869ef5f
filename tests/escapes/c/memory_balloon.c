/* memory_balloon MIB: touch MIB mebibytes in 64 MiB chunks, printing "touched=M" after each
 * chunk, then "done". An out-of-memory kill or a failed allocation ends the list early. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    long wanted = atol(argv[1]), chunk = 64L << 20;
    for (long touched = 64; touched <= wanted; touched += 64) {
        char *block = malloc(chunk);
        if (!block) { printf("malloc failed\n"); return 1; }
        memset(block, 1, chunk);
        printf("touched=%ld\n", touched);
        fflush(stdout);
    }
    printf("done\n");
    return 0;
}
