/* int80_open PATH: open PATH through the i386 ABI (int $0x80, open is 5 there, not 2) from a
 * 64-bit program, then read it with an ordinary read. A filter that only knows x86_64 numbers
 * would see a different syscall. Prints "read=<content>" or "open=-errno". */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    /* int $0x80 passes 32-bit registers: the path must sit below 4 GiB */
    char *low = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    if (low == MAP_FAILED) { perror("mmap"); return 2; }
    strncpy(low, argv[1], 4095);
    long fd;
    __asm__ volatile ("int $0x80" : "=a"(fd) : "a"(5L), "b"(low), "c"(0L), "d"(0L) : "memory");
    if (fd < 0) { printf("open=%ld\n", fd); return 1; }
    char buf[256] = {0};
    ssize_t got = read((int)fd, buf, sizeof buf - 1);
    printf("read=%s", got > 0 ? buf : "\n");
    return 0;
}
