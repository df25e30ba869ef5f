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
  with a user namespace, which the launcher does not create.
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
from dataclasses import dataclass
from typing import Iterator

from sandbox import _libc_fs as lf


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """What /proc/<tid>/status says about one agent thread (ids in our namespaces)."""

    tid: int
    ns_tgid: int
    ns_tid: int
    fsuid: int
    fsgid: int
    groups: tuple[int, ...]
    cap_effective: int
    umask: int


_STATUS_KEYS = (b"Uid", b"Gid", b"Groups", b"CapEff", b"Umask", b"NStgid", b"NSpid")


def _fields(status: bytes) -> dict[bytes, bytes]:
    """The lines of /proc/<tid>/status we need (every one follows a newline)."""
    out = {}
    for key in _STATUS_KEYS:
        start = status.find(b"\n" + key + b":")
        if start >= 0:
            end = status.find(b"\n", start + 1)
            out[key] = status[start + len(key) + 2: end if end >= 0 else None].strip()
    return out


def read_identity(tid: int) -> AgentIdentity:
    """Parse /proc/<tid>/status; a vanished task is ESRCH, anything malformed EACCES."""
    try:
        fd = os.open(f"/proc/{tid}/status", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise OSError(errno.ESRCH, f"agent task {tid} is gone") from None
    try:
        fields = _fields(os.read(fd, 16384))  # procfs hands the whole file to one read
    finally:
        os.close(fd)
    try:
        uids = fields[b"Uid"].split()
        gids = fields[b"Gid"].split()
        return AgentIdentity(
            tid=tid,
            ns_tgid=int(fields[b"NStgid"].split()[-1]),
            ns_tid=int(fields[b"NSpid"].split()[-1]),
            fsuid=int(uids[3]),
            fsgid=int(gids[3]),
            groups=tuple(sorted(int(g) for g in fields[b"Groups"].split())),
            cap_effective=int(fields[b"CapEff"], 16),
            umask=int(fields[b"Umask"], 8),
        )
    except (KeyError, IndexError, ValueError):
        raise OSError(errno.EACCES, f"/proc/{tid}/status: unexpected format") from None


_thread = threading.local()


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
    _private_fs()
    ours_uid, ours_gid, ours_groups, ours_caps = _ours()
    lent_caps = ours_caps & agent.cap_effective
    groups = groups_to_use(agent.groups, ours_groups, bool(ours_caps & CAP_SETGID))
    same = (agent.fsuid, agent.fsgid, groups, lent_caps) == (ours_uid, ours_gid, ours_groups, ours_caps)
    if same and not umask:
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
