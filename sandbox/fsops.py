"""Filesystem syscalls performed by the supervisor on the agent's behalf, race-free.

``prepare(pid, decoded)`` resolves what a trapped call names *in the agent's
view* (its root, cwd and fds, symlinks followed inside its root, magic links
refused; see ``sandbox._resolve``) to held O_PATH fds, and describes the real
object as a tool call: ``FsOp.tool`` and ``FsOp.args``. The policy decides on
that description. ``FsOp.perform()`` then acts on the held fds with the agent's
fsuid, fsgid, groups, capabilities and umask (``sandbox._fscreds``) and never
looks the agent's path string up again, so rewriting the path or swapping a
symlink after the decision cannot change what is touched. ``FsOp.close()``
releases the fds; both raise only OSError.

Why perform instead of answering CONTINUE: CONTINUE makes the kernel re-read the
path from agent memory, which another thread can rewrite after the decision.

What a decision is about:
- reads, writes, truncation, chmod/chown/utimes/xattrs: the object after the
  syscall's own symlink rule (``/tmp/l -> /etc/shadow`` is ``/etc/shadow``);
- create/delete/rename/mkdir/symlink/mknod: the name in its real parent
  (``cd /etc; rm ../etc/./x`` is ``/etc/x``), O_CREAT through a dangling
  symlink is the file it would create;
- hard links: ``path`` is the object linked, ``dest`` the new name. A hard link
  gives a second name to an inode, and later calls are decided on the name they
  use, so the supervisor also decides fs/read and fs/write of ``path`` for a hard
  link or a rename: a file the agent may not read or write under its name gets no
  other name.

Tool-call args: always ``path`` (absolute, normalised, as the agent sees it;
for an fd without a name the kernel's name such as ``pipe:[42]``), ``flags``
(list of names) and ``mode`` (int or None); then ``dest`` (rename, link),
``target`` (symlink content), ``uid``/``gid`` (chown, -1 = unchanged),
``length`` (truncate), ``xattr`` (attribute name).

Caller contract: ``pid`` is the notification's pid, so check
SECCOMP_IOCTL_NOTIF_ID_VALID after prepare() (the task, hence the /proc entries
opened, was still the one that trapped) and before perform(). Each calling thread
gets its own cwd/root/umask the first time (``unshare(CLONE_FS)``). A long-lived
thread may call ``keep_task_files()`` once: it then keeps each agent task's
/proc/<tid> directory and status file open between calls, re-reads the status on
every call and opens the root, cwd and fd links through the kept directory (see
``_fscreds._TaskFiles``) instead of walking /proc anew.

Plain absolute paths (no '..', no /proc or /dev/fd rewrite) of opens are first walked
with RESOLVE_NO_SYMLINKS: when no symlink is met, the normalised spelling is the
agent-visible path and no name is asked of the kernel (``_fslocate.locate_plain``);
any symlink hands the call to the general walk.

Known differences from the kernel acting for the agent itself: a blocking
write-open of a FIFO without a reader fails with ENXIO instead of waiting;
/dev/tty fails with ENXIO (it would be the supervisor's terminal); a block device
fails with EACCES, as on a nodev mount (a disk's node reads past every path rule); O_NOCTTY is
implied; O_PATH yields a read-only fd for files and directories and EOPNOTSUPP
otherwise, because ADDFD cannot install O_PATH files (``sandbox._fsopen``); a
relative path that climbs above its start directory is re-walked by name from
the agent's root (``sandbox._resolve`` argues this against a per-thread chroot).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from typing import Callable

from sandbox import _fsflags as ff
from sandbox import _libc_fs as lf
from sandbox._fscreds import acting_as, keep_status_files, read_identity
from sandbox._fslocate import Slot, agent_fd_flags, file_type, locate, locate_fd, locate_slot
from sandbox._fsopen import build_open
from sandbox._resolve import AgentView, fail

CAP_DAC_READ_SEARCH = 1 << 2


@dataclass(frozen=True, slots=True)
class FsResult:
    """``kind="fd"``: ``value`` is a new fd the caller owns; ``"value"``: the syscall's return."""

    kind: str
    value: int
    cloexec: bool = False


