"""What this kernel offers the sandbox, found by trying each feature (never by kernel version).

Probes that change process state (seccomp filters, namespaces, uid) run in a forked child that
reports back over a pipe and exits. ``run_all()`` returns one Check per feature."""

from __future__ import annotations

import errno
import json
import os
import select
import signal
from dataclasses import asdict, dataclass

import pyseccomp

from sandbox import _libc, _libc_ns, cgroups, notify, placement

OK, MISSING, LIMITED = "ok", "missing", "limited"
NOBODY = 65534
LANDLOCK_CREATE_RULESET_VERSION = 1
PROBE_TIMEOUT_MS = 5000


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | missing | limited
    detail: str
    degrades: str  # what is lost when the status is not ok
    essential: bool = False  # run refuses to start without it

    def to_dict(self) -> dict:
        return asdict(self)


def in_child(probe, *args) -> dict:
    """Run ``probe(*args) -> dict`` in a forked child; {"error": ...} if it dies or raises."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            result = probe(*args)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, never raised here
            result = {"error": f"{exc}", "errno": getattr(exc, "errno", None)}
        try:
            os.write(write_end, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    chunks = []
    poller = select.poll()
    poller.register(read_end, select.POLLIN)
    while poller.poll(PROBE_TIMEOUT_MS) and (chunk := os.read(read_end, 65536)):
        chunks.append(chunk)
    os.close(read_end)
    if not chunks:
        os.kill(pid, signal.SIGKILL)  # a probe that hangs counts as a missing feature
    _, status = os.waitpid(pid, 0)
    if not chunks:
        return {"error": f"probe process died (wait status {status:#x})", "errno": None}
    return json.loads(b"".join(chunks))


# ---- seccomp ----------------------------------------------------------------------------------

def _notify_round_trip() -> dict:
    """Child: trap getppid, answer a grandchild's call through the listener with each ioctl."""
    _libc.set_no_new_privs()
    rules = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    rules.add_rule(pyseccomp.NOTIFY, "getppid")
    sink = os.fdopen(os.memfd_create("probe-bpf", os.MFD_CLOEXEC), "w+b")
    rules.export_bpf(sink)
    sink.seek(0)
    program = sink.read()
    result = {"wait_killable_recv": True}
    flags = _libc.SECCOMP_FILTER_FLAG_NEW_LISTENER | _libc.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
    try:
        listener = _libc.seccomp_set_mode_filter(program, flags)
    except OSError as err:
        if err.errno != errno.EINVAL:
            raise
        result["wait_killable_recv"] = False  # 5.19+; retry with the listener alone
        listener = _libc.seccomp_set_mode_filter(program, _libc.SECCOMP_FILTER_FLAG_NEW_LISTENER)
    # The trapped call comes from a child: a thread would hold the GIL while it waits.
    caller = os.fork()
    if caller == 0:
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the injected fd is then small: it is the exit status
        os._exit(min(os.getppid(), 255))
    note = notify.recv(listener)
    result["user_notif"] = True
    result["sync_wake_up"] = notify.set_sync_wakeup(listener)
    result["id_valid"] = notify.id_valid(listener, note.id)
    devnull = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        injected = notify.addfd_send(listener, note.id, devnull, cloexec=True)
        result["addfd"] = True
    except OSError as err:
        result["addfd"], result["addfd_error"] = False, os.strerror(err.errno)
        injected = 42
        notify.send_value(listener, note.id, injected)
    _, status = os.waitpid(caller, 0)
    result["answer_matches"] = os.waitstatus_to_exitcode(status) == min(injected, 255)
    return result


def seccomp_checks() -> list[Check]:
    got = in_child(_notify_round_trip)
    if "error" in got:
        why = got["error"]
        return [Check("seccomp user notification", MISSING, why, "no policy can be enforced: run refuses to start", True)]
    return [
        Check("seccomp user notification", OK if got["answer_matches"] else MISSING,
              "listener round trip: RECV, ID_VALID, answer reached the trapped process",
              "no policy can be enforced: run refuses to start", True),
        Check("seccomp ADDFD", OK if got["addfd"] else MISSING,
              "SECCOMP_IOCTL_NOTIF_ADDFD with ADDFD_FLAG_SEND injected an fd" if got["addfd"] else got.get("addfd_error", ""),
              "opens cannot be performed on the agent's behalf: fs decisions would be open to path swaps; "
              "run refuses to start", True),
        Check("seccomp WAIT_KILLABLE_RECV", OK if got["wait_killable_recv"] else MISSING,
              "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV accepted" if got["wait_killable_recv"] else "EINVAL",
              "signals and the freezer would interrupt held syscalls and discard exec decisions; "
              "run refuses to start", True),
        Check("seccomp SYNC_WAKE_UP", OK if got["sync_wake_up"] else MISSING,
              "SECCOMP_IOCTL_NOTIF_SET_FLAGS(SECCOMP_USER_NOTIF_FLAG_SYNC_WAKE_UP) accepted"
              if got["sync_wake_up"] else "SET_FLAGS refused (before 6.6)",
              "each trapped syscall costs a cross-CPU wake-up (about 3-5x slower)"),
    ]


