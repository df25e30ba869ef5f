/* sandbox._spawn: start the agent with clone(CLONE_VM|CLONE_VFORK) and set it up in C (child.c).
 * The plan is built here from Python objects before the clone; the child never touches Python. */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "spawn.h"
#include "../init_c/init.h"

/* A NULL-terminated array of pointers into a list of bytes objects (kept alive by the caller). */
static char **byte_strings(PyObject *list, const char *what)
{
    if (!PyList_Check(list)) {
        PyErr_Format(PyExc_TypeError, "%s must be a list of bytes", what);
        return NULL;
    }
    Py_ssize_t count = PyList_GET_SIZE(list);
    char **out = PyMem_Calloc((size_t)count + 1, sizeof(char *));
    if (!out)
        return (char **)PyErr_NoMemory();
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyList_GET_ITEM(list, i);
        if (!PyBytes_Check(item) || strlen(PyBytes_AS_STRING(item)) != (size_t)PyBytes_GET_SIZE(item)) {
            PyMem_Free(out);
            PyErr_Format(PyExc_ValueError, "%s must be bytes without NUL", what);
            return NULL;
        }
        out[i] = PyBytes_AS_STRING(item);
    }
    return out;
}

#define SPAWN_STAGE_NAME(id, name) name,
static const char *const stage_names[STAGE_COUNT] = {SPAWN_STAGES(SPAWN_STAGE_NAME)};
#undef SPAWN_STAGE_NAME

/* Re-raise the pending error with a ``stage`` attribute: a value the child could not use fails
 * that stage, as the Python stage fails on it. */
static int fail_at(enum spawn_stage stage)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    PyObject *name = PyUnicode_FromString(stage_names[stage]);
    if (!name || !value || PyObject_SetAttrString(value, "stage", name) < 0) {
        Py_XDECREF(name);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(traceback);
        return -1;
    }
    Py_DECREF(name);
    PyErr_Restore(type, value, traceback);
    return -1;
}

static int read_pairs(PyObject *list, struct spawn_plan *plan)
{
    if (!PyList_Check(list) || PyList_GET_SIZE(list) > SPAWN_MAX_RLIMITS) {
        PyErr_SetString(PyExc_ValueError, "rlimits must be a list of at most 16 (resource, value) pairs");
        return -1;
    }
    plan->rlimit_count = (int)PyList_GET_SIZE(list);
    for (int i = 0; i < plan->rlimit_count; i++) {
        PyObject *value;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(list, i), "iO!", &plan->rlimit_resource[i], &PyLong_Type, &value))
            return -1;
        /* not "K": that format wraps a value of 2**64 or more around instead of refusing it */
        plan->rlimit_value[i] = PyLong_AsUnsignedLongLong(value);
        if (plan->rlimit_value[i] == (unsigned long long)-1 && PyErr_Occurred())
            return fail_at(STAGE_RLIMITS);
    }
    return 0;
}

/* A list of at most ``max`` ints (signal or capability numbers) into ``out``; its length into ``count``. */
static int read_ints(PyObject *list, int *out, int *count, int max, const char *what)
{
    if (!PyList_Check(list) || PyList_GET_SIZE(list) > max) {
        PyErr_Format(PyExc_ValueError, "%s must be a list of at most %d numbers", what, max);
        return -1;
    }
    *count = (int)PyList_GET_SIZE(list);
    for (int i = 0; i < *count; i++) {
        out[i] = (int)PyLong_AsLong(PyList_GET_ITEM(list, i));
        if (out[i] == -1 && PyErr_Occurred())
            return -1;
    }
    return 0;
}

PyDoc_STRVAR(spawn_doc,
"spawn_agent(*, sock, cwd, rlimits, ruleset, program, seccomp_flags, default_signals, drop_capabilities,\n"
"            path, argv, envp, exit_status) -> (pid, failed_stage, errno, exec_errno)\n\n"
"Start the agent and run its set-up stages (STAGES, in order), then execve(path, argv, envp), or,\n"
"when exit_status is not None, exit with it instead. Returns once the child has exec'd or exited:\n"
"failed_stage is the index into STAGES of the stage that failed (the child exited 125) or -1;\n"
"exec_errno is 0 or why execve failed (the child exited 127 for ENOENT, else 126); the caller\n"
"prints any message. Raises OSError if clone fails; a cwd or rlimit the child cannot be given\n"
"raises ValueError or OverflowError whose ``stage`` attribute names the stage it fails.");

