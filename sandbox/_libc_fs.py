"""ctypes layer for filesystem calls the supervisor makes on an agent's behalf.

Only the calls Python's ``os`` module lacks (or cannot express, e.g. flags such
as AT_EMPTY_PATH or RENAME_EXCHANGE) live here. Every wrapper goes through the
errno-checked ``sandbox._libc.syscall`` so errors name the call, then the errno.

Credentials: Linux keeps fsuid, fsgid, supplementary groups, capabilities and
(after ``unshare(CLONE_FS)``) root/cwd/umask per *thread*; glibc only makes
them look process-wide by broadcasting its own wrappers to every thread. The raw
syscalls below therefore change the calling thread alone, which is what lets a
supervisor thread act with one agent's identity while other threads keep theirs.
"""

from __future__ import annotations

import ctypes
import os
import threading

from sandbox._libc import syscall, syscall_number

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_REMOVEDIR = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000

RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
RENAME_WHITEOUT = 1 << 2

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10
RESOLVE_CACHED = 0x20
RESOLVE_ALL = 0x3F

UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

CLONE_FS = 0x200
PROC_SUPER_MAGIC = 0x9FA0

_CAP_VERSION_3 = 0x20080522


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class _Statfs(ctypes.Structure):
    # Only f_type is read; the padding covers the rest of struct statfs (120 bytes on 64-bit).
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]


def _path(path: bytes) -> ctypes.c_char_p:
    return ctypes.c_char_p(path)


# openat2 and fstatfs run several times per trapped call: they skip the generic wrapper's
# per-call argument conversion and reuse one struct per thread.
_raw_syscall = ctypes.CDLL(None, use_errno=True).syscall
_raw_syscall.restype = ctypes.c_long
_NR_OPENAT2 = ctypes.c_long(syscall_number("openat2"))
_NR_FSTATFS = ctypes.c_long(syscall_number("fstatfs"))
_OPEN_HOW_SIZE = ctypes.c_long(ctypes.sizeof(_OpenHow))


class _Structs(threading.local):
    def __init__(self):
        self.how = _OpenHow()
        self.how_ref = ctypes.byref(self.how)
        self.statfs = _Statfs()
        self.statfs_ref = ctypes.byref(self.statfs)


_structs = _Structs()


def _failed(call: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{call}: {os.strerror(err)}")


def openat2(dirfd: int, path: bytes, flags: int, mode: int, resolve: int) -> int:
    """``openat2(2)``; returns the new fd."""
    structs = _structs
    how = structs.how
    how.flags, how.mode, how.resolve = flags, mode, resolve
    fd = _raw_syscall(_NR_OPENAT2, ctypes.c_long(dirfd), ctypes.c_char_p(path), structs.how_ref, _OPEN_HOW_SIZE)
    if fd == -1:
        raise _failed(f"openat2({dirfd}, <ptr>, <ptr>, {ctypes.sizeof(how)})")
    return fd


def renameat2(olddirfd: int, oldname: bytes, newdirfd: int, newname: bytes, flags: int) -> None:
    syscall("renameat2", olddirfd, _path(oldname), newdirfd, _path(newname), flags)


def linkat(olddirfd: int, oldname: bytes, newdirfd: int, newname: bytes, flags: int) -> None:
    syscall("linkat", olddirfd, _path(oldname), newdirfd, _path(newname), flags)


def symlinkat(target: bytes, newdirfd: int, newname: bytes) -> None:
    syscall("symlinkat", _path(target), newdirfd, _path(newname))


def mkdirat(dirfd: int, name: bytes, mode: int) -> None:
    syscall("mkdirat", dirfd, _path(name), mode)


def mknodat(dirfd: int, name: bytes, mode: int, dev: int) -> None:
    syscall("mknodat", dirfd, _path(name), mode, dev)


def unlinkat(dirfd: int, name: bytes, flags: int) -> None:
    syscall("unlinkat", dirfd, _path(name), flags)


def fchownat(dirfd: int, path: bytes, uid: int, gid: int, flags: int) -> None:
    syscall("fchownat", dirfd, _path(path), uid, gid, flags)


def fchmodat2(dirfd: int, path: bytes, mode: int, flags: int) -> None:
    syscall("fchmodat2", dirfd, _path(path), mode, flags)


def utimensat(dirfd: int, path: bytes, times: tuple | None, flags: int) -> None:
    """``utimensat(2)``; ``times`` is None (now) or ((sec, nsec), (sec, nsec)) with UTIME_* allowed."""
    arg = None
    if times is not None:
        arr = (_Timespec * 2)(_Timespec(*times[0]), _Timespec(*times[1]))
        arg = ctypes.byref(arr)
    syscall("utimensat", dirfd, _path(path), arg, flags)


def fstatfs_type(fd: int) -> int:
    """The filesystem magic (``f_type``) of the file behind ``fd`` (O_PATH fds work)."""
    structs = _structs
    if _raw_syscall(_NR_FSTATFS, ctypes.c_long(fd), structs.statfs_ref) == -1:
        raise _failed(f"fstatfs({fd}, <ptr>)")
    return structs.statfs.f_type


def unshare_fs() -> None:
    """Give the calling thread its own root/cwd/umask (``unshare(CLONE_FS)``)."""
    syscall("unshare", CLONE_FS)


def setfsuid(uid: int) -> int:
    """Set the thread's fsuid; returns the previous one (the kernel reports no error)."""
    return syscall("setfsuid", uid)


def setfsgid(gid: int) -> int:
    return syscall("setfsgid", gid)


def getfsuid() -> int:
    """The thread's fsuid, read by a no-op ``setfsuid(-1)``."""
    return syscall("setfsuid", 0xFFFFFFFF)


def getfsgid() -> int:
    return syscall("setfsgid", 0xFFFFFFFF)


def set_thread_groups(groups: tuple[int, ...]) -> None:
    """Replace the calling thread's supplementary groups (raw syscall: this thread only)."""
    arr = (ctypes.c_uint32 * max(len(groups), 1))(*groups)
    syscall("setgroups", len(groups), arr)


def get_thread_groups() -> tuple[int, ...]:
    return tuple(os.getgroups())


def get_effective_caps() -> tuple[int, int]:
    """(effective, permitted) capability masks of the calling thread."""
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    syscall("capget", ctypes.byref(header), data)
    eff = data[0].effective | (data[1].effective << 32)
    perm = data[0].permitted | (data[1].permitted << 32)
    return eff, perm


def remove_caps(mask: int) -> None:
    """Take the capabilities in ``mask`` out of the calling thread's effective, permitted and
    inheritable sets (lowering them needs no privilege)."""
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    syscall("capget", ctypes.byref(header), data)
    for half in (0, 1):
        keep = ~(mask >> (32 * half)) & 0xFFFFFFFF
        data[half].effective &= keep
        data[half].permitted &= keep
        data[half].inheritable &= keep
    syscall("capset", ctypes.byref(header), data)


def set_effective_caps(effective: int) -> None:
    """Set the calling thread's effective set, keeping permitted and inheritable as they are."""
    header = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    syscall("capget", ctypes.byref(header), data)
    data[0].effective = effective & 0xFFFFFFFF
    data[1].effective = (effective >> 32) & 0xFFFFFFFF
    syscall("capset", ctypes.byref(header), data)
