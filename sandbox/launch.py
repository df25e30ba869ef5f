"""launch(): fork the agent into its namespaces under the seccomp filter, then supervise it.

Process tree, host view:

    launcher   host namespaces; runs the supervisor on the seccomp listener
     └ init    pid 1 of the new pid namespace, born there (and in the agent's cgroup) by clone3:
        │      leads a session of its own (out of the launcher's process group, no controlling
        │      terminal), forwards signals, reaps orphans, exits with the agent's status; the compiled
        │      program sandbox/_init when built (sandbox/init_spawn.py), else a forked copy of the launcher
        └ agent  pid 2: no_new_privs, seccomp filter, then execve(CMD) (itself trapped and decided);
                 set up in C between clone and execve when sandbox._spawn is built (sandbox/agent_spawn.py),
                 else by the Python stages in a forked copy of init

Everything dies with the launcher: init has PR_SET_PDEATHSIG=SIGKILL, the pid namespace kills
every task when init dies, and the launcher kills the cgroup when the run ends.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

from sandbox import (_libc, _libc_ns, _nethandover, agent_spawn, capabilities, cgroups, fastpath, init_spawn,
                     landlock, limits, mounts, namespaces, placement, seccomp, supervisor)
from sandbox.errors import SandboxError, hint_for
from sandbox.spec import SandboxSpec

EXIT_SETUP = 125
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127
# Sent to the launcher, with kill or by its terminal (whose foreground group the agent is never in:
# init made a session of its own), and passed on through init to the agent.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH)
_WAITED = {*FORWARDED, signal.SIGCHLD}  # init's: the agent's end, orphans' ends, forwarded signals
# init tells its end to the launcher with its own signal, not SIGCHLD: every ptrace stop of an agent
# task also sends the tracer (a supervisor thread) SIGCHLD, and the launcher's main thread would
# wake for each one (twice per exec). SIGCHLD stays blocked there, pending and never waited for.
INIT_EXIT_SIGNAL = signal.SIGRTMAX - 1
_LAUNCHER_WAITED = {*FORWARDED, INIT_EXIT_SIGNAL}
_BLOCKED = _WAITED | _LAUNCHER_WAITED
_WALL = 0x40000000  # waitpid option: init is a "clone child" (its exit signal is not SIGCHLD)
RELEASE = b"go"


@dataclass
class LateCommand:
    """What a prepared sandbox is given at its release (launch()'s ``late``)."""
    argv: list[str]
    env: dict[str, str]
    cwd: str
    stdio: tuple[int, int, int]  # the agent's stdin, stdout, stderr


@dataclass
class _Run:
    spec: SandboxSpec
    role: str = "launcher"
    program: bytes = b""
    cgroup_dir: str | None = None
    warnings: list[str] = field(default_factory=list)  # a protection is lost: always printed
    notes: list[str] = field(default_factory=list)  # printed with --verbose
    sock: socket.socket | None = None  # launcher: its end; init and agent: theirs (errors, listener)
    other_end: socket.socket | None = None  # init: the launcher's end, closed at once
    init_pid: int = 0
    compiled_init: init_spawn.Started | None = None  # init is sandbox/_init (sandbox/init_spawn.py)
    listener: int | None = None  # agent: the seccomp listener until it is handed over
    limits: limits.Enforcer | None = None  # launcher: resource limits (sandbox/limits.py)
    decision_keys: object = None  # Engine.decision_keys when repeated reads may be answered in C
    watch_credentials: bool = False  # the filter sends credential calls to the fast path (sandbox/fastpath.py)
    cap_drop: list[int] = field(default_factory=list)  # capabilities the agent gives up (sandbox/capabilities.py)
    late: object = None  # launch()'s ``late``: the command comes with init's release


# ---- stages run in the launcher -------------------------------------------------------------

def _build_filter(run: _Run) -> None:
    """Built before any fork, so a bad filter never leaves a half-made sandbox behind."""
    if not run.spec.seccomp:
        return
    key = (tuple(sorted(run.spec.trapped)), tuple(sorted(run.spec.kernel_decided.items())), run.watch_credentials)
    if key not in _FILTERS:  # a few ms with libseccomp; the same spec gives the same program
        _FILTERS[key] = seccomp.build_filter(list(key[0]), dict(key[1]), watch_credentials=key[2])
    run.program = _FILTERS[key]


_FILTERS: dict[tuple, bytes] = {}  # (trapped, kernel_decided, watch_credentials) -> BPF program, per process


def _create_cgroup(run: _Run) -> None:
    if not run.spec.cgroup:
        return
    try:
        # Named by our pid when no session is given: one left empty by a killed process that had
        # this pid before us is stale, and replaced.
        run.cgroup_dir = cgroups.create(run.spec.session_id or str(os.getpid()),
                                        replace_empty=not run.spec.session_id)
        run.notes.append(f"agent cgroup {run.cgroup_dir}")
    except OSError as err:
        # Degrade, and say so: without the cgroup, exec decisions freeze the agent's tree with
        # ptrace (stop-all) instead, and left-overs die only with the pid namespace.
        run.warnings.append(f"no cgroup for the agent ({err.strerror}): exec decisions freeze the "
                            "agent's tasks with ptrace instead")


def _prepare_limits(run: _Run) -> None:
    """Limits are written before clone3, so init is born under the v2 ones (v1: see limits_join)."""
    run.limits = limits.Enforcer(run.spec.limits, run.spec.session_id or str(os.getpid()), run.cgroup_dir)
    run.limits.prepare()
    run.notes.extend(f"{name} limit via {how}" for name, how in sorted(run.limits.used.items()))
    run.notes.extend(run.limits.skipped)


def _clone_init(run: _Run) -> None:
    """One clone3 makes every namespace and places init in the cgroup: the launcher itself keeps
    the host's view, and no running task is ever migrated between cgroups."""
    threads = _thread_count()
    if threads > 1:
        # clone3 bypasses libc's fork handlers: a lock (malloc's) held by another thread at that
        # instant would stay locked forever in init. os.fork() callers have the same rule in C.
        raise SandboxError("clone_init", f"the launcher has {threads} threads; the sandbox must be started "
                           "from a single-threaded process", "call launch() before starting threads")
    launcher_end, sandbox_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = _start_init(run, sandbox_end)
    except BaseException:
        launcher_end.close()
        sandbox_end.close()
        raise
    if pid:
        sandbox_end.close()
        run.sock, run.init_pid = launcher_end, pid
        return
    run.sock, run.other_end, run.role = sandbox_end, launcher_end, "init"


def _start_init(run: _Run, sandbox_end: socket.socket) -> int:
    """init's pid in the launcher, 0 in a forked Python init."""
    cgroup_fd = os.open(run.cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if run.cgroup_dir else None
    try:
        # With a user namespace, or as a non-root user, the execve would drop init's capabilities.
        if late_release_supported(run.spec):
            run.compiled_init = init_spawn.start(run, namespaces.clone_flags(run.spec), cgroup_fd,
                                                 INIT_EXIT_SIGNAL, sandbox_end.fileno())
            return run.compiled_init.pid
        return _libc_ns.fork_into(namespaces.clone_flags(run.spec), cgroup_fd, INIT_EXIT_SIGNAL)
    except OSError as err:
        # Unprivileged, EPERM means the user namespace was refused (the rest are made inside it).
        stage = "user_namespace" if run.spec.wants_user_namespace() and err.errno == errno.EPERM else "namespaces"
        raise SandboxError(stage, err.strerror, hint_for(stage, err.errno)) from None
    finally:
        if cgroup_fd is not None:
            os.close(cgroup_fd)


def _thread_count(settle: float = 1.0) -> int:
    """Our threads; a joined thread (a previous run's supervisor) may still be leaving the kernel
    for a moment after join() returned (longer on a loaded machine, where it waits for a CPU), so
    an excess is re-counted for up to ``settle`` seconds."""
    deadline = time.monotonic() + settle
    while True:
        threads = len(os.listdir("/proc/self/task"))
        if threads == 1 or threading.active_count() > 1 or time.monotonic() > deadline:
            return threads
        time.sleep(0.001)


def _map_user(run: _Run) -> None:
    """The launcher writes init's maps: the caller's uid and gid map to themselves."""
    namespaces.map_user(run.spec, run.init_pid, os.geteuid(), os.getegid())


def _release_init(run: _Run) -> None:
    if run.late is not None:
        return  # the release waits for the command, once the supervisor is ready (_release_late)
    try:
        run.sock.send(RELEASE)
    except (BrokenPipeError, ConnectionResetError):
        pass  # init already failed: its message waits on the socket (_receive_listener)


def _release_late(run: _Run, sup=None) -> None:
    """A prepared sandbox (launcher/serve.py): init waits, made and in its cgroup, and the
    supervisor is built, until a command comes; init gets the command's plan and the agent's
    stdin, stdout and stderr with its release."""
    if run.late is None:
        return
    if run.compiled_init is None:
        raise SandboxError("release_init", "a command given after set-up needs the compiled init",
                           "check late_release_supported() before passing late=")
    command = run.late.wait(run.init_pid)
    run.spec.argv, run.spec.env, run.spec.cwd = command.argv, command.env, command.cwd
    if sup is not None and run.spec.net is not None:  # the host may have new addresses since set-up
        run.spec.net = sup.net = run.spec.net.with_host_addresses_now()
    run.limits.start_clock()  # --timeout counts from the command, not from the preparation
    memfd = os.memfd_create("faramesh-late-plan", os.MFD_CLOEXEC)
    try:
        view = memoryview(run.compiled_init.plan.encode_late())
        while view:
            view = view[os.write(memfd, view):]
        socket.send_fds(run.sock, [RELEASE], [memfd, *command.stdio])
    except (BrokenPipeError, ConnectionResetError):
        pass  # init already failed: its message waits on the socket (_receive_listener)
    finally:
        os.close(memfd)


def late_release_supported(spec: SandboxSpec) -> bool:
    """Whether launch() may be given ``late``: init must be the compiled one (_start_init's test)."""
    return init_spawn.available() and not spec.wants_user_namespace() and os.geteuid() == 0


# ---- stages run in init (pid 1) -------------------------------------------------------------

def _die_with_launcher(run: _Run) -> None:
    # Must come first: if the launcher dies, nothing it started may keep running.
    _libc.prctl(_libc_ns.PR_SET_PDEATHSIG, signal.SIGKILL)
    run.other_end.close()  # from now on only the launcher holds its end


def _await_release(run: _Run) -> None:
    """Wait for the maps (and for a live launcher: getppid() is 0 across a pid namespace, but a
    dead launcher's end of the socket reads as EOF)."""
    if run.sock.recv(16) != RELEASE:
        os._exit(EXIT_SETUP)


def _new_session(run: _Run) -> None:
    """init leaves the launcher's session and process group before the agent exists: the agent's
    kill(0, sig) (not scoped by Landlock below ABI 6) then reaches only the sandbox, never the
    launcher, its helpers or the user's pipeline. No sandbox process has a controlling terminal:
    init leads the session and opens none, the agent is no session leader (no TIOCSPGRP, no
    /dev/tty). The terminal's signals reach the launcher alone, which forwards them (FORWARDED).
    It also leaves any real-time scheduling policy the launcher had."""
    try:
        os.setsid()
    except OSError as err:
        raise OSError(err.errno, f"setsid(): {os.strerror(err.errno)}") from None
    # The default policy whatever real-time one the launcher had: SCHED_FIFO inherited would let
    # the agent starve the host (RLIMIT_RTPRIO 0 only stops it raising one).
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    while signal.sigtimedwait(FORWARDED, 0) is not None:
        pass  # the terminal's, sent to the launcher's group before: the launcher forwards its own copy


def _fork_agent(run: _Run) -> None:
    if agent_spawn.available():  # the agent rows below run in C between clone and execve
        pid = agent_spawn.start(run, AGENT_STAGES, agent_spawn.exec_target(
            run.spec.argv, run.spec.agent_env(), run.spec.cwd, _find_program))
        run.sock.close()
        _wait_and_forward(pid)  # init: never returns
    pid = os.fork()
    if pid:
        run.sock.close()
        _wait_and_forward(pid)  # init: never returns
    run.role = "agent"


# ---- stages run in the agent ----------------------------------------------------------------

def _restore_signals(run: _Run) -> None:
    """The agent starts with the signal state a shell would give it, not the launcher's."""
    for signum in agent_spawn.DEFAULT_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _chdir(run: _Run) -> None:
    if run.spec.cwd:
        os.chdir(run.spec.cwd)


def _close_fds(run: _Run) -> None:
    """Only stdin, stdout, stderr and our socket stay open: no launcher fd can leak a host resource."""
    keep = run.sock.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))


