"""The seccomp user-notification ioctls on a listener fd, with plain byte buffers.

fcntl.ioctl releases the GIL while RECV blocks, so several threads may wait on one
listener; the kernel gives each notification to exactly one of them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from typing import NamedTuple


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (ord("!") << 8) | nr


_WRITE, _READ = 1, 2
_NOTIF = struct.Struct("<QIIiIQ6Q")  # id, pid, flags, data.nr, data.arch, data.ip, data.args[6]
_RESP = struct.Struct("<QqiI")  # id, val, error (-errno), flags
_ADDFD = struct.Struct("<QIIII")  # id, flags, srcfd, newfd, newfd_flags
_ID = struct.Struct("<Q")

IOCTL_RECV = _ioc(_READ | _WRITE, 0, _NOTIF.size)
IOCTL_SEND = _ioc(_READ | _WRITE, 1, _RESP.size)
IOCTL_ID_VALID = _ioc(_WRITE, 2, _ID.size)
IOCTL_ADDFD = _ioc(_WRITE, 3, _ADDFD.size)
IOCTL_SET_FLAGS = _ioc(_WRITE, 4, 8)

RESP_FLAG_CONTINUE = 1
ADDFD_FLAG_SEND = 2
NOTIF_FLAG_SYNC_WAKE_UP = 1


class Notification(NamedTuple):
    id: int
    pid: int
    flags: int
    nr: int
    arch: int
    ip: int
    args: tuple[int, ...]


def recv(listener: int) -> Notification:
    """Block until a notification arrives (ENOENT: it was cancelled before we got it)."""
    buf = bytearray(_NOTIF.size)  # must be zeroed or the kernel answers EINVAL
    fcntl.ioctl(listener, IOCTL_RECV, buf, True)
    nid, pid, flags, nr, arch, ip, *args = _NOTIF.unpack(buf)
    return Notification(nid, pid, flags, nr, arch, ip, tuple(args))


def id_valid(listener: int, nid: int) -> bool:
    """Whether the task behind ``nid`` still waits for our answer. Checked after reading
    its memory: if it died, its pid may already belong to another task."""
    try:
        fcntl.ioctl(listener, IOCTL_ID_VALID, _ID.pack(nid))
        return True
    except OSError as err:
        if err.errno == errno.ENOENT:
            return False
        raise


def _send(listener: int, nid: int, value: int, error: int, flags: int) -> bool:
    """False when the task is gone (ENOENT), which needs no answer any more."""
    try:
        fcntl.ioctl(listener, IOCTL_SEND, _RESP.pack(nid, value, error, flags))
        return True
    except OSError as err:
        if err.errno == errno.ENOENT:
            return False
        raise


def send_value(listener: int, nid: int, value: int) -> bool:
    """The syscall returns ``value`` without running."""
    return _send(listener, nid, value, 0, 0)


def send_error(listener: int, nid: int, err: int) -> bool:
    """The syscall fails with ``err`` without running."""
    return _send(listener, nid, 0, -abs(err), 0)


def send_continue(listener: int, nid: int) -> bool:
    """The kernel runs the syscall itself, re-reading every pointer argument: only safe
    when no task that could rewrite that memory can run (see sandbox/freeze.py)."""
    return _send(listener, nid, 0, 0, RESP_FLAG_CONTINUE)


def addfd_send(listener: int, nid: int, source_fd: int, cloexec: bool) -> int:
    """Install ``source_fd`` in the task and answer the syscall with the new fd number."""
    # A mutable buffer makes fcntl.ioctl return the ioctl's result (the new fd number).
    request = bytearray(_ADDFD.pack(nid, ADDFD_FLAG_SEND, source_fd, 0, os.O_CLOEXEC if cloexec else 0))
    return fcntl.ioctl(listener, IOCTL_ADDFD, request, True)


def set_sync_wakeup(listener: int) -> bool:
    """Ask the kernel to wake the waiting task on our CPU (Linux 6.6+); False if unsupported."""
    try:
        fcntl.ioctl(listener, IOCTL_SET_FLAGS, NOTIF_FLAG_SYNC_WAKE_UP)  # passed by value
        return True
    except OSError as err:
        if err.errno in (errno.EINVAL, errno.ENOTTY):
            return False
        raise
