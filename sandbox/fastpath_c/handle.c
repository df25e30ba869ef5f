/* One notification: a repeated read-only open answered as sandbox/fsops.py would, or left to Python. */
#include "fastpath.h"

/* -- small helpers ---------------------------------------------------------- */

uint64_t fp_hash(const char *data, size_t length, uint32_t flags) {
    uint64_t h = 1469598103934665603ULL ^ flags;
    for (size_t i = 0; i < length; i++) {
        h ^= (unsigned char)data[i];
        h *= 1099511628211ULL;
    }
    return h;
}

int64_t fp_clock_ns(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int fp_send_error(int listener, uint64_t id, int err) {
    struct seccomp_notif_resp resp = {.id = id, .val = 0, .error = -err, .flags = 0};
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
}

static int starts_with(const char *s, const char *prefix) {
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

/* As sandbox._fslocate.plain_path, but only paths that are already normal qualify. */
static int plain_path(const char *path, size_t length) {
    if (length == 0 || path[0] != '/' || strstr(path, "..") || strstr(path, "//") || strstr(path, "/./"))
        return 0;
    if (path[length - 1] == '/' || (length >= 2 && path[length - 2] == '/' && path[length - 1] == '.'))
        return 0;
    /* /dev holds the devices, whose opens do things: Python answers those */
    return !(starts_with(path, "/proc") || starts_with(path, "/dev/"));
}

/* The NUL-terminated string at addr in pid, read a page at a time (never across an unmapped
 * page); -1 when unreadable or longer than PATH_LIMIT (Python then answers as the kernel would). */
static ssize_t read_path(pid_t pid, uint64_t addr, char *buf) {
    size_t got = 0;
    while (got < PATH_LIMIT) {
        size_t want = PAGE - ((addr + got) % PAGE);
        if (want > PATH_LIMIT - got)
            want = PATH_LIMIT - got;
        struct iovec local = {buf + got, want}, remote = {(void *)(uintptr_t)(addr + got), want};
        ssize_t n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
        if (n != (ssize_t)want)
            return -1;
        char *nul = memchr(buf + got, '\0', want);
        if (nul)
            return nul - buf;
        got += want;
    }
    return -1;
}

/* Exactly length bytes at addr in pid, or -1 (unmapped, or the task is gone). */
ssize_t fp_read_memory(pid_t pid, uint64_t addr, void *buf, size_t length) {
    struct iovec local = {buf, length}, remote = {(void *)(uintptr_t)addr, length};
    return process_vm_readv(pid, &local, 1, &remote, 1, 0) == (ssize_t)length ? (ssize_t)length : -1;
}

/* -- the decision table ------------------------------------------------------ */

Slot *fp_find_slot(FastPath *self, const char *path, uint32_t length, uint32_t flags, uint64_t hash) {
    for (uint32_t i = (uint32_t)hash & self->slot_mask;; i = (i + 1) & self->slot_mask) {
        Slot *slot = &self->slots[i];
        if (!slot->path || (slot->hash == hash && slot->length == length && slot->flags == flags &&
                            memcmp(slot->path, path, length) == 0))
            return slot;
    }
}

/* -- one notification --------------------------------------------------------- */

int fp_queue_hit(FastPath *self, Hit hit) {
    pthread_mutex_lock(&self->ring_lock);
    int ok = self->ring_count + self->ring_reserved < self->ring_size;
    if (ok) {
        self->ring[(self->ring_head + self->ring_count) % self->ring_size] = hit;
        self->ring_count++;
    }
    pthread_mutex_unlock(&self->ring_lock);
    return ok;
}

int fp_ring_has_room(FastPath *self) {
    pthread_mutex_lock(&self->ring_lock);
    int room = self->ring_count + self->ring_reserved < self->ring_size;
    pthread_mutex_unlock(&self->ring_lock);
    return room;
}

/* A place in the ring kept for a record written later (an exec handed to its finishing thread),
 * so that the record can never find the ring full once the exec is under way: 1 if reserved. */
int fp_reserve_hit(FastPath *self) {
    pthread_mutex_lock(&self->ring_lock);
    int ok = self->ring_count + self->ring_reserved < self->ring_size;
    self->ring_reserved += ok;
    pthread_mutex_unlock(&self->ring_lock);
    return ok;
}

/* Releases a reservation, queueing hit into it when given one (hit.entry >= 0). */
void fp_queue_reserved(FastPath *self, Hit hit, int reserved) {
    if (!reserved)
        return;
    pthread_mutex_lock(&self->ring_lock);
    self->ring_reserved--;
    if (hit.entry >= 0) {
        self->ring[(self->ring_head + self->ring_count) % self->ring_size] = hit;
        self->ring_count++;
    }
    pthread_mutex_unlock(&self->ring_lock);
}

/* The open's path and flags when it is one this path handles, else 0. */
static int read_only_open(FastPath *self, const struct seccomp_notif *n, char *path, ssize_t *length,
                          uint32_t *flags) {
    int is_openat = n->data.nr == self->nr_openat;
    if (n->data.arch != self->arch || !(is_openat || (self->nr_open >= 0 && n->data.nr == self->nr_open)))
        return 0;
    uint32_t raw = (uint32_t)n->data.args[is_openat ? 2 : 1];
    *flags = raw & self->valid_flags;
    /* (O_TMPFILE includes O_DIRECTORY: only the whole of it means a temporary file) */
    if ((*flags & O_ACCMODE) != O_RDONLY || *flags & (O_CREAT | O_TRUNC | O_PATH) ||
        (*flags & O_TMPFILE) == O_TMPFILE)
        return 0;
    *length = read_path(n->pid, n->data.args[is_openat ? 1 : 0], path);
    return *length > 0 && plain_path(path, (size_t)*length);
}

/* The object at path in the agent's root, opened with flags, or -1: a symlink on the way,
 * any error, procfs, or a type Python treats specially (devices, sockets). It is opened
 * non-blocking (a FIFO must not make the receiver wait for a peer, as in sandbox._fsopen), and
 * left blocking afterwards when the agent asked so. */
static int open_in_root(int root, const char *path, uint32_t flags) {
    struct open_how how = {
        .flags = (flags & O_PATH ? flags : flags | O_NONBLOCK | O_NOCTTY) | O_CLOEXEC,
        .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
    };
    /* Any error, EAGAIN too (a lease being broken, a rename racing the walk): Python answers,
     * on a thread of its own, as the kernel would. */
    int fd = (int)syscall(SYS_openat2, root, path, &how, sizeof how);
    if (fd < 0)
        return -1;
    struct statfs fs;
    struct stat st;
    int usable = fstatfs(fd, &fs) == 0 && fs.f_type != PROC_SUPER_MAGIC && fstat(fd, &st) == 0 &&
                 (S_ISREG(st.st_mode) || S_ISDIR(st.st_mode) || (S_ISFIFO(st.st_mode) && !(flags & O_PATH)));
    /* F_SETFL changes only these status flags; O_ASYNC as given to open (never armed by it). */
    if (usable && !(flags & (O_PATH | O_NONBLOCK)))
        usable = fcntl(fd, F_SETFL, flags & (O_APPEND | O_ASYNC | O_DIRECT | O_NOATIME)) == 0;
    if (!usable) {
        close(fd);
        return -1;
    }
    return fd;
}

int fp_handle(FastPath *self, const struct seccomp_notif *n, int64_t started) {
    char path[PATH_LIMIT];
    ssize_t length;
    uint32_t flags;
    if (!read_only_open(self, n, path, &length, &flags))
        return MISS;
    uint64_t hash = fp_hash(path, (size_t)length, flags);
    pthread_mutex_lock(&self->table_lock);
    Slot *slot = fp_find_slot(self, path, (uint32_t)length, flags, hash);
    int found = slot->path != NULL, entry = slot->entry, deny = slot->deny;
    pthread_mutex_unlock(&self->table_lock);
    if (!found || self->suspended || (self->record && !fp_ring_has_room(self))) {
        self->ring_full += found;
        return MISS;
    }
    int owned, outcome, root = fp_waiting_task_root(self, n, &owned, &outcome);
    if (root < 0)
        return outcome;
    int fd = open_in_root(root, path, deny ? O_PATH | (flags & (O_DIRECTORY | O_NOFOLLOW)) : flags);
    if (owned)
        close(root);
    if (fd < 0)
        return MISS; /* Python tells a path that does not resolve from a file it may not open */
    int result = 0;
    if (deny) {
        close(fd);
        fd = -1, result = -EACCES;
    }
    Hit hit = {entry, (int32_t)n->pid, n->data.nr, result, fp_clock_ns(CLOCK_REALTIME),
               fp_clock_ns(CLOCK_MONOTONIC) - started};
    if (self->record && !fp_queue_hit(self, hit)) {
        /* Unrecordable: a permit nobody can account for is not granted. */
        if (fd >= 0)
            close(fd);
        self->ring_full++;
        fp_send_error(self->listener, n->id, EACCES);
        return ANSWERED;
    }
    self->hits++;
    if (fd < 0) {
        self->denied += deny;
        fp_send_error(self->listener, n->id, -result);
        return ANSWERED;
    }
    uint32_t cloexec = (uint32_t)n->data.args[n->data.nr == self->nr_openat ? 2 : 1] & O_CLOEXEC;
    if (fp_answer_with_fd(self->listener, n->id, fd, cloexec, (pid_t)n->pid, self->hold_cpu) < 0 && errno != ENOENT &&
        errno != ESRCH)
        fp_send_error(self->listener, n->id, errno); /* e.g. EMFILE: the agent gets the error */
    close(fd);
    return ANSWERED;
}
