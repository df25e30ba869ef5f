/* Reads init's plan (written by sandbox/init_spawn.py; format in init.h). The launcher wrote it,
 * but a plan that does not parse exactly is refused rather than guessed at. */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "plan.h"

#define STAGE_NAME(id, name) name "\0"
static const char stage_list[] = INIT_STAGES(STAGE_NAME) SPAWN_STAGES(STAGE_NAME);  /* ends "\0\0" */
#undef STAGE_NAME

struct cursor { const unsigned char *at, *end; int bad; };

static uint64_t take_u64(struct cursor *c, size_t size)
{
    uint64_t value = 0;
    if ((size_t)(c->end - c->at) < size) {
        c->bad = 1;
        return 0;
    }
    for (size_t i = 0; i < size; i++)
        value |= (uint64_t)c->at[i] << (8 * i);
    c->at += size;
    return value;
}

/* A NUL-terminated string inside the record; NULL for "" when ``empty_is_none``. */
static const char *take_string(struct cursor *c, int empty_is_none)
{
    const unsigned char *nul = memchr(c->at, 0, (size_t)(c->end - c->at));
    if (!nul) {
        c->bad = 1;
        return NULL;
    }
    const char *s = (const char *)c->at;
    c->at = nul + 1;
    return (empty_is_none && !*s) ? NULL : s;
}

static const char *whole_string(struct cursor *c)
{
    const char *s = take_string(c, 0);
    if (c->at != c->end)
        c->bad = 1;
    return s;
}

/* A new zeroed slot at the end of ``*array`` (``*count`` items of ``size`` bytes), or NULL. */
static void *append(void *array, int *count, size_t size)
{
    char *grown = realloc(*(void **)array, size * ((size_t)*count + 1));
    if (!grown)
        return NULL;
    *(void **)array = grown;
    memset(grown + size * (size_t)*count, 0, size);
    return grown + size * (size_t)(*count)++;
}

static int add(char ***list, int *count, char *item)
{
    char **grown = realloc(*list, sizeof(char *) * ((size_t)*count + 2));
    if (!grown)
        return -1;
    grown[(*count)++] = item;
    grown[*count] = NULL;
    *list = grown;
    return 0;
}

static const char *read_record(struct init_plan *plan, unsigned char tag, struct cursor *c)
{
    struct spawn_plan *agent = &plan->agent;
    switch (tag) {
    case 'h': plan->hostname = whole_string(c); break;
    case 'l': plan->loopback = 1; break;
    case 'm': {
        struct init_mount *m = append(&plan->mounts, &plan->mount_count, sizeof(*m));
        if (!m)
            return "out of memory";
        m->kind = MOUNT;
        m->flags = take_u64(c, 8);
        m->source = take_string(c, 1);
        m->target = take_string(c, 0);
        m->fstype = take_string(c, 1);
        m->data = take_string(c, 1);
        break;
    }
    case 'd': {
        struct init_mount *m = append(&plan->mounts, &plan->mount_count, sizeof(*m));
        if (!m)
            return "out of memory";
        m->kind = (int)take_u64(c, 1);
        m->target = take_string(c, 0);
        m->source = take_string(c, 1);
        if (m->kind != MAKE_DIR && m->kind != MAKE_FILE && m->kind != MAKE_SYMLINK)
            return "a step of an unknown kind";
        if ((m->kind == MAKE_SYMLINK) != (m->source != NULL))
            return "a symlink without content";
        break;
    }
    case 'r':
        plan->has_ruleset = 1;
        plan->fs_handled = take_u64(c, 8);
        plan->net_handled = take_u64(c, 8);
        plan->scoped = take_u64(c, 8);
        plan->file_rights = take_u64(c, 8);
        plan->attr_size = (uint32_t)take_u64(c, 4);
        break;
    case 'p': {
        struct path_rule *rule = append(&plan->path_rules, &plan->path_rule_count, sizeof(*rule));
        if (!rule)
            return "out of memory";
        rule->rights = take_u64(c, 8);
        rule->path = whole_string(c);
        break;
    }
    case 'n': {
        struct port_rule *port = append(&plan->port_rules, &plan->port_rule_count, sizeof(*port));
        if (!port)
            return "out of memory";
        port->rights = take_u64(c, 8);
        port->port = take_u64(c, 8);
        break;
    }
    case 'c': agent->cwd = whole_string(c); break;
    case 'L':
        if (agent->rlimit_count == SPAWN_MAX_RLIMITS)
            return "too many rlimits";
        agent->rlimit_resource[agent->rlimit_count] = (int)take_u64(c, 4);
        agent->rlimit_value[agent->rlimit_count++] = take_u64(c, 8);
        break;
    case 'F':
        if ((c->end - c->at) % sizeof(struct sock_filter) || (c->end - c->at) / sizeof(struct sock_filter) > 0xffff)
            return "the filter is not whole BPF instructions";
        agent->filter.len = (unsigned short)((c->end - c->at) / sizeof(struct sock_filter));
        /* a copy of its own: inside the plan the instructions need not be aligned */
        if (!(agent->filter.filter = malloc((size_t)(c->end - c->at) + 1)))
            return "out of memory";
        memcpy(agent->filter.filter, c->at, (size_t)(c->end - c->at));
        c->at = c->end;
        break;
    case 'f': agent->seccomp_flags = (unsigned int)take_u64(c, 4); break;
    case 's':
        if (agent->default_count == SPAWN_MAX_DEFAULTS)
            return "too many default signals";
        agent->default_signals[agent->default_count++] = (int)take_u64(c, 4);
        break;
    case 'k':
        if (agent->cap_drop_count == SPAWN_MAX_CAPS)
            return "too many capabilities to drop";
        agent->cap_drop[agent->cap_drop_count++] = (int)take_u64(c, 4);
        break;
    case 'P': plan->search = whole_string(c); break;
    case 'a': if (add(&plan->argv, &plan->argc, (char *)whole_string(c)) < 0) return "out of memory"; break;
    case 'e': if (add(&plan->envp, &plan->envc, (char *)whole_string(c)) < 0) return "out of memory"; break;
    case 'x':
        agent->skip_exec = 1;
        agent->exit_status = (int)take_u64(c, 4);
        plan->no_exec_message = (const char *)c->at;  /* any bytes: CMD's name may hold a NUL */
        plan->no_exec_len = (size_t)(c->end - c->at);
        c->at = c->end;
        break;
    case 'w': plan->late = 1; break;
    case 'z': plan->complete = 1; break;
    default: return "a record of an unknown kind";
    }
    return c->bad || c->at != c->end ? "a record of the wrong length" : NULL;
}

