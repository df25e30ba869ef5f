/* Starting children that run in their parent's memory until they exec: a stack of their own with a
 * guard page, and the agent's clone (used by sandbox._spawn and by the compiled init alike). */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "spawn.h"

int child_stack_map(struct child_stack *stack)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    stack->size = CHILD_STACK_SIZE + page;
    stack->map = mmap(NULL, stack->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack->map == MAP_FAILED)
        return -1;
    /* The lowest page is a guard: an overflow faults instead of writing into whatever lies below. */
    if (mprotect(stack->map, page, PROT_NONE) < 0) {
        child_stack_unmap(stack);
        return -1;
    }
    stack->low = stack->map + page;
    stack->top = stack->map + stack->size;
    return 0;
}

void child_stack_unmap(struct child_stack *stack)
{
    int saved = errno;
    munmap(stack->map, stack->size);
    errno = saved;
}

/* As posix_spawn: every signal blocked, so no handler of ours may run in the child before it has
 * reset them. The mask is set by the raw system call because pthread_sigmask leaves libc's own
 * signals (32 and 33) open. */
int start_agent(struct spawn_plan *plan)
{
    struct child_stack stack;
    if (child_stack_map(&stack) < 0)
        return -1;
    pid_t pid = -1;
    unsigned long all = ~0UL, old;
    if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, sizeof(all)) == 0) {
        pid = clone(spawn_agent_main, stack.top, CLONE_VM | CLONE_VFORK | SIGCHLD, plan);
        int saved = errno;
        syscall(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, sizeof(old));
        errno = saved;
    }
    child_stack_unmap(&stack);
    return pid;
}
