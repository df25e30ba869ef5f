/* The sandbox's init (pid 1) as a program of its own: see sandbox/init_spawn.py. */
#ifndef FARAMESH_INIT_H
#define FARAMESH_INIT_H

#include <stddef.h>
#include <stdint.h>

/* init's stages, in the order of the init rows of sandbox.launch.STAGES; exported by sandbox._spawn
 * as INIT_STAGES, and written at the head of every plan, which init refuses if they differ. The
 * first two run in the clone child before its execve (sandbox/spawn_c/init_start.c). */
#define INIT_STAGES(X)                                                                               \
    X(INIT_DIE_WITH_LAUNCHER, "die_with_launcher") X(INIT_CLOSE_FDS, "close_fds")                    \
    X(INIT_AWAIT_RELEASE, "await_release") X(INIT_NEW_SESSION, "new_session") X(INIT_MOUNTS, "mounts") \
    X(INIT_HOSTNAME, "hostname") X(INIT_LOOPBACK, "loopback") X(INIT_FORK_AGENT, "fork_agent")

#define INIT_STAGE_ENUM(id, name) id,
enum init_stage { INIT_STAGES(INIT_STAGE_ENUM) INIT_STAGE_COUNT };
#undef INIT_STAGE_ENUM

/* init's descriptors after its execve: nothing else of the launcher's is open. */
#define INIT_SOCK_FD 3   /* the socket to the launcher */
#define INIT_PLAN_FD 4   /* the plan (a memfd), closed once read */
#define INIT_PROGRAM_FD 5  /* the program itself (close-on-exec) */

/* The plan: PLAN_MAGIC, the stage names (each NUL-terminated, then an empty one), then records of
 * one tag byte, a little-endian u32 length and the payload. Strings end with their only NUL. */
#define PLAN_MAGIC "faramesh-init-plan-1"
#define PLAN_TAGS(X)                                                                                 \
    X(TAG_HOSTNAME, 'h')   /* string */                                                              \
    X(TAG_LOOPBACK, 'l')   /* empty */                                                               \
    X(TAG_MOUNT, 'm')      /* u64 flags, then source, target, fstype, data: strings, "" for none */  \
    X(TAG_MAKE, 'd')       /* u8 kind (MAKE_*), then the path and a symlink's content ("" for none) */ \
    X(TAG_RULESET, 'r')    /* u64 fs, net, scoped, file rights; u32 attribute size */                \
    X(TAG_PATH_RULE, 'p')  /* u64 rights, then the path */                                           \
    X(TAG_PORT_RULE, 'n')  /* u64 rights, u64 port */                                                \
    X(TAG_CWD, 'c')        /* string */                                                              \
    X(TAG_RLIMIT, 'L')     /* u32 resource, u64 value */                                             \
    X(TAG_FILTER, 'F')     /* BPF instructions */                                                    \
    X(TAG_SECCOMP_FLAGS, 'f') /* u32 */                                                              \
    X(TAG_DEFAULT_SIGNAL, 's') /* u32 */                                                             \
    X(TAG_SEARCH, 'P')     /* the PATH to search argv[0] in when it has no '/' */                    \
    X(TAG_ARG, 'a')        /* string, one per argument */                                            \
    X(TAG_ENV, 'e')        /* string, one per variable */                                            \
    X(TAG_NO_EXEC, 'x')    /* u32 exit status, then the bytes init prints: CMD cannot be run */         \
    X(TAG_LATE, 'w')       /* empty: the command (c P a e x) comes with the release, see LATE_TAGS */ \
    X(TAG_END, 'z')        /* empty: the last record; a plan without it was cut short */

/* The records of a late command: a second plan (the same head) sent with the release, with the
 * agent's stdin, stdout and stderr (a service's prepared sandbox: launcher/serve.py). */
#define LATE_TAGS "cPaexz"
#define LATE_FDS 4  /* the late plan, then the agent's stdin, stdout, stderr */

/* The mount stage's steps, in order: mounts, and what is made in a tmpfs mounted just before
 * (sandbox.mounts.Make): a directory, an empty file (a mount point) or a symlink. */
enum mount_kind { MOUNT = 'm', MAKE_DIR = 'd', MAKE_FILE = 'f', MAKE_SYMLINK = 'l' };

struct init_mount {
    int kind;                                     /* enum mount_kind */
    uint64_t flags;
    const char *source, *target, *fstype, *data;  /* NULL for "" except target; a symlink's content
                                                   * is its source, the path made its target */
};

#endif
