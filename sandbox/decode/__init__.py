"""Decode a seccomp notification of a trapped syscall into the documented dict.

Keys follow sandbox/traced.py roles (dirfd, path, flags, mode, ...) plus ``syscall``
and ``pid``. Each pointer argument is read exactly once; decisions are made on this
copy, never on the agent's memory again.
"""

from __future__ import annotations

from sandbox._libc import ARCH
from sandbox._syscalls_generated import SYSCALLS
from sandbox.decode.net import NET_READERS
from sandbox.decode.readers import READERS
from sandbox.memory import RemoteMemory
from sandbox.notify import Notification
from sandbox.traced import BY_NAME, TABLE, Traced

READERS.update(NET_READERS)
BY_NUMBER: dict[int, Traced] = {SYSCALLS[row.name][ARCH]: row for row in TABLE if ARCH in SYSCALLS[row.name]}


class UnknownSyscall(LookupError):
    """A notification for a syscall the table does not trap (a filter/table mismatch)."""


def row_for(notification: Notification) -> Traced:
    row = BY_NUMBER.get(notification.nr)
    if row is None:
        raise UnknownSyscall(f"syscall number {notification.nr} is not in sandbox/traced.py")
    return row


def decode(notification: Notification, skip: frozenset = frozenset()) -> dict:
    """The decoded arguments of ``notification`` (except roles in ``skip``); OSError(errno)
    when memory is unreadable."""
    row = row_for(notification)
    memory = RemoteMemory(notification.pid)
    decoded: dict = {"syscall": row.name, "pid": notification.pid}
    for index, role in enumerate(row.roles):
        if role not in skip:
            decoded.update(READERS[role](memory, notification.args, index))
    for key, value in row.implied.items():
        decoded[key] = decoded.get(key, 0) | value
    null_flags = decoded.pop("null_path_flags", 0)
    if null_flags:
        decoded["at_flags"] = decoded.get("at_flags", 0) | null_flags
    return decoded


__all__ = ["BY_NAME", "BY_NUMBER", "UnknownSyscall", "decode", "row_for"]
