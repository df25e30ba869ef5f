/* Raw system calls for code that runs in a parent's memory between clone(CLONE_VM|CLONE_VFORK)
 * and execve, where no libc function may be called (see child.c). */
#ifndef FARAMESH_RAW_SYSCALL_H
#define FARAMESH_RAW_SYSCALL_H

#include <sys/syscall.h>

/* Not a stack-protector check either: its failure path is a libc call. */
#define CHILD_CODE __attribute__((no_stack_protector))

/* Returns the result, or -errno. */
static inline CHILD_CODE long sys6(long nr, long a, long b, long c, long d, long e, long f)
{
#if defined(__x86_64__)
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
#elif defined(__aarch64__)
    register long x8 __asm__("x8") = nr;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    register long x5 __asm__("x5") = f;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5) : "memory");
    return x0;
#else
#error "sandbox._spawn supports x86_64 and aarch64"
#endif
}

#define SYS(nr, a, b, c, d, e, f) sys6((nr), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))

#endif
