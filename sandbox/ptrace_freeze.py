"""Freezing every agent task for an exec decision with ptrace, when no cgroup v2 is delegated.

Same contract as ``freeze.CgroupFreezer``: ``freeze(holder)``, ``wait_exec_finished(holder)``,
``thaw()``, ``kill()``. The sandbox is every thread of every process in the pid namespace
of ``pidns_of`` (the agent's init) or in a namespace nested below it.

freeze: PTRACE_SEIZE + PTRACE_INTERRUPT each task, then wait until each reports a stop.
Tasks held in a received seccomp notification (the holder among them) or a vfork parent
waiting for its child cannot stop yet; being seized and interrupted, they trap before
running any user code once they leave the kernel. Tasks are listed again until a full pass
finds no new one. wait_exec_finished: after CONTINUE, reap the sibling threads the exec kills
(traced zombies only the tracer can reap; without this the exec never finishes) until the
holder reports PTRACE_EVENT_EXEC, or stops after a failed exec. thaw: PTRACE_DETACH each
stopped task, passing on a signal its stop withheld; tasks not yet stopped are detached as
soon as they stop. Every ptrace and wait call runs on one worker thread (the kernel ties
a tracee to the tracing thread). Any unexpected state raises FreezeError.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass

from sandbox import _libc_ptrace as pt
from sandbox._procstatus import status_fields
from sandbox.freeze import EXEC_TIMEOUT, FREEZE_TIMEOUT, FreezeError, task_state

# A task here cannot run user code; it stops at its pending interrupt when it leaves the kernel.
HELD_STATES = {("D", "seccomp_do_user_notification"), ("D", "kernel_clone")}
NS_GET_PARENT = 0xB702  # _IO(0xb7, 0x2)
MAX_NS_DEPTH = 32
IDLE_POLL = 0.005  # seconds between checks for tasks that still have to stop before detach
CALL_MARGIN = 5.0  # extra seconds the caller waits for the worker beyond the call's own deadline


@dataclass
class Tracee:
    tgid: int
    stopped: bool = False
    signal: int = 0  # withheld by a signal-delivery stop; passed on at detach


class PtraceFreezer:
    def __init__(self, pidns_of: int, freeze_timeout: float = FREEZE_TIMEOUT, exec_timeout: float = EXEC_TIMEOUT):
        try:
            self._ns = _ns_id(os.open(f"/proc/{pidns_of}/ns/pid", os.O_RDONLY | os.O_CLOEXEC))
            self._own_ns = os.readlink("/proc/self/ns/pid")
            self._own_depth = _ns_depth(os.getpid())
        except OSError as err:
            raise FreezeError(f"pid {pidns_of}: cannot open its pid namespace ({err.strerror})") from err
        self.directory = f"pid namespace of {pidns_of}"  # named like CgroupFreezer's for messages
        self.pidns_of = pidns_of
        self.freeze_timeout = freeze_timeout
        self.exec_timeout = exec_timeout
        self._tracees: dict[int, Tracee] = {}  # touched by the worker thread only
        self._frozen = False
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._work, name="ptrace-freezer", daemon=True).start()

    # -- public interface: each call runs on the worker thread --------------------

    def freeze(self, holder: int) -> None:
        """Stop every task; ``holder`` (held in the exec notification) stops once answered."""
        self._call(self._freeze, self.freeze_timeout, holder)

    def wait_exec_finished(self, holder: int) -> None:
        """After CONTINUE: wait until the holder's exec is over (kills the sandbox on timeout)."""
        self._call(self._wait_exec, self.exec_timeout, holder)

    def thaw(self) -> None:
        self._call(self._thaw, self.freeze_timeout)

    def kill(self) -> None:
        """SIGKILL every task; a stopped tracee dies without running."""
        self._kill_all()
        self._call(self._reap_killed, self.freeze_timeout)

    def threads(self) -> list[int]:
        return [tid for tid, _tgid in self._tasks()]

    # -- worker -----------------------------------------------------------------

    def _call(self, method, timeout: float, *args):
        done: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((method, args, time.monotonic() + timeout, done))
        try:
            return done.result(timeout + CALL_MARGIN)
        except concurrent.futures.TimeoutError:
            self._kill_all()  # the worker is stuck in the kernel; a SIGKILL frees it
            raise FreezeError(f"{self.directory}: the ptrace worker did not answer; sandbox killed") from None

    def _work(self) -> None:
        while True:
            try:
                method, args, deadline, done = self._calls.get(timeout=IDLE_POLL if self._tracees else None)
            except queue.Empty:
                if not self._frozen:
                    self._detach_idle()
                continue
            try:
                done.set_result(method(deadline, *args))
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                done.set_exception(err)

    def _detach_idle(self) -> None:
        try:
            self._detach_stopped()
        except FreezeError:
            self._kill_all()  # a tracee we can neither detach nor reap: fail closed
            self._reap_killed(time.monotonic() + 1.0)

    def _freeze(self, deadline: float, holder: int) -> None:
        self._frozen = True
        while True:  # until a full pass finds no new task
            seized = [self._seize(tid, tgid) for tid, tgid in self._tasks() if tid not in self._tracees]
            self._await(lambda: all(self._settled(tid) for tid in list(self._tracees)), deadline,
                        "tasks did not stop")
            if not any(seized):
                break
        if holder not in self._tracees:
            self._fail(f"the exec holder {holder} is not a task of the sandbox")

    def _seize(self, tid: int, tgid: int) -> bool:
        """Seize and interrupt ``tid``; False for a task that has exited (it runs nothing)."""
        try:
            pt.seize(tid, pt.PTRACE_O_TRACEEXEC | pt.PTRACE_O_EXITKILL)
            pt.interrupt(tid)
        except OSError as err:
            if task_state(tid)[0] in "ZX":
                return False
            self._fail(f"cannot seize task {tid}: {err.strerror}")
        self._tracees[tid] = Tracee(tgid)
        return True

    def _settled(self, tid: int) -> bool:
        """Stopped, or sure to stop before running user code; drops tasks that are gone."""
        tracee = self._tracees[tid]
        if tracee.stopped:
            return True
        self._collect(tid)
        return tid not in self._tracees or self._tracees[tid].stopped or task_state(tid)[:2] in HELD_STATES

    def _collect(self, tid: int) -> int | None:
        """Take ``tid``'s pending wait status, if any, into our records; returns it."""
        try:
            status = pt.poll_wait(tid)
        except ChildProcessError:
            self._tracees.pop(tid, None)
            return None
        if status is None:
            return None
        if os.WIFSTOPPED(status):
            tracee = self._tracees[tid]
            tracee.stopped = True
            if pt.stop_event(status) == 0:
                tracee.signal = os.WSTOPSIG(status)
        else:
            self._tracees.pop(tid, None)  # exited or killed: reaped by this wait
        return status

    def _wait_exec(self, deadline: float, holder: int) -> None:
        if holder not in self._tracees:
            self._fail(f"the exec holder {holder} is not traced")
        tgid = self._tracees[holder].tgid
        group = [tid for tid, tracee in self._tracees.items() if tracee.tgid == tgid]
        outcome: dict[str, str] = {}
        self._await(lambda: self._exec_over(holder, tgid, group, outcome), deadline, "exec did not finish")

    def _exec_over(self, holder: int, tgid: int, group: list[int], outcome: dict[str, str]) -> bool:
        """One poll of the exec'ing process. ``outcome`` records "exec" (the exec event, always
        on the leader's tid), "failed" (the holder stopped on its way back) or "died"; after
        "exec" or "died" the siblings the exec kills must be reaped as well."""
        for tid in dict.fromkeys([tgid, *group]):
            if tid == holder and outcome:
                continue
            try:
                status = pt.poll_wait(tid)
            except ChildProcessError:  # the holder's old tid vanishes; a zombie leader is not ours yet
                if tid not in (holder, tgid):
                    self._tracees.pop(tid, None)
                continue
            if status is None:
                continue
            event = pt.stop_event(status)
            if not os.WIFSTOPPED(status):
                self._tracees.pop(tid, None)
                if tid in (holder, tgid):
                    outcome.setdefault("result", "died")
            elif tid == tgid and event == pt.PTRACE_EVENT_EXEC:
                self._tracees.pop(holder, None)  # a non-leader's exec takes over the leader's tid
                self._tracees[tgid] = Tracee(tgid, stopped=True)
                outcome["result"] = "exec"
            elif tid == holder:
                self._tracees[holder] = Tracee(tgid, True, os.WSTOPSIG(status) if event == 0 else 0)
                outcome["result"] = "failed"  # the other threads were never touched
            else:
                self._fail(f"task {tid} reported status {status:#x} during the exec of {holder}")
        if outcome.get("result") == "failed":
            return True
        return bool(outcome) and not any(tid in self._tracees for tid in group if tid not in (holder, tgid))

    def _thaw(self, _deadline: float) -> None:
        self._frozen = False
        self._detach_stopped()

    def _detach_stopped(self) -> None:
        for tid in list(self._tracees):
            tracee = self._tracees[tid]
            if not tracee.stopped:
                self._collect(tid)
            if tid not in self._tracees or not tracee.stopped:
                continue  # gone, or still held in the kernel: detached once it stops
            try:
                pt.detach(tid, tracee.signal)
                del self._tracees[tid]
            except OSError as err:
                if err.errno != errno.ESRCH:
                    raise FreezeError(f"cannot detach task {tid}: {err.strerror}") from err
                tracee.stopped = False  # killed meanwhile: reap the traced zombie, or the agent's wait hangs
                self._collect(tid)

    def _reap_killed(self, deadline: float) -> None:
        """After SIGKILL: take each tracee's exit, or its traced zombie would block its parent."""
        self._frozen = False
        while self._tracees and time.monotonic() < deadline:
            for tid in list(self._tracees):
                self._tracees[tid].stopped = False
                self._collect(tid)
            os.sched_yield()
        self._tracees.clear()

    def _kill_all(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pidns_of, signal.SIGKILL)  # the namespace's init: takes every task along
        for tid, _tgid in self._tasks():
            try:
                os.kill(tid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def _await(self, done, deadline: float, what: str) -> None:
        while not done():
            if time.monotonic() > deadline:
                running = {tid: task_state(tid) for tid, t in self._tracees.items() if not t.stopped}
                self._fail(f"{what} in time {running}")
            os.sched_yield()

    def _fail(self, message: str) -> None:
        self._kill_all()
        self._reap_killed(time.monotonic() + 1.0)
        raise FreezeError(f"{self.directory}: {message}; sandbox killed")

    # -- listing the sandbox ----------------------------------------------------

    def _tasks(self) -> list[tuple[int, int]]:
        """(tid, tgid) of every thread in the sandbox, except our own unfiltered children
        (the launcher's init: tracing it would hand its stops to the launcher's waitpid)."""
        tasks = []
        me = os.getpid()
        for name in os.listdir("/proc"):
            if not name.isdigit() or not self._in_sandbox(int(name)):
                continue
            pid = int(name)
            if _parent_and_filtered(pid) == (me, False):
                continue
            try:
                tasks.extend((int(tid), pid) for tid in os.listdir(f"/proc/{pid}/task"))
            except (FileNotFoundError, ProcessLookupError):
                continue  # exited while we listed
        return tasks

    def _in_sandbox(self, pid: int) -> bool:
        try:
            link = os.readlink(f"/proc/{pid}/ns/pid")
            if link == self._own_ns:
                return False
            fd = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            return False
        except PermissionError:  # not ours to inspect: fine only in our own namespace
            if _ns_depth(pid) in (0, self._own_depth):
                return False
            raise FreezeError(f"pid {pid}: cannot tell whether it belongs to the sandbox") from None
        for _level in range(MAX_NS_DEPTH):  # nested pid namespaces belong to the sandbox too
            try:
                if _ns_id(fd, close=False) == self._ns:
                    return True
                parent = fcntl.ioctl(fd, NS_GET_PARENT)
            except OSError:
                return False  # reached a namespace above ours
            finally:
                os.close(fd)
            fd = parent
        os.close(fd)
        return False


def _ns_id(fd: int, close: bool = True) -> tuple[int, int]:
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino)
    finally:
        if close:
            os.close(fd)


def _ns_depth(pid: int) -> int:
    """How many pid namespaces ``pid`` is in, from /proc/<pid>/status (0 once it is gone)."""
    try:
        return len(status_fields(pid).get("NSpid", "").split())
    except (FileNotFoundError, ProcessLookupError):
        return 0


def _parent_and_filtered(pid: int) -> tuple[int, bool]:
    """(parent pid, whether a seccomp filter is installed) from /proc/<pid>/status."""
    try:
        fields = status_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return (0, True)
    return (int(fields.get("PPid", "0")), fields.get("Seccomp", "0") != "0")
