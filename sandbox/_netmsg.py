"""Control messages of an agent's sendmsg, rewritten for the supervisor's duplicate socket.

SCM_RIGHTS carries fd numbers of the agent's table: each becomes our own duplicate
(pidfd_getfd, through the caller's ``duplicate``), so the receiver gets the very files the
agent named. SCM_CREDENTIALS would claim a pid, uid and gid checked against the sender (the
supervisor) in the wrong pid namespace: refused with EPERM. Other levels (IP_PKTINFO, IPV6_HOPLIMIT...) pass unchanged.
"""

from __future__ import annotations

import errno
import struct
from typing import Callable

CMSGHDR = struct.Struct("=QiI")  # cmsg_len (size_t), cmsg_level, cmsg_type
SOL_SOCKET, SCM_RIGHTS, SCM_CREDENTIALS = 1, 1, 2
_INT = struct.Struct("=i")


def _align(length: int) -> int:
    return (length + 7) & ~7


def translate_control(duplicate: Callable[[int], int], control: bytes, owned: list[int]) -> bytes:
    """``control`` with the agent's fd numbers replaced by our duplicates (``duplicate(number)``,
    appended to ``owned``, which the caller closes); EINVAL for malformed messages as the kernel."""
    out, at = [], 0
    while at + CMSGHDR.size <= len(control):
        length, level, kind = CMSGHDR.unpack_from(control, at)
        if length < CMSGHDR.size or at + length > len(control):
            raise OSError(errno.EINVAL, f"control message length {length}")
        data = control[at + CMSGHDR.size: at + length]
        if level == SOL_SOCKET and kind == SCM_CREDENTIALS:
            raise OSError(errno.EPERM, "SCM_CREDENTIALS cannot be passed on the agent's behalf")
        if level == SOL_SOCKET and kind == SCM_RIGHTS:
            ours = []
            for (number,) in _INT.iter_unpack(data[: len(data) // 4 * 4]):
                try:
                    ours.append(duplicate(number))
                except OSError:
                    raise OSError(errno.EBADF, f"SCM_RIGHTS fd {number}") from None
                owned.append(ours[-1])
            data = b"".join(_INT.pack(fd) for fd in ours)
        message = CMSGHDR.pack(CMSGHDR.size + len(data), level, kind) + data
        out.append(message.ljust(_align(len(message)), b"\0"))
        at += _align(length)
    return b"".join(out)
