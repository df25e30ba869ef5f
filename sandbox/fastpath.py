"""Repeated read-only opens answered by compiled code (sandbox/fastpath_c/), the rest by Python.

When a policy's decision for ``fs/read`` reads nothing but the call's path, flags and mode
(``Engine.decision_keys``), a read-only open of a path already decided is decided the same way
again: the supervisor hands each such PERMIT or DENY to the compiled receiver (``learn``), which
from then on answers opens of that exact plain path with those exact flags itself: read once,
resolved in the agent's root without following any symlink, performed as sandbox.fsops would,
injected with ADDFD. Anything else, including every first open of a path, comes back to
Python as a Notification. Nothing is ever CONTINUEd.

Each answer becomes an audit record like Python's, written by ``records()`` shortly after (the
supervisor drains every DRAIN_INTERVAL seconds and when it stops). So with an audit sink the
fast path is used only when the caller accepts that repeated decisions are recorded after the
answer (``run --fast-repeats``, docs/run.md); a decision seen for the first time always goes
through Python and is on record before it takes effect.

Repeated connects are answered the same way (sandbox/fastpath_net.py), repeated execs too
(sandbox/fastpath_exec.py).
"""

from __future__ import annotations

import os
import platform
from typing import Callable

from policy.decision import Decision, Effect
from sandbox import _fsflags as ff
from sandbox import capabilities, fastpath_exec, fastpath_net, notify, placement, seccomp
from sandbox._fastpath_entries import Entries
from sandbox._fscreds import _ours
from sandbox._libc import syscall_number
from sandbox.bpf import AUDIT_ARCH
from sandbox.netops import NetContext
from sandbox.traced import refusal_errno

try:
    from sandbox import _fastpath
except ImportError:  # built without a C compiler: every call is answered in Python
    _fastpath = None

DRAIN_INTERVAL = 0.02  # seconds between writes of the fast path's records
CACHEABLE_KEYS = frozenset({"path", "flags", "mode"})  # what an open's arguments hold besides pid and session
# tool -> the arguments its decision may read for the compiled receiver to repeat it
REPEATABLE_KEYS = {"fs/read": CACHEABLE_KEYS, "net/connect": fastpath_net.CONNECT_KEYS,
                   "shell/exec": fastpath_exec.EXEC_KEYS}
MAX_ENTRIES = 4096  # distinct (path, flags) decisions remembered
# Answers whose records are not written yet; beyond it calls go to Python (bounds what a killed
# launcher can lose, docs/audit.md).
MAX_UNRECORDED = 1024
# Denials that say evaluation failed (a timeout under load, an engine fault), not what the policy
# says of the call: never repeated.
FAILED_EVALUATION = frozenset({"ENGINE_ERROR", "DECIDE_ERROR", "EXPR_RUNTIME_ERROR", "POLICY_EVAL_TIMEOUT"})
_OPENS = ("open", "openat")


def available() -> bool:
    return _fastpath is not None


def _number(name: str) -> int:
    try:
        return syscall_number(name)
    except KeyError:  # aarch64 has no open(2)
        return -1


def wanted(decision_keys: Callable[[str], frozenset | None] | None, audited: bool, fast_repeats: bool) -> bool:
    """Whether a supervisor would answer repeated calls in C (then the filter should watch
    credential calls): the extension is built, the caller accepts records written just after
    the answer or keeps none, and the policy's fs/read decisions read only path, flags and mode
    or its net/connect decisions only the address (sandbox/fastpath_net.py)."""
    if _fastpath is None or decision_keys is None or (audited and not fast_repeats):
        return False
    return any(repeatable(decision_keys, tool) for tool in REPEATABLE_KEYS)


def repeatable(decision_keys, tool: str) -> bool:
    """Whether the policy's decisions for ``tool`` read only the call's own arguments that the
    compiled receiver keys them by (Engine.decision_keys)."""
    if decision_keys is None:
        return False
    try:
        keys = decision_keys(tool)
    except Exception:  # no analysis, no reuse
        return False
    return keys is not None and keys <= REPEATABLE_KEYS[tool]


