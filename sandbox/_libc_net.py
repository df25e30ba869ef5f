"""ctypes for the network calls the supervisor performs on an agent's behalf.

Addresses are passed as the raw ``struct sockaddr`` bytes the supervisor built from a
decided address (Python's socket methods would re-parse them by the socket's family and
refuse, say, an IPv4 address on a dual-stack IPv6 socket, which the kernel accepts).
Every call releases the GIL (ctypes does for CDLL functions), so a blocking connect holds
one supervisor thread, never the others.
"""

from __future__ import annotations

import ctypes
import os

from sandbox._libc import syscall_number

_libc = ctypes.CDLL(None, use_errno=True)
PIDFD_THREAD = os.O_EXCL  # pidfd_open(2): the pid names a thread, not only a thread-group leader
_PIDFD_GETFD = syscall_number("pidfd_getfd")
# This module's own CDLL: the prototype set here binds no other module's syscall().
_syscall3 = _libc.syscall
_syscall3.restype = ctypes.c_long
_syscall3.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_int, ctypes.c_uint]


def _check(result: int, call: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{call}: {os.strerror(err)}")
    return result


def pidfd_open_task(tid: int) -> int:
    """A pidfd for task ``tid`` (any thread: PIDFD_THREAD, Linux 6.9+)."""
    try:
        return os.pidfd_open(tid, PIDFD_THREAD)
    except OSError as err:
        if err.errno != 22:  # EINVAL: a kernel without PIDFD_THREAD; leaders still work
            raise
        return os.pidfd_open(tid)


def pidfd_getfd(pidfd: int, target_fd: int) -> int:
    """Our own duplicate (same open file description) of the task's fd ``target_fd``, close-on-exec."""
    return _check(_syscall3(_PIDFD_GETFD, pidfd, target_fd, 0), f"pidfd_getfd({pidfd}, {target_fd}, 0)")


_libc.connect.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.bind.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.sendto.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_char_p,
                         ctypes.c_uint32]
_libc.sendto.restype = ctypes.c_ssize_t


def connect(fd: int, address: bytes) -> None:
    _check(_libc.connect(fd, address, len(address)), "connect")


def bind(fd: int, address: bytes) -> None:
    _check(_libc.bind(fd, address, len(address)), "bind")


def sendto(fd: int, data: bytes, flags: int, address: bytes | None) -> int:
    """send(2) when ``address`` is None, else sendto(2); returns the bytes sent."""
    return _check(_libc.sendto(fd, data, len(data), flags, address, len(address) if address else 0), "sendto")


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_char_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(_IoVec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_char_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


_libc.sendmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_MsgHdr), ctypes.c_int]
_libc.sendmsg.restype = ctypes.c_ssize_t


def sendmsg(fd: int, address: bytes | None, data: bytes, control: bytes, flags: int) -> int:
    """sendmsg(2) of one buffer with ``control`` (cmsg bytes, fds already ours); bytes sent."""
    vec = _IoVec(data, len(data))
    header = _MsgHdr(address, len(address) if address else 0, ctypes.pointer(vec), 1,
                     control or None, len(control), 0)
    return _check(_libc.sendmsg(fd, ctypes.byref(header), flags), "sendmsg")


_libc.process_vm_writev.restype = ctypes.c_ssize_t


class _RemoteVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def write_u32(pid: int, address: int, value: int) -> None:
    """Store ``value`` at ``address`` in task ``pid`` (sendmmsg's msg_len, which the kernel would write)."""
    data = ctypes.c_uint32(value)
    local = _RemoteVec(ctypes.cast(ctypes.byref(data), ctypes.c_void_p), 4)
    remote = _RemoteVec(address, 4)
    result = _libc.process_vm_writev(ctypes.c_int(pid), ctypes.byref(local), ctypes.c_ulong(1),
                                     ctypes.byref(remote), ctypes.c_ulong(1), ctypes.c_ulong(0))
    if _check(result, "process_vm_writev") != 4:
        raise OSError(14, f"process_vm_writev: short write at {address:#x} in pid {pid}")


__all__ = ["bind", "connect", "pidfd_getfd", "pidfd_open_task", "sendmsg", "sendto", "write_u32"]