class FsOp:
    """One resolved call: what the policy decides on, and how to carry it out."""

    def __init__(self, view: AgentView, tool: str, args: dict, action: Callable[[], int | None],
                 cloexec: bool = False, returns_fd: bool = False, uses_umask: bool = True):
        self.tool, self.args = tool, args
        self._view, self._action = view, action
        self._cloexec, self._returns_fd = cloexec, returns_fd
        self._uses_umask = uses_umask

    @property
    def moved_entries(self) -> Callable[[], list[tuple[str, str]]] | None:
        """For a rename: what else it renames (Moving.entries), to be decided with the agent frozen."""
        return self._action.entries if isinstance(self._action, Moving) else None

    def perform(self) -> FsResult:
        """Do the call with the agent's identity; raises OSError(errno) as the kernel would."""
        if not self._view.owned:
            raise OSError(errno.EBADF, "FsOp already closed")
        with _only_oserror("perform"):
            with acting_as(self._view.agent, umask=self._uses_umask):
                result = self._action()
            if self._returns_fd:
                return FsResult("fd", result, self._cloexec)
            return FsResult("value", 0)

    def close(self) -> None:
        with _only_oserror("close"):
            self._view.close()

    def __enter__(self) -> "FsOp":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _only_oserror:
    """Fail closed: anything that is not an OSError with an errno becomes EACCES."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None or (isinstance(exc, OSError) and exc.errno):
            return False
        if isinstance(exc, Exception):
            raise OSError(errno.EACCES, f"{self.what}: {type(exc).__name__}: {exc}") from exc
        return False


def _at(decoded: dict, default: int | None, allowed: int) -> int:
    """The call's AT_* flags: fixed for the legacy calls, checked for the *at ones."""
    if default is not None:
        return default
    return ff.check_bits(decoded.get("at_flags", 0) or 0, allowed, decoded["syscall"])


def _path(decoded: dict) -> bytes | None:
    return decoded.get("path")


def _dirfd(decoded: dict, key: str = "dirfd") -> int:
    return decoded.get(key, lf.AT_FDCWD)


def _args(path: bytes, flags: list[str] | None = None, mode: int | None = None, **extra) -> dict:
    """Every fs tool call carries path, flags and mode; some add dest, target, uid..."""
    return {"path": os.fsdecode(path), "flags": flags or [], "mode": mode, **extra}


# -- builders: (view, decoded) -> (tool, args, action) --------------------------------


def _delete(at: int | None):
    def build(view, d):
        flags = _at(d, at, lf.AT_REMOVEDIR)
        slot = locate_slot(view, _dirfd(d), _path(d), "rmdir" if flags & lf.AT_REMOVEDIR else "unlink")
        args = _args(slot.path, ff.names(flags, ff.AT_FLAG_NAMES))
        return "fs/delete", args, lambda: lf.unlinkat(slot.parent_fd, slot.name, flags)
    return build


def _rename(view, d):
    flags = (d.get("at_flags", 0) or 0) if d["syscall"] == "renameat2" else 0
    ff.check_bits(flags, lf.RENAME_NOREPLACE | lf.RENAME_EXCHANGE | lf.RENAME_WHITEOUT, "renameat2")
    if flags & lf.RENAME_EXCHANGE and flags & (lf.RENAME_NOREPLACE | lf.RENAME_WHITEOUT):
        raise fail(errno.EINVAL, "renameat2: RENAME_EXCHANGE with other flags")
    src = locate_slot(view, _dirfd(d), _path(d), "rename")
    dst = locate_slot(view, _dirfd(d, "newdirfd"), d.get("newpath"), "rename")
    args = _args(src.path, ff.names(flags, ff.RENAME_FLAG_NAMES), dest=os.fsdecode(dst.path))
    sides = [(src, dst)] + ([(dst, src)] if flags & lf.RENAME_EXCHANGE else [])
    return "fs/rename", args, Moving(lambda: lf.renameat2(src.parent_fd, src.name, dst.parent_fd, dst.name, flags),
                                     lambda: [pair for old, new in sides for pair in moved_entries(old, new)])


