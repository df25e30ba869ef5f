"""The notification supervisor: every trapped syscall becomes a policy decision.

TOCTOU rule: a decision that depends on a pointer argument is never followed by
CONTINUE while another task could rewrite that memory. Filesystem calls are decoded
once, resolved and performed by sandbox.fsops on the agent's behalf, and the result
is injected (ADDFD) or returned; the agent's memory is never read again. An exec
cannot be performed for the agent: it is either verified (exec_verify.VerifiedExec: the new
image is stopped before its first instruction and compared with the decision, killed on
any difference) or decided with every agent task frozen (sandbox.freeze) and only then
CONTINUEd. Everything fails closed: a decode error, an exception in decide(), a freezer
problem or a timeout denies.

Threads: one receiver thread takes a notification and handles it itself (no hand-off
on the fast path). Before a handler blocks on a human (defer) it makes a new thread the
receiver; a watchdog does the same when a handler has been busy for STALL seconds (a
FIFO open, a slow disk), so a slow decision never holds up unrelated syscalls.
"""

from __future__ import annotations

import collections
import errno
import os
import posixpath
import secrets
import select
import threading
import time
from typing import Callable

from policy.calls import ToolCall
from policy.decision import Decision, Effect, deny
from sandbox import (audit_sink, exec_verify, fastpath, fastpath_exec, fastpath_net, freeze, notify, ptrace_freeze,
                     seccomp)
from sandbox.decode import UnknownSyscall, decode, row_for
from sandbox.decode.exec import command_line, exec_arguments
from sandbox.exec_identity import ExecIdentity
from sandbox.traced import Role, refusal_errno

from sandbox.fsops import keep_task_files
from sandbox.netops import NetContext
from sandbox.netops import prepare as net_prepare
from sandbox._netguard import guard_decision
from sandbox.fsops import prepare as fs_prepare

MAX_THREADS = 256  # live threads; beyond it a stalled receiver is not replaced
STALL = 0.02  # seconds a receiver may spend on one notification before another takes over
WATCH_INTERVAL = 0.005
FREEZER_CHECK_TIMEOUT = 10.0
APPROVAL_POLL = 0.5  # seconds between liveness checks while a defer waits
NO_ENVP = frozenset({Role.ENVP})  # no decision reads the environment


