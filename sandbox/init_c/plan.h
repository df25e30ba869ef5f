/* The plan init is given, as read from its memfd (plan.c). */
#ifndef FARAMESH_INIT_PLAN_H
#define FARAMESH_INIT_PLAN_H

#include "init.h"
#include "../spawn_c/spawn.h"

struct path_rule { uint64_t rights; const char *path; };
struct port_rule { uint64_t rights, port; };

struct init_plan {
    const char *hostname;        /* NULL: not a namespace of ours */
    int loopback;
    int complete;                /* the end record was read */
    int late;                    /* the command comes with the release (read_late_plan) */
    int mount_count;
    struct init_mount *mounts;    /* each list as long as the plan makes it */
    int has_ruleset;             /* the Landlock floor, built here: paths name this mount namespace */
    uint64_t fs_handled, net_handled, scoped, file_rights;
    uint32_t attr_size;
    int path_rule_count, port_rule_count;
    struct path_rule *path_rules;
    struct port_rule *port_rules;
    const char *search;          /* PATH for argv[0] without a '/', or NULL */
    const char *no_exec_message; /* CMD cannot be run: print this, exit with agent.exit_status */
    size_t no_exec_len;
    int argc, envc;
    char **argv, **envp;         /* NULL-terminated */
    struct spawn_plan agent;     /* cwd, rlimits, filter, flags and default signals filled in */
};

/* Reads and checks the whole plan from ``fd``; NULL, or what is wrong with it. */
const char *read_plan(int fd, struct init_plan *plan);

/* Reads the late command's plan (only LATE_TAGS records) into a plan that asked for one. */
const char *read_late_plan(int fd, struct init_plan *plan);

#endif
