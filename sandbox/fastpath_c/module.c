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
 * Repeated connects of internet sockets are answered the same way (connect.c).
 *
 * Each answer is queued as a record (entry, pid, syscall, time, latency, result) for the
 * supervisor to audit (drain()); when the queue is full the call goes to Python instead.
 */
#include "fastpath.h"

/* -- Python methods ------------------------------------------------------------ */

static PyObject *result_tuple(const ExecResult *out) {
    return Py_BuildValue("(iiiy#)", out->kind, out->err, out->gone, out->seen, (Py_ssize_t)out->seen_length);
}

/* A permitted exec for the caller: (job, entry, notification, waiting, result). here says what was
 * done: HERE_BUSY nothing (the caller finishes it under the locks), HERE_WAITING all but its stop
 * (the caller calls finish_waiting_exec() next, which releases the locks; out went with it),
 * HERE_FINISHED all (result says what the caller must record). */
static PyObject *exec_for_python(FastPath *self, const ExecJob *job, const struct seccomp_notif *n, int here,
                                 ExecResult *out) {
    PyObject *done = here == HERE_FINISHED ? result_tuple(out) : Py_NewRef(Py_None);
    PyObject *value = done == NULL ? NULL :
        Py_BuildValue("((KiiILi)i(KkkiIK(KKKKKK))OO)", (unsigned long long)job->id, job->pid, job->nr, job->slot,
                      (long long)job->started, job->reserved, job->entry, (unsigned long long)n->id,
                      (unsigned long)n->pid, (unsigned long)n->flags, n->data.nr, n->data.arch,
                      (unsigned long long)n->data.instruction_pointer, (unsigned long long)n->data.args[0],
                      (unsigned long long)n->data.args[1], (unsigned long long)n->data.args[2],
                      (unsigned long long)n->data.args[3], (unsigned long long)n->data.args[4],
                      (unsigned long long)n->data.args[5], here == HERE_WAITING ? Py_True : Py_False, done);
    Py_XDECREF(done);
    if (here == HERE_WAITING) {
        if (!value) { /* nobody will call finish_waiting_exec(): the locks must not stay taken */
            ExecResult *finished;
            Py_BEGIN_ALLOW_THREADS
            finished = fp_finish_waiting_exec(self, self->exec_timeout);
            Py_END_ALLOW_THREADS
            free(finished);
        }
        return value;
    }
    /* Without a value nobody answers it: fail closed (a finished permit needs no answer). */
    if (!value && (here == HERE_BUSY || (out && out->kind == UNTRACEABLE)))
        fp_send_error(self->listener, job->id, EPERM);
    free(out);
    return value;
}

static PyObject *FastPath_receive(FastPath *self, PyObject *unused) {
    if (!self->slots || !self->ring) {
        PyErr_SetString(PyExc_RuntimeError, "FastPath was not initialised");
        return NULL;
    }
    struct seccomp_notif n;
    ConnectJob pending;
    ExecJob exec_job;
    ExecResult *exec_out = NULL; /* a repeated exec finished here (exec_stop.c) */
    int here = HERE_BUSY;
    struct pollfd fds[2] = {{self->listener, POLLIN, 0}, {self->stop_fd, POLLIN, 0}};
    int outcome = 0; /* 1: a notification for Python, 2: a connect to perform, 0: none any more, -1: error */
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
            int64_t started = fp_clock_ns(CLOCK_MONOTONIC);
            int handled = n.data.nr == self->nr_connect ? fp_connect(self, &n, started, &pending)
                          : n.data.nr == self->nr_socket ? fp_socket(self, &n)
                          : n.data.nr == self->nr_execve ? fp_exec(self, &n, started, &exec_job)
                                                         : fp_handle(self, &n, started);
            if (handled == ANSWERED)
                continue;
            if (handled == PENDING_EXEC) {
                if (!exec_out)
                    exec_out = malloc(sizeof *exec_out);
                here = exec_out ? fp_finish_exec_here(self, &exec_job, self->exec_wait_ns, exec_out) : HERE_BUSY;
                self->exec_waiting += here == HERE_WAITING;
                if (here == HERE_FINISHED && exec_out->kind == CHANGED_NONE) {
                    self->exec_here++, self->exec_gone += exec_out->gone;
                    continue; /* on record, answered, checked at its exec stop: nothing for Python */
                }
                self->exec_busy += here == HERE_BUSY;
                outcome = 3;
                break;
            }
            if (handled == PENDING) {
                outcome = 2;
                break;
            }
            self->misses++;
            outcome = 1;
            break;
        }
        if (fds[0].revents & (POLLHUP | POLLERR | POLLNVAL))
            break;
    }
    pthread_mutex_unlock(&self->task_lock);
    Py_END_ALLOW_THREADS
    if (outcome == 3)
        return exec_for_python(self, &exec_job, &n, here, exec_out);
    free(exec_out);
    if (outcome < 0) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    if (outcome == 0)
        Py_RETURN_NONE;
    if (outcome == 2)
        return Py_BuildValue("(Kiy#)", (unsigned long long)pending.id, pending.sock, (const char *)pending.target,
                             (Py_ssize_t)pending.length);
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