class Supervisor:
    def __init__(self, listener_fd: int, decide: Callable[[ToolCall], Decision], *, session_id: str = "",
                 audit: Callable[[dict], None] | None = None,
                 approve: Callable[[ToolCall, Decision, float], bool] | None = None,
                 approve_timeout: float = 300.0, cgroup_dir: str | None = None, pidns_of: int | None = None,
                 net: NetContext | None = None, decision_keys: Callable[[str], frozenset | None] | None = None,
                 fast_repeats: bool = False, credentials_watched: bool = False, agent_dropped: list[int] = ()):
        """``agent_dropped``: the capabilities the agent gave up (sandbox/capabilities.py); the
        compiled receiver answers for it without them."""
        self.listener = listener_fd
        self.net = net if net is not None else NetContext()
        self.decide = decide
        self.session_id = session_id
        self.audit = audit
        self.approve = approve
        self.approve_timeout = approve_timeout
        self.stats: collections.Counter = collections.Counter()
        self.sync_wakeup = False
        # cgroup v2 freezer when a cgroup holds the agent, else ptrace stop-all over the agent's
        # pid namespace (pidns_of: a task in it, as the launcher sees it), else none: execs denied.
        self.freezer: freeze.CgroupFreezer | ptrace_freeze.PtraceFreezer | None = None
        self.freeze_problem = "the freezer self-test did not finish"
        self._freezer_ready = threading.Event()
        self._check_freezer(cgroup_dir, pidns_of)  # cheap: its self-test runs at the first freeze
        # Lists the system programs (about 1 ms, while the agent is being set up) before the agent
        # runs anything (sandbox.exec_identity).
        self.exec_identity = ExecIdentity()
        self._receive_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._settled = threading.Condition(self._count_lock)
        self._stopped = False
        self._exec_lock = threading.Lock()  # one exec decision (one freeze) at a time
        self._gate = freeze.Gate()  # fs performs are shared, a frozen exec decision exclusive
        self._done = threading.Event()
        self._watch_wanted = threading.Event()  # set while a handler may be running, and at the end
        self._failure: BaseException | None = None  # what ended receiving, when not the agent's end
        self._stop_read, self._stop_write = os.pipe2(os.O_CLOEXEC)
        # Repeated read-only opens and connects answered in C (sandbox/fastpath.py, fastpath_net.py);
        # with an audit sink only when the caller accepts their records being written just after the answer.
        self.fast = fastpath.FastOpens.create(listener_fd, self._stop_read, decision_keys, credentials_watched,
                                              self.net, self.exec_identity.started, list(agent_dropped)) \
            if fastpath.wanted(decision_keys, audit is not None, fast_repeats) else None
        if self.fast is not None and self.fast.execs is not None:  # shared with the compiled receiver
            self._exec_lock, self._gate = self.fast.execs.lock, self.fast.execs.gate
        self._credential_calls = seccomp.credential_numbers() if credentials_watched else frozenset()
        self._hold_cpu = False  # files handed to the agent hold its thread (fastpath_c/cpu_hold.c): set by serve()
        self._fast_records_lock = threading.Lock()
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
        # Without a sync answer the held thread would not wake on our CPU either: no hold then.
        self._hold_cpu = self.sync_wakeup and fastpath.hold_agent_cpu()
        if self.fast is not None:
            self.fast.native.hold_cpu(self._hold_cpu)
        with self._count_lock:
            if not self._new_receiver():  # nothing would answer: the launcher kills the sandbox
                raise RuntimeError("cannot start the supervisor's receiving thread")
        threading.Thread(target=self._watchdog, name="supervisor-watchdog", daemon=True).start()
        if self.fast is not None:
            threading.Thread(target=self._drain_fast, name="supervisor-fast-records", daemon=True).start()
        self._done.wait()
        with self._count_lock:  # let handlers still answering dead tasks finish their audit
            self._settled.wait_for(lambda: not self._busy or self._stopped, timeout=5.0)
        if self.fast is not None:
            with self._receive_lock:  # the last receiver has left the fast path
                self._write_fast_records()
                self.stats.update(self.fast.stats())
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        with self._count_lock:
            self._stopped = True
            self._settled.notify_all()
            if self._stop_write >= 0:
                os.write(self._stop_write, b"x")
        self._end()

    def _end(self) -> None:
        self._done.set()
        with self._count_lock:  # after the watchdog's last look: it cannot clear this any more
            self._watch_wanted.set()

    def close(self) -> None:
        """Release the stop pipe once no worker polls it (a launcher runs many sandboxes)."""
        with self._count_lock:
            if self._live == 0 and self._stop_write >= 0:
                if self.fast is not None:
                    self.fast.close()
                os.close(self._stop_read)
                os.close(self._stop_write)
                self._stop_read = self._stop_write = -1

    def _new_receiver(self) -> bool:
        """Start a thread that takes over receiving (caller holds _count_lock); False when none
        could start (MAX_THREADS, or no thread left): the current receiver keeps the role."""
        if self._live >= MAX_THREADS:
            return False
        receiver = threading.Thread(target=self._worker, name=f"supervisor-{self.stats['threads'] + 1}",
                                    daemon=True)
        self._live += 1  # before start: the new thread's end counts it down
        try:
            receiver.start()
        except RuntimeError:  # no thread left
            self._live -= 1
            return False
        self.stats["threads"] += 1  # ever started
        self._receiver = receiver
        return True

    def _hand_off(self) -> None:
        """Called before a handler blocks (a defer): another thread takes over receiving."""
        with self._count_lock:
            if self._receiver is threading.current_thread():
                self._new_receiver()

    def _watchdog(self) -> None:
        # A handler stuck on one notification (a FIFO open, a slow disk) must not hold up
        # the others: after STALL seconds a new thread takes over receiving. It looks only while
        # handlers run: calls answered in C wake no thread of ours.
        while self._watch_wanted.wait() and not self._done.wait(WATCH_INTERVAL):
            with self._count_lock:
                if not self._busy and not self._done.is_set():
                    self._watch_wanted.clear()  # a handler starting, or the end, sets it again under this lock
                started = self._busy.get(self._receiver)
                if started is not None and time.monotonic() - started > STALL:
                    self._new_receiver()

    def _worker(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # noqa: BLE001 - receiving itself failed: nothing would answer
            self._failure = self._failure or exc
            self.stop()  # wakes any other receiver; serve() raises it, the launcher kills the sandbox
        finally:
            with self._count_lock:
                self._live -= 1

    def _work(self) -> None:
        me = threading.current_thread()
        if keep_task_files is not None:
            keep_task_files()
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        poller.register(self._stop_read, select.POLLIN)
        while True:
            with self._count_lock:
                if self._receiver is not me:
                    return  # replaced while handling a slow notification
            with self._receive_lock:
                notification = None if self._done.is_set() else self._receive(poller)
            if notification is None:
                self._end()
                return
            with self._count_lock:
                self._busy[me] = time.monotonic()
                if not self._watch_wanted.is_set():
                    self._watch_wanted.set()
            try:
                self._handle(notification)
            finally:
                with self._count_lock:
                    del self._busy[me]
                    self._settled.notify_all()

    def _receive(self, poller: select.poll) -> notify.Notification | None:
        """The next notification, or None once every filtered task is gone or on stop()."""
        if self.fast is not None:
            return self.fast.receive()  # answers repeated opens itself, returns the rest
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

    def _handle(self, notification: notify.Notification | fastpath_net.PendingConnect
                | fastpath_exec.PendingExec) -> None:
        if type(notification) is fastpath_net.PendingConnect:  # decided and recorded in C: may block
            notification.perform()
            return
        if type(notification) is fastpath_exec.PendingExec:  # a repeated permitted exec found in C
            try:
                self._finish_fast_exec(notification)
            except Exception as err:  # fail closed on anything unforeseen, as for every handler
                self._fail(notification.notification, errno.EPERM, "shell/exec", "SUPERVISOR_ERROR",
                           f"{type(err).__name__}: {err}", time.monotonic())
            return
        started = time.monotonic()
        self.stats["received"] += 1
        if notification.nr in self._credential_calls:  # watched for the fast path, decided by nobody
            notify.send_continue(self.listener, notification.id)
            return
        try:
            row = row_for(notification)
        except UnknownSyscall as err:
            self._fail(notification, errno.ENOSYS, "", "UNKNOWN_SYSCALL", str(err), started)
            return
        refusal = refusal_errno(row.tool)
        try:
            _HANDLERS[row.tool.split("/", 1)[0]](self, notification, started)
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
            decided = self._decide(call)
            decision = self._settle(call, decided, notification)
            if not self._still_waiting(notification):
                return
            # The decision is on record before anything is done: an unrecordable permit is a deny.
            recorded = self._record(notification, decoded["syscall"], call, decision, started)
            if self.fast is not None and recorded is decided:  # neither deferred nor unrecordable
                self.fast.learn(decoded, op.tool, op.args, decided)
            decision = recorded
            if not decision.permitted:
                notify.send_error(self.listener, notification.id, errno.EACCES)
                return
            try:
                result = self._perform_rename(notification, decoded["syscall"], started, op) \
                    if op.moved_entries else self._perform(op)
            except OSError as err:
                notify.send_error(self.listener, notification.id, err.errno or errno.EIO)
                return
            self._deliver(notification, result, bool(decoded.get("flags", 0) & os.O_CLOEXEC))
        finally:
            op.close()

    def _perform(self, op):
        self._gate.enter_shared()  # never while an exec decision has the agent frozen
        try:
            return op.perform()
        finally:
            self._gate.leave_shared()

    def _perform_rename(self, notification: notify.Notification, syscall: str, started: float, op):
        """A rename, with the agent frozen so that no task can turn its source into a directory or
        add to one meanwhile: each entry a moved directory carries is decided as a rename of its
        own (with what that implies: _implied_calls). One refused (recorded), or too many
        entries, is EXDEV: mv then copies and deletes entry by entry, each decided."""
        self._freezer_ready.wait(FREEZER_CHECK_TIMEOUT)
        if self.freezer is None:
            raise OSError(errno.EXDEV, f"cannot freeze the agent for a rename: {self.freeze_problem}")
        try:
            with self._exec_lock, self._gate.exclusive():
                self.freezer.freeze(notification.pid)
                try:
                    for old, new in op.moved_entries():
                        call = self._call("fs/rename", {"path": old, "flags": [], "mode": None, "dest": new},
                                          notification.pid)
                        decision = self._decide(call)
                        if not decision.permitted:
                            if decision.effect is Effect.DEFER:  # no approval can be awaited with the agent frozen
                                decision = _replace(decision, Effect.DENY, "MOVED_ENTRY_DEFERRED",
                                                    f"{decision.reason} (an entry of a moved directory cannot wait "
                                                    "for approval: its entries are then moved one by one)")
                            self._record(notification, syscall, call, decision, started)
                            raise OSError(errno.EXDEV, f"{old} may not be moved to {new}")
                    return op.perform()
                finally:
                    self.freezer.thaw()
        except freeze.FreezeError as err:
            raise OSError(errno.EXDEV, f"cannot freeze the agent for a rename: {err}") from None

    def _handle_net(self, notification: notify.Notification, started: float) -> None:
        # Performed on our duplicate of the agent's socket (sandbox/netops.py), never CONTINUEd.
        # No exec gate: a network call changes no file an exec decision reads (a unix bind
        # makes a socket inode, which cannot be executed), and a connect may block for long.
        try:
            decoded = decode(notification)
            op = net_prepare(notification.pid, decoded, self.net)
        except OSError as err:  # a bad fd, address or buffer fails as it would natively
            self.stats["unresolved"] += 1
            notify.send_error(self.listener, notification.id, err.errno or errno.EFAULT)
            return
        try:
            if not notify.id_valid(self.listener, notification.id):
                self.stats["gone"] += 1  # the pid may name another process now: nothing read counts
                return
            if op.tool is not None:
                call = self._call(op.tool, op.args, notification.pid)
                # The broker's own refusal (UDP to a host the egress inspects) stands whatever the policy says.
                decided = op.refusal if op.refusal is not None else self._decide(call)
                if op.guarded:
                    decided = guard_decision(call, decided, self._decide, self.net.probes)
                decision = self._settle(call, decided, notification)
                if not self._still_waiting(notification):
                    return
                decision = self._record(notification, decoded["syscall"], call, decision, started)
                if op.repeatable is not None and decision is decided and self.fast is not None \
                        and self.fast.connects is not None:  # neither deferred nor unrecordable
                    self.fast.connects.learn(op.repeatable, op.tool, op.args, decided)
                if not decision.permitted:
                    notify.send_error(self.listener, notification.id, refusal_errno(op.tool))
                    return
            try:
                result = op.perform()
                if result.write_back is not None and not self._write_back(notification, result.write_back):
                    return
            except OSError as err:
                notify.send_error(self.listener, notification.id, err.errno or errno.EIO)
                return
            self._deliver(notification, result, result.cloexec)
        finally:
            op.close()

    def _write_back(self, notification: notify.Notification, write: Callable[[], None]) -> bool:
        """Write into the agent's memory as the kernel would before returning (False: the task is
        gone). Never while an exec decision has the agent frozen: the write could change a path or
        argv the decision has read (the gate waits for the decision to end)."""
        self._gate.enter_shared()
        try:
            if not self._still_waiting(notification):  # an exec meanwhile ended this thread
                return False
            write()
            return True
        finally:
            self._gate.leave_shared()

    def _still_waiting(self, notification: notify.Notification) -> bool:
        """After a slow decision: is the task still in the call? A task that died (or was
        signalled out of it) meanwhile gets nothing done on its behalf."""
        if notify.id_valid(self.listener, notification.id):
            return True
        self.stats["gone"] += 1
        return False

    def _deliver(self, notification: notify.Notification, result, cloexec: bool) -> None:
        if result.kind != "fd":
            notify.send_value(self.listener, notification.id, result.value)
            return
        try:
            fastpath.answer_with_fd(self.listener, notification.id, result.value, cloexec, notification.pid,
                                    self._hold_cpu)
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.ESRCH):  # e.g. EMFILE in the agent: it gets the error
                notify.send_error(self.listener, notification.id, err.errno)
        finally:
            os.close(result.value)

    def _handle_exec(self, notification: notify.Notification, started: float) -> None:
        # A first look without freezing answers execs that cannot succeed anyway (execvp walks
        # PATH); it leads to CONTINUE only through exec_verify.VerifiedExec, which checks the new
        # image against the decision before it runs.
        try:
            decoded = decode(notification, skip=NO_ENVP)
        except OSError:  # unreadable memory: the frozen read below records the error
            self._decide_with_freezer(notification, started)
            return
        seen: dict = {}
        try:
            args = exec_arguments(decoded, self.exec_identity, seen)
        except OSError as err:
            self.stats["unresolved"] += 1
            notify.send_error(self.listener, notification.id, err.errno or errno.ENOENT)
            return
        verified = exec_verify.VerifiedExec.for_exec(notification.pid, decoded, args, seen)
        if verified is not None:
            verified.identity = (lambda exe: self._program_of(exe, args), *verified.identity[1:])
            call = self._call("shell/exec", args, notification.pid)
            decided = self._decide(call)
            decision = self._settle(call, decided, notification)
            if self._decide_verified(notification, decoded["syscall"], call, decision, verified, started,
                                     learnable=decision is decided):
                return
            # The holder could not be traced: the freezer re-reads and compares with this decision.
            self._decide_with_freezer(notification, started, call, decision)
            return
        self._decide_with_freezer(notification, started)

    def _decide_verified(self, notification, syscall, call, decision, verified, started, learnable=False) -> bool:
        """Answer an exec under exec_verify.VerifiedExec; False (nothing answered, nothing recorded)
        when the holder cannot be traced."""
        with self._exec_lock, self._gate.exclusive():
            if decision.permitted:
                try:
                    verified.attach()
                except OSError:
                    verified.abandon()
                    return False
            continued = False
            try:
                if not notify.id_valid(self.listener, notification.id):
                    self.stats["gone"] += 1
                    return True
                recorded = self._record(notification, syscall, call, decision, started)
                if learnable and recorded is decision and self.fast is not None and self.fast.execs is not None:
                    self.fast.execs.learn(call.args, verified, decision)  # neither deferred nor unrecordable
                decision = recorded
                if not decision.permitted:
                    notify.send_error(self.listener, notification.id, errno.EPERM)
                else:
                    continued = notify.send_continue(self.listener, notification.id)
                self.stats["exec_verified"] += 1
            finally:
                try:
                    verified.finish(continued)
                except freeze.FreezeError as err:  # the holder has been killed: on record too
                    self.stats["exec_changed"] += 1
                    self._record(notification, syscall, call, deny("EXEC_CHANGED", str(err)), started)
            return True

    def _finish_fast_exec(self, pending: fastpath_exec.PendingExec) -> None:
        """A permitted exec C found repeated: seized, recorded, CONTINUEd and checked at its exec
        stop by C on this thread (the tracer), under the same lock and gate as _decide_verified
        (taken here, or already by the receiver, which then did all or all but the stop)."""
        started, timeout = time.monotonic(), freeze.EXEC_TIMEOUT
        try:
            if pending.locks_taken:
                kind, err, gone, seen = pending.finish(timeout)
            else:
                with self._exec_lock, self._gate.exclusive():
                    kind, err, gone, seen = pending.finish(timeout)
        except freeze.FreezeError as err:  # fs operations never finished: nothing was done yet
            self._fail(pending.notification, errno.EPERM, "shell/exec", "SUPERVISOR_ERROR",
                       f"{type(err).__name__}: {err}", started)
            return
        if kind == fastpath_exec.UNTRACEABLE:  # nothing answered, nothing recorded: decided afresh
            self._handle(pending.notification)
            return
        if gone:
            self.stats["gone"] += 1
        if kind:  # killed before it ran: on record after its permit
            self.stats["exec_changed"] += 1
            self._write_fast_records()
            args, _decision = self.fast.execs.record(pending.entry, self.session_id, pending.pid)
            call = self._call("shell/exec", {k: v for k, v in args.items() if k not in ("pid", "session")},
                              pending.pid)
            problem = self.fast.execs.problem(pending.entry, pending.pid, kind, err, seen, timeout)
            self._record(pending.notification, "execve", call, deny("EXEC_CHANGED", problem), started)

    def _program_of(self, host_path: str, args: dict) -> tuple[str, str | None]:
        """(program, sha256) of the file at ``host_path`` named as exec_arguments named ``args``."""
        program, digest, fd = self.exec_identity.program(host_path, args["path"], posixpath.basename(args["path"]))
        os.close(fd)
        return program, digest

    def _decide_with_freezer(self, notification, started, approved_call=None, approval=None) -> None:
        self._freezer_ready.wait(FREEZER_CHECK_TIMEOUT)
        if self.freezer is None:
            self._fail(notification, errno.EPERM, "shell/exec", "EXEC_FREEZE_UNAVAILABLE",
                       f"cannot freeze the agent for an exec decision: {self.freeze_problem}", started)
            return
        if approved_call is not None:
            self._decide_frozen(notification, started, approved_call=approved_call, approval=approval)
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
                seen: dict = {}
                call = self._call("shell/exec", exec_arguments(decoded, self.exec_identity, seen), notification.pid)
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
                # What the new image must be, read before the answer (an OSError here is a refusal).
                ran = exec_verify.FrozenExec(notification.pid, decoded, call.args, seen["root"]) \
                    if decision.permitted else None
                decision = self._record(notification, decoded["syscall"], call, decision, started)
                answered = True
                if not decision.permitted:
                    notify.send_error(self.listener, notification.id, errno.EPERM)
                    return call, None
                if notify.send_continue(self.listener, notification.id):
                    self.freezer.wait_exec_finished(notification.pid)  # kills the cgroup on timeout
                    self._check_frozen_exec(ran, notification, call, started)
                return call, None
            except (OSError, freeze.FreezeError) as err:
                if not answered:
                    code = "DECODE_ERROR" if isinstance(err, OSError) else "FREEZE_TIMEOUT"
                    self._fail(notification, getattr(err, "errno", None) or errno.EPERM, "shell/exec", code,
                               str(err), started)
                return None, None
            finally:
                self.freezer.thaw()

    def _check_frozen_exec(self, ran: "exec_verify.FrozenExec", notification, call: ToolCall, started: float) -> None:
        """Still frozen: the new image must be the decided one (exec_verify.FrozenExec), or it dies unrun."""
        try:
            ran.settle()
            problem = ran.difference()
        except freeze.FreezeError as err:  # an exec that never ends: killed, never thawed into
            problem = str(err)
        if problem:
            ran.kill()
            self.stats["exec_changed"] += 1
            self._record(notification, "execve", call, deny("EXEC_CHANGED", f"{problem}; killed before it ran"),
                         started)

    # -- decisions -----------------------------------------------------------------

    def _call(self, tool: str, args: dict, pid: int) -> ToolCall:
        full = dict(args, pid=pid, session=self.session_id)
        # A call id of its own gives each deferred call its own defer token (fpl-reference §12).
        return ToolCall(tool=tool, args=full, session_id=self.session_id, call_id=secrets.token_hex(8),
                        timestamp=time.time())

    def _decide(self, call: ToolCall) -> Decision:
        decision = self._decide_one(call)
        # What else the call amounts to is decided too (_implied_calls); the first of them that is
        # not permitted (a deny before a defer) answers for the call.
        also = [self._decide_one(self._call(tool, args, call.args.get("pid", 0))) for tool, args in _implied_calls(call)]
        refusals = [d for d in (decision, *also) if not d.permitted]
        refusals.sort(key=lambda d: d.effect is Effect.DEFER)
        return refusals[0] if refusals else decision

    def _decide_one(self, call: ToolCall) -> Decision:
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
        # An approver with answer() also says why (who approved, TOO_MANY_PENDING, expiry...).
        answer = getattr(self.approve, "answer", None)
        try:
            if answer is not None:
                result = answer(call, decision, self.approve_timeout)
                approved = isinstance(result, Decision) and result.effect is Effect.PERMIT
                code, reason = (result.reason_code, result.reason) if isinstance(result, Decision) else \
                    ("APPROVAL_ERROR", f"answer() returned {type(result).__name__}, not a Decision")
            else:
                approved = self.approve(call, decision, self.approve_timeout) is True
                code, reason = ("APPROVAL_GRANTED", f"approved ({decision.reason})") if approved else \
                    ("APPROVAL_DENIED", f"approval refused ({decision.reason})")
        except Exception as err:
            return _replace(decision, Effect.DENY, "APPROVAL_ERROR", f"approval failed: {type(err).__name__}: {err}")
        if approved and not notify.id_valid(self.listener, notification.id):
            # The task died while it waited: nothing may be done on its behalf (its pid may be reused).
            return _replace(decision, Effect.DENY, "TASK_GONE", "the task ended while it waited for approval")
        return _replace(decision, Effect.PERMIT if approved else Effect.DENY, code, reason)

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
            if self.fast is not None:  # what cannot be recorded here cannot be in C either
                self.fast.suspend()
            if decision.permitted:
                decision = _replace(decision, Effect.DENY, "AUDIT_WRITE_FAILED",
                                    f"the audit record could not be written ({decision.reason})")
                self._write_audit(notification, syscall, call, decision, started)
        self.stats["permitted" if decision.permitted else "denied"] += 1
        return decision

    def _drain_fast(self) -> None:
        while not self._done.wait(fastpath.DRAIN_INTERVAL):
            self._write_fast_records()

    def _write_fast_records(self) -> None:
        with self._fast_records_lock:  # the drain thread, and serve() once more at the end
            records: list[dict] = []
            try:
                records = self.fast.records(self.session_id)
                self._write_records(records)
            except Exception:  # fail closed: nothing more is answered where it cannot be recorded
                self.stats["audit_errors"] += 1
                self.fast.suspend()
            finally:
                self.fast.written(len(records))  # until now they counted as unrecorded

    def _write_records(self, records: list[dict]) -> None:
        for record in records:
            self.stats["permitted" if record["effect"] == Effect.PERMIT.value else "denied"] += 1
        if self.audit is None or not records:
            return
        try:
            audit_sink.write_all(self.audit, records)  # one commit for the lot where the sink batches
        except Exception:
            # From now on Python answers every call, and denies a permit it cannot record.
            self.stats["audit_errors"] += 1
            self.fast.suspend()

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


