/* The agent task's identity: whether it acts on files exactly as the supervisor does. */
#include "fastpath.h"

/* -- the agent task's identity and root ------------------------------------- */

void fp_drop_task(KeptTask *task) {
    if (task->dir >= 0)
        close(task->dir);
    if (task->status >= 0)
        close(task->status);
    task->tid = task->same = 0;
    task->dir = task->status = -1;
}

static int acts_as_we_do(FastPath *self, char *status);

/* The kept /proc/<tid> entry for a task acting exactly as we do, or NULL (Python answers).
 * Its status is read when the task is new to us and, once any task has called anything that
 * changes credentials (the filter sends those here: fp_credential_change()), on every call.
 * Until then every task has the credentials the agent started with: a fork copies them, and
 * an exec under no_new_privs keeps uids and gids, and a root task's capabilities (its bounding
 * set is unchanged too). Per task, not per run, because a reaped task's number may come back;
 * reaping is noticed when the kept directory no longer opens the task's root. */
static KeptTask *task_for(FastPath *self, int tid) {
    KeptTask *task = NULL;
    for (int i = 0; i < KEPT_TASKS && !task; i++)
        if (self->kept[i].tid == tid)
            task = &self->kept[i];
    if (task && task->same && !self->recheck_always)
        return task;
    if (!task) {
        task = &self->kept[self->next_kept++ % KEPT_TASKS];
        fp_drop_task(task);
        char name[32];
        snprintf(name, sizeof name, "/proc/%d", tid);
        task->dir = open(name, O_PATH | O_DIRECTORY | O_CLOEXEC);
        task->status = task->dir < 0 ? -1 : openat(task->dir, "status", O_RDONLY | O_CLOEXEC);
        task->tid = tid;
        if (task->status < 0) {
            fp_drop_task(task);
            return NULL;
        }
    }
    char status[STATUS_LIMIT];
    ssize_t length = pread(task->status, status, sizeof status - 1, 0);
    self->status_reads++;
    if (length <= 0) { /* that task was reaped: its number is opened afresh next time */
        fp_drop_task(task);
        return NULL;
    }
    status[length] = '\0';
    task->same = acts_as_we_do(self, status);
    if (!task->same)
        self->recheck_always = 1; /* tasks differ: nothing may be assumed of the next one */
    return task->same ? task : NULL;
}

/* The agent's root to resolve in for task tid, or -1 when the task does not act exactly as we
 * do. *owned: the caller closes it, or publishes it with fp_keep_root() once ID_VALID has shown
 * that tid still names the task that trapped. While no task has made a watched call and no
 * task was seen to differ, every task has the agent's first credentials and root (chroot,
 * mount, pivot_root, unshare and setns are refused by the filter), so one status read and one
 * root serve them all. */
