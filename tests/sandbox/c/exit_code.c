/* Exits with EXIT_CODE when it is non-zero; otherwise 43 when argv[1] is "evil" (the
 * argument a policy forbids) and 0 for anything else. */
#include <string.h>
int main(int argc, char **argv) {
    if (EXIT_CODE) return EXIT_CODE;
    return argc > 1 && strcmp(argv[1], "evil") == 0 ? 43 : 0;
}
