"""launch(): fork the agent into its namespaces under the seccomp filter, then supervise it.

Process tree, host view:

    launcher   host namespaces; runs the supervisor on the seccomp listener
     └ outer   unshares the namespaces so the launcher keeps the host's; waits for init
        └ init   pid 1 of the new pid namespace: forwards signals, reaps, exits with the agent's status
           └ agent  pid 2: no_new_privs, seccomp filter, then execve(CMD) (itself trapped and decided)

Everything dies with the launcher: outer and init have PR_SET_PDEATHSIG=SIGKILL, the pid namespace
kills every task when init dies, and the launcher kills the cgroup when the run ends.
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
from dataclasses import dataclass, field

from sandbox import _libc, _libc_ns, cgroups, mounts, namespaces, seccomp, supervisor
from sandbox.errors import SandboxError, hint_for
from sandbox.spec import SandboxSpec

EXIT_SETUP = 125
EXIT_CANNOT_RUN = 126
EXIT_NOT_FOUND = 127
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_WAITED = {*FORWARDED, signal.SIGCHLD}
SI_KERNEL = 0x80  # the terminal sent it to the whole foreground group: the agent has its own copy


@dataclass
class _Run:
    spec: SandboxSpec
    role: str = "launcher"
    program: bytes = b""
    cgroup_dir: str | None = None
    warnings: list[str] = field(default_factory=list)  # a protection is lost: always printed
    notes: list[str] = field(default_factory=list)  # printed with --verbose
    launcher_pid: int = 0
    uid: int = 0
    gid: int = 0
    sock: socket.socket | None = None  # child end: errors or the listener go to the launcher
    parent_alive_fd: int = -1  # init: read end of a pipe outer holds open while it lives
    outer_pid: int = 0


# ---- stages run in the launcher -------------------------------------------------------------

def _build_filter(run: _Run) -> None:
    """Built before any fork, so a bad filter never leaves a half-made sandbox behind."""
    if not run.spec.seccomp:
        return
    run.program = seccomp.build_filter(sorted(run.spec.trapped), dict(run.spec.kernel_decided))


def _create_cgroup(run: _Run) -> None:
    if not run.spec.cgroup:
        return
    try:
        run.cgroup_dir = cgroups.create(run.spec.session_id or str(os.getpid()))
        run.notes.append(f"agent cgroup {run.cgroup_dir}")
    except OSError as err:
        # Degrade, and say so: without the cgroup, exec decisions cannot freeze the agent's
        # tree (the supervisor then fails closed) and left-overs die only with the pid namespace.
        run.warnings.append(f"no cgroup for the agent ({err.strerror}): exec decisions cannot freeze "
                            "the agent's other tasks, so the supervisor denies execs")


def _fork_outer(run: _Run) -> None:
    run.launcher_pid, run.uid, run.gid = os.getpid(), os.geteuid(), os.getegid()
    parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid:
        child_end.close()
        run.sock, run.outer_pid = parent_end, pid
        return  # the launcher leaves the stage list here
    parent_end.close()  # so a launcher death is seen as EPIPE by the agent
    run.sock, run.role = child_end, "outer"


# ---- stages run in outer --------------------------------------------------------------------

def _die_with_launcher(run: _Run) -> None:
    # Must come first: if the launcher dies, nothing it started may keep running.
    _libc.prctl(_libc_ns.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != run.launcher_pid:  # it died before prctl took effect
        os._exit(EXIT_SETUP)


def _join_cgroup(run: _Run) -> None:
    if run.cgroup_dir:
        # Before any namespace or fork, so every later task is born inside the cgroup.
        cgroups.join(run.cgroup_dir, os.getpid())


def _map_user(run: _Run) -> None:
    namespaces.map_user(run.spec, run.uid, run.gid)


def _fork_init(run: _Run) -> None:
    alive_read, alive_write = os.pipe()
    pid = os.fork()
    if pid:
        os.close(alive_read)
        run.sock.close()
        _wait_and_forward(pid)  # never returns; alive_write closes when outer exits
    os.close(alive_write)
    run.parent_alive_fd, run.role = alive_read, "init"


# ---- stages run in init (pid 1) -------------------------------------------------------------

def _die_with_parent(run: _Run) -> None:
    _libc.prctl(_libc_ns.PR_SET_PDEATHSIG, signal.SIGKILL)
    # getppid() is 0 across a pid namespace, so ask the pipe whether outer still lives.
    poller = select.poll()
    poller.register(run.parent_alive_fd, select.POLLIN)
    if poller.poll(0):
        os._exit(EXIT_SETUP)
    os.close(run.parent_alive_fd)


def _fork_agent(run: _Run) -> None:
    pid = os.fork()
    if pid:
        run.sock.close()
        _wait_and_forward(pid)  # init: never returns
    run.role = "agent"


# ---- stages run in the agent ----------------------------------------------------------------

def _restore_signals(run: _Run) -> None:
    """The agent starts with the signal state a shell would give it, not the launcher's."""
    for signum in (signal.SIGPIPE, signal.SIGXFSZ, *FORWARDED):
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _chdir(run: _Run) -> None:
    if run.spec.cwd:
        os.chdir(run.spec.cwd)