int fp_agent_root(FastPath *self, int tid, int *owned) {
    *owned = 0;
    if (!self->recheck_always && self->shared_root >= 0)
        return self->shared_root;
    KeptTask *task = task_for(self, tid);
    if (!task)
        return -1;
    int root = openat(task->dir, "root", O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (root < 0) { /* reaped: the number may be another task's next time */
        fp_drop_task(task);
        return -1;
    }
    *owned = 1;
    return root;
}

/* After ID_VALID: an owned root may serve every later call (see fp_agent_root); returns
 * whether the caller still owns it. */
int fp_keep_root(FastPath *self, int root) {
    if (self->recheck_always || self->shared_root >= 0)
        return 1;
    self->shared_root = root;
    return 0;
}

/* ID_VALID failed: the task is gone and its number may come back as another task. */
void fp_forget_task(FastPath *self, int tid) {
    for (int i = 0; i < KEPT_TASKS; i++)
        if (self->kept[i].tid == tid)
            fp_drop_task(&self->kept[i]);
}

/* A task is about to change its credentials (set*id, setgroups, capset) or, for prctl, the
 * capabilities a later exec gives: from now on every call reads the task's status and root
 * (tasks may differ, and a thread that execs takes over its leader's number), then the call
 * runs. CONTINUE is safe here: nothing is decided on its arguments. */
void fp_credential_change(FastPath *self, const struct seccomp_notif *n) {
    self->credential_calls++;
    self->recheck_always = 1;
    struct seccomp_notif_resp resp = {.id = n->id, .val = 0, .error = 0, .flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE};
    ioctl(self->listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

int fp_watched(FastPath *self, int nr) {
    for (int i = 0; i < self->nwatched; i++)
        if (self->watched[i] == nr)
            return 1;
    return 0;
}

static const char *field(const char *status, const char *needle) {
    const char *at = strstr(status, needle);
    return at ? at + strlen(needle) : NULL;
}

int fp_compare_gids(const void *a, const void *b) {
    gid_t x = *(const gid_t *)a, y = *(const gid_t *)b;
    return (x > y) - (x < y);
}

/* Whether the task would act on files exactly as we do: the same uids, gids and groups, and
 * every capability we have (sandbox._fscreds.acting_as would switch nothing). */
static int acts_as_we_do(FastPath *self, char *status) {
    unsigned long uid[4], gid[4];
    const char *uids = field(status, "\nUid:"), *gids = field(status, "\nGid:");
    const char *groups = field(status, "\nGroups:"), *caps = field(status, "\nCapEff:");
    if (!uids || !gids || !groups || !caps)
        return 0;
    if (sscanf(uids, "%lu %lu %lu %lu", &uid[0], &uid[1], &uid[2], &uid[3]) != 4 ||
        sscanf(gids, "%lu %lu %lu %lu", &gid[0], &gid[1], &gid[2], &gid[3]) != 4)
        return 0;
    /* Real, effective, saved and fs ids all ours: an exec (setuid bits ignored under
     * no_new_privs) then keeps them, so only the watched calls can change them. */
    for (int i = 0; i < 4; i++)
        if (uid[i] != self->fsuid || gid[i] != self->fsgid)
            return 0;
    unsigned long long cap;
    if (sscanf(caps, "%llx", &cap) != 1 || (cap & self->caps) != self->caps)
        return 0;
    gid_t theirs[MAX_GROUPS];
    int count = 0;
    const char *p = groups;
    while (*p && *p != '\n') {
        char *end;
        if (*p == ' ' || *p == '\t') {
            p++;
            continue;
        }
        unsigned long value = strtoul(p, &end, 10);
        if (end == p || count == MAX_GROUPS)
            return 0;
        theirs[count++] = (gid_t)value;
        p = end;
    }
    if (count != self->ngroups)
        return 0;
    qsort(theirs, count, sizeof(gid_t), fp_compare_gids);
    return memcmp(theirs, self->groups, count * sizeof(gid_t)) == 0;
}

/* What was read of /proc/<pid> and its memory belongs to the task that trapped only if it still
 * waits (otherwise the pid may name another process now): -1 while it does, else what the caller
 * returns, with the root it opened for it closed (a task that is gone needs no answer). */
static int unless_waiting(FastPath *self, const struct seccomp_notif *n, int root, int owned) {
    if (ioctl(self->listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &n->id) == 0)
        return -1;
    int gone = errno == ENOENT;
    if (owned)
        close(root);
    fp_forget_task(self, (int)n->pid);
    self->gone += gone;
    return gone ? ANSWERED : MISS;
}

/* The agent's root for n's task, once what was read of it is known to be that task's: the root
 * (*owned: ours to close), or -1 with *outcome what the caller returns (MISS, or ANSWERED when
 * the task is gone). */
int fp_waiting_task_root(FastPath *self, const struct seccomp_notif *n, int *owned, int *outcome) {
    int root = fp_agent_root(self, (int)n->pid, owned);
    if (root < 0) {
        *outcome = MISS;
        return -1;
    }
    *outcome = unless_waiting(self, n, root, *owned);
    if (*outcome >= 0)
        return -1;
    if (*owned)
        *owned = fp_keep_root(self, root);
    return root;
}