def _no_new_privs(run: _Run) -> None:
    # Required for an unprivileged filter load; and no setuid binary can ever gain privileges.
    _libc.set_no_new_privs()


def _restrict_landlock(run: _Run) -> None:
    # The kernel floor under the supervisor (docs/landlock.md): exec, and anything the agent
    # runs itself, stays inside what some rule of the policy could permit.
    if run.spec.landlock is not None:
        landlock.apply(run.spec.landlock)


def _install_filter(run: _Run) -> None:
    if run.spec.seccomp:
        # Last step before exec: from here on every trapped syscall waits for the supervisor.
        run.listener = seccomp.install(run.program)
        run.program = b""


def _hand_over_listener(run: _Run) -> None:
    """The agent must never hold its own listener: pass it to the launcher, close our copy."""
    if run.listener is None:
        run.sock.send(b"ready")  # namespaces only
    else:
        _nethandover.offer_listener(run.sock, run.listener)  # sendmsg is trapped from here on
        os.close(run.listener)
        run.listener = None
    run.sock.close()


# One ordered list: (stage, process it runs in, step), in the order they happen. Each process
# runs its own rows; the security-relevant order is read top down.
STAGES = (
    ("filter", "launcher", _build_filter),
    ("cgroup", "launcher", _create_cgroup),
    ("limits", "launcher", _prepare_limits),
    ("clone_init", "launcher", _clone_init),
    ("limits_join", "launcher", lambda run: run.limits.join(run.init_pid)),
    ("die_with_launcher", "init", _die_with_launcher),
    ("close_fds", "init", _close_fds),  # nothing of the launcher's stays reachable via /proc/1/fd
    ("map_user", "launcher", _map_user),
    ("release_init", "launcher", _release_init),
    ("await_release", "init", _await_release),
    ("new_session", "init", _new_session),  # before the agent exists: it is born outside the launcher's group
    ("mounts", "init", lambda run: mounts.apply(run.spec)),
    ("hostname", "init", lambda run: namespaces.set_hostname(run.spec)),
    ("loopback", "init", lambda run: namespaces.bring_up_loopback(run.spec)),
    ("fork_agent", "init", _fork_agent),
    ("restore_signals", "agent", _restore_signals),
    ("chdir", "agent", _chdir),
    ("close_fds", "agent", _close_fds),
    ("rlimits", "agent", lambda run: run.limits.apply_rlimits()),  # not in init: RLIMIT_AS would bind its Python
    ("drop_capabilities", "agent", lambda run: capabilities.drop(run.cap_drop)),  # root keeps a short set
    ("no_new_privs", "agent", _no_new_privs),
    ("landlock", "agent", _restrict_landlock),  # before the filter: its syscalls are not trapped
    ("seccomp", "agent", _install_filter),
    ("hand_over_listener", "agent", _hand_over_listener),
)
AGENT_STAGES = tuple(stage for stage, role, _step in STAGES if role == "agent")  # sandbox._spawn's order
INIT_STAGES = tuple(stage for stage, role, _step in STAGES if role == "init")  # sandbox/_init's order


