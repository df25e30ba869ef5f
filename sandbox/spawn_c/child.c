/* The agent between clone(CLONE_VM|CLONE_VFORK) and execve. It runs on its own stack in the
 * parent's memory, so it makes raw system calls only and calls no libc function at all (a first
 * call through the PLT would run the dynamic linker here; `-z now` binds them early anyway): no
 * errno, no locks, no allocation, and it writes nothing but the plan's result fields. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <linux/capability.h>
#include <linux/seccomp.h>

#include "raw_syscall.h"
#include "spawn.h"

#define SECCOMP_SET_MODE_FILTER_OP 1
#define KERNEL_NSIG 64
#define ACK "taken"
#define PREFIX "listener "

struct kernel_sigaction {  /* the kernel's layout on x86_64 and aarch64 */
    void *handler;
    unsigned long flags;
    void *restorer;
    unsigned long mask;
};

struct kernel_rlimit { unsigned long long cur, max; };

static CHILD_CODE __attribute__((noreturn)) void leave(int status)
{
    for (;;)
        SYS(SYS_exit_group, status, 0, 0, 0, 0, 0);
}

static CHILD_CODE __attribute__((noreturn)) void fail(struct spawn_plan *plan, int stage, long result)
{
    plan->failed_errno = (int)-result;
    plan->failed_stage = stage;
    leave(125);
}

static CHILD_CODE int listed_default(const struct spawn_plan *plan, int sig)
{
    for (int i = 0; i < plan->default_count; i++)
        if (plan->default_signals[i] == sig)
            return 1;
    return 0;
}

/* As posix_spawn: no handler may run here (it would run on the parent's memory), so every
 * handled signal, and each listed one, goes back to SIG_DFL; then the mask is emptied. */
static CHILD_CODE long restore_signals(const struct spawn_plan *plan)
{
    struct kernel_sigaction dfl = {0};
    unsigned long empty = 0;
    for (int sig = 1; sig <= KERNEL_NSIG; sig++) {
        struct kernel_sigaction old;
        if (sig == SIGKILL || sig == SIGSTOP)
            continue;
        if (SYS(SYS_rt_sigaction, sig, NULL, &old, sizeof(unsigned long), 0, 0) < 0)
            continue;
        if (old.handler == SIG_DFL || (old.handler == SIG_IGN && !listed_default(plan, sig)))
            continue;
        long r = SYS(SYS_rt_sigaction, sig, &dfl, NULL, sizeof(unsigned long), 0, 0);
        if (r < 0)
            return r;
    }
    return SYS(SYS_rt_sigprocmask, SIG_SETMASK, &empty, NULL, sizeof(unsigned long), 0, 0);
}

/* Close every fd but 0-2, the socket and the ruleset (closed once applied). */
static CHILD_CODE long close_fds(const struct spawn_plan *plan)
{
    int keep[2] = {plan->sock, plan->ruleset};
    if (keep[1] >= 0 && keep[1] < keep[0]) {
        keep[0] = plan->ruleset;
        keep[1] = plan->sock;
    }
    unsigned int next = 3;
    for (int i = 0; i < 2; i++) {
        if (keep[i] < 3)
            continue;
        if ((unsigned int)keep[i] > next) {
            long r = SYS(SYS_close_range, next, keep[i] - 1, 0, 0, 0, 0);
            if (r < 0)
                return r;
        }
        next = (unsigned int)keep[i] + 1;
    }
    return SYS(SYS_close_range, next, ~0U, 0, 0, 0, 0);
}

static CHILD_CODE long set_rlimits(const struct spawn_plan *plan)
{
    for (int i = 0; i < plan->rlimit_count; i++) {
        struct kernel_rlimit both = {plan->rlimit_value[i], plan->rlimit_value[i]};
        long r = SYS(SYS_prlimit64, 0, plan->rlimit_resource[i], &both, NULL, 0, 0);
        if (r < 0)
            return r;
    }
    return 0;
}

static CHILD_CODE long restrict_landlock(const struct spawn_plan *plan)
{
    if (plan->ruleset < 0)
        return 0;
    long r = SYS(SYS_landlock_restrict_self, plan->ruleset, 0, 0, 0, 0, 0);
    SYS(SYS_close, plan->ruleset, 0, 0, 0, 0, 0);
    return r;
}

static CHILD_CODE size_t format_fd(char *out, int fd)
{
    char digits[16];
    size_t n = 0, len = 0;
    do {
        digits[n++] = (char)('0' + fd % 10);
        fd /= 10;
    } while (fd > 0);
    while (n > 0)
        out[len++] = digits[--n];
    return len;
}

/* As sandbox/_nethandover.offer_listener: the fd number by a plain send (sendmsg is trapped),
 * the launcher takes its copy with pidfd_getfd and acknowledges, then ours is closed. */
