/* Where the agent's thread wakes when a file is handed to it.
 *
 * SECCOMP_IOCTL_NOTIF_ADDFD wakes the agent with a plain wake-up while the receiver still runs
 * on the CPU the notification woke it on (the agent's, with SYNC_WAKE_UP). The scheduler then
 * moves the agent to the other, idle CPU; on a VM whose idle vCPUs halt, that costs tens of
 * microseconds (docs/benchmarks.md "Holding the agent's thread"). Held on the receiver's CPU
 * for the hand-over, the agent runs as soon as the receiver sleeps in the ioctl: a plain
 * context switch.
 *
 * The agent must never run its own code while held (a fork would pass the one-CPU set on for
 * good, and the thread could read it). So a held thread gets the file without the answer
 * (ADDFD without SEND: it installs the fd and waits on, killably), its own set back, and only
 * then the answer (SEND, a sync wake-up onto this CPU). A placement hint only: when a hold
 * cannot be made the answer is the usual ADDFD with SEND. */
#include "fastpath.h"

static int restore(pid_t tid, const cpu_set_t *before) {
    for (int tries = 0; tries < 3; tries++)
        if (sched_setaffinity(tid, sizeof *before, before) == 0 || errno == ESRCH)
            return 0;
    /* e.g. ENOMEM, or a cpuset changed under it: every CPU, which the kernel narrows to the
     * cpuset, rather than leave the thread on one */
    cpu_set_t every;
    memset(&every, 0xff, sizeof every);
    return sched_setaffinity(tid, sizeof every, &every);
}

/* Holds tid on this CPU; 0 when it was not (not a CPU it may use, a one-CPU set, any error). */
static int hold_here(pid_t tid, cpu_set_t *before) {
    int cpu = sched_getcpu();
    /* tid 0 would be ourselves; a set wider than cpu_set_t (EINVAL) is left alone */
    if (tid <= 0 || cpu < 0 || cpu >= CPU_SETSIZE || sched_getaffinity(tid, sizeof *before, before) != 0 ||
        !CPU_ISSET(cpu, before) || CPU_COUNT(before) < 2)
        return 0;
    cpu_set_t here;
    CPU_ZERO(&here);
    CPU_SET(cpu, &here);
    return sched_setaffinity(tid, sizeof here, &here) == 0;
}

static int retried_ioctl(int fd, unsigned long request, void *arg) {
    int result;
    do
        result = ioctl(fd, request, arg);
    while (result < 0 && errno == EINTR);
    return result;
}

/* Answers notification id with fd installed in the agent (O_CLOEXEC with cloexec): the agent's
 * fd number, or -1 with errno (ENOENT or ESRCH: the agent no longer waits; any other: nothing
 * was installed, the caller answers with that error). With hold, tid is held on this CPU for
 * the hand-over. */
int fp_answer_with_fd(int listener, uint64_t id, int fd, int cloexec, pid_t tid, int hold) {
    cpu_set_t before;
    int held = hold && hold_here(tid, &before);
    struct seccomp_notif_addfd addfd = {
        .id = id, .flags = held ? 0 : SECCOMP_ADDFD_FLAG_SEND, .srcfd = (uint32_t)fd, .newfd = 0,
        .newfd_flags = cloexec ? O_CLOEXEC : 0,
    };
    /* EINTR: the request was withdrawn unless the agent had taken it (then its result comes back) */
    int installed = retried_ioctl(listener, SECCOMP_IOCTL_NOTIF_ADDFD, &addfd);
    if (!held)
        return installed;
    /* Installed: the notification still waited after the set was narrowed, so tid named its
     * task all along (a task leaves a notification before it may exit, or hand its number to a
     * thread that execs). Not installed: tid may name another task now; undone at once either way. */
    int err = errno;
    restore(tid, &before); /* before it can run again: it waits for the answer */
    if (installed < 0) {
        errno = err;
        return -1;
    }
    /* The fd is the agent's now: the answer must be the fd number, never an error. SEND fails
     * only when the agent is gone (ENOENT), or with EINTR before it took the lock. */
    struct seccomp_notif_resp resp = {.id = id, .val = installed, .error = 0, .flags = 0};
    retried_ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &resp);
    return installed;
}

/* answer_with_fd(listener, id, fd, cloexec, tid, hold) for Python's answers: the fd number the
 * agent got, or OSError. The GIL is released for the hand-over. */
PyObject *fp_py_answer_with_fd(PyObject *module, PyObject *args) {
    (void)module;
    int listener, fd, cloexec, tid, hold, installed, err;
    unsigned long long id;
    if (!PyArg_ParseTuple(args, "iKipip", &listener, &id, &fd, &cloexec, &tid, &hold))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    installed = fp_answer_with_fd(listener, id, fd, cloexec, (pid_t)tid, hold);
    err = errno;
    Py_END_ALLOW_THREADS
    if (installed < 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(installed);
}
