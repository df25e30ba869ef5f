/* Starts the sandbox's init: clone3(CLONE_VM|CLONE_VFORK) into the new namespaces (and the cgroup),
 * then the child execs the compiled init at once, so no copy of the launcher's memory is ever made
 * or unmapped. The child runs on its own stack in the launcher's memory until that execve: raw
 * system calls only, as in child.c. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>
#include <linux/sched.h>

#include "raw_syscall.h"
#include "spawn.h"
#include "../init_c/init.h"

#define HIGH_FD 16  /* above every fd init is given, so moving them never overwrites one */
#ifndef AT_EMPTY_PATH
#define AT_EMPTY_PATH 0x1000
#endif

/* clone3 with a stack of our own: the child starts on it with no frame of its parent's, so it
 * must call ``child`` straight from the instruction after the system call. */
static long clone3_calling(struct clone_args *args, int (*child)(void *), void *arg)
{
#if defined(__x86_64__)
    long ret;
    register long r12 __asm__("r12") = (long)child;
    register long r13 __asm__("r13") = (long)arg;
    __asm__ volatile("syscall\n\t"
                     "test %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     "xor %%ebp, %%ebp\n\t"
                     "mov %%r13, %%rdi\n\t"
                     "call *%%r12\n\t"
                     "mov %%eax, %%edi\n\t"
                     "mov %[exit_nr], %%eax\n\t"
                     "syscall\n\t"
                     "ud2\n"
                     "1:"
                     : "=a"(ret)
                     : "0"((long)SYS_clone3), "D"(args), "S"(sizeof(*args)), "r"(r12), "r"(r13),
                       [exit_nr] "i"(SYS_exit_group)
                     : "rcx", "r11", "memory", "cc");
    return ret;
#elif defined(__aarch64__)
    register long x8 __asm__("x8") = SYS_clone3;
    register long x0 __asm__("x0") = (long)args;
    register long x1 __asm__("x1") = (long)sizeof(*args);
    register long x9 __asm__("x9") = (long)child;
    register long x10 __asm__("x10") = (long)arg;
    __asm__ volatile("svc 0\n\t"
                     "cbnz x0, 1f\n\t"
                     "mov x29, xzr\n\t"
                     "mov x0, x10\n\t"
                     "blr x9\n\t"
                     "mov x8, %[exit_nr]\n\t"
                     "svc 0\n\t"
                     "brk #0\n"
                     "1:"
                     : "+r"(x0)
                     : "r"(x8), "r"(x1), "r"(x9), "r"(x10), [exit_nr] "i"(SYS_exit_group)
                     : "x30", "memory", "cc");
    return x0;
#else
#error "sandbox._spawn supports x86_64 and aarch64"
#endif
}

static CHILD_CODE __attribute__((noreturn)) void init_fail(struct init_start *start, int stage, long result)
{
    start->failed_errno = (int)-result;
    start->failed_stage = stage;
    for (;;)
        SYS(SYS_exit_group, 125, 0, 0, 0, 0, 0);
}

/* Puts ``from`` at ``to`` (a dup2 that clears close-on-exec unless ``flags`` sets it). */
static CHILD_CODE long move_fd(int from, int to, int flags)
{
    return SYS(SYS_dup3, from, to, flags, 0, 0, 0);
}

static CHILD_CODE int init_start_main(void *arg)
{
    struct init_start *start = arg;
    static char name[] = "faramesh-sandbox-init";
    char *argv[] = {name, NULL}, *envp[] = {NULL};
    long r = SYS(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0, 0);
    if (r < 0)
        init_fail(start, INIT_DIE_WITH_LAUNCHER, r);
    /* Nothing of the launcher's stays reachable via /proc/1/fd: three descriptors, at fixed numbers. */
    long sock = SYS(SYS_fcntl, start->sock, F_DUPFD, HIGH_FD, 0, 0, 0);
    long plan = sock < 0 ? sock : SYS(SYS_fcntl, start->plan, F_DUPFD, HIGH_FD, 0, 0, 0);
    long program = plan < 0 ? plan : SYS(SYS_fcntl, start->program, F_DUPFD, HIGH_FD, 0, 0, 0);
    if (program < 0)
        init_fail(start, INIT_CLOSE_FDS, program);
    if ((r = move_fd((int)sock, INIT_SOCK_FD, 0)) < 0 || (r = move_fd((int)plan, INIT_PLAN_FD, 0)) < 0 ||
        (r = move_fd((int)program, INIT_PROGRAM_FD, O_CLOEXEC)) < 0 ||
        (r = SYS(SYS_close_range, INIT_PROGRAM_FD + 1, ~0U, 0, 0, 0, 0)) < 0)
        init_fail(start, INIT_CLOSE_FDS, r);
    r = SYS(SYS_execveat, INIT_PROGRAM_FD, "", argv, envp, AT_EMPTY_PATH, 0);
    init_fail(start, INIT_STAGE_COUNT, r);  /* past the stages: the exec itself */
    return 125;
}

int start_init(struct init_start *start)
{
    struct child_stack stack;
    if (child_stack_map(&stack) < 0)
        return -1;
    struct clone_args args;
    memset(&args, 0, sizeof(args));
    args.flags = start->namespaces | CLONE_VM | CLONE_VFORK | (start->cgroup >= 0 ? CLONE_INTO_CGROUP : 0);
    args.exit_signal = (uint64_t)start->exit_signal;
    args.stack = (uint64_t)(uintptr_t)stack.low;
    args.stack_size = (uint64_t)(stack.top - stack.low);
    args.cgroup = start->cgroup >= 0 ? (uint64_t)start->cgroup : 0;
    long pid = -ENOMEM;
    unsigned long all = ~0UL, old;
    /* Every signal blocked, as for the agent (module.c): no handler of ours may run in the child. */
    if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, sizeof(all)) == 0) {
        pid = clone3_calling(&args, init_start_main, start);
        syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, sizeof(old));
    } else {
        pid = -errno;
    }
    child_stack_unmap(&stack);
    if (pid < 0) {
        errno = (int)-pid;
        return -1;
    }
    return (int)pid;
}
