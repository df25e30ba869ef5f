/* A repeated permitted exec (exec.c) finished on the thread that received it, the tracer: as
 * sandbox/exec_verify.VerifiedExec, seize and interrupt the holder, ID_VALID, record, CONTINUE,
 * then at PTRACE_EVENT_EXEC compare what the kernel used with the decision, and detach on a
 * match or kill the holder before its first instruction. */
#include "fastpath.h"

#include <sched.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/signalfd.h>
#include <sys/wait.h>

#define AT_EXECFN_KEY 31
#define WATCH_INTERVAL_NS 50000000L /* how often the watchdog looks at the exec being finished */

/* -- the timeout: a watchdog thread, so the tracer can block in waitpid() ------------------ */

/* The watched exec (one at a time: the supervisor's exec lock), its deadline, whether it was killed.
 * With nothing to watch at a wake-up it ends itself (detached), so no thread outlives the execs of
 * a run by more than WATCH_INTERVAL_NS: a launcher must be single-threaded to start the next one. */
static void *watchdog(void *arg) {
    FastPath *self = arg;
    pthread_mutex_lock(&self->watch_lock);
    while (!self->watch_stop) {
        struct timespec wake;
        clock_gettime(CLOCK_MONOTONIC, &wake); /* the condition's clock (module.c) */
        wake.tv_nsec += WATCH_INTERVAL_NS;
        if (wake.tv_nsec >= 1000000000L)
            wake.tv_sec++, wake.tv_nsec -= 1000000000L;
        pthread_cond_timedwait(&self->watch_cond, &self->watch_lock, &wake);
        if (self->watch_pidfd >= 0 && !self->watch_fired && fp_clock_ns(CLOCK_MONOTONIC) > self->watch_deadline) {
            syscall(SYS_pidfd_send_signal, self->watch_pidfd, SIGKILL, NULL, 0); /* the pidfd: never another */
            self->watch_fired = 1;
        }
        if (self->watch_pidfd < 0 && !self->watch_stop) { /* idle: the next exec starts another */
            self->watch_started = 0;
            pthread_detach(pthread_self());
            break;
        }
    }
    pthread_mutex_unlock(&self->watch_lock);
    return NULL;
}

void fp_stop_watchdog(FastPath *self) {
    pthread_mutex_lock(&self->watch_lock);
    int started = self->watch_started; /* read under the lock: an idle watchdog ends itself */
    self->watch_stop = 1;
    pthread_cond_signal(&self->watch_cond);
    pthread_mutex_unlock(&self->watch_lock);
    if (started)
        pthread_join(self->watch_thread, NULL);
    self->watch_started = 0;
}

/* The next wait status of the tracee: 1 and *status, 0 when it is no longer ours (gone), -1 when
 * it outlived timeout (killed: *status is then its exit, or 0). The wait blocks: the watchdog
 * thread kills the holder at the deadline, which ends the wait. A spinning wait (exec_verify's
 * sched_yield polls) took a CPU from the exec it waits for. */
static int next_status(FastPath *self, pid_t pid, int *status, double timeout) {
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0 && errno == ESRCH)
        return 0; /* gone */
    /* Without a pidfd (EMFILE...) the holder is still ours to wait for: polled, and killed by pid,
     * which stays its own while we trace it (a traced zombie is reaped by its tracer only). */
    pthread_mutex_lock(&self->watch_lock);
    if (!self->watch_started && pidfd >= 0)
        self->watch_started = pthread_create(&self->watch_thread, NULL, watchdog, self) == 0;
    int watched = self->watch_started && pidfd >= 0;
    if (watched) {
        self->watch_pidfd = pidfd, self->watch_fired = 0;
        self->watch_deadline = fp_clock_ns(CLOCK_MONOTONIC) + (int64_t)(timeout * 1e9);
    }
    pthread_mutex_unlock(&self->watch_lock);
    pid_t got = -1;
    if (watched) {
        do
            got = waitpid(pid, status, __WALL);
        while (got < 0 && errno == EINTR);
    } else { /* no thread: poll, sleeping between polls */
        int64_t deadline = fp_clock_ns(CLOCK_MONOTONIC) + (int64_t)(timeout * 1e9);
        while ((got = waitpid(pid, status, __WALL | WNOHANG)) == 0 && fp_clock_ns(CLOCK_MONOTONIC) < deadline) {
            struct timespec pause = {0, 100000};
            nanosleep(&pause, NULL);
        }
        if (got == 0) {
            if (pidfd >= 0)
                syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
            else
                kill(pid, SIGKILL);
            got = waitpid(pid, status, __WALL);
            if (pidfd >= 0)
                close(pidfd);
            return -1;
        }
    }
    pthread_mutex_lock(&self->watch_lock);
    int fired = watched && self->watch_fired;
    if (watched)
        self->watch_pidfd = -1;
    pthread_mutex_unlock(&self->watch_lock);
    if (pidfd >= 0)
        close(pidfd);
    if (fired)
        return -1;
    return got == pid ? 1 : 0;
}

