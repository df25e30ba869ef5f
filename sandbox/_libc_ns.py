"""Raw namespace and mount calls (unshare, mount) through ctypes; prctl lives in _libc.py.

Every failure raises OSError whose text names the call and its arguments, then the errno:
``unshare(CLONE_NEWUSER): Operation not permitted``."""

from __future__ import annotations

import ctypes
import os

# The process's own symbols (libc included): ctypes.util.find_library would run ldconfig (~5 ms).
_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# namespace name -> clone flag, in the order the names are printed
NAMESPACE_FLAGS = {
    "user": CLONE_NEWUSER,
    "mount": CLONE_NEWNS,
    "pid": CLONE_NEWPID,
    "net": CLONE_NEWNET,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "cgroup": CLONE_NEWCGROUP,
}
_FLAG_NAMES = {
    CLONE_NEWUSER: "CLONE_NEWUSER", CLONE_NEWNS: "CLONE_NEWNS", CLONE_NEWPID: "CLONE_NEWPID",
    CLONE_NEWNET: "CLONE_NEWNET", CLONE_NEWUTS: "CLONE_NEWUTS", CLONE_NEWIPC: "CLONE_NEWIPC",
    CLONE_NEWCGROUP: "CLONE_NEWCGROUP",
}

PR_SET_PDEATHSIG = 1  # prctl option (prctl itself is in _libc.py)
PR_SET_DUMPABLE = 4

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
_MS_NAMES = {MS_RDONLY: "MS_RDONLY", MS_NOSUID: "MS_NOSUID", MS_NODEV: "MS_NODEV", MS_NOEXEC: "MS_NOEXEC",
             MS_REC: "MS_REC", MS_PRIVATE: "MS_PRIVATE", 0x1000: "MS_BIND", 0x20: "MS_REMOUNT", 0x2000: "MS_MOVE"}



def _flag_text(value: int, names: dict[int, str]) -> str:
    parts = [name for bit, name in names.items() if value & bit]
    rest = value & ~sum(bit for bit in names if value & bit)
    if rest:
        parts.append(hex(rest))
    return "|".join(parts) or "0"


def _fail(call: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{call}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    if _libc.unshare(flags) != 0:
        raise _fail(f"unshare({_flag_text(flags, _FLAG_NAMES)})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    if _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        raise _fail(mount_call(source, target, fstype, flags))


def mount_call(source: str | None, target: str, fstype: str | None, flags: int) -> str:
    """How a failed mount is named in its error."""
    return f"mount({source!r}, {target!r}, {fstype!r}, {_flag_text(flags, _MS_NAMES)})"


CLONE_INTO_CGROUP = 0x200000000
_FLAG_NAMES[CLONE_INTO_CGROUP] = "CLONE_INTO_CGROUP"


class _CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size", "tls",
        "set_tid", "set_tid_size", "cgroup")]


# A PyDLL call keeps the GIL across clone3, so the child never inherits a GIL that another
# thread held at that instant; PyOS_BeforeFork/AfterFork_* are exactly what os.fork() runs.
_libc_keep_gil = ctypes.PyDLL(None, use_errno=True)
_libc_keep_gil.syscall.restype = ctypes.c_long
_SYS_CLONE3 = 435  # the same number on x86_64 and aarch64


def fork_into(namespaces: int, cgroup_fd: int | None, exit_signal: int) -> int:
    """os.fork(), but through clone3 so the child is born in new namespaces (pid 1 of a new pid
    namespace) and directly in the cgroup ``cgroup_fd`` (no migration of a running task), and
    tells its end with ``exit_signal`` (not SIGCHLD: a "clone child", waited for with __WALL).

    Returns 0 in the child and its pid in the parent; raises OSError naming the call."""
    flags = namespaces | (CLONE_INTO_CGROUP if cgroup_fd is not None else 0)
    args = _CloneArgs(flags=flags, exit_signal=exit_signal, cgroup=cgroup_fd or 0)
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = _libc_keep_gil.syscall(ctypes.c_long(_SYS_CLONE3), ctypes.byref(args), ctypes.c_size_t(ctypes.sizeof(args)))
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        where = f", cgroup={cgroup_fd}" if cgroup_fd is not None else ""
        raise OSError(err, f"clone3({_flag_text(flags, _FLAG_NAMES)}{where}): {os.strerror(err)}")
    return pid