/* ``late_part``: 0 for the first plan (no late command records once 'w' was read), 1 for the late
 * plan (its records only). */
static const char *parse(unsigned char *buf, size_t size, struct init_plan *plan, int late_part)
{
    size_t head = sizeof(PLAN_MAGIC) + sizeof(stage_list);  /* both with their final NUL */
    if (size < head || memcmp(buf, PLAN_MAGIC, sizeof(PLAN_MAGIC)) ||
        memcmp(buf + sizeof(PLAN_MAGIC), stage_list, sizeof(stage_list)))
        return "it was written for another build of the sandbox (reinstall: the stages differ)";
    struct cursor c = {buf + head, buf + size, 0};
    while (c.at < c.end) {
        if (plan->complete)
            return "records after its end";
        unsigned char tag = *c.at++;
        uint64_t len = take_u64(&c, 4);
        if (c.bad || len > (uint64_t)(c.end - c.at))
            return "a truncated record";
        int is_late_tag = tag && strchr(LATE_TAGS, tag) != NULL;
        if (late_part && !is_late_tag)
            return "a record a late command may not hold";
        if (!late_part && plan->late && is_late_tag && tag != 'z')
            return "a command in a plan that waits for one";
        struct cursor record = {c.at, c.at + len, 0};
        const char *why = read_record(plan, tag, &record);
        if (why)
            return why;
        c.at += len;
    }
    if (!plan->complete)
        return "a plan cut short";
    if (plan->late && !late_part) {  /* the command is checked when it comes, and only it may give one */
        struct spawn_plan *agent = &plan->agent;
        if (plan->argc || plan->envc || agent->cwd || plan->search || agent->skip_exec)
            return "a command in a plan that waits for one";
        return NULL;
    }
    if ((!plan->argv && !(plan->argv = calloc(1, sizeof(char *)))) ||
        (!plan->envp && !(plan->envp = calloc(1, sizeof(char *)))))
        return "out of memory";
    if (!plan->agent.skip_exec && plan->argc == 0)
        return "no command to run";
    return NULL;
}

/* The whole file at ``fd``, or NULL. */
static unsigned char *read_whole(int fd, size_t *size)
{
    struct stat st;
    if (fstat(fd, &st) < 0 || st.st_size <= 0)
        return NULL;
    unsigned char *buf = malloc((size_t)st.st_size);
    if (!buf)
        return NULL;
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = pread(fd, buf + got, (size_t)st.st_size - got, (off_t)got);
        if (n <= 0) {
            free(buf);
            return NULL;
        }
        got += (size_t)n;
    }
    *size = got;
    return buf;
}

const char *read_plan(int fd, struct init_plan *plan)
{
    size_t size;
    memset(plan, 0, sizeof(*plan));
    plan->agent.ruleset = -1;
    plan->agent.failed_stage = -1;
    unsigned char *buf = read_whole(fd, &size);
    if (!buf)
        return "it cannot be read";
    return parse(buf, size, plan, 0);  /* strings point into buf, kept for init's life */
}

const char *read_late_plan(int fd, struct init_plan *plan)
{
    size_t size;
    if (!plan->late)
        return "a late command for a plan that holds its own";
    unsigned char *buf = read_whole(fd, &size);
    if (!buf)
        return "the late command cannot be read";
    plan->complete = 0;
    return parse(buf, size, plan, 1);
}
