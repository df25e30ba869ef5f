"""Readers for the network roles of sandbox/traced.py: socket arguments, addresses, send buffers.

Each pointer is read once, bounded the way the kernel bounds it; the supervisor then acts on
these copies (sandbox/netops.py) and never reads the agent's memory for the call again.
A send buffer is read up to MAX_SEND bytes: a datagram is never larger, and a stream send
of more is answered with the (shorter) count actually sent, as a partial write.
"""

from __future__ import annotations

import errno
import struct

from sandbox.decode.readers import int32, uint32
from sandbox.memory import RemoteMemory
from sandbox.traced import Role

SOCKADDR_STORAGE = 128
MAX_SEND = 256 * 1024
UIO_MAXIOV = 1024
MAX_CONTROL = 64 * 1024  # control messages (SCM_RIGHTS...) larger than this are refused
MSGHDR = struct.Struct("=QI4xQQQQi4x")  # name, namelen, iov, iovlen, control, controllen, flags
MMSGHDR_SIZE = MSGHDR.size + 8  # struct msghdr, then unsigned int msg_len (padded)
IOVEC = struct.Struct("=QQ")


def read_sockaddr(mem: RemoteMemory, address: int, length: int) -> bytes | None:
    """The address bytes (None for a NULL pointer); EINVAL outside 0..128 as the kernel."""
    size = int32(length)
    if size < 0 or size > SOCKADDR_STORAGE:
        raise OSError(errno.EINVAL, f"address length {size}")
    if address == 0:
        return None
    return mem.read(address, size) if size else b""


def read_buffer(mem: RemoteMemory, address: int, length: int) -> bytes:
    return mem.read(address, min(length, MAX_SEND)) if length else b""


def read_msghdr(mem: RemoteMemory, address: int) -> dict:
    """name (None when absent), data (the iovecs joined, at most MAX_SEND), size (all the
    iovecs asked for) and control (the raw cmsg bytes) of one struct msghdr."""
    name_at, namelen, iov_at, iovlen, control_at, controllen, _flags = MSGHDR.unpack(mem.read(address, MSGHDR.size))
    if iovlen > UIO_MAXIOV:
        raise OSError(errno.EMSGSIZE, f"{iovlen} iovecs")
    if controllen > MAX_CONTROL:
        raise OSError(errno.ENOBUFS, f"{controllen} bytes of control messages")
    name = read_sockaddr(mem, name_at, namelen) if name_at and namelen else None
    vectors = [IOVEC.unpack_from(block, i * IOVEC.size) for block in [mem.read(iov_at, iovlen * IOVEC.size)]
               for i in range(iovlen)] if iovlen else []
    parts, total, taken = [], 0, 0
    for base, length in vectors:
        total += length
        want = min(length, MAX_SEND - taken)
        if want > 0:
            parts.append(mem.read(base, want))
            taken += want
    control = mem.read(control_at, controllen) if control_at and controllen else b""
    return {"name": name, "data": b"".join(parts), "size": total, "control": control}


def _sockaddr(mem: RemoteMemory, args: tuple, i: int) -> dict:
    return {"addr": read_sockaddr(mem, args[i], args[i + 1])}


def _buffer(mem: RemoteMemory, args: tuple, i: int) -> dict:
    return {"data": read_buffer(mem, args[i], args[i + 1]), "size": args[i + 1]}


def _msghdr(mem: RemoteMemory, args: tuple, i: int) -> dict:
    return read_msghdr(mem, args[i])


def _mmsghdr(mem: RemoteMemory, args: tuple, i: int) -> dict:
    """The first message only: sendmmsg may send fewer than asked and says how many."""
    if uint32(args[i + 1]) == 0:
        return {"vlen": 0}
    decoded = read_msghdr(mem, args[i])
    decoded["msg_len_at"] = args[i] + MSGHDR.size
    return decoded


def _size_only(mem: RemoteMemory, args: tuple, i: int) -> dict:
    return {}  # read with the pointer argument before it


NET_READERS = {
    Role.DOMAIN: lambda mem, args, i: {"domain": int32(args[i])},
    Role.SOCK_TYPE: lambda mem, args, i: {"type": int32(args[i])},
    Role.PROTOCOL: lambda mem, args, i: {"protocol": int32(args[i])},
    Role.SOCKADDR: _sockaddr,
    Role.SOCKLEN: _size_only,
    Role.BUFFER: _buffer,
    Role.BUFFER_LEN: _size_only,
    Role.MSG_FLAGS: lambda mem, args, i: {"msg_flags": uint32(args[i])},
    Role.MSGHDR: _msghdr,
    Role.MMSGHDR: _mmsghdr,
    Role.VLEN: lambda mem, args, i: {"vlen": uint32(args[i])},
    Role.BACKLOG: lambda mem, args, i: {"backlog": int32(args[i])},
}