# The agent's thread stays on the receiver's CPU while a file is handed to it (fastpath_c/cpu_hold.c):
# a same-CPU context switch instead of waking the other, possibly halted, CPU. None: unless idle
# vCPUs poll before halting, where it costs more than it saves (placement.idle_cpus_poll); True or
# False forces it (benchmarks, tests).
HOLD_AGENT_CPU: bool | None = None


def hold_agent_cpu() -> bool:
    return HOLD_AGENT_CPU if HOLD_AGENT_CPU is not None else not placement.idle_cpus_poll()


def answer_with_fd(listener: int, nid: int, source_fd: int, cloexec: bool, tid: int, hold: bool) -> int:
    """notify.addfd_send, with the agent's thread ``tid`` held on our CPU for the hand-over when ``hold``."""
    if _fastpath is None:
        return notify.addfd_send(listener, nid, source_fd, cloexec)
    return _fastpath.answer_with_fd(listener, nid, source_fd, cloexec, tid, hold)


class FastOpens:
    """The compiled receiver and the decisions it repeats; one per supervisor."""

    def __init__(self, listener: int, stop_fd: int, credentials_watched: bool, opens: bool = True,
                 net: NetContext | None = None, programs_started: int | None = None,
                 agent_dropped: list[int] | None = None):
        fsuid, fsgid, groups, caps = _ours()
        # A root agent gave some capabilities up: C receives (and opens) without them, so that it
        # acts exactly as such a task would, and answers for it (it answers only for tasks holding
        # every capability it has). Python's handling keeps ours: acting_as switches per call.
        self._agent_dropped = list(agent_dropped or ())
        caps &= ~capabilities.mask_of(self._agent_dropped)
        # Watched credential calls let C remember that a task acts as we do; unwatched, it reads
        # the task's /proc status on every call.
        watched = sorted(seccomp.credential_numbers()) if credentials_watched else []
        self.native = _fastpath.FastPath(
            listener=listener, stop_fd=stop_fd, nr_open=_number("open"), nr_openat=_number("openat"),
            arch=AUDIT_ARCH[platform.machine()], valid_flags=ff.VALID_OPEN_FLAGS, fsuid=fsuid, fsgid=fsgid,
            groups=list(groups), caps=caps, record=True, watched=watched,
            entries=MAX_ENTRIES, ring=MAX_UNRECORDED, nr_connect=_number("connect") if net is not None else -1,
            nr_socket=_number("socket") if net is not None else -1,
            connects=fastpath_net.MAX_CONNECTS, nr_execve=_number("execve") if programs_started else -1,
            execs=fastpath_exec.MAX_EXECS, programs_started=programs_started or 0)
        self.opens = opens
        self._entries = Entries(MAX_ENTRIES)  # (path, flags, effect) -> (args template, decision)
        self._syscalls = {_number(name): name for name in _OPENS}
        # net: connects are repeated too (None: the policy or the network context rules it out)
        self.connects = None if net is None else fastpath_net.FastConnects(
            self.native, net, refusal_errno("net/connect"), FAILED_EVALUATION, fastpath_net.MAX_CONNECT_RECORDS)
        self._nr_connect = _number("connect")
        # programs_started: the exec program index's start (None: execs are not repeated)
        self.execs = None if not programs_started else fastpath_exec.FastExecs(
            self.native, FAILED_EVALUATION, programs_started)
        self._nr_execve = _number("execve")

    @classmethod
    def create(cls, listener: int, stop_fd: int, decision_keys: Callable[[str], frozenset | None] | None,
               credentials_watched: bool = False, net: NetContext | None = None,
               programs_started: int | None = None, agent_dropped: list[int] | None = None):
        """A FastOpens when the extension is built and the policy's fs/read decisions read only
        path, flags and mode, or (given ``net``) its net/connect decisions only the address and
        the network context allows repeating them, or (given ``programs_started``, the exec program
        index's start) its shell/exec decisions only the call's own arguments; else None (Python
        answers everything). ``credentials_watched``: the filter was built with watch_credentials."""
        if not wanted(decision_keys, False, True):
            return None
        opens = repeatable(decision_keys, "fs/read")
        if programs_started is not None and not repeatable(decision_keys, "shell/exec"):
            programs_started = None
        if net is not None and not (repeatable(decision_keys, "net/connect") and net.intercept is None
                                    and net.names_followed):
            net = None
        if not opens and net is None and programs_started is None:
            return None
        try:
            return cls(listener, stop_fd, credentials_watched, opens, net, programs_started, agent_dropped)
        except (ValueError, OSError, MemoryError):  # e.g. more supplementary groups than it compares
            return None

    def receive(self) -> notify.Notification | fastpath_net.PendingConnect | fastpath_exec.PendingExec | None:
        """The next notification Python must answer (see the module doc), or a decided TCP
        connect for the receiving thread to perform (it may wait for long: fastpath_net)."""
        with capabilities.without(self._agent_dropped):
            raw = self.native.receive()
        if raw is None:
            return None
        if type(raw[0]) is tuple:  # a permitted exec: (job, entry, notification, waiting, result)
            return fastpath_exec.PendingExec(self.native, *raw)
        if len(raw) == 3:
            return fastpath_net.PendingConnect(self.native, *raw)
        return notify.Notification(*raw[:6], tuple(raw[6]))

    def learn(self, decoded: dict, tool: str, args: dict, decision: Decision) -> None:
        """Repeat ``decision`` for later opens like this one, when it is one the fast path repeats."""
        if not self.opens or tool != "fs/read" or decoded.get("syscall") not in _OPENS:
            return
        if decision.effect not in (Effect.PERMIT, Effect.DENY) or decision.reason_code in FAILED_EVALUATION:
            return
        flags = decoded.get("flags", 0) & ff.VALID_OPEN_FLAGS
        if flags & (os.O_PATH | os.O_CREAT) or ff.open_writes(flags) or ff.is_tmpfile(flags):
            return
        path = os.fsencode(args["path"])
        template = {name: value for name, value in args.items() if name not in ("pid", "session")}
        entry = self._entries.number((path, flags, decision.effect), (template, decision))
        if entry is None:
            return
        self.native.remember(path, flags, entry, decision.effect is Effect.DENY)

    def records(self, session_id: str) -> list[dict]:
        """Audit records of the calls answered since the last call, oldest first. They keep their
        places in the ring (MAX_UNRECORDED) until ``written(len(records))``."""
        out = []
        for entry, pid, nr, _result, wall_ns, latency_ns in self.native.drain():
            if nr == self._nr_connect and self.connects is not None:
                syscall, tool = "connect", "net/connect"
                args, decision = self.connects.record(entry, session_id, pid)
            elif nr == self._nr_execve and self.execs is not None:
                syscall, tool = "execve", "shell/exec"
                args, decision = self.execs.record(entry, session_id, pid)
            else:
                syscall, tool = self._syscalls.get(nr, str(nr)), "fs/read"
                template, decision = self._entries[entry]
                args = dict(template, pid=pid, session=session_id)
            out.append({
                "time": wall_ns / 1e9, "session": session_id, "pid": pid, "syscall": syscall,
                "tool": tool, "args": args,
                "effect": decision.effect.value, "rule_id": decision.rule_id, "reason_code": decision.reason_code,
                "reason": decision.reason, "policy_version": decision.policy_version,
                "latency_us": round(latency_ns / 1000),
            })
        return out

    def written(self, count: int) -> None:
        """``count`` drained records are on record, or lost: their places in the ring free."""
        self.native.written(count)

    def suspend(self) -> None:
        """Answer nothing more in C (the records cannot be written): Python answers everything."""
        self.native.suspend()

    def stats(self) -> dict[str, int]:
        return self.native.stats()

    def close(self) -> None:
        if self.connects is not None:
            self.connects.close()
        self.native.close()
