/* The supervisor's compiled fast path: repeated read-only opens answered without Python.
 *
 * FastPath.receive() waits for the next notification with the GIL released. A read-only
 * open of a plain absolute path (no '..', no symlink on the way, nothing under /proc or
 * /dev/fd) whose decision the supervisor has already made for exactly that path and those
 * flags, with a policy whose decision reads nothing else (Engine.decision_keys), is answered
 * here the way sandbox/fsops.py would answer it: the path is read from the agent's memory
 * once, opened in the agent's root with the agent's flags and openat2(RESOLVE_IN_ROOT |
 * RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS), checked to be a regular file, directory or
 * FIFO outside procfs, and injected with SECCOMP_IOCTL_NOTIF_ADDFD (a cached deny resolves
 * the path, then returns EACCES). Nothing is CONTINUEd.
 * Every other notification is returned to Python untouched, as is any case this code does
 * not handle exactly as Python would (an agent acting with other credentials than ours,
 * a full record ring, a symlink, an unusual file type, a memory read that fails).
 *
 * Each answer is queued as a record (entry, pid, syscall, time, latency, result) for the
 * supervisor to audit (drain()); when the queue is full the call goes to Python instead.
 */
#include "fastpath.h"

/* -- Python methods ------------------------------------------------------------ */

static PyObject *FastPath_receive(FastPath *self, PyObject *unused) {
    if (!self->slots || !self->ring) {
        PyErr_SetString(PyExc_RuntimeError, "FastPath was not initialised");
        return NULL;
    }
    struct seccomp_notif n;
    struct pollfd fds[2] = {{self->listener, POLLIN, 0}, {self->stop_fd, POLLIN, 0}};
    int outcome = 0; /* 1: a notification for Python, 0: none any more, -1: error (errno) */
    int err = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->task_lock);
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            outcome = -1, err = errno;
            break;
        }
        if (fds[1].revents)
            break;
        if (fds[0].revents & POLLIN) {
            memset(&n, 0, sizeof n);
            if (ioctl(self->listener, SECCOMP_IOCTL_NOTIF_RECV, &n) != 0) {
                if (errno == ENOENT || errno == EINTR)
                    continue; /* cancelled before we took it */
                outcome = -1, err = errno;
                break;
            }
            if (fp_watched(self, n.data.nr) && n.data.arch == self->arch) {
                fp_credential_change(self, &n);
                continue;
            }
            if (fp_handle(self, &n, fp_clock_ns(CLOCK_MONOTONIC)) == ANSWERED)
                continue;
            self->misses++;
            outcome = 1;
            break;
        }
        if (fds[0].revents & (POLLHUP | POLLERR | POLLNVAL))
            break;
    }
    pthread_mutex_unlock(&self->task_lock);
    Py_END_ALLOW_THREADS
    if (outcome < 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (outcome == 0)
        Py_RETURN_NONE;
    return Py_BuildValue("(KkkiIK(KKKKKK))", (unsigned long long)n.id, (unsigned long)n.pid,
                         (unsigned long)n.flags, n.data.nr, n.data.arch, (unsigned long long)n.data.instruction_pointer,
                         (unsigned long long)n.data.args[0], (unsigned long long)n.data.args[1],
                         (unsigned long long)n.data.args[2], (unsigned long long)n.data.args[3],
                         (unsigned long long)n.data.args[4], (unsigned long long)n.data.args[5]);
}

static PyObject *FastPath_remember(FastPath *self, PyObject *args) {
    const char *path;
    Py_ssize_t length;
    unsigned int flags;
    int entry, deny;
    if (!PyArg_ParseTuple(args, "y#Iip", &path, &length, &flags, &entry, &deny))
        return NULL;
    if (length <= 0 || length >= PATH_LIMIT || memchr(path, '\0', length))
        Py_RETURN_FALSE;
    uint64_t hash = fp_hash(path, (size_t)length, flags);
    int stored = 0;
    pthread_mutex_lock(&self->table_lock);
    Slot *slot = fp_find_slot(self, path, (uint32_t)length, flags, hash);
    if (slot->path) {
        stored = slot->entry == entry && slot->deny == deny; /* the same decision, already known */
    } else if (self->used < self->max_entries) {
        char *copy = malloc((size_t)length + 1);
        if (copy) {
            memcpy(copy, path, (size_t)length);
            copy[length] = '\0';
            *slot = (Slot){hash, copy, (uint32_t)length, flags, entry, deny};
            self->used++;
            stored = 1;
        }
    }
    pthread_mutex_unlock(&self->table_lock);
    return PyBool_FromLong(stored);
}

