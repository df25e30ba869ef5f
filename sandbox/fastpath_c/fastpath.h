/* The supervisor's compiled fast path: shared types (see module.c for what it does). */
#ifndef FARAMESH_FASTPATH_H
#define FARAMESH_FASTPATH_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <sched.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define PATH_LIMIT 4096
#define PAGE 4096
#define STATUS_LIMIT 16384
#define MAX_GROUPS 256
#define KEPT_TASKS 32
#define MAX_WATCHED 16
#define ARGV_LIMIT 256   /* an exec with more arguments goes to Python (exec.c) */
#define ARGV_BYTES 65536 /* and one whose arguments take more bytes */

enum outcome { MISS, ANSWERED, PENDING, PENDING_EXEC }; /* PENDING: a decided connect for the caller to perform; PENDING_EXEC: a permitted exec (exec.c) */

typedef struct {
    uint64_t hash;
    char *path; /* NULL: empty slot */
    uint32_t length;
    uint32_t flags;
    int32_t entry;
    int32_t deny;
} Slot;

typedef struct {
    int32_t entry, pid, nr, result;
    int64_t wall_ns, latency_ns;
} Hit;

/* A connect() whose decision is known: the socket's kind and the address bytes exactly as the
 * agent passed them (the key), the address Python connects with, and the answer. */
#define SOCKADDR_LIMIT 128
typedef struct {
    uint64_t hash;
    int used;
    int32_t domain, type, protocol;
    uint32_t raw_length, target_length;
    unsigned char raw[SOCKADDR_LIMIT], target[SOCKADDR_LIMIT];
    int32_t entry, deny, refusal; /* refusal: the errno a denial (or an unrecordable permit) gets */
    int64_t expires_ns;     /* CLOCK_MONOTONIC; 0: never (no DNS name was used) */
} ConnectSlot;

typedef struct {
    uint64_t id;
    int sock; /* our duplicate of the agent's socket */
    uint32_t length;
    unsigned char target[SOCKADDR_LIMIT];
} ConnectJob;

/* A repeated execve (exec.c): the key (path as passed, argv as /proc/PID/cmdline shows it, the
 * cwd link), the decision, and what the exec stop must show. */
typedef struct {
    uint64_t dev, ino;
    int64_t size, mtime_ns, ctime_ns;
} FileKey;

typedef struct {
    uint64_t hash;
    int used;
    char *data; /* one allocation holding the four strings */
    char *path, *argv, *cwd, *exe;
    uint32_t path_length, argv_length, cwd_length, exe_length;
    int32_t entry, deny;
    FileKey file;
} ExecSlot;

typedef struct {
    uint64_t id;
    int32_t pid, nr;
    uint32_t slot;
    int64_t started;
    int32_t entry; /* the record entry, for Python */
    int reserved;  /* a place in the record ring is kept for it (fp_reserve_hit) */
} ExecJob;

enum exec_change { CHANGED_NONE, UNTRACEABLE, CHANGED_EXECUTABLE, CHANGED_ARGV, CHANGED_PATH, CHANGED_CWD,
                   CHANGED_FILE, CHANGED_REFUSED, CHANGED_UNINSPECTABLE, CHANGED_TIMEOUT, CHANGED_UNDETACHABLE };
typedef struct {
    int kind, err, gone;
    int via_proc; /* argv and AT_EXECFN were read from /proc (exec_stack.c could not) */
    uint32_t seen_length;
    char seen[PATH_LIMIT + ARGV_BYTES + 2];
} ExecResult;

/* An exec the receiver left waiting for its stop, with the locks and its result buffer. */
typedef struct {
    int32_t pid;
    uint32_t slot;
    int continued, held;
    ExecResult *out;
} WaitingExec;

enum finish_here { HERE_BUSY, HERE_FINISHED, HERE_WAITING }; /* fp_finish_exec_here() */


typedef struct {
    int tid, dir, status;
    int same; /* 1: its credentials were read and are ours */
} KeptTask;

