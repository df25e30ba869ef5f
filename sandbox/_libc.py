"""The core ctypes layer: errno-checked raw syscalls, process_vm_readv, seccomp(2), prctl.

This is one of the few modules allowed to use ctypes. Every wrapper raises
``OSError(errno, "call(args): strerror")`` so errors name the call, then the errno.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading

from sandbox._syscalls_generated import SYSCALLS

ARCH = {"x86_64": "x86_64", "aarch64": "aarch64"}.get(platform.machine(), platform.machine())

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.prctl.restype = ctypes.c_int
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39

SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV = 1 << 5


def syscall_number(name: str) -> int:
    """The native number of syscall ``name`` (KeyError when this arch lacks it)."""
    return SYSCALLS[name][ARCH]


def _raise(call: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{call}: {os.strerror(err)}")


def syscall(name: str, *args: int | ctypes._SimpleCData | ctypes._Pointer) -> int:
    """Raw ``syscall(2)`` by name; returns the result or raises OSError naming the call."""
    cargs = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    result = _libc.syscall(ctypes.c_long(syscall_number(name)), *cargs)
    if result == -1:
        shown = ", ".join(str(a) if isinstance(a, int) else "<ptr>" for a in args)
        _raise(f"{name}({shown})")
    return result


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_readv.argtypes = [
    ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.c_ulong,
]


class _ReadBuffers(threading.local):
    """Per-thread iovecs and a page buffer, so a read allocates no ctypes objects."""

    def __init__(self):
        self.buffer = ctypes.create_string_buffer(READ_CHUNK)
        self.local = _IoVec(ctypes.cast(self.buffer, ctypes.c_void_p), 0)
        self.remote = _IoVec(None, 0)
        self.local_ref, self.remote_ref = ctypes.byref(self.local), ctypes.byref(self.remote)


READ_CHUNK = 1 << 16
_read_buffers = _ReadBuffers()


def process_vm_readv(pid: int, address: int, length: int) -> bytes:
    """Copy ``length`` (<= 64 KiB) bytes at ``address`` in ``pid``; may return fewer at a
    mapping end. The kernel never splits one remote iovec, so callers keep each read
    inside one page."""
    if length > READ_CHUNK:
        raise ValueError(f"process_vm_readv: {length} bytes exceeds the {READ_CHUNK}-byte chunk")
    bufs = _read_buffers
    bufs.local.len = bufs.remote.len = length
    bufs.remote.base = address
    got = _libc.process_vm_readv(pid, bufs.local_ref, 1, bufs.remote_ref, 1, 0)
    if got < 0:
        _raise(f"process_vm_readv(pid={pid}, addr={address:#x}, len={length})")
    return ctypes.string_at(bufs.buffer, got)


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def seccomp_set_mode_filter(program: bytes, flags: int) -> int:
    """Load a classic BPF program with ``seccomp(SECCOMP_SET_MODE_FILTER, flags)``.

    Returns the listener fd when NEW_LISTENER is in ``flags``, else 0."""
    if len(program) % 8 or not program:
        raise ValueError(f"seccomp program must be a non-empty multiple of 8 bytes, got {len(program)}")
    count = len(program) // 8
    insns = (_SockFilter * count).from_buffer_copy(program)
    prog = _SockFprog(count, insns)
    return syscall("seccomp", SECCOMP_SET_MODE_FILTER, flags, ctypes.byref(prog))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    result = _libc.prctl(option, arg2, arg3, arg4, arg5)
    if result == -1:
        _raise(f"prctl({option}, {arg2})")
    return result


def set_no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: required before an unprivileged filter load, and setuid
    binaries can then never gain privileges the filter did not foresee."""
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def no_new_privs() -> bool:
    return prctl(PR_GET_NO_NEW_PRIVS) == 1


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """Duplicate ``target_fd`` of the process behind ``pidfd`` into this process."""
    return syscall("pidfd_getfd", pidfd, target_fd, 0)
