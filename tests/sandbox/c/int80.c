/* A 64-bit program making an i386 syscall with int 0x80 (getpid is 20 there). */
#include <stdio.h>
int main(void) {
    long result;
    __asm__ volatile ("int $0x80" : "=a"(result) : "a"(20L) : "memory");
    printf("int80 getpid=%ld\n", result);
    return 0;
}
