/* A repeated execve() answered as the supervisor's VerifiedExec path would, or left to Python.
 *
 * Python teaches an exec it decided under sandbox/exec_verify.VerifiedExec (a single-threaded
 * holder that is not the supervisor's child, an ELF system program named without reading its
 * content): the key is the path exactly as the agent passed it, the argv bytes and the working
 * directory as /proc/PID/cwd reads; the value is the decision and what VerifiedExec compares at
 * the exec stop (the executable link, the decided file's identity).
 *
 * Here: the path and argv are read once (bounded), the cwd link read, the key looked up, the
 * holder checked as exec_verify._single_threaded_stranger does, and the path opened (O_PATH: an
 * open with no side effect) in the agent's root: the file must be the learned one (the same
 * link as the supervisor sees it, the same device, inode, size and times, and unchanged since
 * the program index was made). Anything else is a MISS: Python decides afresh. A denial is
 * answered here (EPERM). A permit is handed to the receiving thread (an ExecJob), which takes the
 * supervisor's exec lock and fs gate and calls fp_finish_exec(): seize, interrupt, ID_VALID,
 * record, CONTINUE, then at PTRACE_EVENT_EXEC the same comparison as VerifiedExec._difference;
 * any difference kills the holder before its first instruction (exec_stop.c).
 */
#include "fastpath.h"

#include <sys/wait.h>

/* -- the table ---------------------------------------------------------------------- */

static uint64_t exec_hash(const char *path, uint32_t path_length, const char *argv, uint32_t argv_length,
                          const char *cwd, uint32_t cwd_length) {
    uint64_t h = fp_hash(path, path_length, 0x65786563u);
    h = (h * 1099511628211ULL) ^ fp_hash(argv, argv_length, argv_length);
    return (h * 1099511628211ULL) ^ fp_hash(cwd, cwd_length, cwd_length);
}

static ExecSlot *find_exec(FastPath *self, const char *path, uint32_t path_length, const char *argv,
                           uint32_t argv_length, const char *cwd, uint32_t cwd_length, uint64_t hash) {
    for (uint32_t i = (uint32_t)hash & self->exec_mask;; i = (i + 1) & self->exec_mask) {
        ExecSlot *slot = &self->execs[i];
        if (!slot->used ||
            (slot->hash == hash && slot->path_length == path_length && slot->argv_length == argv_length &&
             slot->cwd_length == cwd_length && memcmp(slot->path, path, path_length) == 0 &&
             memcmp(slot->argv, argv, argv_length) == 0 && memcmp(slot->cwd, cwd, cwd_length) == 0))
            return slot;
    }
}

int fp_execs_init(FastPath *self, unsigned int entries) {
    if (!entries)
        return 0;
    uint32_t size = 2;
    while (size < entries * 2)
        size <<= 1;
    self->execs = calloc(size, sizeof(ExecSlot));
    if (!self->execs)
        return -1;
    self->exec_mask = size - 1, self->max_execs = entries;
    return 0;
}

void fp_execs_free(FastPath *self) {
    if (self->execs)
        for (uint32_t i = 0; i <= self->exec_mask; i++)
            free(self->execs[i].data);
    free(self->execs);
    self->execs = NULL;
}