static PyObject *FastPath_remember_connect(FastPath *self, PyObject *args) {
    ConnectSlot learned;
    memset(&learned, 0, sizeof learned);
    const char *raw, *target;
    Py_ssize_t raw_length, target_length;
    int deny;
    long long expires_ns;
    unsigned long long generation;
    if (!PyArg_ParseTuple(args, "iiiy#y#ipiLK", &learned.domain, &learned.type, &learned.protocol, &raw,
                          &raw_length, &target, &target_length, &learned.entry, &deny, &learned.refusal,
                          &expires_ns, &generation))
        return NULL;
    if (raw_length < 2 || raw_length > SOCKADDR_LIMIT || target_length < 2 || target_length > SOCKADDR_LIMIT ||
        learned.refusal <= 0 || expires_ns < 0)
        Py_RETURN_FALSE;
    memcpy(learned.raw, raw, (size_t)raw_length);
    memcpy(learned.target, target, (size_t)target_length);
    learned.raw_length = (uint32_t)raw_length, learned.target_length = (uint32_t)target_length;
    learned.deny = deny, learned.expires_ns = expires_ns;
    return PyBool_FromLong(fp_remember_connect(self, &learned, generation));
}

static PyObject *FastPath_answer_connect(FastPath *self, PyObject *args) {
    unsigned long long id;
    int sock;
    const char *target;
    Py_ssize_t length;
    if (!PyArg_ParseTuple(args, "Kiy#", &id, &sock, &target, &length))
        return NULL;
    if (length < 2 || length > SOCKADDR_LIMIT) {
        close(sock);
        PyErr_SetString(PyExc_ValueError, "a socket address is 2..128 bytes");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    fp_answer_connect(self->listener, id, sock, (const unsigned char *)target, (uint32_t)length);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *FastPath_forget_connects(FastPath *self, PyObject *args) {
    unsigned long long generation;
    if (!PyArg_ParseTuple(args, "K", &generation))
        return NULL;
    fp_forget_connects(self, generation);
    Py_RETURN_NONE;
}

static PyObject *FastPath_remember_exec(FastPath *self, PyObject *args) {
    ExecSlot learned;
    memset(&learned, 0, sizeof learned);
    Py_ssize_t path_length, argv_length, cwd_length, exe_length;
    unsigned long long dev, ino;
    long long size, mtime_ns, ctime_ns;
    int deny;
    if (!PyArg_ParseTuple(args, "y#y#y#y#ip(KKLLL)", &learned.path, &path_length, &learned.argv, &argv_length,
                          &learned.cwd, &cwd_length, &learned.exe, &exe_length, &learned.entry, &deny, &dev, &ino,
                          &size, &mtime_ns, &ctime_ns))
        return NULL;
    if (path_length < 1 || path_length >= PATH_LIMIT || argv_length < 1 || argv_length > 65536 ||
        cwd_length >= PATH_LIMIT || exe_length >= PATH_LIMIT)
        Py_RETURN_FALSE;
    learned.path_length = (uint32_t)path_length, learned.argv_length = (uint32_t)argv_length;
    learned.cwd_length = (uint32_t)cwd_length, learned.exe_length = (uint32_t)exe_length;
    learned.deny = deny;
    learned.file = (FileKey){dev, ino, size, mtime_ns, ctime_ns};
    return PyBool_FromLong(fp_remember_exec(self, &learned));
}

static PyObject *FastPath_finish_exec(FastPath *self, PyObject *args) {
    ExecJob job = {0};
    unsigned long long id;
    long long started;
    double timeout;
    if (!PyArg_ParseTuple(args, "KiiILpd", &id, &job.pid, &job.nr, &job.slot, &started, &job.reserved, &timeout))
        return NULL;
    job.id = id, job.started = started;
    job.entry = self->execs && job.slot <= self->exec_mask ? self->execs[job.slot].entry : -1;
    if (!self->execs || job.slot > self->exec_mask || !self->execs[job.slot].used) {
        PyErr_SetString(PyExc_ValueError, "no such learned exec");
        return NULL;
    }
    ExecResult *out = malloc(sizeof *out);
    if (!out)
        return PyErr_NoMemory();
    out->kind = out->err = out->gone = 0, out->seen_length = 0;
    Py_BEGIN_ALLOW_THREADS
    fp_finish_exec(self, &job, timeout, out);
    Py_END_ALLOW_THREADS
    PyObject *result =
        Py_BuildValue("(iiiy#)", out->kind, out->err, out->gone, out->seen, (Py_ssize_t)out->seen_length);
    free(out);
    return result;
}

static PyObject *FastPath_finish_waiting_exec(FastPath *self, PyObject *args) {
    double timeout;
    if (!PyArg_ParseTuple(args, "d", &timeout))
        timeout = self->exec_timeout, PyErr_Clear(); /* the locks are released whatever the call */
    ExecResult *out;
    Py_BEGIN_ALLOW_THREADS
    out = fp_finish_waiting_exec(self, timeout);
    Py_END_ALLOW_THREADS
    if (!out) {
        PyErr_SetString(PyExc_RuntimeError, "no exec is waiting for its stop");
        return NULL;
    }
    PyObject *result = result_tuple(out);
    free(out);
    return result;
}

static PyObject *FastPath_configure_execs(FastPath *self, PyObject *args) {
    double timeout, wait;
    if (!PyArg_ParseTuple(args, "dd", &timeout, &wait))
        return NULL;
    if (!(timeout > 0) || !(wait >= 0) || wait > 1.0) {
        PyErr_SetString(PyExc_ValueError, "timeout must be positive and wait 0..1 seconds");
        return NULL;
    }
    self->exec_timeout = timeout, self->exec_wait_ns = (int64_t)(wait * 1e9);
    Py_RETURN_NONE;
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
    /* Still unrecorded until written(count): the ring's bound holds for them too (docs/audit.md). */
    self->ring_reserved += count;
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
    if (!out) { /* nobody will write them: the caller stops the compiled path */
        pthread_mutex_lock(&self->ring_lock);
        self->ring_reserved -= count;
        pthread_mutex_unlock(&self->ring_lock);
    }
    return out;
}

static PyObject *FastPath_written(FastPath *self, PyObject *arg) {
    unsigned long count = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred())
        return NULL;
    pthread_mutex_lock(&self->ring_lock);
    int fits = count <= self->ring_reserved;
    if (fits)
        self->ring_reserved -= (uint32_t)count;
    pthread_mutex_unlock(&self->ring_lock);
    if (!fits) {
        PyErr_SetString(PyExc_ValueError, "more records written than drained");
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *FastPath_stats(FastPath *self, PyObject *unused) {
    return Py_BuildValue("{sKsKsKsKsKsKsKsIsKsKsKsKsIsKsKsKsKsIsKsKsKsKsK}", "fast_status_reads", self->status_reads,
                         "fast_credential_calls", self->credential_calls, "fast_hits", self->hits, "fast_denied",
                         self->denied, "fast_gone", self->gone, "fast_misses", self->misses, "fast_ring_full",
                         self->ring_full, "fast_entries", self->used, "fast_connect_hits", self->connect_hits,
                         "fast_connect_denied", self->connect_denied, "fast_connect_handed", self->connect_handed,
                         "fast_sockets", self->sockets, "fast_connect_entries", self->connects_used,
                         "fast_exec_hits", self->exec_hits, "fast_exec_denied", self->exec_denied,
                         "fast_exec_handed", self->exec_handed, "fast_exec_changed", self->exec_changed,
                         "fast_exec_entries", self->execs_used, "fast_exec_here", self->exec_here,
                         "fast_exec_gone", self->exec_gone, "fast_exec_busy", self->exec_busy,
                         "fast_exec_waiting", self->exec_waiting, "fast_exec_proc_checks", self->exec_proc_checks);
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
    fp_stop_watchdog(self);
    pthread_mutex_lock(&self->task_lock); /* never under a receive() still handling a call */
    release(self);
    if (self->chld_fd >= 0)
        close(self->chld_fd);
    self->chld_fd = -1;
    pthread_mutex_unlock(&self->task_lock);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *FastPath_hold_cpu(FastPath *self, PyObject *arg) {
    int hold = PyObject_IsTrue(arg);
    if (hold < 0)
        return NULL;
    self->hold_cpu = hold; /* set before the first receive() */
    Py_RETURN_NONE;
}

static PyObject *FastPath_suspend(FastPath *self, PyObject *unused) {
    self->suspended = 1; /* read by the receiver on its next call: plain int, set once */
    Py_RETURN_NONE;
}

static int FastPath_init(FastPath *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"listener", "stop_fd", "nr_open", "nr_openat", "arch", "valid_flags",
                               "fsuid", "fsgid", "groups", "caps", "record", "watched", "entries", "ring",
                               "nr_connect", "nr_socket", "connects", "nr_execve", "execs", "programs_started",
                               NULL};
    PyObject *groups, *watch;
    if (self->slots) {
        PyErr_SetString(PyExc_RuntimeError, "FastPath is already initialised");
        return -1;
    }
    unsigned int entries = 4096, ring = 65536, connects = 0, execs = 0;
    long long programs_started = 0;
    unsigned long long caps;
    unsigned int fsuid, fsgid;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iiiiIIIIOKpO|IIiiIiIL", keywords, &self->listener,
                                     &self->stop_fd, &self->nr_open, &self->nr_openat, &self->arch,
                                     &self->valid_flags, &fsuid, &fsgid, &groups, &caps, &self->record, &watch,
                                     &entries, &ring, &self->nr_connect, &self->nr_socket, &connects,
                                     &self->nr_execve, &execs, &programs_started))
        return -1;
    self->programs_started = programs_started;
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
    if (entries < 1 || entries > (1u << 20) || ring < 1 || ring > (1u << 22) || connects > (1u << 16) ||
        execs > (1u << 16)) {
        PyErr_SetString(PyExc_ValueError, "entries must be 1..2**20, ring 1..2**22 and connects 0..2**16");
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
    if (fp_connects_init(self, self->nr_connect >= 0 ? connects : 0) < 0 ||
        fp_execs_init(self, self->nr_execve >= 0 ? execs : 0) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static PyObject *FastPath_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    FastPath *self = (FastPath *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->shared_root = self->listener = self->stop_fd = self->nr_connect = self->nr_socket = self->nr_execve = -1;
    for (int i = 0; i < KEPT_TASKS; i++)
        self->kept[i] = (KeptTask){0, -1, -1, 0};
    pthread_mutex_init(&self->table_lock, NULL);
    pthread_mutex_init(&self->ring_lock, NULL);
    pthread_mutex_init(&self->task_lock, NULL);
    pthread_mutex_init(&self->watch_lock, NULL);
    fp_monotonic_cond_init(&self->watch_cond); /* the exec timeout */
    self->watch_pidfd = -1;
    fp_locks_init(self);
    sigset_t chld;
    sigemptyset(&chld);
    sigaddset(&chld, SIGCHLD);
    self->chld_fd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC); /* -1: execs finish in Python */
    self->exec_timeout = 10.0, self->exec_wait_ns = 5000000;
    return (PyObject *)self;
}

static void FastPath_dealloc(FastPath *self) {
    fp_stop_watchdog(self);
    release(self);
    fp_connects_free(self);
    fp_execs_free(self);
    if (self->slots)
        for (uint32_t i = 0; i <= self->slot_mask; i++)
            free(self->slots[i].path);
    free(self->slots);
    free(self->ring);
    pthread_mutex_destroy(&self->table_lock);
    pthread_mutex_destroy(&self->ring_lock);
    pthread_mutex_destroy(&self->task_lock);
    pthread_mutex_destroy(&self->watch_lock);
    pthread_cond_destroy(&self->watch_cond);
    fp_locks_destroy(self);
    if (self->chld_fd >= 0)
        close(self->chld_fd);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef FastPath_methods[] = {
    {"receive", (PyCFunction)FastPath_receive, METH_NOARGS,
     "Answer cached read-only opens until another notification arrives; returns it as "
     "(id, pid, flags, nr, arch, ip, args), or a decided and recorded connect on a blocking socket for the caller "
     "to perform with answer_connect() as (id, socket, address), or None once every filtered task is gone or "
     "stop_fd is readable."},
    {"remember", (PyCFunction)FastPath_remember, METH_VARARGS,
     "remember(path, flags, entry, deny) -> bool: answer later read-only opens of path with flags so."},
    {"remember_connect", (PyCFunction)FastPath_remember_connect, METH_VARARGS,
     "remember_connect(domain, type, protocol, address, target, entry, deny, refusal, expires_ns, generation) "
     "-> bool: answer later connects of such a socket to exactly these address bytes so (connect.c)."},
    {"answer_connect", (PyCFunction)FastPath_answer_connect, METH_VARARGS,
     "answer_connect(id, socket, address): connect our duplicate (then closed) and answer with the result."},
    {"forget_connects", (PyCFunction)FastPath_forget_connects, METH_VARARGS,
     "forget_connects(generation): the DNS names changed; drop every connect learned before."},
    {"remember_exec", (PyCFunction)FastPath_remember_exec, METH_VARARGS,
     "remember_exec(path, argv, cwd, exe, entry, deny, (dev, ino, size, mtime_ns, ctime_ns)) -> bool: answer "
     "later execs of path with these argv bytes from this cwd link so, while path is still that file (exec.c)."},
    {"finish_exec", (PyCFunction)FastPath_finish_exec, METH_VARARGS,
     "finish_exec(id, pid, nr, slot, started, timeout) -> (kind, errno, gone, seen): seize, record and CONTINUE a "
     "permitted exec from receive(), and check it at its exec stop; call it on the thread that received it."},
    {"finish_waiting_exec", (PyCFunction)FastPath_finish_waiting_exec, METH_VARARGS,
     "finish_waiting_exec(timeout) -> (kind, errno, gone, seen): the stop of the exec receive() returned as "
     "waiting, waited for on this thread (its tracer); releases the exec lock and the gate."},
    {"configure_execs", (PyCFunction)FastPath_configure_execs, METH_VARARGS,
     "configure_execs(timeout, wait): an exec's timeout, and how long the receiver waits for its stop itself."},
    {"exec_lock", (PyCFunction)fp_py_exec_lock, METH_NOARGS, "Take the exec lock (waits, GIL released)."},
    {"exec_unlock", (PyCFunction)fp_py_exec_unlock, METH_NOARGS, "Release the exec lock."},
    {"gate_enter_shared", (PyCFunction)fp_py_gate_enter_shared, METH_NOARGS,
     "Hold the fs gate shared (a filesystem operation; waits for an exec, GIL released)."},
    {"gate_leave_shared", (PyCFunction)fp_py_gate_leave_shared, METH_NOARGS, "Leave the fs gate."},
    {"gate_enter_exclusive", (PyCFunction)fp_py_gate_enter_exclusive, METH_VARARGS,
     "gate_enter_exclusive(timeout) -> bool: hold the fs gate alone (an exec decision), if it frees in time."},
    {"gate_leave_exclusive", (PyCFunction)fp_py_gate_leave_exclusive, METH_NOARGS, "Release the fs gate."},
    {"drain", (PyCFunction)FastPath_drain, METH_NOARGS,
     "The calls answered since the last drain: [(entry, pid, nr, result, wall_ns, latency_ns)]; their places "
     "in the ring stay taken until written(count)."},
    {"written", (PyCFunction)FastPath_written, METH_O,
     "written(count): that many drained calls are on record (or lost): their places in the ring free."},
    {"stats", (PyCFunction)FastPath_stats, METH_NOARGS, "Counters, by name."},
    {"close", (PyCFunction)FastPath_close, METH_NOARGS, "Close the fds this object keeps."},
    {"hold_cpu", (PyCFunction)FastPath_hold_cpu, METH_O,
     "Whether files handed to the agent hold its thread on the receiver's CPU (cpu_hold.c)."},
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

static PyMethodDef module_functions[] = {
    {"answer_with_fd", fp_py_answer_with_fd, METH_VARARGS,
     "Answer a notification with an fd installed in the agent, its thread held on this CPU (cpu_hold.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "sandbox._fastpath",
                                    "The supervisor's compiled fast path.", -1, module_functions};

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
