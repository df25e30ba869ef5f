"""One reader per argument role: raw syscall arguments -> decoded keys.

Each reader reads a pointer argument once. Integers are cut to the width the kernel
reads (``int`` arguments use the low 32 bits, sign-extended), so a decoded value is
the value the kernel would act on.
"""

from __future__ import annotations

import errno
import struct
from typing import Callable

from sandbox.memory import PAGE_SIZE, RemoteMemory
from sandbox.traced import Role

AT_EMPTY_PATH = 0x1000
XATTR_NAME_MAX = 255
XATTR_SIZE_MAX = 65536
OPEN_HOW = struct.Struct("<QQQ")  # flags, mode, resolve (OPEN_HOW_SIZE_VER0 = 24)
PAIR = struct.Struct("<qqqq")  # two {seconds, nanoseconds|microseconds}
UTIMBUF = struct.Struct("<qq")  # actime, modtime


def int32(raw: int) -> int:
    low = raw & 0xFFFFFFFF
    return low - (1 << 32) if low & 0x80000000 else low


def uint32(raw: int) -> int:
    return raw & 0xFFFFFFFF


def int64(raw: int) -> int:
    return raw - (1 << 64) if raw & (1 << 63) else raw


Reader = Callable[[RemoteMemory, tuple, int], dict]


def _scalar(key: str, convert: Callable[[int], int]) -> Reader:
    return lambda mem, args, i: {key: convert(args[i])}


def _string(key: str) -> Reader:
    return lambda mem, args, i: {key: mem.cstring(args[i])}


def _path_or_null(mem: RemoteMemory, args: tuple, i: int) -> dict:
    # NULL acts on the dirfd itself (futimens); say so the way the *at calls do.
    if args[i] == 0:
        return {"path": b"", "null_path_flags": AT_EMPTY_PATH}
    return {"path": mem.cstring(args[i])}


def _open_how(mem: RemoteMemory, args: tuple, i: int) -> dict:
    size = args[i + 1]
    if size < OPEN_HOW.size:
        raise OSError(errno.EINVAL, f"open_how size {size} is smaller than {OPEN_HOW.size}")
    if size > PAGE_SIZE:
        raise OSError(errno.E2BIG, f"open_how size {size} is larger than a page")
    raw = mem.read(args[i], size)
    if any(raw[OPEN_HOW.size:]):
        raise OSError(errno.E2BIG, "open_how has unknown non-zero fields")
    flags, mode, resolve = OPEN_HOW.unpack_from(raw)
    return {"flags": flags, "mode": mode, "resolve": resolve}


def _times(kind: str) -> Reader:
    def read(mem: RemoteMemory, args: tuple, i: int) -> dict:
        if args[i] == 0:
            return {"times": None}
        if kind == "utimbuf":
            access, modify = UTIMBUF.unpack(mem.read(args[i], UTIMBUF.size))
            return {"times": ((access, 0), (modify, 0))}
        a_sec, a_sub, m_sec, m_sub = PAIR.unpack(mem.read(args[i], PAIR.size))
        scale = 1000 if kind == "timeval" else 1
        return {"times": ((a_sec, a_sub * scale), (m_sec, m_sub * scale))}
    return read


def _xattr_name(mem: RemoteMemory, args: tuple, i: int) -> dict:
    return {"xattr_name": mem.cstring(args[i], XATTR_NAME_MAX + 1, too_long=errno.ERANGE)}


def _xattr_value(mem: RemoteMemory, args: tuple, i: int) -> dict:
    size = args[i + 1]
    if size > XATTR_SIZE_MAX:
        raise OSError(errno.E2BIG, f"xattr value of {size} bytes exceeds {XATTR_SIZE_MAX}")
    return {"xattr_value": mem.read(args[i], size) if size else b""}


def _argv(mem: RemoteMemory, args: tuple, i: int) -> dict:
    return {"argv": mem.argv(args[i])}


def _envp(mem: RemoteMemory, args: tuple, i: int) -> dict:
    return {"envp_count": mem.count(args[i])}


def _size_only(mem: RemoteMemory, args: tuple, i: int) -> dict:
    return {}  # read together with the pointer argument before it


READERS: dict[Role, Reader] = {
    Role.DIRFD: _scalar("dirfd", int32),
    Role.NEWDIRFD: _scalar("newdirfd", int32),
    Role.FD: _scalar("fd", int32),
    Role.PATH: _string("path"),
    Role.PATH_OR_NULL: _path_or_null,
    Role.NEWPATH: _string("newpath"),
    Role.TARGET: _string("target"),
    Role.FLAGS: _scalar("flags", int32),
    Role.MODE: _scalar("mode", uint32),
    Role.OPEN_HOW: _open_how,
    Role.OPEN_HOW_SIZE: _size_only,
    Role.AT_FLAGS: _scalar("at_flags", uint32),
    Role.UID: _scalar("uid", int32),
    Role.GID: _scalar("gid", int32),
    Role.LENGTH: _scalar("length", int64),
    Role.DEV: _scalar("dev", uint32),
    Role.TIMESPEC_PAIR: _times("timespec"),
    Role.TIMEVAL_PAIR: _times("timeval"),
    Role.UTIMBUF: _times("utimbuf"),
    Role.XATTR_NAME: _xattr_name,
    Role.XATTR_VALUE: _xattr_value,
    Role.XATTR_SIZE: _size_only,
    Role.XATTR_FLAGS: _scalar("xattr_flags", int32),
    Role.ARGV: _argv,
    Role.ENVP: _envp,
}
