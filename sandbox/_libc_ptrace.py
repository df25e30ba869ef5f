"""ptrace(2) requests and wait status decoding for the stop-all freezer and VerifiedExec.

Raw ptrace system calls (errno-checked, the error names the call), so glibc's PEEK
special-casing never applies; only non-PEEK requests are used. The call is bound once
with fixed argument types: every verified exec makes three of them.
"""

from __future__ import annotations

import ctypes
import os

from sandbox import _libc

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
REQUEST_NAMES = {PTRACE_DETACH: "PTRACE_DETACH", PTRACE_SEIZE: "PTRACE_SEIZE", PTRACE_INTERRUPT: "PTRACE_INTERRUPT"}

PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_EXITKILL = 0x100000  # the agent dies with its tracer instead of running on unfrozen

PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_STOP = 128

WALL = 0x40000000  # __WALL: threads and processes alike (os does not export it)

_syscall = ctypes.CDLL(None, use_errno=True).syscall  # our own binding: its argtypes are ours
_syscall.restype = ctypes.c_long
_syscall.argtypes = [ctypes.c_long] * 5
_NR_PTRACE = _libc.syscall_number("ptrace")


def _ptrace(request: int, tid: int, data: int) -> None:
    if _syscall(_NR_PTRACE, request, tid, 0, data) == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({REQUEST_NAMES[request]}, {tid}, 0, {data}): {os.strerror(err)}")


def seize(tid: int, options: int) -> None:
    _ptrace(PTRACE_SEIZE, tid, options)


def interrupt(tid: int) -> None:
    _ptrace(PTRACE_INTERRUPT, tid, 0)


def detach(tid: int, signum: int = 0) -> None:
    """Let ``tid`` run again, delivering ``signum`` (a signal its stop withheld) if non-zero."""
    _ptrace(PTRACE_DETACH, tid, signum)


def poll_wait(tid: int) -> int | None:
    """The next wait status of tracee ``tid`` without blocking: None when it has nothing
    to report; raises ChildProcessError when it is no longer ours to wait for."""
    pid, status = os.waitpid(tid, WALL | os.WNOHANG)
    return status if pid else None


def stop_event(status: int) -> int:
    """The PTRACE_EVENT_* of a ptrace stop (0 for a signal-delivery stop)."""
    return (status >> 16) & 0xFFFF