/* SIGKILL the stopped holder and take its exit, so its parent can reap it. */
static void kill_holder(pid_t pid) {
    if (kill(pid, SIGKILL) != 0)
        return;
    int64_t deadline = fp_clock_ns(CLOCK_MONOTONIC) + 1000000000LL;
    while (fp_clock_ns(CLOCK_MONOTONIC) < deadline) {
        int status;
        pid_t got = waitpid(pid, &status, __WALL | WNOHANG);
        if (got < 0 || (got == pid && !WIFSTOPPED(status)))
            return;
        sched_yield();
    }
}

static ssize_t read_start(const char *name, char *buf, size_t size) {
    int fd = open(name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t length = read(fd, buf, size);
    int err = errno;
    close(fd);
    errno = err;
    return length;
}

/* argv (at most limit bytes) and the AT_EXECFN string from /proc/PID/cmdline and auxv: 0 or -1. */
static int proc_argv_execfn(pid_t pid, char *argv, size_t limit, ssize_t *argv_length, char *execfn,
                            ssize_t *execfn_length) {
    char name[64], auxv[1024];
    snprintf(name, sizeof name, "/proc/%d/cmdline", (int)pid);
    *argv_length = read_start(name, argv, limit);
    snprintf(name, sizeof name, "/proc/%d/auxv", (int)pid);
    ssize_t aux = *argv_length < 0 ? -1 : read_start(name, auxv, sizeof auxv);
    *execfn_length = 0;
    for (ssize_t i = 0; aux >= 0 && i + 16 <= aux; i += 16) {
        uint64_t key, value;
        memcpy(&key, auxv + i, 8), memcpy(&value, auxv + i + 8, 8);
        if (key == AT_EXECFN_KEY) {
            *execfn_length = fp_read_string(pid, value, execfn, PATH_LIMIT);
            if (*execfn_length < 0)
                aux = -1, errno = EFAULT;
            break;
        }
    }
    return aux < 0 ? -1 : 0;
}

/* As VerifiedExec._difference: what differs (0: nothing) and what was seen there. */
static int difference(pid_t pid, const ExecSlot *slot, ExecResult *out) {
    char name[64];
    static __thread char buffer[PATH_LIMIT + ARGV_BYTES + 2];
    snprintf(name, sizeof name, "/proc/%d/exe", (int)pid);
    ssize_t exe = fp_read_link(name, out->seen);
    snprintf(name, sizeof name, "/proc/%d/cwd", (int)pid);
    ssize_t cwd = exe < 0 ? -1 : fp_read_link(name, buffer);
    char execfn[PATH_LIMIT];
    ssize_t cmdline = -1, execfn_length = 0;
    int aux = cwd < 0 ? -1
                      : fp_initial_stack(pid, buffer + PATH_LIMIT, slot->argv_length + 1, &cmdline, execfn,
                                         &execfn_length);
    if (aux == 1) { /* the stack did not fit one read */
        aux = proc_argv_execfn(pid, buffer + PATH_LIMIT, slot->argv_length + 1, &cmdline, execfn, &execfn_length);
        out->via_proc = 1;
    }
    struct stat st;
    snprintf(name, sizeof name, "/proc/%d/exe", (int)pid);
    if (aux < 0 || stat(name, &st) != 0) {
        out->kind = CHANGED_UNINSPECTABLE, out->err = errno;
        return 1;
    }
    struct { int kind; const char *seen; ssize_t length; const char *decided; uint32_t decided_length; } checks[] = {
        {CHANGED_EXECUTABLE, out->seen, exe, slot->exe, slot->exe_length},
        {CHANGED_ARGV, buffer + PATH_LIMIT, cmdline, slot->argv, slot->argv_length},
        {CHANGED_PATH, execfn, execfn_length, slot->path, slot->path_length},
        {CHANGED_CWD, buffer, cwd, slot->cwd, slot->cwd_length},
    };
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
        if (checks[i].length != (ssize_t)checks[i].decided_length ||
            memcmp(checks[i].seen, checks[i].decided, checks[i].decided_length) != 0) {
            out->kind = checks[i].kind;
            out->seen_length = (uint32_t)(checks[i].length > ARGV_BYTES ? ARGV_BYTES : checks[i].length);
            if (checks[i].seen != out->seen)
                memcpy(out->seen, checks[i].seen, out->seen_length);
            return 1;
        }
    }
    FileKey key;
    fp_file_key(&st, &key);
    if (memcmp(&key, &slot->file, sizeof key) != 0) {
        out->kind = CHANGED_FILE;
        return 1;
    }
    return 0;
}