def _as_error(stage: str, exc: BaseException) -> SandboxError:
    if isinstance(exc, SandboxError):
        return exc
    if isinstance(exc, OSError):
        text = exc.strerror or str(exc)
        if exc.filename:
            text = f"{text}: {exc.filename}"
        return SandboxError(stage, text, hint_for(stage, exc.errno))
    return SandboxError(stage, f"{type(exc).__name__}: {exc}", hint_for(stage, None))


def _run_stages(run: _Run) -> None:
    """Runs the rows of the current process; a fork stage changes ``run.role`` in the child."""
    for stage, role, step in STAGES:
        if role != run.role:
            continue
        try:
            step(run)
        except BaseException as exc:  # noqa: BLE001 - a child must never unwind into launcher code
            error = _as_error(stage, exc)
            if run.role == "launcher":
                raise error from None
            _report_and_exit(run, error)


def _report_and_exit(run: _Run, error: SandboxError) -> None:
    try:
        run.sock.send(json.dumps(error.to_dict()).encode())
    finally:
        os._exit(EXIT_SETUP)


def _exec_agent(run: _Run) -> None:
    """execve(CMD) with shell-like results: 127 when not found, 126 when it cannot run."""
    argv = run.spec.argv
    env = run.spec.agent_env()
    try:
        path = _find_program(argv[0], env.get("PATH", os.defpath))
        os.execve(path, argv, env)
    except OSError as err:
        code = EXIT_NOT_FOUND if err.errno == errno.ENOENT else EXIT_CANNOT_RUN
        os.write(2, f"faramesh-sandbox: {argv[0]}: {os.strerror(err.errno)}\n".encode())
        os._exit(code)
    except ValueError as err:  # an argument or variable with a NUL byte cannot be passed to execve
        os.write(2, f"faramesh-sandbox: {argv[0]!r}: {err}\n".encode())
    finally:
        os._exit(EXIT_CANNOT_RUN)


