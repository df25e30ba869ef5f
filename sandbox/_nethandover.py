"""Handing the seccomp listener from the filtered child to its supervisor without sendmsg.

sendmsg is trapped (its address hides in a struct), so once the filter is loaded the child
cannot pass the listener with SCM_RIGHTS: nobody would answer yet. Instead it sends the fd
number with a plain send() (untrapped: no address), the parent takes its own copy with
pidfd_getfd and acknowledges, and only then does the child close its copy. The parent learns
the sender's pid from the kernel (SO_PASSCRED), never from the message.
"""

from __future__ import annotations

import errno
import os
import socket
import struct

from sandbox import _libc_net
from sandbox.errors import SandboxError

PREFIX = b"listener "
ACK = b"taken"
_UCRED = struct.Struct("=iII")  # pid, uid, gid


def offer_listener(sock: socket.socket, listener: int) -> None:
    """Child side: announce ``listener`` and wait until the parent holds its own copy."""
    # Credentials ride on a message only when an end has SO_PASSCRED when it is sent.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    sock.send(PREFIX + b"%d" % listener)
    if sock.recv(len(ACK)) != ACK:
        raise OSError(errno.ECONNRESET, "the supervisor did not take the seccomp listener")


def take_listener(sock: socket.socket, bufsize: int = 4096) -> tuple[bytes, int | None]:
    """Parent side: (message, our copy of the listener), or (message, None) when the child
    sent something else (a set-up error, or "ready" without a filter)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    msg, ancillary, _flags, _addr = sock.recvmsg(bufsize, socket.CMSG_SPACE(_UCRED.size))
    if not msg.startswith(PREFIX):
        return msg, None
    pids = [_UCRED.unpack_from(data)[0] for level, kind, data in ancillary
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(data) >= _UCRED.size]
    if not pids or pids[0] <= 0:
        raise SandboxError("receive_listener", "the listener offer carried no sender credentials",
                           "the agent must send it with SO_PASSCRED set (offer_listener)")
    try:
        pidfd = os.pidfd_open(pids[0])
        try:
            listener = _libc_net.pidfd_getfd(pidfd, int(msg[len(PREFIX):]))
        finally:
            os.close(pidfd)
    except (OSError, ValueError) as err:
        raise SandboxError("receive_listener", f"cannot take the seccomp listener from the agent: {err}",
                           "the launcher needs ptrace access to its own child for pidfd_getfd "
                           "(kernel.yama.ptrace_scope must be 2 or less)") from None
    sock.send(ACK)
    return msg, listener