def _implied_calls(call: ToolCall) -> list[tuple[str, dict]]:
    """Calls a call amounts to besides itself: an exec runs its #! interpreters and the program
    the loader loads; a hard link or rename gives the file a new name, so whoever may not read
    or write it under the old name may not give it one; and it writes its destination (a new
    name, or a file it replaces). A rename deletes the old name; RENAME_EXCHANGE instead gives the
    destination's file the source's name. What a moved directory holds is decided when the
    rename is performed (_perform_rename). A symlink grants nothing (calls through it are decided on the file it names), but it is
    a file made at its own path: a write there."""
    if call.tool == "shell/exec":
        return [("shell/exec", _run_args(run, call.args)) for run in call.args.get("runs") or ()]
    if call.tool == "fs/link" and "target" in call.args:
        return [("fs/write", {"path": call.args.get("path"), "flags": [], "mode": None, "via": "symlink"})]
    if call.tool in ("fs/link", "fs/rename"):
        via = call.tool.split("/")[1]
        source = {"path": call.args.get("path"), "flags": [], "mode": None, "via": via}
        dest = {"path": call.args.get("dest"), "flags": [], "mode": None, "via": via}
        implied = [("fs/read", source), ("fs/write", source), ("fs/write", dest)]
        if call.tool == "fs/rename":  # the old name is gone: a delete of it, unless swapped back in
            implied.append(("fs/read", dest) if "RENAME_EXCHANGE" in (call.args.get("flags") or ())
                           else ("fs/delete", source))
        return implied
    if call.tool == "fs/write" and _open_reads(call.args.get("flags") or ()):
        return [("fs/read", {key: call.args.get(key) for key in ("path", "flags", "mode")})]
    return []


