"""The open family (open, openat, openat2, creat): resolve, then open on held fds.

Existing objects are re-opened through ``/proc/self/fd/<held O_PATH fd>`` with the
requested flags: the kernel checks permission on the inode again (with the
agent's credentials), applies O_TRUNC/O_APPEND/O_DIRECTORY, and never looks a
path up. Creation opens ``name`` in the held parent with O_NOFOLLOW added, so a
symlink planted there after the decision fails with ELOOP instead of being
followed. Our own opens always add O_NOCTTY (a supervisor must not gain a
controlling terminal) and O_CLOEXEC (the agent's O_CLOEXEC is reported back for
SECCOMP_IOCTL_NOTIF_ADDFD). A FIFO is opened with O_NONBLOCK so the supervisor
never sleeps waiting for a peer; so a blocking write-open of a FIFO with no
reader fails with ENXIO instead of waiting.

O_PATH: SECCOMP_IOCTL_NOTIF_ADDFD refuses O_PATH files (the kernel takes the
source with fget(), which skips them: EBADF), and answering CONTINUE would let the
kernel look the path up again. So an O_PATH open of a regular file or directory
is answered with a read-only fd of the same object (what glibc's fchmodat(...,
AT_SYMLINK_NOFOLLOW) and tar need: fstat, fchdir, *at calls, /proc/self/fd/N);
it needs read permission where O_PATH would not, and can read where O_PATH could
not, which is within the fs/read decision. Other types (symlinks, devices,
FIFOs, sockets) fail with EOPNOTSUPP, which glibc's fchmodat also returns for a
symlink.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from sandbox import _fsflags as ff
from sandbox import _libc_fs as lf
from sandbox._fslocate import Obj, Slot, creation_slot, file_type, locate, locate_plain, locate_slot
from sandbox._resolve import AgentView, fail, own_fd_dir

_ALWAYS = os.O_CLOEXEC | os.O_NOCTTY
_DEV_TTY = os.makedev(5, 0)


def _clear_nonblock(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)


def _finish(fd: int, add_nonblock: bool) -> int:
    try:
        if add_nonblock:
            _clear_nonblock(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _instead_of_o_path(obj: Obj, kind: int) -> int:
    """Flags for an injectable fd standing in for O_PATH (see the module docstring)."""
    if kind == stat.S_IFREG:
        return os.O_RDONLY
    if kind == stat.S_IFDIR:
        return os.O_RDONLY | os.O_DIRECTORY
    raise fail(errno.EOPNOTSUPP, f"O_PATH of {obj.path!r} (type {kind:#o}) cannot be handed to the agent")


def reopen(obj: Obj, flags: int, kind: int | None = None) -> int:
    """A new open file description for ``obj`` (of file type ``kind``) with ``flags``."""
    if kind is None:
        kind = file_type(obj.fd)
    # Our /proc/self/fd/<fd>, through a held directory fd (see _resolve.own_fd_dir).
    name, fd_dir = b"%d" % obj.fd, own_fd_dir()
    if flags & os.O_PATH:
        return os.open(name, _instead_of_o_path(obj, kind) | _ALWAYS, dir_fd=fd_dir)
    own = flags & ~(os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW) | _ALWAYS
    add_nonblock = kind == stat.S_IFIFO and not flags & os.O_NONBLOCK
    fd = os.open(name, own | (os.O_NONBLOCK if add_nonblock else 0), dir_fd=fd_dir)
    return _finish(fd, add_nonblock)


def create(slot: Slot, flags: int, mode: int) -> int:
    """openat(parent, name) with the agent's flags, never following a planted symlink."""
    add_nonblock = not flags & os.O_NONBLOCK
    own = flags | os.O_NOFOLLOW | _ALWAYS | os.O_NONBLOCK
    fd = os.open(slot.name, own, mode, dir_fd=slot.parent_fd)
    return _finish(fd, add_nonblock)