def _find_program(name: str, search_path: str, cwd: str | None = None) -> str:
    """PATH search without trying each candidate with execve (each attempt would be a decision);
    relative candidates are looked up in ``cwd`` when given (the agent's, before it got there)."""
    if "/" in name:
        return name
    denied = None
    for directory in search_path.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        seen_as = os.path.join(cwd, candidate) if cwd else candidate
        if os.path.isfile(seen_as):
            if os.access(seen_as, os.X_OK):
                return candidate
            denied = denied or candidate
    if denied:
        return denied  # execve reports EACCES, as a shell would
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))


def _wait_and_forward(child: int) -> None:
    """init: forward signals sent to us to the agent, reap everything, exit with the agent's
    status (128+N when a signal N killed it). Never returns."""
    status = None
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)
        while status is None:
            info = signal.sigwaitinfo(_WAITED)
            if info.si_signo != signal.SIGCHLD:
                _kill(child, info.si_signo)  # no terminal sends us any: each is the agent's only copy
                continue
            while True:  # init reaps orphans too
                try:
                    pid, wait_status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                if pid == child:
                    status = wait_status
    finally:
        os._exit(exit_code(status) if status is not None else EXIT_SETUP)


def exit_code(wait_status: int) -> int:
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


# ---- the launcher's side --------------------------------------------------------------------