def _close_fds(run: _Run) -> None:
    """Only stdin, stdout and stderr reach the agent: no launcher fd can leak a host resource."""
    keep = run.sock.fileno()
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))


def _no_new_privs(run: _Run) -> None:
    # Required for an unprivileged filter load; and no setuid binary can ever gain privileges.
    _libc.set_no_new_privs()


def _install_filter(run: _Run) -> None:
    if not run.spec.seccomp:
        return
    # Last step before exec: from here on every trapped syscall waits for the supervisor.
    listener = seccomp.install(run.program)
    run.program = b""
    # The agent must never hold its own listener: pass it over and close our copy before exec.
    socket.send_fds(run.sock, [b"listener"], [listener])
    os.close(listener)


def _report_ready(run: _Run) -> None:
    if not run.spec.seccomp:
        run.sock.send(b"ready")
    run.sock.close()


# One ordered list: (stage, process it runs in, step). Security-relevant order is read top down.
STAGES = (
    ("filter", "launcher", _build_filter),
    ("cgroup", "launcher", _create_cgroup),
    ("fork_outer", "launcher", _fork_outer),
    ("die_with_launcher", "outer", _die_with_launcher),
    ("join_cgroup", "outer", _join_cgroup),
    ("user_namespace", "outer", lambda run: namespaces.unshare_user(run.spec)),
    ("map_user", "outer", _map_user),
    ("namespaces", "outer", lambda run: namespaces.unshare_rest(run.spec)),
    ("fork_init", "outer", _fork_init),
    ("die_with_parent", "init", _die_with_parent),
    ("mounts", "init", lambda run: mounts.apply(run.spec)),
    ("hostname", "init", lambda run: namespaces.set_hostname(run.spec)),
    ("loopback", "init", lambda run: namespaces.bring_up_loopback(run.spec)),
    ("fork_agent", "init", _fork_agent),
    ("restore_signals", "agent", _restore_signals),
    ("chdir", "agent", _chdir),
    ("close_fds", "agent", _close_fds),
    ("no_new_privs", "agent", _no_new_privs),
    ("seccomp", "agent", _install_filter),
    ("hand_over_listener", "agent", _report_ready),
)


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
    """Runs the stages of the current process; forks hand the rest of the list to the child."""
    for stage, role, step in STAGES:
        if role != run.role:
            return  # the launcher after fork_outer: the rest belongs to the sandbox
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
    env = run.spec.env if run.spec.env is not None else dict(os.environ)
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


def _find_program(name: str, search_path: str) -> str:
    """PATH search without trying each candidate with execve (each attempt would be a decision)."""
    if "/" in name:
        return name
    denied = None
    for directory in search_path.split(os.pathsep):
        candidate = os.path.join(directory or ".", name)
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            denied = denied or candidate
    if denied:
        return denied  # execve reports EACCES, as a shell would
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT))


