"""The agent's filesystem identity, and acting with it in the calling thread.

``acting_as(identity)`` switches the *calling thread* to the agent's fsuid, fsgid,
supplementary groups, effective capabilities (never more than ours) and umask,
and restores ours afterwards. All of these are per-thread kernel state when set
with raw syscalls (see ``sandbox._libc_fs``); the umask becomes per-thread once
the thread has its own fs_struct (``unshare(CLONE_FS)``, done once per thread,
which also makes its cwd and root private: nothing here relies on either).

Limits, stated rather than hidden:
- Capabilities are those of our user namespace. When the agent runs in a child
  user namespace its capabilities cover only inodes mapped into it, ours do not
  have that limit; the supervisor of a rootless sandbox runs as the mapped user
  and has no capabilities to lend, so this matters only for a root supervisor
  with a user namespace, which launch() refuses.
- Landlock domains and seccomp filters of the agent do not apply to us.
- glibc's set*id/setgroups wrappers rewrite the credentials of *every* thread,
  so the supervisor must not call them (os.setuid, os.setgroups...) once it
  serves; they would clobber a thread acting for an agent.
"""

from __future__ import annotations

import errno
import os
import threading
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Iterator, NamedTuple

from sandbox import _libc_fs as lf


class AgentIdentity(NamedTuple):
    """What /proc/<tid>/status says about one agent thread (ids in our namespaces).

    Immutable; a tuple rather than a frozen dataclass because one is built per call."""

    tid: int
    ns_tgid: int
    ns_tid: int
    fsuid: int
    fsgid: int
    groups: tuple[int, ...]
    cap_effective: int
    umask: int


_STATUS_KEYS = (b"Uid", b"Gid", b"Groups", b"CapEff", b"Umask", b"NStgid", b"NSpid")
_NEEDLES = tuple((key, b"\n" + key + b":", len(key) + 2) for key in _STATUS_KEYS)
_STATUS_SIZE = 16384  # procfs hands the whole file to one read


def _fields(status: bytes) -> dict[bytes, bytes]:
    """The lines of /proc/<tid>/status we need (every one follows a newline)."""
    out = {}
    for key, needle, skip in _NEEDLES:
        start = status.find(needle)
        if start >= 0:
            end = status.find(b"\n", start + 1)
            out[key] = status[start + skip: end if end >= 0 else None].strip()
    return out