def launch(spec: SandboxSpec, decide, audit=None, approve=None, started=None, late=None) -> int:
    """Run ``spec.argv`` in the sandbox, deciding trapped syscalls with ``decide``;
    ``started()`` runs in the launcher once the sandbox exists (threads may start from then on).
    ``late``: the command is not known yet. The sandbox is made, then ``late.wait(init_pid)`` blocks
    until it is (a LateCommand: argv, env, cwd, stdio fds, which replace the spec's), and
    ``late.ended(status)`` hears the agent's status (once) before the sandbox is taken down. Only when
    late_release_supported(spec).

    Returns the agent's exit status (128+N for signal N, 126/127 when CMD cannot run);
    raises SandboxError when the sandbox cannot be set up. Call it from a single-threaded process:
    the supervisor's threads start only once the sandbox exists, and are gone when it returns."""
    if spec.user_namespace and spec.seccomp and os.geteuid() == 0:
        # Root would map to root: the supervisor, acting with the host's capabilities for an agent
        # whose own hold only in its namespace, would do for it what the kernel would refuse
        # (namespaces only, with no supervisor, lend nothing).
        raise SandboxError("user_namespace", "a user namespace is only for a launcher that is not root",
                           "run as root without one (the default), or launch as an ordinary user")
    run = _Run(spec, cap_drop=capabilities.to_drop(capabilities.agent_is_privileged(spec.wants_user_namespace())),
               late=late)
    if not spec.audit_all:
        run.decision_keys = getattr(decide, "decision_keys", None)
        run.watch_credentials = fastpath.wanted(run.decision_keys, audit is not None, spec.fast_repeats)
    # An ignored SIGCHLD would let the kernel reap init (and the Python init's agent) unseen.
    old_sigchld = _sigchld_default()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)  # children inherit it until they choose
    # Before any clone or thread: the agent and the supervisor's threads inherit the affinity.
    old_cpus, cpu = placement.pin_to_one_cpu() if spec.same_cpu else (None, None)
    try:
        _run_stages(run)
        if run.role != "launcher":  # the agent: every stage done, become CMD
            _exec_agent(run)
        for line in run.warnings:
            print(f"faramesh-sandbox: warning: {line}", file=sys.stderr, flush=True)
        if spec.verbose:
            user = "user, " if spec.wants_user_namespace() else ""
            run.notes.append(f"namespaces {user}{', '.join(sorted(spec.namespaces))}; agent is pid 2")
            if cpu is not None:
                run.notes.append(f"agent and supervisor run on CPU {cpu} only (--same-cpu)")
            for line in run.notes:
                print(f"faramesh-sandbox: {line}", file=sys.stderr, flush=True)
        if started is not None:
            started()
        return run.limits.exit_status(_supervise(run, decide, audit, approve))
    finally:
        if run.role == "launcher":
            try:
                _tear_down(run)
            finally:
                while signal.sigtimedwait({INIT_EXIT_SIGNAL}, 0) is not None:
                    pass  # init's end, if nobody waited for it: its default action would end this process
                # init not reaped (tear-down cut short): its signal may still come, so it stays blocked
                still = {INIT_EXIT_SIGNAL} if run.init_pid else set()
                signal.pthread_sigmask(signal.SIG_SETMASK, set(old_mask) | still)
                if old_sigchld is not None:
                    signal.signal(signal.SIGCHLD, old_sigchld)
                if old_cpus is not None:
                    os.sched_setaffinity(0, old_cpus)