# An open that writes hands back a descriptor that also reads unless it is write-only; O_TMPFILE
# and O_CREAT|O_EXCL make a new file, with nothing in it to read (sandbox/_fsflags.py names).
READING_ACCESS = frozenset({"O_RDONLY", "O_RDWR", "O_ACCMODE"})


def _open_reads(flags) -> bool:
    names = set(flags)
    new_file = "O_TMPFILE" in names or {"O_CREAT", "O_EXCL"} <= names
    return bool(names & READING_ACCESS) and not new_file


def _run_args(run: dict, args: dict) -> dict:
    """The shell/exec arguments of a program an exec also runs (``args["runs"]``)."""
    return {"path": run["path"], "requested": run["path"], "argv": run["argv"], "cmd": command_line(run["program"], run["argv"], (run["path"],)),
            "program": run["program"], "cwd": args.get("cwd"), "via": run["via"],
            **({"sha256": run["sha256"]} if "sha256" in run else {})}


def _replace(decision: Decision, effect: Effect, reason_code: str, reason: str) -> Decision:
    return Decision(effect, rule_id=decision.rule_id, reason_code=reason_code, reason=reason,
                    policy_version=decision.policy_version, layer=decision.layer)


def _make_freezer(cgroup_dir: str | None, pidns_of: int | None = None):
    """The exec freezer (its self-test runs at its first freeze), or None and why (exec permits
    then fail closed)."""
    if not cgroup_dir:
        if pidns_of is None:
            return None, "no cgroup v2 directory and no agent pid namespace were given"
        try:
            return ptrace_freeze.PtraceFreezer(pidns_of), ""
        except Exception as err:  # fail closed: no freezer, exec permits denied
            return None, f"{type(err).__name__}: {err}"
    try:
        # The self-test (a helper process, ~10 ms) runs at the first freeze: execs that
        # exec_verify.VerifiedExec handles never need it.
        return freeze.CgroupFreezer(cgroup_dir, self_test_parent=os.path.dirname(os.path.abspath(cgroup_dir))), ""
    except Exception as err:  # any failure leaves exec decisions failing closed
        return None, f"{type(err).__name__}: {err}"


# Handlers by tool category (the part of a traced.py tool before the slash).
_HANDLERS = {"shell": Supervisor._handle_exec, "fs": Supervisor._handle_fs, "net": Supervisor._handle_net}