/* What the holder's next wait status (got 1: *status; 0: it is no longer ours) means, as
 * VerifiedExec.finish: detach after a matching exec stop, kill on any difference. */
static void take_stop(pid_t pid, const ExecSlot *slot, int continued, int got, int status, ExecResult *out) {
    if (got == 0 || !WIFSTOPPED(status))
        return; /* gone: nothing of the new image ran */
    int event = (status >> 16) & 0xFFFF;
    int signum = 0;
    if (event == PTRACE_EVENT_EXEC) {
        if (!continued) {
            out->kind = CHANGED_REFUSED;
        } else {
            difference(pid, slot, out);
        }
        if (out->kind != CHANGED_NONE) {
            kill_holder(pid);
            return;
        }
    } else if (event == 0) {
        signum = WSTOPSIG(status); /* a signal the stop withheld */
    }
    if (ptrace(PTRACE_DETACH, pid, 0, (void *)(uintptr_t)signum) != 0) {
        if (errno != ESRCH) {
            out->kind = CHANGED_UNDETACHABLE, out->err = errno;
            kill_holder(pid);
            return;
        }
        kill_holder(pid); /* killed meanwhile: a traced zombie only its tracer can release */
    }
}

/* Let the holder go after its first stop, waiting for it as long as timeout. */
static void finish_stop(FastPath *self, pid_t pid, const ExecSlot *slot, int continued, double timeout,
                        ExecResult *out) {
    int status = 0;
    int got = next_status(self, pid, &status, timeout);
    if (got < 0) {
        if (WIFSTOPPED(status))
            kill_holder(pid);
        out->kind = CHANGED_TIMEOUT;
        return;
    }
    take_stop(pid, slot, continued, got, status, out);
}

/* Whether SIGCHLD is blocked in this thread (looked up once: our threads never change it). */
static int chld_blocked(void) {
    static __thread int known, blocked;
    if (!known) {
        sigset_t mask;
        blocked = pthread_sigmask(SIG_BLOCK, NULL, &mask) == 0 && sigismember(&mask, SIGCHLD) == 1;
        known = 1;
    }
    return blocked;
}

/* The holder's next wait status within budget_ns: 1 and *status, 0 when it is no longer ours, 2
 * when none came yet. Each ptrace stop sends SIGCHLD to the tracer's process, where every thread
 * keeps it blocked (launch.py): the signalfd wakes this wait (it is readable at once when the
 * stop is already in), and any other SIGCHLD only costs a look. Where nothing would wake it (no
 * signalfd, SIGCHLD not blocked) it looks once and does not wait. */
static int status_within(FastPath *self, pid_t pid, int *status, int64_t budget_ns) {
    int64_t deadline = fp_clock_ns(CLOCK_MONOTONIC) + budget_ns;
    int waits = self->chld_fd >= 0 && budget_ns > 0 && chld_blocked();
    for (;;) {
        if (waits) {
            int64_t left = deadline - fp_clock_ns(CLOCK_MONOTONIC);
            struct pollfd wake = {self->chld_fd, POLLIN, 0};
            struct timespec wait = {(time_t)(left > 0 ? left / 1000000000LL : 0),
                                    (long)(left > 0 ? left % 1000000000LL : 0)};
            if (ppoll(&wake, 1, &wait, NULL) > 0) {
                struct signalfd_siginfo drained[4]; /* SIGCHLD is not queued: one read takes it */
                if (read(self->chld_fd, drained, sizeof drained) < 0 && errno != EAGAIN)
                    waits = 0;
            }
        }
        pid_t got = waitpid(pid, status, __WALL | WNOHANG);
        if (got == pid)
            return 1;
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return 0;
        if (!waits || fp_clock_ns(CLOCK_MONOTONIC) >= deadline)
            return 2;
    }
}

/* Seize and interrupt the holder, ID_VALID, record, CONTINUE: 1 when its next stop is still to be
 * taken (*continued: whether CONTINUE was sent), 0 when there is none to take (out says why). */
