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
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statfs.h>
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

enum outcome { MISS, ANSWERED };

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
    pthread_mutex_t table_lock, ring_lock, task_lock;
    Slot *slots;
    uint32_t slot_mask, used, max_entries;
    Hit *ring;
    uint32_t ring_size, ring_head, ring_count;
    KeptTask kept[KEPT_TASKS];
    uint32_t next_kept;
    int watched[MAX_WATCHED], nwatched;
    int recheck_always; /* a task changed or differs in credentials, or nothing would tell us */
    int suspended;      /* the records cannot be written: every call goes to Python */
    int shared_root;    /* every task's root while none has: opened from the first task's */
    unsigned long long hits, denied, gone, misses, ring_full, status_reads, credential_calls;
} FastPath;

int fp_handle(FastPath *self, const struct seccomp_notif *n, int64_t started);
int fp_agent_root(FastPath *self, int tid, int *owned);
int fp_keep_root(FastPath *self, int root);
void fp_forget_task(FastPath *self, int tid);
void fp_drop_task(KeptTask *task);
void fp_credential_change(FastPath *self, const struct seccomp_notif *n);
int fp_watched(FastPath *self, int nr);
int fp_compare_gids(const void *a, const void *b);
uint64_t fp_hash(const char *data, size_t length, uint32_t flags);
Slot *fp_find_slot(FastPath *self, const char *path, uint32_t length, uint32_t flags, uint64_t hash);
int64_t fp_clock_ns(clockid_t clock);

#endif