static PyObject *spawn_agent(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"sock", "cwd", "rlimits", "ruleset", "program", "seccomp_flags", "default_signals",
                            "drop_capabilities", "path", "argv", "envp", "exit_status", NULL};
    struct spawn_plan plan;
    memset(&plan, 0, sizeof(plan));
    PyObject *cwd, *rlimits, *defaults, *caps, *argv_list, *envp_list, *exit_status;
    Py_buffer program = {0};
    const char *path;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$iOOiy*IOOyOOO", names, &plan.sock, &cwd, &rlimits,
                                     &plan.ruleset, &program, &plan.seccomp_flags, &defaults, &caps, &path,
                                     &argv_list, &envp_list, &exit_status))
        return NULL;
    PyObject *result = NULL;
    char **argv = NULL, **envp = NULL;
    if (program.len % sizeof(struct sock_filter) || program.len / sizeof(struct sock_filter) > 0xffff) {
        PyErr_SetString(PyExc_ValueError, "program must be whole BPF instructions (at most 65535)");
        goto done;
    }
    plan.filter.len = (unsigned short)(program.len / sizeof(struct sock_filter));
    plan.filter.filter = program.buf;
    if (cwd != Py_None) {
        if (!PyBytes_Check(cwd)) {
            PyErr_SetString(PyExc_TypeError, "cwd must be bytes or None");
            goto done;
        }
        plan.cwd = PyBytes_AS_STRING(cwd);
        if (strlen(plan.cwd) != (size_t)PyBytes_GET_SIZE(cwd)) {  /* chdir would take a shorter path */
            PyErr_SetString(PyExc_ValueError, "embedded null byte");
            fail_at(STAGE_CHDIR);
            goto done;
        }
    }
    if (exit_status != Py_None) {
        plan.skip_exec = 1;
        plan.exit_status = _PyLong_AsInt(exit_status);
        if (plan.exit_status == -1 && PyErr_Occurred())
            goto done;
    }
    if (read_pairs(rlimits, &plan) < 0
        || read_ints(defaults, plan.default_signals, &plan.default_count, SPAWN_MAX_DEFAULTS, "default_signals") < 0
        || read_ints(caps, plan.cap_drop, &plan.cap_drop_count, SPAWN_MAX_CAPS, "drop_capabilities") < 0)
        goto done;
    if (!(argv = byte_strings(argv_list, "argv")) || !(envp = byte_strings(envp_list, "envp")))
        goto done;
    plan.path = path;
    plan.argv = argv;
    plan.envp = envp;
    plan.failed_stage = -1;
    pid_t pid = start_agent(&plan);  /* the GIL stays held: this process has no other thread to run */
    if (pid < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    result = Py_BuildValue("(iiii)", (int)pid, plan.failed_stage, plan.failed_errno, plan.exec_errno);
done:
    PyMem_Free(argv);
    PyMem_Free(envp);
    PyBuffer_Release(&program);
    return result;
}

PyDoc_STRVAR(start_init_doc,
"start_init(*, namespaces, cgroup, exit_signal, sock, plan, program) -> (pid, failed_stage, errno)\n\n"
"Start the sandbox's init with clone3(CLONE_VM|CLONE_VFORK) in the namespaces given as CLONE_NEW*\n"
"flags (and in the cgroup directory fd ``cgroup`` unless it is -1), ending with ``exit_signal``; the\n"
"child execs the init ``program`` (an fd) with ``sock`` and ``plan`` at fixed numbers. Returns once it\n"
"has exec'd or exited: failed_stage is -1, an index into INIT_STAGES, or len(INIT_STAGES) when the\n"
"execve failed (the child exited 125, and must still be reaped). Raises OSError if clone3 fails.");

static PyObject *start_init_py(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"namespaces", "cgroup", "exit_signal", "sock", "plan", "program", NULL};
    struct init_start start;
    memset(&start, 0, sizeof(start));
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$Kiiiii", names, &start.namespaces, &start.cgroup,
                                     &start.exit_signal, &start.sock, &start.plan, &start.program))
        return NULL;
    start.failed_stage = -1;
    int pid = start_init(&start);  /* the GIL stays held: the launcher is single-threaded here */
    if (pid < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    return Py_BuildValue("(iii)", pid, start.failed_stage, start.failed_errno);
}

static PyMethodDef methods[] = {
    {"spawn_agent", (PyCFunction)(void (*)(void))spawn_agent, METH_VARARGS | METH_KEYWORDS, spawn_doc},
    {"start_init", (PyCFunction)(void (*)(void))start_init_py, METH_VARARGS | METH_KEYWORDS, start_init_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "sandbox._spawn",
    "The agent's set-up between fork and exec in C (sandbox/launch.py uses it when built).", -1, methods,
    NULL, NULL, NULL, NULL,
};

#define STAGE_NAME(id, name) name,
static const char *const init_stage_names[INIT_STAGE_COUNT] = {INIT_STAGES(STAGE_NAME)};
#undef STAGE_NAME

/* Adds a tuple of ``count`` names as ``attribute``; -1 with an exception set on failure. */
static int add_names(PyObject *m, const char *attribute, const char *const *names, int count)
{
    PyObject *tuple = PyTuple_New(count);
    for (int i = 0; tuple && i < count; i++) {
        PyObject *name = PyUnicode_FromString(names[i]);
        if (!name) {
            Py_CLEAR(tuple);
            break;
        }
        PyTuple_SET_ITEM(tuple, i, name);
    }
    if (!tuple || PyModule_AddObject(m, attribute, tuple) < 0) {  /* stolen on success */
        Py_XDECREF(tuple);
        return -1;
    }
    return 0;
}

PyMODINIT_FUNC PyInit__spawn(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m && (add_names(m, "STAGES", stage_names, STAGE_COUNT) < 0 ||
              add_names(m, "INIT_STAGES", init_stage_names, INIT_STAGE_COUNT) < 0))
        Py_CLEAR(m);
    return m;
}