static int start_exec(FastPath *self, const ExecJob *job, double timeout, ExecResult *out, int *continued) {
    const ExecSlot *slot = &self->execs[job->slot];
    pid_t pid = job->pid;
    /* Records stopped being written since the hand-off: Python decides (and records) afresh. */
    long options = PTRACE_O_TRACEEXEC | PTRACE_O_EXITKILL;
    Hit none = {-1, 0, 0, 0, 0, 0};
    *continued = 0;
    if (self->suspended || ptrace(PTRACE_SEIZE, pid, 0, (void *)options) != 0) {
        int gone = errno == ESRCH; /* killed meanwhile: nothing to decide afresh */
        fp_queue_reserved(self, none, job->reserved);
        out->kind = gone && !self->suspended ? CHANGED_NONE : UNTRACEABLE, out->gone = gone && !self->suspended;
        return 0;
    }
    if (ptrace(PTRACE_INTERRUPT, pid, 0, 0) != 0) {
        fp_queue_reserved(self, none, job->reserved);
        finish_stop(self, pid, slot, 0, timeout, out); /* undo the attach */
        out->kind = UNTRACEABLE;
        return 0;
    }
    if (ioctl(self->listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &job->id) != 0) {
        fp_queue_reserved(self, none, job->reserved);
        out->gone = 1;
    } else {
        Hit hit = {slot->entry, job->pid, job->nr, 0, fp_clock_ns(CLOCK_REALTIME),
                   fp_clock_ns(CLOCK_MONOTONIC) - job->started};
        /* On record before it takes effect, in the place kept for it at the hand-over. */
        if (job->reserved)
            fp_queue_reserved(self, hit, 1);
        struct seccomp_notif_resp resp = {.id = job->id, .flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE};
        *continued = ioctl(self->listener, SECCOMP_IOCTL_NOTIF_SEND, &resp) == 0;
        self->exec_hits++;
    }
    return 1;
}

static void clear(ExecResult *out) {
    out->kind = CHANGED_NONE, out->err = out->gone = out->via_proc = 0, out->seen_length = 0;
}

static void counted(FastPath *self, const ExecResult *out) {
    self->exec_changed += out->kind != CHANGED_NONE;
    self->exec_proc_checks += out->via_proc;
}

/* The permitted exec of job, on the thread that will wait for it (the tracer), under the exec
 * lock and the gate its caller holds. */
void fp_finish_exec(FastPath *self, const ExecJob *job, double timeout, ExecResult *out) {
    int continued;
    clear(out);
    if (!start_exec(self, job, timeout, out, &continued))
        return;
    finish_stop(self, job->pid, &self->execs[job->slot], continued, timeout, out);
    counted(self, out);
}

/* The same on the receiving thread, when the exec lock and the gate are free: HERE_BUSY (they are
 * not: nothing done), HERE_FINISHED (out says how), or HERE_WAITING: continued, its stop not in
 * within budget_ns, the locks still held for fp_finish_waiting_exec() on this thread. The receiver
 * never waits longer than budget_ns here: the stall watchdog sees only Python's handlers. */
int fp_finish_exec_here(FastPath *self, const ExecJob *job, int64_t budget_ns, ExecResult *out) {
    if (!fp_exec_locks_try(self))
        return HERE_BUSY;
    int continued, status = 0;
    clear(out);
    if (!start_exec(self, job, self->exec_timeout, out, &continued)) {
        fp_exec_locks_release(self);
        return HERE_FINISHED;
    }
    int got = status_within(self, job->pid, &status, budget_ns);
    if (got == 2) {
        self->waiting = (WaitingExec){job->pid, job->slot, continued, 1, out}; /* out is the waiter's now */
        return HERE_WAITING;
    }
    take_stop(job->pid, &self->execs[job->slot], continued, got, status, out);
    counted(self, out);
    fp_exec_locks_release(self);
    return HERE_FINISHED;
}

/* The rest of a HERE_WAITING exec: its stop, waited for as long as timeout; then the locks go.
 * Its result (NULL: nothing waits), in the buffer the receiver left with it, is the caller's. */
ExecResult *fp_finish_waiting_exec(FastPath *self, double timeout) {
    if (!self->waiting.held)
        return NULL;
    WaitingExec waiting = self->waiting;
    self->waiting.held = 0, self->waiting.out = NULL;
    finish_stop(self, waiting.pid, &self->execs[waiting.slot], waiting.continued, timeout, waiting.out);
    counted(self, waiting.out);
    fp_exec_locks_release(self);
    return waiting.out;
}
