/* The agent's set-up between fork and exec, without Python: see sandbox/launch.py (STAGES). */
#ifndef FARAMESH_SPAWN_H
#define FARAMESH_SPAWN_H

#include <stddef.h>
#include <linux/filter.h>

#define SPAWN_MAX_RLIMITS 16
#define SPAWN_MAX_DEFAULTS 16
#define SPAWN_MAX_CAPS 64

/* The agent's stages, in the order of the agent rows of sandbox.launch.STAGES; the names are
 * exported as sandbox._spawn.STAGES, which Python compares with those rows before using us. */
#define SPAWN_STAGES(X)                                                                          \
    X(STAGE_RESTORE_SIGNALS, "restore_signals") X(STAGE_CHDIR, "chdir") X(STAGE_CLOSE_FDS, "close_fds") \
    X(STAGE_RLIMITS, "rlimits") X(STAGE_DROP_CAPABILITIES, "drop_capabilities")                           \
    X(STAGE_NO_NEW_PRIVS, "no_new_privs") X(STAGE_LANDLOCK, "landlock")                                   \
    X(STAGE_SECCOMP, "seccomp") X(STAGE_HAND_OVER_LISTENER, "hand_over_listener")

#define SPAWN_STAGE_ENUM(id, name) id,
enum spawn_stage { SPAWN_STAGES(SPAWN_STAGE_ENUM) STAGE_COUNT };
#undef SPAWN_STAGE_ENUM

/* Everything the child needs, prepared by the parent: the child reads it and writes only
 * failed_stage, failed_errno and exec_errno (it shares the parent's memory until it execs or
 * exits). It prints nothing: init writes any message once the child is gone. */
struct spawn_plan {
    int sock;                    /* the socket to the launcher */
    const char *cwd;             /* NULL: keep the working directory */
    int rlimit_count;
    int rlimit_resource[SPAWN_MAX_RLIMITS];
    unsigned long long rlimit_value[SPAWN_MAX_RLIMITS];
    int ruleset;                 /* Landlock ruleset fd, or -1 */
    struct sock_fprog filter;    /* filter.len == 0: no seccomp filter */
    unsigned int seccomp_flags;
    int default_count;           /* signals set to SIG_DFL even when ignored */
    int default_signals[SPAWN_MAX_DEFAULTS];
    int cap_drop_count;          /* capabilities dropped from the bounding set (sandbox/capabilities.py) */
    int cap_drop[SPAWN_MAX_CAPS];
    const char *path;            /* what execve runs */
    char *const *argv;
    char *const *envp;
    int skip_exec;               /* not 0: exit with exit_status instead of exec */
    int exit_status;
    volatile int failed_stage;   /* -1, or the stage that failed */
    volatile int failed_errno;
    volatile int exec_errno;     /* 0, or why execve failed (the child exited 126 or 127) */
};

/* The child's entry point for clone(): never returns. */
int spawn_agent_main(void *plan);

/* Starts the agent (clone(CLONE_VM|CLONE_VFORK) running spawn_agent_main, every signal blocked
 * around it); returns its pid once it has exec'd or exited, or -1 with errno set. */
int start_agent(struct spawn_plan *plan);

/* A stack for a child that runs in its parent's memory, with a guard page below (stack.c). */
#define CHILD_STACK_SIZE (64 * 1024)
struct child_stack { char *map, *low, *top; size_t size; };
int child_stack_map(struct child_stack *stack);    /* 0, or -1 with errno set */
void child_stack_unmap(struct child_stack *stack); /* keeps errno */

/* What init_start.c needs to start the sandbox's init; the child writes only the failed_ fields. */
struct init_start {
    unsigned long long namespaces;  /* CLONE_NEW* flags */
    int cgroup;                     /* cgroup directory fd for CLONE_INTO_CGROUP, or -1 */
    int exit_signal;                /* what init's end sends the launcher */
    int sock, plan, program;        /* the launcher socket's sandbox end, the plan, the init program */
    volatile int failed_stage;      /* -1, an init stage, or INIT_STAGE_COUNT for the execve */
    volatile int failed_errno;
};

/* Returns init's pid once it has exec'd or exited (failed_stage then says why), or -1 with errno. */
int start_init(struct init_start *start);

#endif