def _sigchld_default():
    """Sets SIGCHLD to its default when it is ignored; returns the disposition to restore, or None."""
    if signal.getsignal(signal.SIGCHLD) is not signal.SIG_IGN:
        return None
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    except ValueError:  # not the main thread: the ignore cannot be lifted, and would lose init's status
        raise SandboxError("clone_init", "SIGCHLD is ignored and launch() was not called from the main thread",
                           "call launch() from the main thread, or stop ignoring SIGCHLD") from None
    return signal.SIG_IGN


def _supervise(run: _Run, decide, audit, approve) -> int:
    if not run.spec.seccomp:  # namespaces only
        _release_late(run)
        _receive_listener(run)
        status = exit_code(_wait_init(run, None))
        if run.late is not None:
            run.late.ended(run.limits.exit_status(status))
        return status
    reserved = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    before = set(threading.enumerate())  # the supervisor's threads, its constructor's included, are joined
    try:
        # Built while the sandbox sets itself up, so the constructor's freezer self-test (a few ms)
        # overlaps it; the listener then takes over the reserved descriptor number.
        sup = supervisor.Supervisor(reserved, decide, session_id=run.spec.session_id, audit=audit,
                                    approve=approve, approve_timeout=run.spec.approve_timeout,
                                    cgroup_dir=run.cgroup_dir,
                                    pidns_of=None if run.cgroup_dir else run.init_pid, net=run.spec.net,
                                    decision_keys=run.decision_keys, fast_repeats=run.spec.fast_repeats,
                                    credentials_watched=run.watch_credentials, agent_dropped=run.cap_drop)
        try:
            _release_late(run, sup)
            listener = _receive_listener(run)
        except BaseException:
            # Set-up failed: any thread the constructor started must end before this process may
            # launch again, single-threaded.
            _join_new_threads(before)
            sup.close()
            raise
        os.dup2(listener, reserved, inheritable=False)
        os.close(listener)
        serving = _Serving(sup, before)
        try:
            status = _wait_init(run, serving)
            if run.late is not None and not serving.failed:  # the caller waits for nothing else
                run.limits.report_fired()  # while the caller's stderr is still ours
                run.late.ended(run.limits.exit_status(exit_code(status)))
        finally:
            serving.finish()  # its threads end and are joined however the wait ended
    finally:
        os.close(reserved)  # the agent's trapped calls now fail (ENOSYS): nothing runs unsupervised
    if serving.error is not None:
        raise SandboxError("supervise", f"{type(serving.error).__name__}: {serving.error}")
    return exit_code(status)