class _TaskFiles:
    """One thread's open /proc/<tid> directory and status file per agent task.

    Status is re-read with pread(0) on every call (credentials and umask change at any
    syscall); only the opens are saved. Both fds name the task they were opened for,
    never a later task that reuses the number: once that task is reaped pread fails
    (ESRCH) and the number is opened afresh, exactly as without the cache. Per thread,
    so no fd is closed under a reader."""

    KEEP = 2  # tasks per thread (bounds fds held by threads blocked on a defer)

    def __init__(self):
        self.fds: dict[int, tuple[int, int]] = {}  # tid -> (O_PATH /proc/<tid>, status)

    def read(self, tid: int) -> bytes:
        kept = self.fds.get(tid)
        if kept is not None:
            try:
                return os.pread(kept[1], _STATUS_SIZE, 0)
            except OSError:
                self._drop(tid)
        if len(self.fds) >= self.KEEP:
            self.clear()
        try:
            directory = os.open(b"/proc/%d" % tid, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise OSError(errno.ESRCH, f"agent task {tid} is gone") from None
        try:
            status = os.open(b"status", os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory)
        except BaseException:
            os.close(directory)
            raise
        self.fds[tid] = (directory, status)
        return os.pread(status, _STATUS_SIZE, 0)

    def directory(self, tid: int) -> int | None:
        kept = self.fds.get(tid)
        return None if kept is None else kept[0]

    def _drop(self, tid: int) -> None:
        for fd in self.fds.pop(tid):
            os.close(fd)

    def clear(self) -> None:
        while self.fds:
            self._drop(next(iter(self.fds)))

    def __del__(self) -> None:  # its thread ended: nobody else knows these fds
        self.clear()


_thread = threading.local()


def keep_status_files() -> None:
    """From now on this thread keeps agents' /proc/<tid> directory and status file open
    between calls (a supervisor worker: it saves opens and path walks on every call)."""
    if getattr(_thread, "task_files", None) is None:
        _thread.task_files = _TaskFiles()


def task_directory(tid: int) -> int | None:
    """This thread's kept O_PATH fd of /proc/<tid>, valid while it reads that task's
    status in the current call (read_identity opened or re-checked it), else None."""
    files = getattr(_thread, "task_files", None)
    return None if files is None else files.directory(tid)


def _read_status(tid: int) -> bytes:
    files = getattr(_thread, "task_files", None)
    if files is not None:
        return files.read(tid)
    try:
        fd = os.open(b"/proc/%d/status" % tid, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise OSError(errno.ESRCH, f"agent task {tid} is gone") from None
    try:
        return os.read(fd, _STATUS_SIZE)
    finally:
        os.close(fd)


def read_identity(tid: int) -> AgentIdentity:
    """Parse /proc/<tid>/status; a vanished task is ESRCH, anything malformed EACCES."""
    fields = _fields(_read_status(tid))
    try:
        uids, gids = fields[b"Uid"].split(), fields[b"Gid"].split()
        groups = fields[b"Groups"]
        return AgentIdentity(
            tid,
            int(fields[b"NStgid"].rpartition(b"\t")[2]),
            int(fields[b"NSpid"].rpartition(b"\t")[2]),
            int(uids[3]),
            int(gids[3]),
            tuple(sorted(map(int, groups.split()))) if groups else (),
            int(fields[b"CapEff"], 16),
            int(fields[b"Umask"], 8),
        )
    except (KeyError, IndexError, ValueError):
        raise OSError(errno.EACCES, f"/proc/{tid}/status: unexpected format") from None


def _private_fs() -> None:
    # Once per thread: the umask (and cwd/root) stop being shared with other threads.
    if not getattr(_thread, "fs_private", False):
        lf.unshare_fs()
        _thread.fs_private = True


def _switch(groups: tuple[int, ...], fsgid: int, fsuid: int, caps: int) -> None:
    # Order matters: groups and fsgid need CAP_SETGID, fsuid needs CAP_SETUID, and
    # lowering the effective set comes last because it may drop both.
    if tuple(sorted(lf.get_thread_groups())) != groups:
        lf.set_thread_groups(groups)
    lf.setfsgid(fsgid)
    lf.setfsuid(fsuid)
    if lf.getfsgid() != fsgid or lf.getfsuid() != fsuid:
        raise OSError(errno.EPERM, f"setfsuid({fsuid})/setfsgid({fsgid}) refused")
    lf.set_effective_caps(caps)


def _ours() -> tuple[int, int, tuple[int, ...], int]:
    """This thread's own (fsuid, fsgid, groups, effective caps), read once per thread.

    The supervisor's identity is fixed before it serves; were it changed later, the
    restore in acting_as would fail and poison the thread (fail closed)."""
    ours = getattr(_thread, "ours", None)
    if ours is None:
        ours = (lf.getfsuid(), lf.getfsgid(), tuple(sorted(lf.get_thread_groups())), lf.get_effective_caps()[0])
        _thread.ours = ours
    return ours


CAP_SETGID = 1 << 6


def _overflow_gid() -> int:
    try:
        with open("/proc/sys/kernel/overflowgid", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65534


OVERFLOW_GID = _overflow_gid()


def groups_to_use(agent: tuple[int, ...], ours: tuple[int, ...], can_setgid: bool) -> tuple[int, ...]:
    """The supplementary groups to act with.

    Without CAP_SETGID (a rootless supervisor) the agent's groups are the ones it
    inherited from us, shown with the overflow gid where its user namespace does
    not map them; then ours are exactly right. Anything else is acted with as
    shown, and setgroups failing then fails the call (fail closed)."""
    if agent == ours or can_setgid:
        return agent
    if all(g in ours or g == OVERFLOW_GID for g in agent):
        return ours
    return agent


_NOTHING_TO_SWITCH = nullcontext()


def acting_as(agent: AgentIdentity, *, umask: bool = True) -> AbstractContextManager:
    """Run the body with the agent's fs identity (and umask) in this thread; always restore."""
    if getattr(_thread, "poisoned", False):
        raise OSError(errno.EACCES, "this thread could not restore its credentials earlier")
    key = (agent.fsuid, agent.fsgid, agent.groups, agent.cap_effective)
    if not umask and key == getattr(_thread, "same_as_ours", None):
        return _NOTHING_TO_SWITCH  # the last agent seen here acts as we are: nothing to do
    _private_fs()
    ours_uid, ours_gid, ours_groups, ours_caps = _ours()
    lent_caps = ours_caps & agent.cap_effective
    groups = groups_to_use(agent.groups, ours_groups, bool(ours_caps & CAP_SETGID))
    same = (agent.fsuid, agent.fsgid, groups, lent_caps) == (ours_uid, ours_gid, ours_groups, ours_caps)
    if same:
        _thread.same_as_ours = key  # a pure function of key and our fixed identity
        if not umask:
            return _NOTHING_TO_SWITCH  # the common case of a root agent: no syscalls at all
    return _switched(agent, groups, lent_caps, same, umask)


@contextmanager
def _switched(agent: AgentIdentity, groups: tuple[int, ...], lent_caps: int, same: bool,
              umask: bool) -> Iterator[None]:
    ours_uid, ours_gid, ours_groups, ours_caps = _ours()
    old_umask = os.umask(agent.umask) if umask else None
    try:
        if not same:
            _switch(groups, agent.fsgid, agent.fsuid, lent_caps)
        yield
    finally:
        try:
            if not same:
                # Raise the effective set first: restoring groups needs CAP_SETGID.
                lf.set_effective_caps(ours_caps)
                _switch(ours_groups, ours_gid, ours_uid, ours_caps)
            if old_umask is not None:
                os.umask(old_umask)
        except BaseException:
            _thread.poisoned = True
            raise
