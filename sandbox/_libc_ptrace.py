"""ptrace(2) requests and wait status decoding for the stop-all freezer.

Raw syscalls through ``sandbox._libc.syscall`` (errno-checked, the error names the call),
so glibc's PEEK special-casing never applies; only non-PEEK requests are used.
"""

from __future__ import annotations

import os

from sandbox import _libc

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207

PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_EXITKILL = 0x100000  # the agent dies with its tracer instead of running on unfrozen

PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_STOP = 128

WALL = 0x40000000  # __WALL: threads and processes alike (os does not export it)


def seize(tid: int, options: int) -> None:
    _libc.syscall("ptrace", PTRACE_SEIZE, tid, 0, options)


def interrupt(tid: int) -> None:
    _libc.syscall("ptrace", PTRACE_INTERRUPT, tid, 0, 0)


def detach(tid: int, signum: int = 0) -> None:
    """Let ``tid`` run again, delivering ``signum`` (a signal its stop withheld) if non-zero."""
    _libc.syscall("ptrace", PTRACE_DETACH, tid, 0, signum)


def poll_wait(tid: int) -> int | None:
    """The next wait status of tracee ``tid`` without blocking: None when it has nothing
    to report; raises ChildProcessError when it is no longer ours to wait for."""
    pid, status = os.waitpid(tid, WALL | os.WNOHANG)
    return status if pid else None


def stop_event(status: int) -> int:
    """The PTRACE_EVENT_* of a ptrace stop (0 for a signal-delivery stop)."""
    return (status >> 16) & 0xFFFF