MAX_MOVED_ENTRIES = 4096  # a directory with more is refused with EXDEV: mv then copies file by file


class Moving:
    """A rename's action, and ``entries()``: (old path, new path) of everything inside a directory
    it moves, for the supervisor to decide with the agent frozen (supervisor._perform_rename)."""

    def __init__(self, action: Callable[[], int | None], entries: Callable[[], list[tuple[str, str]]]):
        self.action, self.entries = action, entries

    def __call__(self) -> int | None:
        return self.action()


def moved_entries(old: Slot, new: Slot) -> list[tuple[str, str]]:
    """What renaming ``old`` to ``new`` also renames: every entry under it when it is a directory,
    found without following a symlink (the agent is frozen meanwhile). EXDEV when it holds more
    than MAX_MOVED_ENTRIES or cannot be read whole: a program then copies and deletes entry by
    entry, each decided on its own."""
    try:
        info = os.stat(old.name, dir_fd=old.parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return []  # renameat2 reports it
    if not stat.S_ISDIR(info.st_mode):
        return []
    old_path, new_path = os.fsdecode(old.path.rstrip(b"/")), os.fsdecode(new.path.rstrip(b"/"))
    pairs: list[tuple[str, str]] = []
    try:
        top = os.open(old.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=old.parent_fd)
        try:
            pending = [""]
            while pending:
                inside = pending.pop()
                where = lf.openat2(top, os.fsencode(inside or "."), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, 0,
                                   lf.RESOLVE_NO_SYMLINKS | lf.RESOLVE_BENEATH)
                try:
                    with os.scandir(where) as entries:
                        for entry in entries:
                            relative = f"{inside}/{entry.name}" if inside else entry.name
                            pairs.append((f"{old_path}/{relative}", f"{new_path}/{relative}"))
                            if len(pairs) > MAX_MOVED_ENTRIES:
                                raise fail(errno.EXDEV, f"over {MAX_MOVED_ENTRIES} entries are not renamed whole")
                            if entry.is_dir(follow_symlinks=False):
                                pending.append(relative)
                finally:
                    os.close(where)
        finally:
            os.close(top)
    except OSError as err:
        if err.errno == errno.EXDEV:
            raise
        raise fail(errno.EXDEV, f"a directory that cannot be read whole is not renamed whole: {err}") from None
    return pairs


def _mkdir(view, d):
    mode = d.get("mode", 0) & 0o7777
    slot = locate_slot(view, _dirfd(d), _path(d), "mkdir")
    args = _args(slot.path, mode=mode)
    return "fs/mkdir", args, lambda: lf.mkdirat(slot.parent_fd, slot.name, mode)


def _link(at: int | None):
    def build(view, d):
        flags = _at(d, at, lf.AT_SYMLINK_FOLLOW | lf.AT_EMPTY_PATH)
        if flags & lf.AT_EMPTY_PATH and not view.agent.cap_effective & CAP_DAC_READ_SEARCH:
            raise fail(errno.ENOENT, "linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH")
        old = locate(view, _dirfd(d), _path(d), follow=bool(flags & lf.AT_SYMLINK_FOLLOW), writes=True,
                     empty=bool(flags & lf.AT_EMPTY_PATH))
        new = locate_slot(view, _dirfd(d, "newdirfd"), d.get("newpath"), "create")
        args = _args(old.path, ff.names(flags, ff.AT_FLAG_NAMES), dest=os.fsdecode(new.path))
        # The magic link names the held inode itself, even when that inode is a symlink.
        source = b"/proc/self/fd/%d" % old.fd
        return "fs/link", args, lambda: lf.linkat(lf.AT_FDCWD, source, new.parent_fd, new.name,
                                                  lf.AT_SYMLINK_FOLLOW)
    return build


def _symlink(view, d):
    target = d["target"]
    where = d["newpath"] if "newpath" in d else _path(d)
    slot = locate_slot(view, d.get("newdirfd", _dirfd(d)), where, "create")
    args = _args(slot.path, target=os.fsdecode(target))
    return "fs/link", args, lambda: lf.symlinkat(target, slot.parent_fd, slot.name)


def _mknod(view, d):
    mode, dev = d.get("mode", 0), d.get("dev", 0) or 0
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFDIR:
        raise fail(errno.EPERM, "mknod of a directory")
    if kind in (stat.S_IFCHR, stat.S_IFBLK):  # a disk or /dev/mem node in a writable directory
        raise fail(errno.EPERM, "mknod of a device node (the sandbox holds no CAP_MKNOD for the agent)")
    if kind not in (0, stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK):
        raise fail(errno.EINVAL, f"mknod type {kind:#o}")
    slot = locate_slot(view, _dirfd(d), _path(d), "create")
    args = _args(slot.path, mode=mode)
    return "fs/write", args, lambda: lf.mknodat(slot.parent_fd, slot.name, mode, dev)


def _target(view, d, at: int | None, allowed: int, by_fd: bool):
    """The object an attribute call changes, plus its AT_* flags."""
    if by_fd:
        return locate_fd(view, d["fd"]), 0
    flags = _at(d, at, allowed)
    path = _path(d)
    if path is None and d["syscall"] in ("utimensat", "futimesat"):
        if _dirfd(d) == lf.AT_FDCWD:
            raise fail(errno.EFAULT, "utimensat(AT_FDCWD, NULL)")
        flags |= lf.AT_EMPTY_PATH  # utimensat(fd, NULL, ...) acts on fd itself
    obj = locate(view, _dirfd(d), path, follow=not flags & lf.AT_SYMLINK_NOFOLLOW, writes=True,
                 empty=bool(flags & lf.AT_EMPTY_PATH))
    return obj, flags


def _chmod(at: int | None, by_fd: bool = False):
    def build(view, d):
        obj, flags = _target(view, d, at, lf.AT_SYMLINK_NOFOLLOW | lf.AT_EMPTY_PATH, by_fd)
        mode = d.get("mode", 0) & 0o7777
        args = _args(obj.path, ff.names(flags, ff.AT_FLAG_NAMES), mode)
        return "fs/write", args, lambda: _chmod_held(obj.fd, mode)
    return build


def _chmod_held(fd: int, mode: int) -> None:
    try:
        lf.fchmodat2(fd, b"", mode, lf.AT_EMPTY_PATH)
    except OSError as exc:
        if exc.errno != errno.ENOSYS:
            raise
        # Before Linux 6.6: chmod through the magic link, which cannot express a symlink itself.
        if file_type(fd) == stat.S_IFLNK:
            raise fail(errno.EOPNOTSUPP, "chmod of a symlink") from None
        os.chmod(b"/proc/self/fd/%d" % fd, mode)


def _id(value) -> int:
    return -1 if value in (None, -1, 0xFFFFFFFF) else value


def _chown(at: int | None, by_fd: bool = False):
    def build(view, d):
        obj, flags = _target(view, d, at, lf.AT_SYMLINK_NOFOLLOW | lf.AT_EMPTY_PATH, by_fd)
        uid, gid = _id(d.get("uid")), _id(d.get("gid"))
        args = _args(obj.path, ff.names(flags, ff.AT_FLAG_NAMES), uid=uid, gid=gid)
        return "fs/write", args, lambda: lf.fchownat(obj.fd, b"", uid, gid, lf.AT_EMPTY_PATH)
    return build


def _utimes(at: int | None):
    def build(view, d):
        obj, flags = _target(view, d, at, lf.AT_SYMLINK_NOFOLLOW | lf.AT_EMPTY_PATH, False)
        times = d.get("times")
        args = _args(obj.path, ff.names(flags, ff.AT_FLAG_NAMES))
        return "fs/write", args, lambda: lf.utimensat(obj.fd, b"", times, lf.AT_EMPTY_PATH)
    return build


def _truncate(by_fd: bool = False):
    def build(view, d):
        obj, _ = _target(view, d, 0, 0, by_fd)
        length = d.get("length", 0)
        if by_fd and not agent_fd_flags(view, d["fd"]) & os.O_ACCMODE:
            raise fail(errno.EINVAL, "ftruncate on an fd not open for writing")
        kind = file_type(obj.fd)
        if kind == stat.S_IFDIR:
            raise fail(errno.EISDIR, f"truncate {obj.path!r}")
        if kind != stat.S_IFREG or length < 0:
            raise fail(errno.EINVAL, f"truncate {obj.path!r} to {length}")

        def action() -> None:
            fd = os.open(b"/proc/self/fd/%d" % obj.fd, os.O_WRONLY | os.O_CLOEXEC | os.O_NOCTTY)
            try:
                os.ftruncate(fd, length)
            finally:
                os.close(fd)
        args = _args(obj.path, length=length)
        return "fs/write", args, action
    return build


def _xattr(remove: bool, at: int | None, by_fd: bool = False):
    def build(view, d):
        obj, _ = _target(view, d, at, lf.AT_SYMLINK_NOFOLLOW, by_fd)
        name = d["xattr_name"]
        xflags = 0 if remove else ff.check_bits(d.get("xattr_flags", 0) or 0, 3, d["syscall"])
        # setxattr on the magic link acts on the held inode itself, symlink or not.
        where = b"/proc/self/fd/%d" % obj.fd
        args = _args(obj.path, ff.names(xflags, ff.XATTR_FLAG_NAMES), xattr=os.fsdecode(name))
        if remove:
            return "fs/write", args, lambda: os.removexattr(where, name)
        value = d.get("xattr_value", b"")
        return "fs/write", args, lambda: os.setxattr(where, name, value, xflags)
    return build


NOFOLLOW = lf.AT_SYMLINK_NOFOLLOW
# syscall name -> builder. Legacy calls pin their AT_* flags; *at calls read at_flags.
OPS: dict[str, Callable] = {
    "open": build_open, "openat": build_open, "openat2": build_open, "creat": build_open,
    "unlink": _delete(0), "rmdir": _delete(lf.AT_REMOVEDIR), "unlinkat": _delete(None),
    "rename": _rename, "renameat": _rename, "renameat2": _rename,
    "mkdir": _mkdir, "mkdirat": _mkdir,
    "link": _link(0), "linkat": _link(None), "symlink": _symlink, "symlinkat": _symlink,
    "mknod": _mknod, "mknodat": _mknod,
    "truncate": _truncate(), "ftruncate": _truncate(by_fd=True),
    "chmod": _chmod(0), "fchmodat": _chmod(0), "fchmodat2": _chmod(None), "fchmod": _chmod(0, by_fd=True),
    "chown": _chown(0), "lchown": _chown(NOFOLLOW), "fchownat": _chown(None), "fchown": _chown(0, by_fd=True),
    "utimensat": _utimes(None), "utime": _utimes(0), "utimes": _utimes(0), "futimesat": _utimes(None),
    "setxattr": _xattr(False, 0), "lsetxattr": _xattr(False, NOFOLLOW), "fsetxattr": _xattr(False, 0, True),
    "removexattr": _xattr(True, 0), "lremovexattr": _xattr(True, NOFOLLOW),
    "fremovexattr": _xattr(True, 0, True),
}
_FD_RESULT = {"open", "openat", "openat2", "creat"}


def keep_task_files() -> None:
    """Let this long-lived thread (a supervisor worker) keep each agent task's /proc
    directory and status file open between calls; the status is still read on every call."""
    keep_status_files()


def prepare(pid: int, decoded: dict) -> FsOp:
    """Resolve (never perform) one decoded fs syscall of task ``pid`` into an FsOp."""
    with _only_oserror("prepare"):
        build = OPS.get(decoded["syscall"])
        if build is None:
            raise fail(errno.ENOSYS, f"{decoded['syscall']} is not a filesystem call")
        view = AgentView.open(read_identity(pid))
        try:
            result = build(view, decoded)
            tool, args, action = result[:3]
            cloexec = result[3] if len(result) > 3 else False
            uses_umask = result[4] if len(result) > 4 else True  # only opens say when they create
            return FsOp(view, tool, args, action, cloexec, decoded["syscall"] in _FD_RESULT, uses_umask)
        except BaseException:
            view.close()
            raise