static PyObject *FastPath_drain(FastPath *self, PyObject *unused) {
    pthread_mutex_lock(&self->ring_lock);
    uint32_t count = self->ring_count;
    Hit *hits = count ? malloc(count * sizeof(Hit)) : NULL;
    if (count && !hits) {
        pthread_mutex_unlock(&self->ring_lock);
        return PyErr_NoMemory();
    }
    for (uint32_t i = 0; i < count; i++)
        hits[i] = self->ring[(self->ring_head + i) % self->ring_size];
    self->ring_head = (self->ring_head + count) % self->ring_size;
    self->ring_count = 0;
    pthread_mutex_unlock(&self->ring_lock);
    PyObject *out = PyList_New(count);
    for (uint32_t i = 0; out && i < count; i++) {
        PyObject *item = Py_BuildValue("(iiiiLL)", hits[i].entry, hits[i].pid, hits[i].nr, hits[i].result,
                                       (long long)hits[i].wall_ns, (long long)hits[i].latency_ns);
        if (!item) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, item);
    }
    free(hits);
    return out;
}

static PyObject *FastPath_stats(FastPath *self, PyObject *unused) {
    return Py_BuildValue("{sKsKsKsKsKsKsKsI}", "fast_status_reads", self->status_reads, "fast_credential_calls",
                         self->credential_calls, "fast_hits", self->hits, "fast_denied", self->denied, "fast_gone",
                         self->gone, "fast_misses", self->misses, "fast_ring_full", self->ring_full, "fast_entries",
                         self->used);
}

static void release(FastPath *self) {
    if (self->shared_root >= 0)
        close(self->shared_root);
    self->shared_root = -1;
    for (int i = 0; i < KEPT_TASKS; i++)
        fp_drop_task(&self->kept[i]);
}

static PyObject *FastPath_close(FastPath *self, PyObject *unused) {
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&self->task_lock); /* never under a receive() still handling a call */
    release(self);
    pthread_mutex_unlock(&self->task_lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *FastPath_suspend(FastPath *self, PyObject *unused) {
    self->suspended = 1; /* read by the receiver on its next call: plain int, set once */
    Py_RETURN_NONE;
}

static int FastPath_init(FastPath *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"listener", "stop_fd", "nr_open", "nr_openat", "arch", "valid_flags",
                               "fsuid", "fsgid", "groups", "caps", "record", "watched", "entries", "ring",
                               NULL};
    PyObject *groups, *watch;
    if (self->slots) {
        PyErr_SetString(PyExc_RuntimeError, "FastPath is already initialised");
        return -1;
    }
    unsigned int entries = 4096, ring = 65536;
    unsigned long long caps;
    unsigned int fsuid, fsgid;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iiiiIIIIOKpO|II", keywords, &self->listener,
                                     &self->stop_fd, &self->nr_open, &self->nr_openat, &self->arch,
                                     &self->valid_flags, &fsuid, &fsgid, &groups, &caps, &self->record, &watch,
                                     &entries, &ring))
        return -1;
    self->fsuid = fsuid, self->fsgid = fsgid, self->caps = caps;
    PyObject *seq = PySequence_Fast(groups, "groups must be a sequence of ints");
    if (!seq)
        return -1;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(seq);
    if (count > MAX_GROUPS) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "too many supplementary groups");
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        unsigned long value = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(seq, i));
        if (PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
        self->groups[i] = (gid_t)value;
    }
    Py_DECREF(seq);
    self->ngroups = (int)count;
    seq = PySequence_Fast(watch, "watched must be a sequence of syscall numbers");
    if (!seq)
        return -1;
    if (PySequence_Fast_GET_SIZE(seq) > MAX_WATCHED) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "too many watched syscalls");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(seq); i++) {
        self->watched[i] = (int)PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (PyErr_Occurred()) {
            Py_DECREF(seq);
            return -1;
        }
    }
    self->nwatched = (int)PySequence_Fast_GET_SIZE(seq);
    self->recheck_always = self->nwatched == 0; /* nothing tells us of a change */
    Py_DECREF(seq);
    qsort(self->groups, count, sizeof(gid_t), fp_compare_gids);
    if (entries < 1 || entries > (1u << 20) || ring < 1 || ring > (1u << 22)) {
        PyErr_SetString(PyExc_ValueError, "entries must be 1..2**20 and ring 1..2**22");
        return -1;
    }
    uint32_t size = 2;
    while (size < entries * 2)
        size <<= 1;
    self->slots = calloc(size, sizeof(Slot));
    self->ring = malloc((size_t)ring * sizeof(Hit));
    if (!self->slots || !self->ring) {
        PyErr_NoMemory();
        return -1;
    }
    self->slot_mask = size - 1, self->max_entries = entries, self->ring_size = ring;
    return 0;
}