/* Learned once, never changed or removed: a job may refer to its slot while others learn. */
int fp_remember_exec(FastPath *self, const ExecSlot *learned) {
    size_t total = (size_t)learned->path_length + learned->argv_length + learned->cwd_length + learned->exe_length;
    uint64_t hash = exec_hash(learned->path, learned->path_length, learned->argv, learned->argv_length,
                              learned->cwd, learned->cwd_length);
    int stored = 0;
    pthread_mutex_lock(&self->table_lock);
    if (self->execs) {
        ExecSlot *slot = find_exec(self, learned->path, learned->path_length, learned->argv, learned->argv_length,
                                   learned->cwd, learned->cwd_length, hash);
        if (slot->used) {
            stored = slot->entry == learned->entry && slot->deny == learned->deny &&
                     memcmp(&slot->file, &learned->file, sizeof slot->file) == 0 &&
                     slot->exe_length == learned->exe_length &&
                     memcmp(slot->exe, learned->exe, learned->exe_length) == 0;
        } else if (self->execs_used < self->max_execs && (slot->data = malloc(total + 1))) {
            ExecSlot copy = *learned;
            char *at = slot->data;
            copy.data = slot->data;
            memcpy(copy.path = at, learned->path, learned->path_length), at += learned->path_length;
            memcpy(copy.argv = at, learned->argv, learned->argv_length), at += learned->argv_length;
            memcpy(copy.cwd = at, learned->cwd, learned->cwd_length), at += learned->cwd_length;
            memcpy(copy.exe = at, learned->exe, learned->exe_length);
            copy.hash = hash, copy.used = 1;
            *slot = copy;
            self->execs_used++;
            stored = 1;
        }
    }
    pthread_mutex_unlock(&self->table_lock);
    return stored;
}

/* -- reading the call ----------------------------------------------------------------- */

/* The NUL-terminated string at addr, read a page at a time, at most limit bytes with its NUL;
 * its length, or -1. */
ssize_t fp_read_string(pid_t pid, uint64_t addr, char *buf, size_t limit) {
    size_t got = 0;
    while (got < limit) {
        size_t want = PAGE - ((addr + got) % PAGE);
        if (want > limit - got)
            want = limit - got;
        if (fp_read_memory(pid, addr + got, buf + got, want) < 0)
            return -1;
        char *nul = memchr(buf + got, '\0', want);
        if (nul)
            return nul - buf;
        got += want;
    }
    return -1;
}

/* argv as /proc/PID/cmdline will show it (each argument and its NUL); its length, or -1. */
static ssize_t read_argv(pid_t pid, uint64_t addr, char *out) {
    uint64_t pointers[ARGV_LIMIT + 1];
    size_t count = 0, used = 0;
    for (;;) {
        if (count == ARGV_LIMIT + 1)
            return -1;
        uint64_t at = addr + count * sizeof(uint64_t);
        size_t batch = (PAGE - at % PAGE) / sizeof(uint64_t);
        batch = batch ? batch : 1; /* a pointer across a page boundary */
        if (batch > ARGV_LIMIT + 1 - count)
            batch = ARGV_LIMIT + 1 - count;
        if (fp_read_memory(pid, at, &pointers[count], batch * sizeof(uint64_t)) < 0)
            return -1;
        size_t end = count + batch;
        for (; count < end && pointers[count]; count++)
            ;
        if (count < end)
            break;
    }
    if (count == 0)
        return -1; /* argc 0: the kernel makes an empty argv[0]; Python leaves it to the freezer */
    for (size_t i = 0; i < count; i++) {
        ssize_t length = fp_read_string(pid, pointers[i], out + used, ARGV_BYTES - used);
        if (length < 0)
            return -1;
        used += (size_t)length + 1;
    }
    return (ssize_t)used;
}

ssize_t fp_read_link(const char *name, char *buf) {
    ssize_t length = readlink(name, buf, PATH_LIMIT);
    return length >= PATH_LIMIT ? -1 : length;
}

/* As exec_verify._single_threaded_stranger: one thread, and not our child. */
static int single_threaded_stranger(pid_t pid) {
    char name[48];
    struct stat st;
    snprintf(name, sizeof name, "/proc/%d/task", (int)pid);
    if (stat(name, &st) != 0 || st.st_nlink != 3)
        return 0;
    siginfo_t info;
    return waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) != 0 && errno == ECHILD;
}

void fp_file_key(const struct stat *st, FileKey *key) {
    *key = (FileKey){(uint64_t)st->st_dev, (uint64_t)st->st_ino, (int64_t)st->st_size,
                     (int64_t)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec,
                     (int64_t)st->st_ctim.tv_sec * 1000000000LL + st->st_ctim.tv_nsec};
}

