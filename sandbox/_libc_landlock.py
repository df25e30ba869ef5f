"""ctypes layer for Landlock: the three syscalls and their structures (linux/landlock.h)."""

from __future__ import annotations

import ctypes
import errno
import os
import stat

from sandbox import _libc

CREATE_RULESET_VERSION = 1 << 0
RULE_PATH_BENEATH = 1
RULE_NET_PORT = 2

# Filesystem rights, with the ABI that introduced each.
FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1  # ABI 6

FS_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV  # allowed on a file rule


def fs_rights(abi: int) -> int:
    return FS_ABI[min(abi, 5)] if abi >= 1 else 0


def net_rights(abi: int) -> int:
    return NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0


def scopes(abi: int) -> int:
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


def abi_version() -> int:
    """The kernel's Landlock ABI; 0 when Landlock is not built in or not enabled at boot."""
    try:
        return _libc.syscall("landlock_create_ruleset", 0, 0, CREATE_RULESET_VERSION)
    except OSError as err:
        if err.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0
        raise


def ruleset_attr_size(abi: int) -> int:
    # Older kernels refuse a structure larger than theirs unless the tail is zero; ours is.
    return ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)


def create_ruleset(abi: int, fs: int, net: int, scoped: int) -> int:
    attr = _RulesetAttr(fs, net, scoped)
    return _libc.syscall("landlock_create_ruleset", ctypes.byref(attr), ruleset_attr_size(abi), 0)


def add_path_rule(ruleset: int, path: str, allowed: int) -> None:
    """Allow ``allowed`` beneath ``path`` (a directory) or on it (a file: file rights only)."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            allowed &= FS_FILE_RIGHTS
        attr = _PathBeneathAttr(allowed, fd)
        _libc.syscall("landlock_add_rule", ruleset, RULE_PATH_BENEATH, ctypes.byref(attr), 0)
    finally:
        os.close(fd)


def add_port_rule(ruleset: int, port: int, allowed: int) -> None:
    attr = _NetPortAttr(allowed, port)
    _libc.syscall("landlock_add_rule", ruleset, RULE_NET_PORT, ctypes.byref(attr), 0)


def restrict_self(ruleset: int) -> None:
    """Enforce the ruleset on the calling thread and its future children (needs no_new_privs)."""
    _libc.syscall("landlock_restrict_self", ruleset, 0)
