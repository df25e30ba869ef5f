"""Finding the real object (or the parent-and-name slot) a syscall names.

Two shapes, as in the kernel: an *object* lookup resolves the whole path to an
existing inode (following a trailing symlink or not, as the syscall does); a
*slot* lookup resolves the parent directory and keeps the last component, for
calls that create, remove or rename names. Either way the caller gets held fds
and the agent-visible path of what they refer to; perform() later acts on those
fds and never looks the agent's string up again.

Opens of the agent's procfs and fds happen with the supervisor's credentials
(the agent may always reach its own); path walks run with the agent's.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from sandbox import _libc_fs as lf
from sandbox._fscreds import acting_as
from sandbox._resolve import MAX_SYMLINK_HOPS, AgentView, Start, fail, may_follow, split_last

# Agent-requested resolve flags under which /proc/self and /dev/fd keep their raw meaning.
_NO_REWRITE = lf.RESOLVE_IN_ROOT | lf.RESOLVE_BENEATH | lf.RESOLVE_NO_SYMLINKS | lf.RESOLVE_NO_MAGICLINKS

# errno when the last component is '.', '..' or the root, per kind of call.
_DOT_ERRNO = {
    "unlink": errno.EISDIR,
    "rmdir": errno.EINVAL,
    "mkdir": errno.EEXIST,
    "rename": errno.EBUSY,
    "create": errno.EEXIST,
    "open": errno.EISDIR,
}


@dataclass(frozen=True, slots=True)
class Obj:
    """An existing object: an O_PATH fd and its agent-visible path."""

    fd: int
    path: bytes


@dataclass(frozen=True, slots=True)
class Slot:
    """A name in a directory: O_PATH parent fd, the name as the kernel gets it, the full path."""

    parent_fd: int
    name: bytes
    path: bytes


def _join(parent: bytes, name: bytes) -> bytes:
    return parent.rstrip(b"/") + b"/" + name


def _start(view: AgentView, base: int | Start, needed: bool) -> Start | None:
    if isinstance(base, Start):
        return base
    return view.start(base) if needed else None


def locate(view: AgentView, base: int | Start, path: bytes | None, *, follow: bool, writes: bool,
           resolve: int = 0, empty: bool = False, oflags: int = 0) -> Obj:
    """Resolve an existing object; ``empty`` allows an empty path to mean ``base`` itself."""
    nofollow = 0 if follow else os.O_NOFOLLOW
    if not path:
        if not empty:
            raise fail(errno.ENOENT, "empty path")
        start = _start(view, base, True)
        obj = Obj(start.fd, view.visible(start.fd, anonymous_ok=True))
    else:
        link, rest = (None, path) if resolve & _NO_REWRITE else view.rewrite(path)
        if link is not None:
            try:
                fd = view.agent_link(link)
            except FileNotFoundError:
                raise fail(errno.ENOENT, f"agent has no {link}") from None
            if rest:
                start = Start(fd)
                with acting_as(view.agent, umask=False):
                    fd = view.walk(start, rest, oflags | nofollow, resolve)
                    obj = Obj(fd, view.visible(fd))
            elif not follow:
                raise fail(errno.ELOOP, "fd link with O_NOFOLLOW")
            else:
                obj = Obj(fd, view.visible(fd, anonymous_ok=True))
        else:
            start = _start(view, base, not rest.startswith(b"/") or bool(resolve & _NO_REWRITE))
            with acting_as(view.agent, umask=False):
                fd = view.walk(start, rest, oflags | nofollow, resolve)
                obj = Obj(fd, view.visible(fd))
    view.check_proc(obj.fd, obj.path, writes)
    return obj


_REWRITTEN_PREFIXES = (b"/proc", b"/dev/fd", b"/dev/std")  # see AgentView.rewrite


def plain_path(path: bytes) -> bytes | None:
    """``path`` normalised when resolving it needs no start directory, no '..', no
    trailing-slash rule and no /proc or /dev rewrite; else None (the general walk)."""
    if not path.startswith(b"/") or b".." in path or path.endswith((b"/", b"/.")):
        return None
    if b"//" in path or b"/./" in path:
        path = b"/" + b"/".join(part for part in path.split(b"/") if part not in (b"", b"."))
    return None if path.startswith(_REWRITTEN_PREFIXES) else path


def locate_plain(view: AgentView, path: bytes, *, follow: bool, writes: bool, oflags: int = 0) -> Obj | None:
    """``locate`` for the common case, or None when the general walk must decide.

    An absolute path without '..' that resolves with no symlink at all names, in the
    agent's root, exactly its normalised spelling: that is the agent-visible path, with
    no need to ask the kernel for the object's name. A symlink on the way (ELOOP) hands
    over to the general walk; any other error is the one the general walk would meet
    first, since both visit the same components up to it."""
    normal = plain_path(path)
    if normal is None:
        return None
    nofollow = 0 if follow else os.O_NOFOLLOW
    try:
        with acting_as(view.agent, umask=False):
            fd = view.walk(None, normal, oflags | nofollow, lf.RESOLVE_NO_SYMLINKS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None
        raise
    obj = Obj(fd, normal)
    view.check_proc(obj.fd, obj.path, writes)
    return obj


def locate_slot(view: AgentView, base: int | Start, path: bytes | None, kind: str, *, resolve: int = 0) -> Slot:
    """Resolve the parent of ``path`` and keep its last component (never '.', '..' or empty)."""
    if not path:
        raise fail(errno.ENOENT, "empty path")
    if not resolve & _NO_REWRITE:
        _, path = view.rewrite(path, links=False)
    head, name, trailing = split_last(path)
    if name in (b"", b".", b".."):
        err = errno.ENOTEMPTY if kind == "rmdir" and name == b".." else _DOT_ERRNO[kind]
        raise fail(err, f"{kind} of {path!r}")
    start = _start(view, base, not head.startswith(b"/") or bool(resolve & _NO_REWRITE))
    with acting_as(view.agent, umask=False):
        parent = view.walk(start, head, os.O_DIRECTORY, resolve)
        parent_path = view.visible(parent)
    view.check_proc(parent, parent_path, True)
    return Slot(parent, name + (b"/" if trailing else b""), _join(parent_path, name))


def creation_slot(view: AgentView, base: int | Start, path: bytes, *, follow: bool, resolve: int) -> Slot:
    """Where O_CREAT without O_EXCL creates: the path, or the end of a dangling symlink chain."""
    slot = locate_slot(view, base, path, "open", resolve=resolve)
    for _ in range(MAX_SYMLINK_HOPS):
        if slot.name.endswith(b"/"):
            raise fail(errno.EISDIR, f"create {slot.path!r}")
        with acting_as(view.agent, umask=False):
            try:
                target = os.readlink(slot.name, dir_fd=slot.parent_fd)
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOENT):
                    return slot  # absent, or created as a non-link meanwhile (O_NOFOLLOW guards)
                raise
            if not follow or resolve & (lf.RESOLVE_NO_SYMLINKS | lf.RESOLVE_IN_ROOT | lf.RESOLVE_BENEATH):
                raise fail(errno.ELOOP, f"dangling symlink {slot.path!r}")
            if not may_follow(slot.parent_fd, slot.name, view.agent.fsuid):
                raise fail(errno.EACCES, f"protected symlink {slot.path!r}")
        parent_path = slot.path[: slot.path.rstrip(b"/").rfind(b"/")] or b"/"
        slot = locate_slot(view, Start(slot.parent_fd, parent_path), target, "open", resolve=resolve)
    raise fail(errno.ELOOP, f"symlink chain from {path!r}")


def agent_fd_flags(view: AgentView, number: int) -> int:
    """The open flags of the agent's fd ``number`` (from /proc/<tid>/fdinfo)."""
    try:
        with open(f"/proc/{view.agent.tid}/fdinfo/{number}", "rb") as f:
            for line in f:
                if line.startswith(b"flags:"):
                    return int(line.split()[1], 8)
    except (FileNotFoundError, ValueError):
        pass
    raise fail(errno.EBADF, f"agent fd {number}")


def locate_fd(view: AgentView, number: int) -> Obj:
    """The object behind the agent's fd ``number``, for fchmod-style calls (O_PATH fds: EBADF)."""
    if number < 0 or agent_fd_flags(view, number) & os.O_PATH:
        raise fail(errno.EBADF, f"agent fd {number}")
    fd = view.agent_fd(number)
    obj = Obj(fd, view.visible(fd, anonymous_ok=True))
    view.check_proc(obj.fd, obj.path, True)
    return obj


def file_type(fd: int) -> int:
    return stat.S_IFMT(os.fstat(fd).st_mode)
