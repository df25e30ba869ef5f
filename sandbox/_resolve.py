"""Path resolution in an agent's view of the filesystem, to O_PATH fds.

Every lookup goes through ``openat2`` under the agent's root (``/proc/<tid>/root``)
with RESOLVE_NO_MAGICLINKS, so ``..`` at the agent's root stays there, absolute
symlinks land in the agent's root and /proc magic links are refused (ELOOP).

Relative paths need both a root (for ``..`` and absolute symlinks) and a start
directory, which openat2 cannot take separately: RESOLVE_IN_ROOT makes the start
the root, RESOLVE_BENEATH forbids leaving it. So a relative path is first walked
from the start with RESOLVE_BENEATH (exact and race-free: the start is a held fd);
only when that fails with EXDEV (it climbs above the start or meets an absolute
symlink) is it walked again from the root as "<start's agent path>/<path>" with
RESOLVE_IN_ROOT. Both walks stay inside the agent's root, and callers decide on
the object the walk returned, never on the string; an agent renaming an ancestor
of its own cwd during the second walk can only change which of its own files it
gets, and the second walk needs search permission on the start's ancestors,
which the kernel would not ask of the agent. (A per-thread chroot into the agent's root would give exact kernel
semantics but needs CAP_SYS_CHROOT, which a rootless supervisor lacks.)

Names the kernel would resolve through the agent's own procfs are rewritten,
because ``self`` there would mean the supervisor: ``/proc/self`` and
``/proc/thread-self`` become the agent's pid (in its namespace), ``/dev/fd``,
``/dev/std{in,out,err}`` its fd directory, and ``/proc/<agent>/fd/N[/rest]``
re-opens the agent's fd N through our ``/proc/<tid>/fd/N`` (its documented
meaning), continuing with ``rest`` as a dirfd-relative lookup;
``/proc/<agent>/exe`` likewise. Every other magic link (root, cwd, ns/*,
map_files/*) fails with ELOOP. Objects that end up in a procfs must belong to
the agent's own process, except a few read-only files (``ps`` works): the
supervisor's access to other processes' /proc files is broader than the agent's.

Agent-visible paths come from the kernel's name for the fd
(``readlink /proc/self/fd/N``) minus the name of the agent's root; an object
outside the agent's root fails with EACCES.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass, field

from sandbox import _libc_fs as lf
from sandbox._fscreds import AgentIdentity, task_directory

PATH_FD = os.O_PATH | os.O_CLOEXEC
_EAGAIN_RETRIES = 8
MAX_SYMLINK_HOPS = 40
# Files of another process's /proc directory that carry no ptrace-mode check.
FOREIGN_PROC_READABLE = frozenset({b"", b"stat", b"status", b"cmdline", b"comm", b"statm"})
_STD_STREAMS = {b"stdin": b"0", b"stdout": b"1", b"stderr": b"2"}


def fail(err: int, what: str) -> OSError:
    return OSError(err, f"{what}: {os.strerror(err)}")


def _open_own_fd_dir(at_import: bool = False) -> tuple[int, int]:
    try:
        return os.getpid(), os.open(b"/proc/self/fd", PATH_FD | os.O_DIRECTORY)
    except OSError:
        if not at_import:
            raise
        return os.getpid(), -1  # no procfs yet: the first call retries and fails closed


# (our pid, O_PATH fd of our /proc/self/fd): naming or re-opening one of our fds through
# it skips the walk of /proc and /proc/self on every call. Opened at import so it is
# part of the fd table from the start; a forked child opens its own (its pid differs).
_own_fd_dir = _open_own_fd_dir(at_import=True)
_own_fd_dir_lock = threading.Lock()


def own_fd_dir() -> int:
    """A directory fd whose entry ``b"%d" % n`` is this process's fd ``n`` (a magic link)."""
    global _own_fd_dir
    pid, fd = _own_fd_dir
    if pid != os.getpid() or fd < 0:
        with _own_fd_dir_lock:
            if _own_fd_dir[0] != os.getpid() or _own_fd_dir[1] < 0:
                _own_fd_dir = _open_own_fd_dir()
            pid, fd = _own_fd_dir
    return fd


def host_name(fd: int) -> bytes:
    """The kernel's name for ``fd`` as seen from the supervisor."""
    return os.readlink(b"%d" % fd, dir_fd=own_fd_dir())


@dataclass
class Start:
    """A start directory: a held fd and, computed on demand, its agent-visible path."""

    fd: int
    path: bytes | None = None


