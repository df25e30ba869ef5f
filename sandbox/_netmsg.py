"""Control messages of an agent's sendmsg, rewritten for the supervisor's duplicate socket.

Only the messages in CONTROL_MESSAGES are passed on; any other is refused with EPERM. The
supervisor sends on the agent's socket with its own capabilities, after deciding the address:
a source route (IP_RETOPTS, IPV6_RTHDR) would send the packet to its first hop instead, an
interface index would leave past the host's policy routing, and SCM_CREDENTIALS would claim a
pid, uid and gid checked against the supervisor in the wrong pid namespace.

SCM_RIGHTS carries fd numbers of the agent's table: each becomes our own duplicate
(pidfd_getfd, through the caller's ``duplicate``), so the receiver gets the very files the
agent named.
"""

from __future__ import annotations

import errno
import struct
from typing import Callable

CMSGHDR = struct.Struct("=QiI")  # cmsg_len (size_t), cmsg_level, cmsg_type
SOL_SOCKET, SCM_RIGHTS, SCM_CREDENTIALS = 1, 1, 2
SOL_IP, IP_TOS, IP_TTL, IP_PKTINFO = 0, 1, 2, 8
SOL_IPV6, IPV6_PKTINFO, IPV6_HOPLIMIT, IPV6_DONTFRAG, IPV6_TCLASS = 41, 50, 52, 62, 67
SOL_UDP, UDP_SEGMENT = 17, 103
_INT = struct.Struct("=i")


def _align(length: int) -> int:
    return (length + 7) & ~7


def _unchanged(data: bytes, duplicate: Callable[[int], int], owned: list[int]) -> bytes:
    return data


def _our_descriptors(data: bytes, duplicate: Callable[[int], int], owned: list[int]) -> bytes:
    ours = []
    for (number,) in _INT.iter_unpack(data[: len(data) // 4 * 4]):
        try:
            ours.append(duplicate(number))
        except OSError:
            raise OSError(errno.EBADF, f"SCM_RIGHTS fd {number}") from None
        owned.append(ours[-1])
    return b"".join(_INT.pack(fd) for fd in ours)


def _source_address_only(size: int, ifindex_at: int) -> Callable[[bytes, Callable[[int], int], list[int]], bytes]:
    """A pktinfo that may choose the source address (the kernel checks it is the host's) but not
    the outgoing interface, which SO_BINDTODEVICE is refused for."""
    def check(data: bytes, duplicate: Callable[[int], int], owned: list[int]) -> bytes:
        if len(data) < size:  # larger is the kernel's to refuse
            raise OSError(errno.EINVAL, f"pktinfo of {len(data)} bytes")
        if _INT.unpack_from(data, ifindex_at)[0] != 0:
            raise OSError(errno.EPERM, "pktinfo with an interface index")
        return data
    return check


# (level, type) -> how its data is passed on.
CONTROL_MESSAGES = {
    (SOL_SOCKET, SCM_RIGHTS): _our_descriptors,
    (SOL_IP, IP_TOS): _unchanged,
    (SOL_IP, IP_TTL): _unchanged,
    (SOL_IP, IP_PKTINFO): _source_address_only(12, 0),  # struct in_pktinfo: ifindex first
    (SOL_IPV6, IPV6_TCLASS): _unchanged,
    (SOL_IPV6, IPV6_HOPLIMIT): _unchanged,
    (SOL_IPV6, IPV6_DONTFRAG): _unchanged,
    (SOL_IPV6, IPV6_PKTINFO): _source_address_only(20, 16),  # struct in6_pktinfo: ifindex after the address
    (SOL_UDP, UDP_SEGMENT): _unchanged,
}


def translate_control(duplicate: Callable[[int], int], control: bytes, owned: list[int]) -> bytes:
    """``control`` with the agent's fd numbers replaced by our duplicates (``duplicate(number)``,
    appended to ``owned``, which the caller closes); EINVAL for malformed messages as the kernel,
    EPERM for any message not in CONTROL_MESSAGES."""
    out, at = [], 0
    while at + CMSGHDR.size <= len(control):
        length, level, kind = CMSGHDR.unpack_from(control, at)
        if length < CMSGHDR.size or at + length > len(control):
            raise OSError(errno.EINVAL, f"control message length {length}")
        passed_on = CONTROL_MESSAGES.get((level, kind))
        if passed_on is None:
            raise OSError(errno.EPERM, f"control message level {level} type {kind} is not sent on the agent's behalf")
        data = passed_on(control[at + CMSGHDR.size: at + length], duplicate, owned)
        message = CMSGHDR.pack(CMSGHDR.size + len(data), level, kind) + data
        out.append(message.ljust(_align(len(message)), b"\0"))
        at += _align(length)
    return b"".join(out)