# ---- Landlock ---------------------------------------------------------------------------------

def landlock_check() -> Check:
    degrades = "no in-kernel exec/fs/TCP allowlist under the supervisor's decisions"
    try:
        abi = _libc.syscall("landlock_create_ruleset", 0, 0, LANDLOCK_CREATE_RULESET_VERSION)
    except OSError as err:
        reason = {errno.ENOSYS: "not built into this kernel",
                  errno.EOPNOTSUPP: "built in but disabled (add landlock to the lsm= boot parameter)"}
        return Check("Landlock", MISSING, reason.get(err.errno, err.strerror), degrades)
    return Check("Landlock", OK, f"ABI {abi}", degrades)


def compiled_reads_check() -> Check:
    degrades = "repeated reads are answered in Python (several times slower each)"
    from sandbox import fastpath  # the extension is a build product, not a kernel feature
    if fastpath.available():
        return Check("compiled fast path", OK, "sandbox._fastpath is built", degrades)
    return Check("compiled fast path", MISSING, "sandbox._fastpath was not built (reinstall with gcc and the "
                 "Python headers present)", degrades)


def compiled_spawn_check() -> Check:
    degrades = "the agent is set up in a forked copy of the Python process (start-up about 4-6 ms slower)"
    from sandbox import agent_spawn  # a build product, like the fast path
    reason = agent_spawn.unavailable_reason()
    if reason is None:
        return Check("compiled start-up", OK, "sandbox._spawn is built: the agent is set up in C between "
                     "clone and execve", degrades)
    return Check("compiled start-up", MISSING, reason, degrades)


def compiled_init_check() -> Check:
    degrades = ("the sandbox's init is a forked copy of the Python launcher: its page tables are copied at "
                "clone and unmapped at its end (start-up about 5 ms slower)")
    from sandbox import init_spawn  # a build product, like the fast path
    reason = init_spawn.unavailable_reason()
    if reason is None:
        return Check("compiled init", OK, f"{init_spawn.PROGRAM} is built: the sandbox's pid 1 is a small program "
                     "of its own (runs with a user namespace keep the Python init)", degrades)
    return Check("compiled init", MISSING, reason, degrades)


# ---- cgroups ----------------------------------------------------------------------------------

def cgroup_checks() -> list[Check]:
    v2 = cgroups.v2_mount()
    v1 = cgroups.v1_mounts()
    checks = []
    if v2 is None:
        checks.append(Check("cgroup v2", MISSING, "no cgroup2 mount in /proc/self/mountinfo",
                            "exec decisions cannot freeze the agent's other tasks; no cgroup.kill clean-up"))
    else:
        controllers = _read(os.path.join(v2, "cgroup.controllers")).split()
        checks.append(Check("cgroup v2", OK, f"{v2}, controllers: {' '.join(controllers) or 'none'}",
                            "exec decisions cannot freeze the agent's other tasks; no cgroup.kill clean-up"))
        checks.append(_cgroup_create_check())
    if v1:
        named = sorted(f"{name}={path}" for name, path in v1.items())
        checks.append(Check("cgroup v1", OK, "hybrid host; v1 controllers: " + " ".join(named),
                            "controllers bound to v1 (memory, pids here) cannot be used from v2"))
    else:
        checks.append(Check("cgroup v1", MISSING, "pure v2 host (nothing bound to v1)", "nothing"))
    return checks


def _cgroup_create_check() -> Check:
    degrades = "run continues without a cgroup: no freezing for exec decisions, no cgroup.kill"
    try:
        path = cgroups.create(f"doctor-{os.getpid()}")
    except OSError as err:
        return Check("cgroup v2 directory for the agent", MISSING, err.strerror, degrades)
    try:
        features = [name for name in ("cgroup.freeze", "cgroup.kill") if os.path.exists(os.path.join(path, name))]
    finally:
        os.rmdir(path)
    missing = {"cgroup.freeze", "cgroup.kill"} - set(features)
    status = OK if not missing else LIMITED
    detail = f"created and removed {os.path.dirname(path)}/faramesh-doctor-*; has {', '.join(features) or 'neither'}"
    return Check("cgroup v2 directory for the agent", status, detail, degrades)