static PyObject *FastPath_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    FastPath *self = (FastPath *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->shared_root = self->listener = self->stop_fd = -1;
    for (int i = 0; i < KEPT_TASKS; i++)
        self->kept[i] = (KeptTask){0, -1, -1, 0};
    pthread_mutex_init(&self->table_lock, NULL);
    pthread_mutex_init(&self->ring_lock, NULL);
    pthread_mutex_init(&self->task_lock, NULL);
    return (PyObject *)self;
}

static void FastPath_dealloc(FastPath *self) {
    release(self);
    if (self->slots)
        for (uint32_t i = 0; i <= self->slot_mask; i++)
            free(self->slots[i].path);
    free(self->slots);
    free(self->ring);
    pthread_mutex_destroy(&self->table_lock);
    pthread_mutex_destroy(&self->ring_lock);
    pthread_mutex_destroy(&self->task_lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef FastPath_methods[] = {
    {"receive", (PyCFunction)FastPath_receive, METH_NOARGS,
     "Answer cached read-only opens until another notification arrives; returns it as "
     "(id, pid, flags, nr, arch, ip, args), or None once every filtered task is gone or stop_fd is readable."},
    {"remember", (PyCFunction)FastPath_remember, METH_VARARGS,
     "remember(path, flags, entry, deny) -> bool: answer later read-only opens of path with flags so."},
    {"drain", (PyCFunction)FastPath_drain, METH_NOARGS,
     "The calls answered since the last drain: [(entry, pid, nr, result, wall_ns, latency_ns)]."},
    {"stats", (PyCFunction)FastPath_stats, METH_NOARGS, "Counters, by name."},
    {"close", (PyCFunction)FastPath_close, METH_NOARGS, "Close the fds this object keeps."},
    {"suspend", (PyCFunction)FastPath_suspend, METH_NOARGS,
     "From now on answer nothing: every notification goes to Python (the records cannot be written)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FastPathType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "sandbox._fastpath.FastPath",
    .tp_basicsize = sizeof(FastPath),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Repeated read-only opens answered in C (see the module source).",
    .tp_new = FastPath_new,
    .tp_init = (initproc)FastPath_init,
    .tp_dealloc = (destructor)FastPath_dealloc,
    .tp_methods = FastPath_methods,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "sandbox._fastpath",
                                    "The supervisor's compiled fast path.", -1, NULL};

PyMODINIT_FUNC PyInit__fastpath(void) {
    if (PyType_Ready(&FastPathType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    Py_INCREF(&FastPathType);
    if (PyModule_AddObject(m, "FastPath", (PyObject *)&FastPathType) < 0) {
        Py_DECREF(&FastPathType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
