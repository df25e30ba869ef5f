"""Repeated execs answered by the compiled receiver (sandbox/fastpath_c/exec.c).

When a policy's decision for ``shell/exec`` reads nothing but the call's own arguments
(``Engine.decision_keys``), an exec that Python decided under exec_verify.VerifiedExec (a
single-threaded holder that is not our child, execve of an ELF file that runs nothing else)
whose program was named without reading its content (a system program unchanged since the
sandbox started) is taught to C, PERMIT or DENY alike: keyed by the path exactly as the agent
passed it (absolute), the argv bytes and the working directory as /proc/PID/cwd reads, with what
VerifiedExec compares at the exec stop. A later exec with that key, of the same file (link as
the supervisor sees it, device, inode, size and times, still older than the program index), by
a single-threaded stranger, is answered by C: a denial at once (EPERM), a permit handed back to
the receiving thread as a PendingExec, which finishes it (seize, record, CONTINUE, check at
PTRACE_EVENT_EXEC, kill on any difference) under the supervisor's exec lock and fs gate.
Anything else is decided by Python afresh.

The exec lock and the gate live in C (ExecLock, ExecGate), so the receiver finishes a permit on
the spot when both are free, without Python: it waits for the exec stop at most WAIT_HERE
seconds itself (the stall watchdog sees only Python's handlers), then hands the rest to Python
(still holding the locks); when they are taken, Python finishes the exec under them as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import stat

from policy.decision import Decision, Effect
from sandbox import notify
from sandbox._fastpath_entries import Entries
from sandbox.exec_identity import is_loader
from sandbox.exec_verify import UNVERIFIABLE_PREFIXES, VerifiedExec, _inside
from sandbox.freeze import EXEC_TIMEOUT, FreezeError

# What an exec's arguments hold besides pid and session (sandbox/decode/exec.py, supervisor._run_args).
EXEC_KEYS = frozenset({"path", "requested", "argv", "cmd", "program", "cwd", "sha256", "anonymous", "runs", "via"})
MAX_EXECS = 1024  # distinct (path, argv, cwd) decisions remembered
MAX_EXEC_RECORDS = 4 * MAX_EXECS  # distinct records kept for them over a run
MAX_EXEC_BYTES = 16 << 20  # what those records keep (templates, argv), all together
# What exec.c can learn and later find (sandbox/fastpath_c/fastpath.h); Python learns nothing larger.
PATH_LIMIT = 4096  # bytes of the path, cwd and executable links, each shorter than this
ARGV_LIMIT = 256  # arguments
ARGV_BYTES = 65536  # bytes of argv, each argument with its NUL
WAIT_HERE = 0.005  # seconds the receiver waits for an exec stop itself (under supervisor.STALL)
GATE_TIMEOUT = 5.0  # seconds an exec decision waits for filesystem operations (as freeze.Gate)

# exec.c's enum exec_change
UNTRACEABLE, CHANGED_EXECUTABLE, CHANGED_ARGV, CHANGED_PATH, CHANGED_CWD, CHANGED_FILE, CHANGED_REFUSED, \
    CHANGED_UNINSPECTABLE, CHANGED_TIMEOUT, CHANGED_UNDETACHABLE = range(1, 11)


class PendingExec:
    """A permitted exec C found repeated, for the thread that received it (the tracer) to finish:
    wholly (``locks_taken`` False: under the exec lock and gate it takes), or what C left of it
    under the locks C took (its stop, when ``waiting``), or only its record (``result``)."""

    __slots__ = ("native", "job", "entry", "raw", "waiting", "result")

    def __init__(self, native, job: tuple, entry: int, raw: tuple, waiting: bool = False,
                 result: tuple | None = None):
        self.native, self.job, self.entry, self.raw = native, job, entry, raw
        self.waiting, self.result = waiting, result

    @property
    def locks_taken(self) -> bool:
        return self.waiting or self.result is not None

    @property
    def pid(self) -> int:
        return self.job[1]

    @property
    def notification(self) -> notify.Notification:
        """The notification itself (for Python to decide afresh, or to answer on a failure)."""
        return notify.Notification(*self.raw[:6], tuple(self.raw[6]))

    def finish(self, timeout: float) -> tuple[int, int, bool, bytes]:
        """(what changed or 0, errno, whether the task was gone, what was seen); GIL released."""
        if self.result is not None:
            kind, err, gone, seen = self.result
        elif self.waiting:
            kind, err, gone, seen = self.native.finish_waiting_exec(timeout)
        else:
            kind, err, gone, seen = self.native.finish_exec(*self.job, timeout)
        return kind, err, bool(gone), seen


class ExecLock:
    """The supervisor's exec lock (one exec decision at a time), shared with the compiled receiver."""

    __slots__ = ("native",)

    def __init__(self, native):
        self.native = native

    def __enter__(self):
        self.native.exec_lock()
        return self

    def __exit__(self, *_exc) -> None:
        self.native.exec_unlock()