/* Whether path, in the agent's root, is still the learned file: the same link as we see it,
 * identity and times, unchanged since the program index was made. */
static int still_learned(FastPath *self, int root, const char *path, const ExecSlot *slot) {
    struct open_how how = {.flags = O_PATH | O_CLOEXEC, .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
    int fd = (int)syscall(SYS_openat2, root, path, &how, sizeof how);
    if (fd < 0)
        return 0;
    char name[48], link[PATH_LIMIT];
    snprintf(name, sizeof name, "/proc/self/fd/%d", fd);
    ssize_t length = fp_read_link(name, link);
    struct stat st;
    FileKey key;
    int same = length == (ssize_t)slot->exe_length && memcmp(link, slot->exe, (size_t)length) == 0 &&
               fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    close(fd);
    if (!same)
        return 0;
    fp_file_key(&st, &key);
    return memcmp(&key, &slot->file, sizeof key) == 0 && key.ctime_ns < self->programs_started;
}

static int unverifiable(const char *path) {
    return strncmp(path, "/proc/", 6) == 0 || strncmp(path, "/dev/fd/", 8) == 0;
}

int fp_exec(FastPath *self, const struct seccomp_notif *n, int64_t started, ExecJob *pending) {
    if (n->data.arch != self->arch || !self->execs_used || self->suspended || !n->data.args[1])
        return MISS;
    char path[PATH_LIMIT], cwd[PATH_LIMIT], cwd_name[48];
    static __thread char argv[ARGV_BYTES];
    ssize_t path_length = fp_read_string(n->pid, n->data.args[0], path, PATH_LIMIT);
    if (path_length <= 0 || path[0] != '/' || unverifiable(path))
        return MISS;
    ssize_t argv_length = read_argv(n->pid, n->data.args[1], argv);
    snprintf(cwd_name, sizeof cwd_name, "/proc/%d/cwd", (int)n->pid);
    ssize_t cwd_length = argv_length < 0 ? -1 : fp_read_link(cwd_name, cwd);
    if (cwd_length < 0)
        return MISS;
    uint64_t hash = exec_hash(path, (uint32_t)path_length, argv, (uint32_t)argv_length, cwd, (uint32_t)cwd_length);
    pthread_mutex_lock(&self->table_lock);
    ExecSlot *slot = find_exec(self, path, (uint32_t)path_length, argv, (uint32_t)argv_length, cwd,
                               (uint32_t)cwd_length, hash);
    int found = slot->used;
    pthread_mutex_unlock(&self->table_lock); /* a used slot never changes */
    if (!found || (self->record && !fp_ring_has_room(self)) || !single_threaded_stranger(n->pid))
        return MISS;
    int owned, outcome, root = fp_waiting_task_root(self, n, &owned, &outcome);
    if (root < 0)
        return outcome;
    int same = still_learned(self, root, path, slot);
    if (owned)
        close(root);
    if (!same)
        return MISS;
    if (!slot->deny) {
        /* Its record is written by the finishing thread, later: its place is kept now. */
        if (self->record && !fp_reserve_hit(self)) {
            self->ring_full++;
            return MISS;
        }
        *pending = (ExecJob){n->id, (int32_t)n->pid, n->data.nr, (uint32_t)(slot - self->execs), started,
                             slot->entry, self->record};
        self->exec_handed++;
        return PENDING_EXEC;
    }
    Hit hit = {slot->entry, (int32_t)n->pid, n->data.nr, -EPERM, fp_clock_ns(CLOCK_REALTIME),
               fp_clock_ns(CLOCK_MONOTONIC) - started};
    if (self->record && !fp_queue_hit(self, hit)) {
        self->ring_full++;
        return MISS; /* unanswered: Python decides and records it */
    }
    self->exec_denied++;
    fp_send_error(self->listener, n->id, EPERM);
    return ANSWERED;
}
