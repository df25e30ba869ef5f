"""Open and *at flag names for tool-call arguments, and the kernel's validity rules."""

from __future__ import annotations

import errno
import os
import platform

from sandbox import _libc_fs as lf

# os.O_LARGEFILE is 0 in 64-bit Python builds, but the kernel bit is real and arch-specific.
O_LARGEFILE = {"x86_64": 0o100000, "aarch64": 0o400000}.get(platform.machine(), 0)
_O_SYNC_BIT = os.O_SYNC & ~os.O_DSYNC
_O_TMPFILE_BIT = os.O_TMPFILE & ~os.O_DIRECTORY
O_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# Order is the order names appear in ``flags``; composite names come before their parts.
OPEN_FLAG_NAMES = (
    (os.O_TMPFILE, "O_TMPFILE"),
    (os.O_SYNC, "O_SYNC"),
    (os.O_CREAT, "O_CREAT"),
    (os.O_EXCL, "O_EXCL"),
    (os.O_NOCTTY, "O_NOCTTY"),
    (os.O_TRUNC, "O_TRUNC"),
    (os.O_APPEND, "O_APPEND"),
    (os.O_NONBLOCK, "O_NONBLOCK"),
    (os.O_DSYNC, "O_DSYNC"),
    (os.O_ASYNC, "O_ASYNC"),
    (os.O_DIRECT, "O_DIRECT"),
    (O_LARGEFILE, "O_LARGEFILE"),
    (os.O_DIRECTORY, "O_DIRECTORY"),
    (os.O_NOFOLLOW, "O_NOFOLLOW"),
    (os.O_NOATIME, "O_NOATIME"),
    (os.O_CLOEXEC, "O_CLOEXEC"),
    (os.O_PATH, "O_PATH"),
)
VALID_OPEN_FLAGS = os.O_ACCMODE
for _bit, _name in OPEN_FLAG_NAMES:
    VALID_OPEN_FLAGS |= _bit
ACCESS_NAMES = {os.O_RDONLY: "O_RDONLY", os.O_WRONLY: "O_WRONLY", os.O_RDWR: "O_RDWR", 3: "O_ACCMODE"}

AT_FLAG_NAMES = (
    (lf.AT_SYMLINK_NOFOLLOW, "AT_SYMLINK_NOFOLLOW"),
    (lf.AT_REMOVEDIR, "AT_REMOVEDIR"),
    (lf.AT_SYMLINK_FOLLOW, "AT_SYMLINK_FOLLOW"),
    (lf.AT_EMPTY_PATH, "AT_EMPTY_PATH"),
)
RENAME_FLAG_NAMES = (
    (lf.RENAME_NOREPLACE, "RENAME_NOREPLACE"),
    (lf.RENAME_EXCHANGE, "RENAME_EXCHANGE"),
    (lf.RENAME_WHITEOUT, "RENAME_WHITEOUT"),
)
XATTR_FLAG_NAMES = ((1, "XATTR_CREATE"), (2, "XATTR_REPLACE"))


def names(value: int, table: tuple[tuple[int, str], ...]) -> list[str]:
    """Names of the bits set in ``value``, composite names absorbing their parts."""
    out = []
    for bit, name in table:
        if bit and value & bit == bit:
            out.append(name)
            value &= ~bit
    return out


def _open_flag_names(flags: int) -> tuple[str, ...]:
    if flags & os.O_PATH:
        return ("O_PATH", *names(flags & ~os.O_PATH, OPEN_FLAG_NAMES))
    return (ACCESS_NAMES[flags & os.O_ACCMODE], *names(flags, OPEN_FLAG_NAMES))


_OPEN_NAMES_SEEN: dict[int, tuple[str, ...]] = {}  # a program uses few flag combinations
_OPEN_NAMES_KEEP = 4096


def open_flag_names(flags: int) -> list[str]:
    """Names of an open's flags (a fresh list: callers may hand it to a policy)."""
    found = _OPEN_NAMES_SEEN.get(flags)
    if found is None:
        found = _open_flag_names(flags)
        if len(_OPEN_NAMES_SEEN) < _OPEN_NAMES_KEEP:
            _OPEN_NAMES_SEEN[flags] = found
    return list(found)


def open_writes(flags: int) -> bool:
    """Whether an open is fs/write: write access, creation or truncation."""
    if flags & os.O_PATH:
        return False
    return bool(flags & os.O_ACCMODE or flags & (os.O_CREAT | os.O_TRUNC | _O_TMPFILE_BIT))


def creates(flags: int) -> bool:
    return bool(flags & (os.O_CREAT | _O_TMPFILE_BIT))


def is_tmpfile(flags: int) -> bool:
    return bool(flags & _O_TMPFILE_BIT)


def normalise_open(flags: int, mode: int) -> tuple[int, int]:
    """What open/openat/creat keep: unknown bits ignored, O_PATH drops the rest."""
    flags &= VALID_OPEN_FLAGS
    if flags & os.O_PATH:
        flags &= O_PATH_FLAGS
    return flags, (mode & 0o7777 if creates(flags) else 0)


def check_openat2(flags: int, mode: int, resolve: int) -> None:
    """openat2's stricter rules: every violation is EINVAL, as the kernel answers."""
    bad = (
        flags & ~VALID_OPEN_FLAGS
        or resolve & ~lf.RESOLVE_ALL
        or (resolve & lf.RESOLVE_IN_ROOT and resolve & lf.RESOLVE_BENEATH)
        or (flags & os.O_PATH and flags & ~O_PATH_FLAGS)
        or (mode and not creates(flags))
        or mode & ~0o7777
        or (resolve & lf.RESOLVE_CACHED and flags & (os.O_TRUNC | os.O_CREAT | _O_TMPFILE_BIT))
    )
    if bad:
        raise OSError(errno.EINVAL, "openat2: invalid open_how")


def check_bits(value: int, allowed: int, call: str) -> int:
    if value & ~allowed:
        raise OSError(errno.EINVAL, f"{call}: unknown flags {value & ~allowed:#x}")
    return value