class ExecGate:
    """freeze.Gate shared with the compiled receiver: filesystem operations performed for the agent
    hold it shared, an exec decision exclusive (waiting at most ``timeout`` seconds)."""

    __slots__ = ("native", "timeout")

    def __init__(self, native, timeout: float = GATE_TIMEOUT):
        self.native, self.timeout = native, timeout

    def enter_shared(self) -> None:
        self.native.gate_enter_shared()

    def leave_shared(self) -> None:
        self.native.gate_leave_shared()

    @contextlib.contextmanager
    def exclusive(self):
        if not self.native.gate_enter_exclusive(self.timeout):
            raise FreezeError(f"filesystem operations still running after {self.timeout:.0f}s")
        try:
            yield
        finally:
            self.native.gate_leave_exclusive()


class FastExecs:
    """The exec decisions a compiled receiver repeats, and their audit records."""

    def __init__(self, native, failed_evaluation: frozenset[str], programs_started: int,
                 limit: int = MAX_EXEC_RECORDS, max_bytes: int = MAX_EXEC_BYTES):
        self.native, self.programs_started = native, programs_started
        self._failed = failed_evaluation
        native.configure_execs(EXEC_TIMEOUT, WAIT_HERE)
        self.lock, self.gate = ExecLock(native), ExecGate(native)  # the supervisor's, from then on
        self._entries = Entries(limit, max_bytes)  # -> (args template, decision, verifier)

    def learn(self, args: dict, verified: VerifiedExec, decision: Decision) -> bool:
        """Repeat ``decision`` (recorded, neither deferred nor replaced) for later execs like this one."""
        info = verified.identity[2]
        if decision.effect not in (Effect.PERMIT, Effect.DENY) or decision.reason_code in self._failed:
            return False
        if args.get("runs") or args.get("anonymous") or "sha256" in args or is_loader(args.get("program", "")):
            return False  # a script, the loader, a file named by its content: decided afresh each time
        path, cwd, exe = verified.execfn, os.fsencode(verified.cwd_link), os.fsencode(verified.exe_link)
        if not path.startswith(b"/") or os.fsdecode(path).startswith(UNVERIFIABLE_PREFIXES) or info is None or \
                not stat.S_ISREG(info.st_mode) or info.st_ctime_ns >= self.programs_started:
            return False
        if not c_can_learn(path, verified.cmdline, cwd, exe):
            return False  # an entry C would never answer: its template and argv would only take memory
        template = {name: value for name, value in args.items() if name not in ("pid", "session")}
        shown = repr((path, verified.cmdline, cwd, exe, sorted(template.items()), decision.effect, decision.rule_id,
                      decision.reason_code, decision.reason, decision.policy_version))
        # Keyed by its digest, sized by its text: about what the template and the verifier keep.
        key = hashlib.sha256(shown.encode("utf-8", "backslashreplace")).digest()
        entry = self._entries.number(key, (template, decision, verified), len(shown))
        if entry is None:
            return False
        file_key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        return self.native.remember_exec(path, verified.cmdline, cwd, exe, entry, decision.effect is Effect.DENY,
                                         file_key)

    def record(self, entry: int, session_id: str, pid: int) -> tuple[dict, Decision]:
        """(args, decision) of an answered exec's entry."""
        template, decision, _verified = self._entries[entry]
        return dict(template, pid=pid, session=session_id), decision

    def problem(self, entry: int, pid: int, kind: int, err: int, seen: bytes, timeout: float) -> str:
        """Why a finished exec was killed, worded as exec_verify.VerifiedExec words it."""
        _template, _decision, verified = self._entries[entry]
        if kind == CHANGED_TIMEOUT:
            return f"pid {pid}: exec did not finish within {timeout:.1f}s; killed"
        if kind == CHANGED_UNDETACHABLE:
            return f"pid {pid}: cannot detach ({os.strerror(err)}); killed"
        if kind in (CHANGED_EXECUTABLE, CHANGED_CWD):
            what, decided = ("executable", verified.exe_link) if kind == CHANGED_EXECUTABLE else \
                ("cwd", verified.cwd_link)
            problem = f"{what} {_inside(verified.root, os.fsdecode(seen))!r} is not the decided " \
                      f"{_inside(verified.root, decided)!r}"
        elif kind in (CHANGED_ARGV, CHANGED_PATH):
            what, decided = ("argv", verified.cmdline) if kind == CHANGED_ARGV else ("path", verified.execfn)
            problem = f"{what} {seen!r} is not the decided {decided!r}"
        elif kind == CHANGED_FILE:
            problem = f"the executed file is not the decided {posixpath.basename(verified.exe)!r} " \
                      "(its device, inode, size or times differ)"
        elif kind == CHANGED_REFUSED:
            problem = "an exec although it was refused"
        else:
            problem = f"the new image cannot be inspected ({os.strerror(err)})"
        return f"pid {pid}: {problem}; killed before it ran"


def c_can_learn(path: bytes, cmdline: bytes, cwd: bytes, exe: bytes) -> bool:
    """Whether exec.c takes this exec into its table and can read it back from a later call."""
    return 0 < len(path) < PATH_LIMIT and 0 < len(cmdline) <= ARGV_BYTES and \
        cmdline.count(b"\0") <= ARGV_LIMIT and len(cwd) < PATH_LIMIT and len(exe) < PATH_LIMIT