def _decoded_open(decoded: dict) -> tuple[int, int, int]:
    name = decoded["syscall"]
    if name == "creat":
        return os.O_CREAT | os.O_WRONLY | os.O_TRUNC, decoded.get("mode", 0) & 0o7777, 0
    flags, mode, resolve = decoded.get("flags", 0), decoded.get("mode", 0) or 0, decoded.get("resolve", 0) or 0
    if name == "openat2":
        ff.check_openat2(flags, mode, resolve)
        return flags, mode, resolve
    flags, mode = ff.normalise_open(flags, mode)
    return flags, mode, 0


def build_open(view: AgentView, decoded: dict):
    """(tool, args, action, cloexec, uses_umask) for one open-family call."""
    flags, mode, resolve = _decoded_open(decoded)
    writes = ff.open_writes(flags)
    follow = not flags & os.O_NOFOLLOW
    base = decoded.get("dirfd", lf.AT_FDCWD)
    path = decoded.get("path") or b""
    directory = flags & os.O_DIRECTORY
    creating = flags & os.O_CREAT and not flags & os.O_PATH
    if creating and directory and not ff.is_tmpfile(flags):
        raise fail(errno.EINVAL, "O_CREAT with O_DIRECTORY")  # as Linux answers since 6.4
    if ff.is_tmpfile(flags) or not creating:
        obj = _existing(view, base, path, follow, writes, resolve, directory)
        kind = _check_existing(obj, flags, creating=False)
        target, action = obj.path, (lambda: reopen(obj, flags, kind))
    elif flags & os.O_EXCL:
        slot = locate_slot(view, base, path, "open", resolve=resolve)
        target, action = slot.path, (lambda: create(slot, flags, mode))
    else:
        try:
            obj = _existing(view, base, path, follow, writes, resolve, directory)
        except FileNotFoundError:
            slot = creation_slot(view, base, path, follow=follow, resolve=resolve)
            target, action = slot.path, (lambda: create(slot, flags, mode))
        else:
            kind = _check_existing(obj, flags, creating=True)
            target, action = obj.path, (lambda: reopen(obj, flags & ~os.O_CREAT, kind))
    creates = ff.creates(flags)  # only creation reads the umask
    args = {"path": os.fsdecode(target), "flags": ff.open_flag_names(flags), "mode": mode if creates else None}
    return ("fs/write" if writes else "fs/read"), args, action, bool(flags & os.O_CLOEXEC), creates


def _existing(view: AgentView, base: int, path: bytes, follow: bool, writes: bool, resolve: int,
              directory: int) -> Obj:
    """The existing object an open names: the plain-path shortcut when it applies."""
    if not resolve:
        obj = locate_plain(view, path, follow=follow, writes=writes, oflags=directory)
        if obj is not None:
            return obj
    return locate(view, base, path, follow=follow, writes=writes, resolve=resolve, oflags=directory)


def _check_existing(obj: Obj, flags: int, *, creating: bool) -> int:
    """Refuse what the agent's open would refuse; returns the file type."""
    st = os.fstat(obj.fd)
    kind = stat.S_IFMT(st.st_mode)
    if kind == stat.S_IFBLK:
        # A disk's node reads (and writes) past every path rule and hidden directory: never for the
        # agent, as on a nodev mount (its /dev has none; one on a host filesystem is refused here).
        raise fail(errno.EACCES, f"{obj.path!r} is a block device")
    if kind == stat.S_IFCHR and st.st_rdev == _DEV_TTY:
        # /dev/tty means the opener's controlling terminal: ours, not the agent's.
        raise fail(errno.ENXIO, "/dev/tty cannot be opened on the agent's behalf")
    if kind == stat.S_IFLNK and not flags & os.O_PATH:
        raise fail(errno.ELOOP, f"{obj.path!r} is a symlink and O_NOFOLLOW was given")
    if creating and kind == stat.S_IFDIR:
        raise fail(errno.EISDIR, f"O_CREAT on directory {obj.path!r}")
    return kind