def _receive_listener(run: _Run) -> int | None:
    """The agent's first word: its listener fd, "ready", or a stage error from any sandbox process."""
    msg, listener = _nethandover.take_listener(run.sock)
    run.sock.close()
    if run.compiled_init is not None:
        run.compiled_init.finish()  # the mounts are made: their temp files go
    if listener is not None and run.spec.seccomp:
        return listener
    if msg == b"ready" and not run.spec.seccomp:
        return None
    status = _reap(run.init_pid)
    run.init_pid = 0
    if msg and run.compiled_init is not None and init_spawn.is_failure(msg):
        raise init_spawn.error(msg, run.compiled_init)
    if msg:
        raise SandboxError.from_dict(json.loads(msg))
    raise SandboxError("startup", f"the sandbox exited during set-up (status {exit_code(status)})")


class _Serving:
    """The supervisor on its own thread; the launcher's main thread keeps signals and reaping."""

    def __init__(self, sup, before: set[threading.Thread]):
        self.sup, self.error, self.before = sup, None, before
        self.thread = threading.Thread(target=self._serve, name="supervisor", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.sup.serve()
        except BaseException as exc:  # noqa: BLE001 - reported by the launcher, which fails closed
            self.error = exc

    @property
    def failed(self) -> bool:
        return not self.thread.is_alive() and self.error is not None

    def finish(self) -> None:
        self.thread.join(timeout=2.0)
        if self.thread.is_alive():
            self.sup.stop()
            self.thread.join(timeout=2.0)
        # The supervisor's own workers end with it; wait for them so the next launch() in this
        # process starts single-threaded again.
        _join_new_threads(self.before)
        self.sup.close()


def _join_new_threads(before: set[threading.Thread]) -> None:
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=1.0)