# ---- namespaces -------------------------------------------------------------------------------

def _try_unshare(flags: int, drop_to_nobody: bool) -> dict:
    if drop_to_nobody and os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(NOBODY, NOBODY, NOBODY)
        os.setresuid(NOBODY, NOBODY, NOBODY)
    _libc_ns.unshare(flags)
    return {"ok": True}


def namespace_checks() -> list[Check]:
    checks = []
    userns = in_child(_try_unshare, _libc_ns.CLONE_NEWUSER, True)
    checks.append(Check(
        "unprivileged user namespaces", OK if userns.get("ok") else MISSING,
        "unshare(CLONE_NEWUSER) as uid 65534 succeeded" if userns.get("ok") else userns.get("error", ""),
        "run works only as root (kernel.unprivileged_userns_clone / AppArmor userns restriction)"))
    # As root the namespaces need no user namespace; otherwise they are created inside one.
    base = 0 if os.geteuid() == 0 else _libc_ns.CLONE_NEWUSER
    for name in ("pid", "mount", "net", "uts", "ipc"):
        got = in_child(_try_unshare, base | _libc_ns.NAMESPACE_FLAGS[name], False)
        checks.append(Check(f"{name} namespace", OK if got.get("ok") else MISSING,
                            "unshare succeeded" if got.get("ok") else got.get("error", ""),
                            "run refuses to start (every namespace is required)", True))
    return checks


# ---- sysctls ----------------------------------------------------------------------------------

def sysctl_checks() -> list[Check]:
    checks = []
    uring = _read("/proc/sys/kernel/io_uring_disabled").strip()
    if uring:
        meaning = {"0": "io_uring open to all", "1": "io_uring limited to a group", "2": "io_uring disabled"}
        checks.append(Check("io_uring_disabled sysctl", OK, f"{uring} ({meaning.get(uring, '?')}); the filter "
                            "returns ENOSYS for io_uring inside the sandbox either way",
                            "nothing for the sandbox; hosts without it rely on the filter alone"))
    else:
        checks.append(Check("io_uring_disabled sysctl", MISSING, "no /proc/sys/kernel/io_uring_disabled (before 6.6)",
                            "nothing for the sandbox: the filter denies io_uring itself"))
    scope = _read("/proc/sys/kernel/yama/ptrace_scope").strip()
    if not scope:
        checks.append(Check("YAMA ptrace_scope", OK, "YAMA not present: ptrace limited only by capabilities",
                            "nothing"))
    else:
        status = LIMITED if scope == "3" else OK
        checks.append(Check("YAMA ptrace_scope", status, f"ptrace_scope={scope}",
                            "ptrace_scope=3 forbids the ptrace stop-all fallback for exec decisions"))
    return checks


# ---- idle CPUs ------------------------------------------------------------------------------

def idle_wakeup_check() -> Check:
    """Whether an idle vCPU halts at once: then every hand-over that wakes a task on another,
    idle CPU waits for the host to run that vCPU again (docs/benchmarks.md "Holding the agent's
    thread"). A cost, not a missing feature: nothing is refused."""
    driver, poll_ns = placement.idle_cpu_state()
    if driver == "haltpoll" and poll_ns == "0":
        return Check("idle CPU wake-up", LIMITED, "cpuidle driver haltpoll with guest_halt_poll_ns=0: idle vCPUs "
                     "halt at once", "cheap wake-ups across CPUs: waking a task on another, idle vCPU costs tens "
                     "of µs; files handed to the agent hold its thread on the supervisor's CPU, execs still pay "
                     "it (about 0.2 ms each); run --same-cpu avoids it, as does halt polling on the guest")
    detail = f"cpuidle driver {driver}" + (f", guest_halt_poll_ns={poll_ns}" if poll_ns else "")
    held = "not held (idle vCPUs poll first)" if placement.idle_cpus_poll() else "held on the supervisor's CPU"
    return Check("idle CPU wake-up", OK, f"{detail}; files handed to the agent: its thread {held}", "nothing")


def run_all() -> list[Check]:
    return [*seccomp_checks(), landlock_check(), *cgroup_checks(), *namespace_checks(), *sysctl_checks(),
            idle_wakeup_check(), compiled_reads_check(), compiled_spawn_check(), compiled_init_check()]


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""