@dataclass
class AgentView:
    """The agent's root and identity; owns every fd it opens until ``close()``."""

    agent: AgentIdentity
    root_fd: int = -1
    owned: list[int] = field(default_factory=list)
    _root_host: bytes | None = None

    @classmethod
    def open(cls, agent: AgentIdentity) -> "AgentView":
        view = cls(agent)
        try:
            view.root_fd = view.keep(view._proc_open(b"root", PATH_FD | os.O_DIRECTORY))
        except FileNotFoundError:
            view.close()
            raise fail(errno.ESRCH, f"agent task {agent.tid}") from None
        except BaseException:
            view.close()
            raise
        return view

    def _proc_open(self, name: bytes, flags: int) -> int:
        """Open /proc/<tid>/<name>, through the thread's kept /proc/<tid> fd when it has one."""
        directory = task_directory(self.agent.tid)
        if directory is None:
            return os.open(b"/proc/%d/%s" % (self.agent.tid, name), flags)
        return os.open(name, flags, dir_fd=directory)

    @property
    def root_host(self) -> bytes:
        """The kernel's name for the agent's root as we see it (read once, on first need)."""
        if self._root_host is None:
            self._root_host = host_name(self.root_fd)
        return self._root_host

    def keep(self, fd: int) -> int:
        self.owned.append(fd)
        return fd

    def close(self) -> None:
        while self.owned:
            os.close(self.owned.pop())

    # -- start directories (opened with the supervisor's credentials) --------------

    def agent_fd(self, number: int) -> int:
        """O_PATH fd to what the agent's fd ``number`` refers to (EBADF if none)."""
        if number < 0:
            raise fail(errno.EBADF, f"fd {number}")
        try:
            return self.agent_link(f"fd/{number}")
        except FileNotFoundError:
            raise fail(errno.EBADF, f"agent fd {number}") from None

    def agent_link(self, link: str) -> int:
        """O_PATH fd to what the agent's magic link /proc/<tid>/<link> points at."""
        return self.keep(self._proc_open(os.fsencode(link), PATH_FD))

    def start(self, dirfd: int) -> Start:
        if dirfd == lf.AT_FDCWD:
            return Start(self.keep(self._proc_open(b"cwd", PATH_FD)))
        return Start(self.agent_fd(dirfd))

    # -- agent-visible names -------------------------------------------------------

    def visible(self, fd: int, *, anonymous_ok: bool = False) -> bytes:
        """The agent-visible absolute path of ``fd``; EACCES when outside the agent's root."""
        name = host_name(fd)
        if not name.startswith(b"/") or name.startswith(b"/memfd:"):
            if anonymous_ok:
                return name  # pipe:[..], socket:[..], anon_inode:[..], /memfd:..
            raise fail(errno.EACCES, f"{name!r} is not a path")
        suffix = b""
        if name.endswith(b" (deleted)") and os.fstat(fd).st_nlink == 0:
            if not anonymous_ok:  # only an fd the agent holds can still reach it
                raise fail(errno.ENOENT, f"{name!r}")
            name, suffix = name[: -len(b" (deleted)")], b" (deleted)"
        root = self.root_host
        if root == b"/":
            return name + suffix
        if name == root:
            return b"/" + suffix
        if name.startswith(root + b"/"):
            return name[len(root):] + suffix
        raise fail(errno.EACCES, f"{name!r} is outside the agent's root")

    def start_path(self, start: Start) -> bytes:
        if start.path is None:
            start.path = self.visible(start.fd)
        return start.path

    # -- walks (run with the agent's credentials) ----------------------------------

    def walk(self, start: Start | None, path: bytes, oflags: int, resolve: int) -> int:
        """openat2 ``path`` as the agent would (``resolve`` = the agent's own RESOLVE_*)."""
        base = resolve | lf.RESOLVE_NO_MAGICLINKS
        absolute = path.startswith(b"/")
        if resolve & (lf.RESOLVE_IN_ROOT | lf.RESOLVE_BENEATH):
            if absolute and resolve & lf.RESOLVE_BENEATH:
                raise fail(errno.EXDEV, "absolute path with RESOLVE_BENEATH")
            return self._openat2(start.fd, path, oflags, base)
        if absolute or start is None:
            return self._openat2(self.root_fd, path, oflags, base | lf.RESOLVE_IN_ROOT)
        try:
            return self._openat2(start.fd, path, oflags, base | lf.RESOLVE_BENEATH)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
        joined = self.start_path(start).rstrip(b"/") + b"/" + path
        return self._openat2(self.root_fd, joined, oflags, base | lf.RESOLVE_IN_ROOT)

    def _openat2(self, dirfd: int, path: bytes, oflags: int, resolve: int) -> int:
        for _ in range(_EAGAIN_RETRIES):
            try:
                return self.keep(lf.openat2(dirfd, path, oflags | PATH_FD, 0, resolve))
            except OSError as exc:
                if exc.errno != errno.EAGAIN or resolve & lf.RESOLVE_CACHED:
                    raise
        raise fail(errno.EAGAIN, "path kept changing during resolution")

    # -- /proc rewriting and checks --------------------------------------------------

    def rewrite(self, path: bytes, links: bool = True) -> tuple[str | None, bytes]:
        """Rewrite self-referring /proc and /dev names.

        Returns (None, rewritten path), or for the agent's own fd and exe links
        (link name under /proc/<tid>, the rest of the path)."""
        if not path.startswith(b"/") or (b"proc" not in path and b"dev" not in path):
            return None, path  # every rewritten name has a /proc or /dev component
        parts = [p for p in path.split(b"/") if p not in (b"", b".")]
        tgid, tid = b"%d" % self.agent.ns_tgid, b"%d" % self.agent.ns_tid
        head = parts[:2]
        if head == [b"dev", b"fd"]:
            parts = [b"proc", tgid, b"fd"] + parts[2:]
        elif len(parts) >= 2 and head[0] == b"dev" and head[1] in _STD_STREAMS:
            parts = [b"proc", tgid, b"fd", _STD_STREAMS[head[1]]] + parts[2:]
        elif head == [b"proc", b"self"]:
            parts = [b"proc", tgid] + parts[2:]
        elif head == [b"proc", b"thread-self"]:
            parts = [b"proc", tgid, b"task", tid] + parts[2:]
        elif head != [b"proc", tgid]:
            return None, path
        for own in ([b"proc", tgid], [b"proc", tgid, b"task", tid]) if links else ():
            n = len(own)
            if parts[:n] != own or len(parts) == n:
                continue
            if parts[n:] == [b"exe"]:
                return "exe", b""
            number = parts[n + 1] if parts[n] == b"fd" and len(parts) > n + 1 else b""
            # procfs spells fd numbers without leading zeros; anything else is not an fd link.
            if number.isdigit() and number == b"%d" % int(number):
                return f"fd/{int(number)}", b"/".join(parts[n + 2:])
        trailing = b"/" if path.endswith(b"/") else b""
        return None, b"/" + b"/".join(parts) + trailing

    def check_proc(self, fd: int, visible: bytes, writes: bool) -> None:
        """Refuse procfs objects of processes other than the agent (see module doc)."""
        if lf.fstatfs_type(fd) != lf.PROC_SUPER_MAGIC:
            return
        parts = visible.split(b"/")[1:]
        if not parts or parts[0] != b"proc":
            raise fail(errno.EACCES, f"procfs outside /proc: {visible!r}")
        if len(parts) < 2 or not parts[1].isdigit():
            return
        if int(parts[1]) == self.agent.ns_tgid and self._is_agent(parts[1]):
            return
        rest = b"/".join(parts[2:])
        if writes or rest not in FOREIGN_PROC_READABLE:
            raise fail(errno.EACCES, f"{visible!r} belongs to another process")

    def _is_agent(self, number: bytes) -> bool:
        """Whether /proc/<number> in the agent's view is the agent's own process.

        The number matches the agent's pid in its namespace; that proves nothing when the
        procfs belongs to another pid namespace, so compare the task's pid namespace and
        innermost tgid as well."""
        try:
            piddir = lf.openat2(self.root_fd, b"/proc/" + number, PATH_FD | os.O_DIRECTORY, 0,
                                lf.RESOLVE_IN_ROOT | lf.RESOLVE_NO_SYMLINKS)
            try:
                theirs_ns = os.stat(b"ns/pid", dir_fd=piddir).st_ino  # stat of a magic link: read-only
                status = os.open(b"status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=piddir)
                try:
                    text = os.read(status, 8192)
                finally:
                    os.close(status)
            finally:
                os.close(piddir)
            ours_ns = os.stat(f"/proc/{self.agent.tid}/ns/pid").st_ino
        except OSError:
            return False  # cannot prove it is the agent: treat as another process
        nstgid = next((line.split()[-1] for line in text.splitlines() if line.startswith(b"NStgid:")), b"")
        return theirs_ns == ours_ns and nstgid == number


def split_last(path: bytes) -> tuple[bytes, bytes, bool]:
    """(directory part, last component, had trailing slash); '' last for '/'."""
    stripped = path.rstrip(b"/")
    trailing = stripped != path
    head, sep, name = stripped.rpartition(b"/")
    if not sep:
        return b".", stripped, trailing
    return (head or b"/"), name, trailing


def is_type(fd: int, test) -> bool:
    return test(os.fstat(fd).st_mode)


def may_follow(parent_fd: int, name: bytes, fsuid: int) -> bool:
    """fs.protected_symlinks: no following another user's link in a sticky world-writable dir."""
    dir_st = os.fstat(parent_fd)
    if not (dir_st.st_mode & stat.S_ISVTX and dir_st.st_mode & stat.S_IWOTH):
        return True
    link_uid = os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_uid
    return link_uid in (fsuid, dir_st.st_uid)
