"""The notification supervisor: every trapped syscall becomes a policy decision.

TOCTOU rule: a decision that depends on a pointer argument is never followed by
CONTINUE while another task could rewrite that memory. Filesystem calls are decoded
once, resolved and performed by sandbox.fsops on the agent's behalf, and the result
is injected (ADDFD) or returned; the agent's memory is never read again. An exec
cannot be performed for the agent, so it is decided with every agent task frozen
(sandbox.freeze) and only then CONTINUEd. Everything fails closed: a decode error,
an exception in decide(), a freezer problem or a timeout denies.

Threads: one receiver thread takes a notification and handles it itself (no hand-off
on the fast path). Before a handler blocks on a human (defer) it makes a new thread the
receiver; a watchdog does the same when a handler has been busy for STALL seconds (a
FIFO open, a slow disk), so a slow decision never holds up unrelated syscalls.
"""

from __future__ import annotations

import collections
import errno
import os
import select
import threading
import time
from typing import Callable

from policy.calls import ToolCall
from policy.decision import Decision, Effect, deny
from sandbox import freeze, notify, ptrace_freeze
from sandbox.decode import UnknownSyscall, decode, row_for
from sandbox.decode.exec import exec_arguments, resolve_executable
from sandbox.traced import Role, refusal_errno

from sandbox.fsops import keep_task_files
from sandbox.fsops import prepare as fs_prepare

MAX_THREADS = 256  # live threads; beyond it a stalled receiver is not replaced
STALL = 0.02  # seconds a receiver may spend on one notification before another takes over
WATCH_INTERVAL = 0.005
FREEZER_CHECK_TIMEOUT = 10.0
APPROVAL_POLL = 0.5  # seconds between liveness checks while a defer waits
PATH_ONLY = frozenset({Role.ARGV, Role.ENVP})  # the unfrozen first look needs only the path