class _InitWatch:
    """What the launcher's waiting thread waits for: a forwarded signal or init's end, with
    sigtimedwait, so no other signal wakes it. A Python init ends with INIT_EXIT_SIGNAL (its exit
    signal). A compiled init's exit signal is SIGCHLD again after its execve (the kernel resets it),
    and SIGCHLD also comes for every ptrace stop of an agent task; so a thread waits on its pidfd
    and sends INIT_EXIT_SIGNAL to the waiting thread alone (any other thread of an embedding
    program may leave it unblocked, and its default action ends the process). A signalfd would not
    do: every signal the process gets wakes every signalfd waiter, and the compiled receiver takes
    each exec stop's SIGCHLD, so each stop would wake the waiting thread, on the other CPU. Should
    the thread not start, the waiting thread's periodic look (every 0.25 s) still sees the end."""

    def __init__(self, init_pid: int, compiled: bool):
        self.thread: threading.Thread | None = None
        self.fds: list[int] = []
        self.ended = False  # init's end was taken: forwarded signals still pending come first
        if not compiled:
            return
        try:
            self.fds.append(os.pidfd_open(init_pid))
            self.fds.extend(os.pipe2(os.O_CLOEXEC))
            self.thread = threading.Thread(target=self._tell_end, args=(threading.get_ident(),),
                                           name="faramesh-init-end", daemon=True)
            self.thread.start()
        except (OSError, RuntimeError):  # out of fds or threads: the periodic look remains
            self.thread = None
            self._close_fds()

    def _tell_end(self, waiter: int) -> None:
        pidfd, stop_read, _stop_write = self.fds
        poll = select.poll()
        for fd in (pidfd, stop_read):
            poll.register(fd, select.POLLIN)
        if pidfd in {fd for fd, _events in poll.poll()}:
            signal.pthread_kill(waiter, INIT_EXIT_SIGNAL)

    def wait(self, timeout: float | None) -> int | None:
        """A forwarded signal or INIT_EXIT_SIGNAL, or None after ``timeout``. Forwarded signals
        first: the kernel hands out a signal sent to this thread before one sent to the process,
        and none may stay pending for the caller."""
        if not self.ended:
            info = signal.sigtimedwait(_LAUNCHER_WAITED, timeout)
            if info is None or info.si_signo != INIT_EXIT_SIGNAL:
                return None if info is None else info.si_signo
            self.ended = True
        forwarded = signal.sigtimedwait(FORWARDED, 0)
        return INIT_EXIT_SIGNAL if forwarded is None else forwarded.si_signo

    def close(self) -> None:
        """Stops and joins the thread: nothing is sent once this returns (launch() then takes a
        pending INIT_EXIT_SIGNAL before it gives the mask back)."""
        if self.thread is not None:
            os.write(self.fds[2], b"x")
            self.thread.join()
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def _wait_init(run: _Run, serving: _Serving | None) -> int:
    watch = _InitWatch(run.init_pid, run.compiled_init is not None)
    try:
        return _wait_init_with(run, serving, watch)
    finally:
        watch.close()


def _wait_init_with(run: _Run, serving: _Serving | None, watch: _InitWatch) -> int:
    while True:
        signum = watch.wait(run.limits.remaining(0.25))
        if run.limits.expired():  # --timeout: init's death takes the whole pid namespace along
            _kill(run.init_pid, signal.SIGKILL)
            status, run.init_pid = _reap(run.init_pid), 0
            return status
        if serving is not None and serving.failed:
            _kill(run.init_pid, signal.SIGKILL)  # fail closed: no supervisor, no agent
            status, run.init_pid = _reap(run.init_pid), 0  # reaped: its pid may be anyone's now
            return status
        if signum is None or signum == INIT_EXIT_SIGNAL:
            pid, status = os.waitpid(run.init_pid, os.WNOHANG | _WALL)
            if pid:
                run.init_pid = 0
                return status
        else:  # the terminal's too: the agent, in a session of its own, gets no copy of them
            _kill(run.init_pid, signum)


def _reap(pid: int) -> int:
    _, status = os.waitpid(pid, _WALL)
    return status


def _tear_down(run: _Run) -> None:
    if run.init_pid:
        _kill(run.init_pid, signal.SIGKILL)  # its death takes the whole pid namespace along
        try:
            os.waitpid(run.init_pid, _WALL)
        except ChildProcessError:
            pass
        run.init_pid = 0
    if run.sock is not None:
        run.sock.close()
    if run.compiled_init is not None:
        run.compiled_init.finish()
    if run.limits is not None:
        run.limits.close()  # reads which limit fired: before the cgroups go
    if run.cgroup_dir:
        cgroups.destroy(run.cgroup_dir)

