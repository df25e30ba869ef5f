/* personality: switch the execution domain to PER_LINUX32, then turn off address space
 * randomisation, then make every readable mapping executable. Prints "NAME=ok" or
 * "NAME=errno:N" per attempt; the query (0xffffffff) only reads and must always work. */
#include <errno.h>
#include <stdio.h>
#include <sys/personality.h>

int main(void) {
    struct { const char *name; unsigned long persona; } tries[] = {
        {"query", 0xffffffffUL}, {"linux32", PER_LINUX32}, {"addr_no_randomize", ADDR_NO_RANDOMIZE},
        {"read_implies_exec", READ_IMPLIES_EXEC},
    };
    for (unsigned i = 0; i < sizeof tries / sizeof tries[0]; i++) {
        int got = personality(tries[i].persona);
        if (got < 0) printf("%s=errno:%d\n", tries[i].name, errno); else printf("%s=ok\n", tries[i].name);
    }
    return 0;
}