def _wait_and_forward(child: int) -> None:
    """outer and init: forward signals sent to us to the child, reap everything, exit with the
    child's status (128+N when a signal N killed it). Never returns."""
    status = None
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)
        while status is None:
            info = signal.sigwaitinfo(_WAITED)
            if info.si_signo != signal.SIGCHLD:
                if info.si_code != SI_KERNEL:
                    _kill(child, info.si_signo)
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

def launch(spec: SandboxSpec, decide, audit=None, approve=None) -> int:
    """Run ``spec.argv`` in the sandbox, deciding trapped syscalls with ``decide``.

    Returns the agent's exit status (128+N for signal N, 126/127 when CMD cannot run);
    raises SandboxError when the sandbox cannot be set up."""
    run = _Run(spec)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)  # children inherit it until they choose
    try:
        _run_stages(run)
        if run.role != "launcher":  # the agent: every stage done, become CMD
            _exec_agent(run)
        for line in run.warnings:
            print(f"faramesh-sandbox: warning: {line}", file=sys.stderr, flush=True)
        if spec.verbose:
            user = "user, " if spec.wants_user_namespace() else ""
            run.notes.append(f"namespaces {user}{', '.join(sorted(spec.namespaces))}; agent is pid 2")
            for line in run.notes:
                print(f"faramesh-sandbox: {line}", file=sys.stderr, flush=True)
        return _supervise(run, decide, audit, approve)
    finally:
        if run.role == "launcher":
            _tear_down(run)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _supervise(run: _Run, decide, audit, approve) -> int:
    listener = _receive_listener(run)
    if listener is None:  # namespaces only, no filter
        return exit_code(_wait_outer(run, None))
    try:
        sup = supervisor.Supervisor(listener, decide, session_id=run.spec.session_id, audit=audit,
                                    approve=approve, approve_timeout=run.spec.approve_timeout,
                                    cgroup_dir=run.cgroup_dir)
        serving = _Serving(sup)
        status = _wait_outer(run, serving)
        serving.finish()
    finally:
        os.close(listener)  # the agent's trapped calls now fail (ENOSYS): nothing runs unsupervised
    if serving.error is not None:
        raise SandboxError("supervise", f"{type(serving.error).__name__}: {serving.error}")
    return exit_code(status)


def _receive_listener(run: _Run) -> int | None:
    """The agent's first word: its listener fd, "ready", or a stage error from any sandbox process."""
    msg, fds, _flags, _addr = socket.recv_fds(run.sock, 4096, 1)
    run.sock.close()
    if fds:
        return fds[0]
    if msg == b"ready":
        return None
    status = _reap(run.outer_pid)
    run.outer_pid = 0
    if msg:
        raise SandboxError.from_dict(json.loads(msg))
    raise SandboxError("startup", f"the sandbox exited during set-up (status {exit_code(status)})")


class _Serving:
    """The supervisor on its own thread; the launcher's main thread keeps signals and reaping."""

    def __init__(self, sup):
        self.sup, self.error = sup, None
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


def _wait_outer(run: _Run, serving: _Serving | None) -> int:
    while True:
        info = signal.sigtimedwait(_WAITED, 0.25)
        if serving is not None and serving.failed:
            _kill(run.outer_pid, signal.SIGKILL)  # fail closed: no supervisor, no agent
            return _reap(run.outer_pid)
        if info is None or info.si_signo == signal.SIGCHLD:
            pid, status = os.waitpid(run.outer_pid, os.WNOHANG)
            if pid:
                run.outer_pid = 0
                return status
        elif info.si_code != SI_KERNEL:
            _kill(run.outer_pid, info.si_signo)


def _reap(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return status


def _tear_down(run: _Run) -> None:
    if run.outer_pid:
        _kill(run.outer_pid, signal.SIGKILL)  # its death takes init and the pid namespace along
        try:
            os.waitpid(run.outer_pid, 0)
        except ChildProcessError:
            pass
    if run.sock is not None:
        run.sock.close()
    if run.cgroup_dir:
        cgroups.destroy(run.cgroup_dir)