class Supervisor:
    def __init__(self, listener_fd: int, decide: Callable[[ToolCall], Decision], *, session_id: str = "",
                 audit: Callable[[dict], None] | None = None,
                 approve: Callable[[ToolCall, Decision, float], bool] | None = None,
                 approve_timeout: float = 300.0, cgroup_dir: str | None = None, pidns_of: int | None = None):
        self.listener = listener_fd
        self.decide = decide
        self.session_id = session_id
        self.audit = audit
        self.approve = approve
        self.approve_timeout = approve_timeout
        self.stats: collections.Counter = collections.Counter()
        self.sync_wakeup = False
        # The freezer self-test (a helper process, ~10 ms) runs while the agent starts up;
        # the first exec decision waits for it.
        # cgroup v2 freezer when a cgroup holds the agent, else ptrace stop-all over the agent's
        # pid namespace (pidns_of: a task in it, as the launcher sees it), else none: execs denied.
        self.freezer: freeze.CgroupFreezer | ptrace_freeze.PtraceFreezer | None = None
        self.freeze_problem = "the freezer self-test did not finish"
        self._freezer_ready = threading.Event()
        # Not a daemon: an exiting process waits for it, so its helper and scratch cgroup go.
        threading.Thread(target=self._check_freezer, args=(cgroup_dir, pidns_of), name="freezer-self-test").start()
        self._receive_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._settled = threading.Condition(self._count_lock)
        self._stopped = False
        self._exec_lock = threading.Lock()  # one exec decision (one freeze) at a time
        self._gate = freeze.Gate()  # fs performs are shared, a frozen exec decision exclusive
        self._done = threading.Event()
        self._stop_read, self._stop_write = os.pipe2(os.O_CLOEXEC)
        self._receiver: threading.Thread | None = None  # the one thread that receives
        self._busy: dict[threading.Thread, float] = {}  # handler thread -> when it started
        self._live = 0  # worker threads still running

    # -- threads ---------------------------------------------------------------

    def _check_freezer(self, cgroup_dir: str | None, pidns_of: int | None) -> None:
        try:
            self.freezer, self.freeze_problem = _make_freezer(cgroup_dir, pidns_of)
        finally:
            self._freezer_ready.set()

    def serve(self) -> None:
        """Answer notifications until the last filtered task exits (or stop())."""
        self.sync_wakeup = notify.set_sync_wakeup(self.listener)
        self.stats["sync_wakeup"] = int(self.sync_wakeup)
        with self._count_lock:
            self._new_receiver()
        threading.Thread(target=self._watchdog, name="supervisor-watchdog", daemon=True).start()
        self._done.wait()
        with self._count_lock:  # let handlers still answering dead tasks finish their audit
            self._settled.wait_for(lambda: not self._busy or self._stopped, timeout=5.0)

    def stop(self) -> None:
        with self._count_lock:
            self._stopped = True
            self._settled.notify_all()
        self._done.set()
        os.write(self._stop_write, b"x")

    def _new_receiver(self) -> None:
        """Start a thread that takes over receiving (caller holds _count_lock)."""
        if self._live >= MAX_THREADS:
            return
        self._live += 1
        self.stats["threads"] += 1  # ever started
        self._receiver = threading.Thread(target=self._worker, name=f"supervisor-{self.stats['threads']}",
                                          daemon=True)
        self._receiver.start()

    def _hand_off(self) -> None:
        """Called before a handler blocks (a defer): another thread takes over receiving."""
        with self._count_lock:
            if self._receiver is threading.current_thread():
                self._new_receiver()

    def _watchdog(self) -> None:
        # A handler stuck on one notification (a FIFO open, a slow disk) must not hold up
        # the others: after STALL seconds a new thread takes over receiving.
        while not self._done.wait(WATCH_INTERVAL):
            with self._count_lock:
                started = self._busy.get(self._receiver)
                if started is not None and time.monotonic() - started > STALL:
                    self._new_receiver()

    def _worker(self) -> None:
        me = threading.current_thread()
        if keep_task_files is not None:
            keep_task_files()
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        poller.register(self._stop_read, select.POLLIN)
        while True:
            with self._count_lock:
                if self._receiver is not me:
                    self._live -= 1
                    return  # replaced while handling a slow notification
            with self._receive_lock:
                notification = None if self._done.is_set() else self._receive(poller)
            if notification is None:
                self._done.set()
                return
            with self._count_lock:
                self._busy[me] = time.monotonic()
            try:
                self._handle(notification)
            finally:
                with self._count_lock:
                    del self._busy[me]
                    self._settled.notify_all()

    def _receive(self, poller: select.poll) -> notify.Notification | None:
        """The next notification, or None once every filtered task is gone or on stop()."""
        while True:
            events = dict(poller.poll())
            if self._stop_read in events:
                return None
            revents = events.get(self.listener, 0)
            if revents & select.POLLIN:
                try:
                    return notify.recv(self.listener)
                except OSError as err:
                    if err.errno in (errno.ENOENT, errno.EINTR):
                        continue  # cancelled before we took it (the task died or was signalled)
                    raise
            if revents & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                return None

    # -- handling ----------------------------------------------------------------

    def _handle(self, notification: notify.Notification) -> None:
        started = time.monotonic()
        self.stats["received"] += 1
        try:
            row = row_for(notification)
        except UnknownSyscall as err:
            self._fail(notification, errno.ENOSYS, "", "UNKNOWN_SYSCALL", str(err), started)
            return
        refusal = refusal_errno(row.tool)
        try:
            if row.tool == "shell/exec":
                self._handle_exec(notification, started)
            else:
                self._handle_fs(notification, started)
        except Exception as err:  # fail closed on anything unforeseen
            self._fail(notification, refusal, row.tool, "SUPERVISOR_ERROR", f"{type(err).__name__}: {err}", started)

    def _handle_fs(self, notification: notify.Notification, started: float) -> None:
        try:
            decoded = decode(notification)
        except OSError as err:
            self._fail(notification, err.errno or errno.EFAULT, "fs", "DECODE_ERROR", str(err), started)
            return
        if fs_prepare is None:
            self._fail(notification, errno.EACCES, "fs", "fsops_missing", "sandbox.fsops is not installed", started)
            return
        try:
            op = fs_prepare(notification.pid, decoded)
        except OSError as err:  # the path does not resolve: the syscall fails as it would natively
            self.stats["unresolved"] += 1
            notify.send_error(self.listener, notification.id, err.errno or errno.EACCES)
            return
        try:
            # Memory and /proc/PID have been read: if the task died meanwhile, its pid may
            # name another process now, and nothing read may be trusted.
            if not notify.id_valid(self.listener, notification.id):
                self.stats["gone"] += 1
                return
            call = self._call(op.tool, op.args, notification.pid)
            decision = self._settle(call, self._decide(call), notification)
            # The decision is on record before anything is done: an unrecordable permit is a deny.
            decision = self._record(notification, decoded["syscall"], call, decision, started)
            if not decision.permitted:
                notify.send_error(self.listener, notification.id, errno.EACCES)
                return
            self._gate.enter_shared()
            try:
                result = op.perform()
            except OSError as err:
                notify.send_error(self.listener, notification.id, err.errno or errno.EIO)
                return
            finally:
                self._gate.leave_shared()
            self._deliver(notification, result, bool(decoded.get("flags", 0) & os.O_CLOEXEC))
        finally:
            op.close()

    def _deliver(self, notification: notify.Notification, result, cloexec: bool) -> None:
        if result.kind != "fd":
            notify.send_value(self.listener, notification.id, result.value)
            return
        try:
            notify.addfd_send(self.listener, notification.id, result.value, cloexec)
        except OSError as err:
            if err.errno != errno.ENOENT:  # e.g. EMFILE in the agent: it gets the error, not the file
                notify.send_error(self.listener, notification.id, err.errno)
        finally:
            os.close(result.value)

    def _handle_exec(self, notification: notify.Notification, started: float) -> None:
        # A first look without freezing only answers execs that cannot succeed anyway
        # (execvp walks PATH); it never leads to CONTINUE.
        try:
            resolve_executable(decode(notification, skip=PATH_ONLY))
        except OSError as err:
            self.stats["unresolved"] += 1
            notify.send_error(self.listener, notification.id, err.errno or errno.ENOENT)
            return
        self._freezer_ready.wait(FREEZER_CHECK_TIMEOUT)
        if self.freezer is None:
            self._fail(notification, errno.EPERM, "shell/exec", "EXEC_FREEZE_UNAVAILABLE",
                       f"cannot freeze the agent for an exec decision: {self.freeze_problem}", started)
            return
        call, decision = self._decide_frozen(notification, started)
        if decision is None or decision.effect is not Effect.DEFER:
            return
        approved = self._settle(call, decision, notification)
        if not approved.permitted:
            self._record(notification, row_for(notification).name, call, approved, started)
            notify.send_error(self.listener, notification.id, errno.EPERM)
            return
        self._decide_frozen(notification, started, approved_call=call, approval=approved)

    def _decide_frozen(self, notification, started, approved_call=None, approval=None):
        """Freeze, read, decide, answer. Returns (call, DEFER decision) when a human must
        approve first (the agent is thawed meanwhile), else (call, None) when answered."""
        with self._exec_lock, self._gate.exclusive():
            try:
                self.freezer.freeze(notification.pid)
            except (OSError, freeze.FreezeError) as err:
                self._fail(notification, errno.EPERM, "shell/exec", "FREEZE_TIMEOUT", str(err), started)
                return None, None
            answered = False
            try:
                decoded = decode(notification)
                call = self._call("shell/exec", exec_arguments(decoded), notification.pid)
                if not notify.id_valid(self.listener, notification.id):
                    self.stats["gone"] += 1
                    return call, None
                if approved_call is None:
                    decision = self._decide(call)
                elif call.args == approved_call.args:
                    decision = approval
                else:
                    decision = deny("CHANGED_AFTER_APPROVAL", "the command changed while it waited for approval")
                if decision.effect is Effect.DEFER:
                    return call, decision
                decision = self._record(notification, decoded["syscall"], call, decision, started)
                answered = True
                if not decision.permitted:
                    notify.send_error(self.listener, notification.id, errno.EPERM)
                elif notify.send_continue(self.listener, notification.id):
                    self.freezer.wait_exec_finished(notification.pid)  # kills the cgroup on timeout
                return call, None
            except (OSError, freeze.FreezeError) as err:
                if not answered:
                    code = "DECODE_ERROR" if isinstance(err, OSError) else "FREEZE_TIMEOUT"
                    self._fail(notification, getattr(err, "errno", None) or errno.EPERM, "shell/exec", code,
                               str(err), started)
                return None, None
            finally:
                self.freezer.thaw()

    # -- decisions -----------------------------------------------------------------

    def _call(self, tool: str, args: dict, pid: int) -> ToolCall:
        full = dict(args, pid=pid, session=self.session_id)
        return ToolCall(tool=tool, args=full, session_id=self.session_id, timestamp=time.time())

    def _decide(self, call: ToolCall) -> Decision:
        try:
            decision = self.decide(call)
        except Exception as err:
            return deny("DECIDE_ERROR", f"policy evaluation failed: {type(err).__name__}: {err}")
        if not isinstance(decision, Decision):
            return deny("DECIDE_ERROR", f"decide() returned {type(decision).__name__}, not a Decision")
        return decision

    def _settle(self, call: ToolCall, decision: Decision, notification) -> Decision:
        """Turn a DEFER into PERMIT or DENY: ask approve(), or wait out the timeout."""
        if decision.effect is not Effect.DEFER:
            return decision
        self.stats["deferred"] += 1
        self._hand_off()
        if self.approve is None:
            deadline = time.monotonic() + self.approve_timeout
            while time.monotonic() < deadline and notify.id_valid(self.listener, notification.id):
                time.sleep(min(APPROVAL_POLL, max(0.0, deadline - time.monotonic())))
            return _replace(decision, Effect.DENY, "APPROVAL_TIMEOUT",
                            f"not approved within {self.approve_timeout:g}s ({decision.reason})")
        try:
            approved = self.approve(call, decision, self.approve_timeout) is True
        except Exception as err:
            return _replace(decision, Effect.DENY, "APPROVAL_ERROR", f"approval failed: {type(err).__name__}: {err}")
        if approved:
            return _replace(decision, Effect.PERMIT, "APPROVAL_GRANTED", f"approved ({decision.reason})")
        return _replace(decision, Effect.DENY, "APPROVAL_DENIED", f"approval refused ({decision.reason})")

    def _fail(self, notification, err: int, tool: str, reason_code: str, reason: str, started: float) -> None:
        self.stats["errors"] += 1
        try:
            name = row_for(notification).name
        except UnknownSyscall:
            name = str(notification.nr)
        call = ToolCall(tool=tool, args={"pid": notification.pid, "session": self.session_id})
        self._record(notification, name, call, deny(reason_code, reason), started)
        try:
            notify.send_error(self.listener, notification.id, err)
        except OSError:
            self.stats["send_errors"] += 1  # the listener is gone: the kernel fails the call (ENOSYS)

    def _record(self, notification, syscall: str, call: ToolCall, decision: Decision, started: float) -> Decision:
        """Audit the decision before it takes effect; returns it, or a DENY when it could not be
        recorded (a permit nobody can account for is not granted)."""
        if self.audit is not None and not self._write_audit(notification, syscall, call, decision, started):
            if decision.permitted:
                decision = _replace(decision, Effect.DENY, "AUDIT_WRITE_FAILED",
                                    f"the audit record could not be written ({decision.reason})")
                self._write_audit(notification, syscall, call, decision, started)
        self.stats["permitted" if decision.permitted else "denied"] += 1
        return decision

    def _write_audit(self, notification, syscall: str, call: ToolCall, decision: Decision, started: float) -> bool:
        record = {
            "time": time.time(), "session": self.session_id, "pid": notification.pid, "syscall": syscall,
            "tool": call.tool, "args": call.args, "effect": decision.effect.value, "rule_id": decision.rule_id,
            "reason_code": decision.reason_code, "reason": decision.reason,
            "policy_version": decision.policy_version, "latency_us": round((time.monotonic() - started) * 1e6),
        }
        try:
            self.audit(record)
            return True
        except Exception:
            self.stats["audit_errors"] += 1
            return False


def _replace(decision: Decision, effect: Effect, reason_code: str, reason: str) -> Decision:
    return Decision(effect, rule_id=decision.rule_id, reason_code=reason_code, reason=reason,
                    policy_version=decision.policy_version, layer=decision.layer)


def _make_freezer(cgroup_dir: str | None, pidns_of: int | None = None):
    """The exec freezer after its self-test, or None and why (exec permits then fail closed)."""
    if not cgroup_dir:
        if pidns_of is None:
            return None, "no cgroup v2 directory and no agent pid namespace were given"
        try:
            return ptrace_freeze.PtraceFreezer(pidns_of), ""
        except Exception as err:  # fail closed: no freezer, exec permits denied
            return None, f"{type(err).__name__}: {err}"
    try:
        freezer = freeze.CgroupFreezer(cgroup_dir)
        freeze.self_test(os.path.dirname(os.path.abspath(cgroup_dir)))
        return freezer, ""
    except Exception as err:  # any failure leaves exec decisions failing closed
        return None, f"{type(err).__name__}: {err}"
