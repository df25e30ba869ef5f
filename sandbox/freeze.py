"""Freezing every agent task while an exec decision is made (cgroup v2 freezer).

An exec cannot be performed on the agent's behalf, so the supervisor must answer
CONTINUE, and the kernel then re-reads the path and argv from agent memory. The
decision is only sound if no task that could rewrite that memory runs between our
read and the kernel's copy. Sequence (one exec decision at a time):

1. write 1 to cgroup.freeze; poll each task until all but the holder are stopped
   (the cgroup's own ``frozen 1`` never comes: the holder sits in the notification);
2. read path and argv, decide; CONTINUE;
3. poll the holder until the exec is over (it traps in the freezer, or its tid is
   gone after a multi-threaded exec), then thaw. A deny thaws at once.

Any timeout kills the whole cgroup: after CONTINUE we cannot tell whether argv has
been copied, so thawing could run a rewritten command.

Most execs need no freeze at all: a single-threaded process exec'ing an ELF file is
decided under sandbox.exec_verify.VerifiedExec, which checks what the kernel copied instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time

FREEZE_TIMEOUT = 2.0
EXEC_TIMEOUT = 10.0

# Per-task states that cannot run user code while the cgroup is frozen (kernel 6.x):
# the freezer trap (do_freezer_trap is inlined into get_signal), a vfork parent waiting
# for its child, and a task held in a received seccomp notification (it traps in the
# freezer as soon as it is answered). Checked at start-up by self_test().
STOPPED_WCHANS = {("S", "get_signal"), ("D", "kernel_clone"), ("D", "seccomp_do_user_notification")}
FROZEN_WCHAN = ("S", "get_signal")


class FreezeError(RuntimeError):
    """The freezer could not stop the agent in time (the cgroup has been killed)."""


def task_state(tid: int) -> tuple[str, str]:
    """(state letter, wchan) of ``tid``; ("X", "") when it no longer exists."""
    try:
        with open(f"/proc/{tid}/stat", "rb") as fh:
            stat = fh.read()
        with open(f"/proc/{tid}/wchan") as fh:
            wchan = fh.read().strip().split(".")[0]  # drop compiler suffixes such as ".isra.0"
    except (FileNotFoundError, ProcessLookupError):
        return ("X", "")
    state = stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3].decode()
    return (state, wchan)


def is_stopped(tid: int) -> bool:
    state, wchan = task_state(tid)
    return state in "TtZX" or (state, wchan) in STOPPED_WCHANS


def exec_finished(tid: int) -> bool:
    """The holder left the exec syscall: trapped on its way back to user space, or its
    tid vanished (a non-leader thread's exec takes over the leader's pid)."""
    state, wchan = task_state(tid)
    return state in "TtZX" or (state, wchan) == FROZEN_WCHAN


def _write(path: str, value: str) -> None:
    with open(path, "w") as fh:
        fh.write(value)


class CgroupFreezer:
    """The v2 cgroup ``directory`` that holds every agent task (and its sub-cgroups)."""

    def __init__(self, directory: str, freeze_timeout: float = FREEZE_TIMEOUT, exec_timeout: float = EXEC_TIMEOUT,
                 self_test_parent: str | None = None):
        """``self_test_parent``: where the first freeze() runs self_test() (once per process),
        so that a run whose execs never need the freezer never pays for it."""
        if not os.path.exists(os.path.join(directory, "cgroup.freeze")):
            raise FreezeError(f"{directory}: no cgroup.freeze (not a cgroup v2 directory below the root)")
        self.directory = directory
        self.self_test_parent = self_test_parent
        self.freeze_timeout = freeze_timeout
        self.exec_timeout = exec_timeout

    def threads(self) -> list[int]:
        tids: list[int] = []
        for root, _dirs, _files in os.walk(self.directory):
            try:
                with open(os.path.join(root, "cgroup.threads")) as fh:
                    tids.extend(int(line) for line in fh if line.strip())
            except FileNotFoundError:
                continue  # a sub-cgroup removed while we walked
        return tids

    def freeze(self, holder: int) -> None:
        """Freeze, then wait until every task except ``holder`` is stopped."""
        if self.self_test_parent is not None:
            self_test(self.self_test_parent)  # raises FreezeError: the exec is then denied
        _write(os.path.join(self.directory, "cgroup.freeze"), "1")
        self._wait(lambda: all(is_stopped(t) for t in self.threads() if t != holder), self.freeze_timeout,
                   "tasks did not stop", lambda: {t: task_state(t) for t in self.threads() if t != holder
                                                   and not is_stopped(t)})

    def wait_exec_finished(self, holder: int) -> None:
        """After CONTINUE: wait until the kernel has copied path and argv (see module doc)."""
        self._wait(lambda: exec_finished(holder), self.exec_timeout, "exec did not finish",
                   lambda: {holder: task_state(holder)})

    def thaw(self) -> None:
        _write(os.path.join(self.directory, "cgroup.freeze"), "0")

    def kill(self) -> None:
        """SIGKILL every task; works on frozen tasks, which then die without running."""
        try:
            _write(os.path.join(self.directory, "cgroup.kill"), "1")
            return
        except OSError:
            pass
        for tid in self.threads():
            try:
                os.kill(tid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _wait(self, done, timeout: float, what: str, culprits=lambda: {}) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                running = culprits()  # (state, wchan) of what kept running, for the error
                self.kill()
                raise FreezeError(f"{self.directory}: {what} within {timeout:.1f}s {running}; cgroup killed")
            os.sched_yield()  # cgroup.events poll() is rate-limited to 10 ms; spin instead


_self_test_lock = threading.Lock()
_self_test_passed = False  # the kernel does not change under us: one pass per process


def self_test(parent: str) -> None:
    """Freeze a sleeping helper in a scratch cgroup under ``parent`` and check that the
    per-task test recognises it as frozen. Raises FreezeError (fail closed) otherwise."""
    global _self_test_passed
    with _self_test_lock:
        if not _self_test_passed:
            _run_self_test(parent)
            _self_test_passed = True


def _run_self_test(parent: str) -> None:
    sleep = shutil.which("sleep") or "/bin/sleep"
    scratch = os.path.join(parent, f"freeze-selftest-{os.getpid()}-{threading.get_ident()}")
    os.mkdir(scratch)
    # posix_spawn (vfork) is safe from a threaded process, unlike a bare fork.
    helper = subprocess.Popen([sleep, "60"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        _write(os.path.join(scratch, "cgroup.procs"), str(helper.pid))
        _write(os.path.join(scratch, "cgroup.freeze"), "1")
        deadline = time.monotonic() + FREEZE_TIMEOUT
        while b"frozen 1" not in _read_bytes(os.path.join(scratch, "cgroup.events")):
            if time.monotonic() > deadline:
                raise FreezeError("freezer self-test: the helper never froze")
            os.sched_yield()
        observed = task_state(helper.pid)
        while observed != FROZEN_WCHAN and time.monotonic() < deadline:
            os.sched_yield()  # a frozen task may wake spuriously for a moment (wchan "0")
            observed = task_state(helper.pid)
        if observed != FROZEN_WCHAN:
            raise FreezeError(f"freezer self-test: a frozen task shows {observed}, expected {FROZEN_WCHAN}; "
                              "this kernel's freezer cannot be checked per task")
    finally:
        helper.kill()
        helper.wait()
        os.rmdir(scratch)


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


class Gate:
    """Shared/exclusive lock: filesystem operations performed for the agent hold it
    shared, a frozen exec decision exclusive, so no file the agent maps or execs
    changes under a decision (writers wait at most ``timeout`` seconds)."""

    def __init__(self, timeout: float = 5.0):
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self.timeout = timeout

    def enter_shared(self) -> None:
        with self._cond:  # plain calls, not a context manager: this is on every fs call
            while self._writer:
                self._cond.wait()
            self._readers += 1

    def leave_shared(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._cond:
            if not self._cond.wait_for(lambda: not self._writer and self._readers == 0, self.timeout):
                raise FreezeError(f"filesystem operations still running after {self.timeout:.0f}s")
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