typedef struct {
    PyObject_HEAD
    int listener, stop_fd;
    int nr_open, nr_openat;
    uint32_t arch, valid_flags;
    uid_t fsuid;
    gid_t fsgid;
    uint64_t caps;
    int ngroups;
    gid_t groups[MAX_GROUPS];
    int record;
    int hold_cpu; /* the agent's thread kept on the receiver's CPU for an ADDFD (cpu_hold.c) */
    pthread_mutex_t table_lock, ring_lock, task_lock;
    Slot *slots;
    uint32_t slot_mask, used, max_entries;
    Hit *ring;
    uint32_t ring_size, ring_head, ring_count, ring_reserved; /* reserved: for execs handed over */
    KeptTask kept[KEPT_TASKS];
    uint32_t next_kept;
    int watched[MAX_WATCHED], nwatched;
    int recheck_always; /* a task changed or differs in credentials, or nothing would tell us */
    int suspended;      /* the records cannot be written: every call goes to Python */
    int shared_root;    /* every task's root while none has: opened from the first task's */
    unsigned long long hits, denied, gone, misses, ring_full, status_reads, credential_calls;
    /* repeated connects (connect.c), under table_lock */
    int nr_connect, nr_socket;
    ConnectSlot *connects;
    uint32_t connect_mask, connects_used, max_connects;
    uint64_t names_generation; /* entries are learned only under the DNS names they were decided with */
    unsigned long long connect_hits, connect_denied, connect_handed, sockets;
    /* repeated execs (exec.c): the table under table_lock, its slots never change once used */
    int nr_execve;
    ExecSlot *execs;
    uint32_t exec_mask, execs_used, max_execs;
    int64_t programs_started; /* CLOCK_REALTIME_COARSE ns: the program index's start */
    unsigned long long exec_hits, exec_denied, exec_handed, exec_changed;
    unsigned long long exec_here, exec_gone, exec_busy, exec_waiting; /* how the receiver left a permit */
    unsigned long long exec_proc_checks; /* exec stops checked through /proc */
    /* the exec lock and the fs gate, shared with Python (exec_gate.c); an exec the receiver
     * finishes waits at most exec_wait_ns there, then goes on in Python holding them (waiting) */
    pthread_mutex_t exec_mutex, gate_lock;
    pthread_cond_t gate_cond;
    int gate_readers, gate_writer;
    int chld_fd; /* signalfd for SIGCHLD: the exec stop's wake-up */
    double exec_timeout;
    int64_t exec_wait_ns;
    WaitingExec waiting;
    /* the exec being finished, for the watchdog thread that kills it at its deadline (exec.c) */
    pthread_mutex_t watch_lock;
    pthread_cond_t watch_cond;
    pthread_t watch_thread;
    int watch_started, watch_stop, watch_pidfd, watch_fired;
    int64_t watch_deadline;
} FastPath;

int fp_handle(FastPath *self, const struct seccomp_notif *n, int64_t started);
int fp_answer_with_fd(int listener, uint64_t id, int fd, int cloexec, pid_t tid, int hold);
PyObject *fp_py_answer_with_fd(PyObject *module, PyObject *args);
int fp_agent_root(FastPath *self, int tid, int *owned);
int fp_keep_root(FastPath *self, int root);
void fp_forget_task(FastPath *self, int tid);
int fp_waiting_task_root(FastPath *self, const struct seccomp_notif *n, int *owned, int *outcome);
void fp_drop_task(KeptTask *task);
void fp_credential_change(FastPath *self, const struct seccomp_notif *n);
int fp_watched(FastPath *self, int nr);
int fp_compare_gids(const void *a, const void *b);
uint64_t fp_hash(const char *data, size_t length, uint32_t flags);
Slot *fp_find_slot(FastPath *self, const char *path, uint32_t length, uint32_t flags, uint64_t hash);
int64_t fp_clock_ns(clockid_t clock);
int fp_send_error(int listener, uint64_t id, int err);
int fp_queue_hit(FastPath *self, Hit hit);
int fp_ring_has_room(FastPath *self);
ssize_t fp_read_memory(pid_t pid, uint64_t addr, void *buf, size_t length);

int fp_connect(FastPath *self, const struct seccomp_notif *n, int64_t started, ConnectJob *pending);
int fp_socket(FastPath *self, const struct seccomp_notif *n);
void fp_answer_connect(int listener, uint64_t id, int sock, const unsigned char *target, uint32_t length);
int fp_connects_init(FastPath *self, unsigned int entries);
void fp_connects_free(FastPath *self);
int fp_remember_connect(FastPath *self, const ConnectSlot *learned, uint64_t generation);
void fp_forget_connects(FastPath *self, uint64_t generation);

int fp_exec(FastPath *self, const struct seccomp_notif *n, int64_t started, ExecJob *pending);
int fp_reserve_hit(FastPath *self);
void fp_queue_reserved(FastPath *self, Hit hit, int reserved);
void fp_finish_exec(FastPath *self, const ExecJob *job, double timeout, ExecResult *out);
int fp_initial_stack(pid_t pid, char *argv, size_t limit, ssize_t *argv_length, char *execfn,
                     ssize_t *execfn_length);
int fp_finish_exec_here(FastPath *self, const ExecJob *job, int64_t budget_ns, ExecResult *out);
ExecResult *fp_finish_waiting_exec(FastPath *self, double timeout);
void fp_monotonic_cond_init(pthread_cond_t *cond);
void fp_locks_init(FastPath *self);
void fp_locks_destroy(FastPath *self);
int fp_exec_locks_try(FastPath *self);
void fp_exec_locks_release(FastPath *self);
PyObject *fp_py_exec_lock(FastPath *self, PyObject *unused);
PyObject *fp_py_exec_unlock(FastPath *self, PyObject *unused);
PyObject *fp_py_gate_enter_shared(FastPath *self, PyObject *unused);
PyObject *fp_py_gate_leave_shared(FastPath *self, PyObject *unused);
PyObject *fp_py_gate_enter_exclusive(FastPath *self, PyObject *args);
PyObject *fp_py_gate_leave_exclusive(FastPath *self, PyObject *unused);
int fp_execs_init(FastPath *self, unsigned int entries);
void fp_execs_free(FastPath *self);
int fp_remember_exec(FastPath *self, const ExecSlot *learned);
void fp_stop_watchdog(FastPath *self);
ssize_t fp_read_string(pid_t pid, uint64_t addr, char *buf, size_t limit);
ssize_t fp_read_link(const char *name, char *buf);
void fp_file_key(const struct stat *st, FileKey *key);

#endif