static CHILD_CODE long hand_over(const struct spawn_plan *plan, long listener)
{
    long r;
    if (listener < 0) {
        do
            r = SYS(SYS_sendto, plan->sock, "ready", 5, 0, NULL, 0);
        while (r == -EINTR);
        return r < 0 ? r : SYS(SYS_close, plan->sock, 0, 0, 0, 0, 0);
    }
    int one = 1;
    r = SYS(SYS_setsockopt, plan->sock, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one), 0);
    if (r < 0)
        return r;
    char msg[32] = PREFIX;
    size_t len = sizeof(PREFIX) - 1 + format_fd(msg + sizeof(PREFIX) - 1, (int)listener);
    do
        r = SYS(SYS_sendto, plan->sock, msg, len, 0, NULL, 0);
    while (r == -EINTR);
    if (r < 0)
        return r;
    char ack[sizeof(ACK) - 1];
    do
        r = SYS(SYS_recvfrom, plan->sock, ack, sizeof(ack), 0, NULL, NULL);
    while (r == -EINTR);
    if (r < 0)
        return r;
    if (r != (long)sizeof(ack))
        return -ECONNRESET;
    for (size_t i = 0; i < sizeof(ack); i++)  /* no memcmp: see the top of this file */
        if (ack[i] != ACK[i])
            return -ECONNRESET;
    SYS(SYS_close, listener, 0, 0, 0, 0, 0);
    return SYS(SYS_close, plan->sock, 0, 0, 0, 0, 0);
}

/* As sandbox/capabilities.drop: out of the bounding set (EINVAL: a capability this kernel does not
 * have; EPERM: not root, which then gains nothing from it), the ambient set emptied, and out of the inheritable, permitted and effective sets, so the
 * execve leaves root without them. */
static CHILD_CODE long drop_capabilities(const struct spawn_plan *plan)
{
    if (plan->cap_drop_count == 0)
        return 0;
    struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct data[2];
    long r;
    for (int i = 0; i < plan->cap_drop_count; i++) {
        r = SYS(SYS_prctl, PR_CAPBSET_DROP, plan->cap_drop[i], 0, 0, 0, 0);
        if (r < 0 && r != -EINVAL && r != -EPERM)  /* EPERM: no CAP_SETPCAP; the rest still goes */
            return r;
    }
    if ((r = SYS(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0, 0)) < 0)
        return r;
    if ((r = SYS(SYS_capget, &header, data, 0, 0, 0, 0)) < 0)
        return r;
    for (int i = 0; i < plan->cap_drop_count; i++) {
        int cap = plan->cap_drop[i];
        if (cap < 0 || cap >= 64)
            continue;
        unsigned int bit = 1u << (cap % 32);
        data[cap / 32].effective &= ~bit;
        data[cap / 32].permitted &= ~bit;
        data[cap / 32].inheritable &= ~bit;
    }
    return SYS(SYS_capset, &header, data, 0, 0, 0, 0);
}

CHILD_CODE int spawn_agent_main(void *arg)
{
    struct spawn_plan *plan = arg;
    long r, listener = -1;
    if ((r = restore_signals(plan)) < 0)
        fail(plan, STAGE_RESTORE_SIGNALS, r);
    if (plan->cwd && (r = SYS(SYS_chdir, plan->cwd, 0, 0, 0, 0, 0)) < 0)
        fail(plan, STAGE_CHDIR, r);
    if ((r = close_fds(plan)) < 0)
        fail(plan, STAGE_CLOSE_FDS, r);
    if ((r = set_rlimits(plan)) < 0)
        fail(plan, STAGE_RLIMITS, r);
    if ((r = drop_capabilities(plan)) < 0)
        fail(plan, STAGE_DROP_CAPABILITIES, r);
    if ((r = SYS(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0)) < 0)
        fail(plan, STAGE_NO_NEW_PRIVS, r);
    if ((r = restrict_landlock(plan)) < 0)
        fail(plan, STAGE_LANDLOCK, r);
    if (plan->filter.len) {
        listener = SYS(SYS_seccomp, SECCOMP_SET_MODE_FILTER_OP, plan->seccomp_flags, &plan->filter, 0, 0, 0);
        if (listener < 0)
            fail(plan, STAGE_SECCOMP, listener);
    }
    if ((r = hand_over(plan, listener)) < 0)
        fail(plan, STAGE_HAND_OVER_LISTENER, r);
    if (plan->skip_exec)
        leave(plan->exit_status);
    r = SYS(SYS_execve, plan->path, plan->argv, plan->envp, 0, 0, 0);
    plan->exec_errno = (int)-r;  /* init prints the shell-style message */
    leave(r == -ENOENT ? 127 : 126);
}
