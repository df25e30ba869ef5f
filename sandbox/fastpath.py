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
"""

from __future__ import annotations

import os
import platform
import threading
from typing import Callable

from policy.decision import Decision, Effect
from sandbox import _fsflags as ff
from sandbox import notify, seccomp
from sandbox._fscreds import _ours
from sandbox._libc import syscall_number
from sandbox.bpf import AUDIT_ARCH

try:
    from sandbox import _fastpath
except ImportError:  # built without a C compiler: every call is answered in Python
    _fastpath = None

DRAIN_INTERVAL = 0.02  # seconds between writes of the fast path's records
CACHEABLE_KEYS = frozenset({"path", "flags", "mode"})  # what an open's arguments hold besides pid and session
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
    """Whether a supervisor would answer repeated reads in C (then the filter should watch
    credential calls): the extension is built, the caller accepts records written just after
    the answer or keeps none, and the policy's fs/read decisions read only path, flags and mode."""
    if _fastpath is None or decision_keys is None or (audited and not fast_repeats):
        return False
    try:
        keys = decision_keys("fs/read")
    except Exception:  # no analysis, no reuse
        return False
    return keys is not None and keys <= CACHEABLE_KEYS


class FastOpens:
    """The compiled receiver and the decisions it repeats; one per supervisor."""

    def __init__(self, listener: int, stop_fd: int, credentials_watched: bool):
        fsuid, fsgid, groups, caps = _ours()
        # Watched credential calls let C remember that a task acts as we do; unwatched, it reads
        # the task's /proc status on every call.
        watched = sorted(seccomp.credential_numbers()) if credentials_watched else []
        self.native = _fastpath.FastPath(
            listener=listener, stop_fd=stop_fd, nr_open=_number("open"), nr_openat=_number("openat"),
            arch=AUDIT_ARCH[platform.machine()], valid_flags=ff.VALID_OPEN_FLAGS, fsuid=fsuid, fsgid=fsgid,
            groups=list(groups), caps=caps, record=True, watched=watched,
            entries=MAX_ENTRIES, ring=MAX_UNRECORDED)
        self._entries: list[tuple[dict, Decision]] = []
        self._index: dict[tuple[bytes, int, Effect], int] = {}
        self._lock = threading.Lock()
        self._syscalls = {_number(name): name for name in _OPENS}

    @classmethod
    def create(cls, listener: int, stop_fd: int, decision_keys: Callable[[str], frozenset | None] | None,
               credentials_watched: bool = False):
        """A FastOpens when the extension is built and the policy's fs/read decisions read only
        path, flags and mode; else None (Python answers everything). ``credentials_watched``: the
        filter was built with watch_credentials."""
        if not wanted(decision_keys, False, True):
            return None
        try:
            return cls(listener, stop_fd, credentials_watched)
        except (ValueError, OSError, MemoryError):  # e.g. more supplementary groups than it compares
            return None

    def receive(self) -> notify.Notification | None:
        """The next notification Python must answer (see the module doc)."""
        raw = self.native.receive()
        return None if raw is None else notify.Notification(*raw[:6], tuple(raw[6]))

    def learn(self, decoded: dict, tool: str, args: dict, decision: Decision) -> None:
        """Repeat ``decision`` for later opens like this one, when it is one the fast path repeats."""
        if tool != "fs/read" or decoded.get("syscall") not in _OPENS:
            return
        if decision.effect not in (Effect.PERMIT, Effect.DENY) or decision.reason_code in FAILED_EVALUATION:
            return
        flags = decoded.get("flags", 0) & ff.VALID_OPEN_FLAGS
        if flags & (os.O_PATH | os.O_CREAT) or ff.open_writes(flags) or ff.is_tmpfile(flags):
            return
        path = os.fsencode(args["path"])
        key = (path, flags, decision.effect)
        with self._lock:
            entry = self._index.get(key)
            if entry is None:
                if len(self._entries) >= MAX_ENTRIES:
                    return
                entry = self._index[key] = len(self._entries)
                template = {name: value for name, value in args.items() if name not in ("pid", "session")}
                self._entries.append((template, decision))
        self.native.remember(path, flags, entry, decision.effect is Effect.DENY)

    def records(self, session_id: str) -> list[dict]:
        """Audit records of the calls answered since the last call, oldest first."""
        out = []
        for entry, pid, nr, _result, wall_ns, latency_ns in self.native.drain():
            template, decision = self._entries[entry]
            out.append({
                "time": wall_ns / 1e9, "session": session_id, "pid": pid, "syscall": self._syscalls.get(nr, str(nr)),
                "tool": "fs/read", "args": dict(template, pid=pid, session=session_id),
                "effect": decision.effect.value, "rule_id": decision.rule_id, "reason_code": decision.reason_code,
                "reason": decision.reason, "policy_version": decision.policy_version,
                "latency_us": round(latency_ns / 1000),
            })
        return out

    def suspend(self) -> None:
        """Answer nothing more in C (the records cannot be written): Python answers everything."""
        self.native.suspend()

    def stats(self) -> dict[str, int]:
        return self.native.stats()

    def close(self) -> None:
        self.native.close()
