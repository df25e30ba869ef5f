/* The supervisor's exec lock and filesystem gate, kept here so that Python (supervisor.py, through
 * fastpath_exec.ExecLock and ExecGate) and the compiled receiver share them: the receiver finishes
 * a repeated exec on the spot when both are free, exactly as Python finishes one under them.
 *
 * The gate is a shared/exclusive lock as freeze.Gate: filesystem operations performed for the
 * agent hold it shared, an exec decision exclusive, so no file an exec reads changes under it.
 * Waiting is done with the GIL released. */
#include "fastpath.h"

/* A condition whose timed waits run on CLOCK_MONOTONIC: a timeout must not stretch when the wall
 * clock is set back. */
void fp_monotonic_cond_init(pthread_cond_t *cond) {
    pthread_condattr_t monotonic;
    pthread_condattr_init(&monotonic);
    pthread_condattr_setclock(&monotonic, CLOCK_MONOTONIC);
    pthread_cond_init(cond, &monotonic);
    pthread_condattr_destroy(&monotonic);
}

void fp_locks_init(FastPath *self) {
    pthread_mutex_init(&self->exec_mutex, NULL);
    pthread_mutex_init(&self->gate_lock, NULL);
    fp_monotonic_cond_init(&self->gate_cond);
}

void fp_locks_destroy(FastPath *self) {
    pthread_mutex_destroy(&self->exec_mutex);
    pthread_mutex_destroy(&self->gate_lock);
    pthread_cond_destroy(&self->gate_cond);
}

/* 1 with the gate held exclusive, 0 when filesystem operations still hold it after timeout_ns
 * (0: do not wait). */
static int gate_exclusive(FastPath *self, int64_t timeout_ns) {
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ns / 1000000000LL, deadline.tv_nsec += timeout_ns % 1000000000LL;
    if (deadline.tv_nsec >= 1000000000L)
        deadline.tv_sec++, deadline.tv_nsec -= 1000000000L;
    pthread_mutex_lock(&self->gate_lock);
    int waited = 0;
    while (self->gate_writer || self->gate_readers) {
        if (timeout_ns <= 0 || waited == ETIMEDOUT) {
            pthread_mutex_unlock(&self->gate_lock);
            return 0;
        }
        waited = pthread_cond_timedwait(&self->gate_cond, &self->gate_lock, &deadline);
    }
    self->gate_writer = 1;
    pthread_mutex_unlock(&self->gate_lock);
    return 1;
}

static void gate_exclusive_leave(FastPath *self) {
    pthread_mutex_lock(&self->gate_lock);
    self->gate_writer = 0;
    pthread_cond_broadcast(&self->gate_cond);
    pthread_mutex_unlock(&self->gate_lock);
}

/* Both locks without waiting for either (the receiver: it never waits for Python). */
int fp_exec_locks_try(FastPath *self) {
    if (pthread_mutex_trylock(&self->exec_mutex) != 0)
        return 0;
    if (gate_exclusive(self, 0))
        return 1;
    pthread_mutex_unlock(&self->exec_mutex);
    return 0;
}

void fp_exec_locks_release(FastPath *self) {
    gate_exclusive_leave(self);
    pthread_mutex_unlock(&self->exec_mutex);
}

/* -- for Python ---------------------------------------------------------------------- */

PyObject *fp_py_exec_lock(FastPath *self, PyObject *unused) {
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->exec_mutex);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

PyObject *fp_py_exec_unlock(FastPath *self, PyObject *unused) {
    pthread_mutex_unlock(&self->exec_mutex);
    Py_RETURN_NONE;
}

PyObject *fp_py_gate_enter_shared(FastPath *self, PyObject *unused) {
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->gate_lock);
    while (self->gate_writer)
        pthread_cond_wait(&self->gate_cond, &self->gate_lock);
    self->gate_readers++;
    pthread_mutex_unlock(&self->gate_lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

PyObject *fp_py_gate_leave_shared(FastPath *self, PyObject *unused) {
    pthread_mutex_lock(&self->gate_lock);
    if (self->gate_readers > 0 && --self->gate_readers == 0)
        pthread_cond_broadcast(&self->gate_cond);
    pthread_mutex_unlock(&self->gate_lock);
    Py_RETURN_NONE;
}

PyObject *fp_py_gate_enter_exclusive(FastPath *self, PyObject *args) {
    double timeout;
    if (!PyArg_ParseTuple(args, "d", &timeout))
        return NULL;
    int held;
    Py_BEGIN_ALLOW_THREADS
    held = gate_exclusive(self, timeout > 0 ? (int64_t)(timeout * 1e9) : 0);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(held);
}

PyObject *fp_py_gate_leave_exclusive(FastPath *self, PyObject *unused) {
    gate_exclusive_leave(self);
    Py_RETURN_NONE;
}
