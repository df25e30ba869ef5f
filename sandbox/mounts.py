"""The agent's mount namespace: private propagation, then a /dev of its own and a /proc and /sys of
its own namespaces.

``plan`` lists the mounts (and what is made in the new /dev); sandbox's init performs them, in
Python (``apply``) or compiled (sandbox/init_c/), in the same order."""

from __future__ import annotations

import os
import stat
import tempfile
from typing import Callable, NamedTuple

from sandbox import _libc_ns
from sandbox.errors import SandboxError
from sandbox.spec import SandboxSpec

_PSEUDO = _libc_ns.MS_NOSUID | _libc_ns.MS_NODEV | _libc_ns.MS_NOEXEC
_MS_BIND = 0x1000
_MS_REMOUNT = 0x20
_MS_MOVE = 0x2000

# The agent's /dev: a tmpfs with these host nodes bound in (no disk, loop device, /dev/mem, other
# users' terminals, host shared memory), a devpts and a /dev/shm of its own, and these symlinks.
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}
# Built at /proc, then moved to /dev: until then the host's nodes are still there to be bound, and
# /proc shows again what it showed before (the sandbox's own procfs is mounted next).
_DEV_STAGING = "/proc"


class Mount(NamedTuple):
    source: str | None
    target: str
    fstype: str | None
    flags: int
    data: str | None = None

    def call(self) -> str:
        return _libc_ns.mount_call(self.source, self.target, self.fstype, self.flags)

    def apply(self) -> None:
        _libc_ns.mount(*self)


class Make(NamedTuple):
    """A directory, an empty file (a mount point) or a symlink, made in a tmpfs the plan mounted
    just before: never on a host filesystem."""
    kind: str  # a key of _MAKE
    path: str
    target: str | None = None  # the symlink's content

    def call(self) -> str:
        return _MAKE[self.kind][1].format(path=self.path, target=self.target)

    def apply(self) -> None:
        try:
            _MAKE[self.kind][0](self)
        except OSError as err:
            raise OSError(err.errno, f"{self.call()}: {os.strerror(err.errno)}") from None


# kind -> (make it, how its failure is named); sandbox/init_c/setup.c makes them the same way
_MAKE = {
    "dir": (lambda make: os.mkdir(make.path, 0o755), "mkdir({path!r})"),
    "file": (lambda make: os.close(os.open(make.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)),
             "open({path!r}, O_CREAT|O_EXCL)"),
    "symlink": (lambda make: os.symlink(make.target, make.path), "symlink({target!r}, {path!r})"),
}


def plan(spec: SandboxSpec, file_source: Callable[[bytes], str]) -> list[Mount | Make]:
    """The mounts, in order; ``file_source(content)`` makes the host file shown at a path of
    ``spec.files`` (see ``write_file_source``). Done by the sandbox's pid 1: procfs shows the pid
    namespace of the process that mounts it."""
    if "mount" not in spec.namespaces:
        if spec.files:  # fail closed: the agent would read the host's files instead
            raise SandboxError("mounts", f"files {sorted(spec.files)} need a mount namespace",
                               "keep 'mount' in the sandbox's namespaces")
        if spec.hidden:  # fail closed: the agent could reach the launcher's control sockets
            raise SandboxError("mounts", f"hiding {sorted(spec.hidden)} needs a mount namespace",
                               "keep 'mount' in the sandbox's namespaces")
        return []
    # Must come first: with shared propagation the mounts below would also appear on the host.
    mounts = [Mount(None, "/", None, _libc_ns.MS_REC | _libc_ns.MS_PRIVATE), *_dev()]
    if "pid" in spec.namespaces:
        # Safe: a fresh procfs lists only the sandbox's own processes; the host's /proc is covered.
        mounts.append(Mount("proc", "/proc", "proc", _PSEUDO))
    if "net" in spec.namespaces:
        # Safe: sysfs mounted here shows the agent's network namespace (only lo) in /sys/class/net.
        # Read-only: for a root agent a writable sysfs would still reach host-wide kernel knobs.
        mounts.append(Mount("sysfs", "/sys", "sysfs", _PSEUDO | _libc_ns.MS_RDONLY))
    for source, target in spec.binds:
        # Seen only in the agent's namespace (propagation is private); the remount adds the flags,
        # which a bind mount ignores on its first call.
        mounts += _bind(source, target, _PSEUDO)
    for path, content in sorted(spec.files.items()):
        # Safe: seen only in the sandbox (private propagation); the host's file is untouched.
        mounts += _bind(file_source(content), _file_target(path), _PSEUDO | _libc_ns.MS_RDONLY)
    for path in spec.hidden:
        # Safe: an empty, read-only tmpfs over the directory hides what the launcher keeps there.
        mounts.append(Mount("tmpfs", path, "tmpfs", _PSEUDO | _libc_ns.MS_RDONLY, "mode=0700,size=4k"))
    return mounts


def _dev() -> list[Mount | Make]:
    """A /dev of the agent's own instead of the host's devtmpfs, where a root agent under a kernel-
    decided fs/read would read any disk past every hidden directory. Read-only but for /dev/shm."""
    stage = _DEV_STAGING
    steps = [Mount("tmpfs", stage, "tmpfs", _PSEUDO, "mode=0755,size=4k"),
             Make("dir", f"{stage}/pts"), Make("dir", f"{stage}/shm")]
    for name in DEV_NODES:
        if _is_char_device(f"/dev/{name}"):  # one the host lacks (or has replaced), the agent lacks too
            # A bind keeps the host mount's flags (not the tmpfs's nodev): the node works. Read-only,
            # so a root agent cannot chmod or chown the host's node (opening a device to write
            # still works on a read-only mount).
            steps += [Make("file", f"{stage}/{name}"),
                      *_bind(f"/dev/{name}", f"{stage}/{name}", _mount_flags(f"/dev/{name}") | _libc_ns.MS_RDONLY)]
    steps += [Make("symlink", f"{stage}/{name}", target) for name, target in DEV_LINKS.items()]
    # Terminals of its own (none of the host's other ones): /dev/ptmx opens this instance's ptmx.
    steps.append(Mount("devpts", f"{stage}/pts", "devpts", _libc_ns.MS_NOSUID | _libc_ns.MS_NOEXEC,
                       "newinstance,ptmxmode=0666,mode=0620"))
    steps.append(Mount("tmpfs", f"{stage}/shm", "tmpfs", _PSEUDO, "mode=1777"))  # POSIX shm, semaphores
    steps.append(Mount(stage, "/dev", None, _MS_MOVE))
    steps.append(Mount(None, "/dev", None, _MS_REMOUNT | _MS_BIND | _PSEUDO | _libc_ns.MS_RDONLY))
    return steps


# statvfs f_flag bits that are mount(2) flags of the same value (nosuid, nodev, noexec, noatime,
# nodiratime; relatime, the default, differs): a remount in a user namespace must keep them.
_KEPT_MOUNT_FLAGS = 0x2 | 0x4 | 0x8 | 0x400 | 0x800


def _mount_flags(path: str) -> int:
    return os.statvfs(path).f_flag & _KEPT_MOUNT_FLAGS


def _is_char_device(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def _bind(source: str, target: str, flags: int) -> list[Mount]:
    return [Mount(source, target, None, _MS_BIND), Mount(None, target, None, _MS_REMOUNT | _MS_BIND | flags)]


def _file_target(path_inside: str) -> str:
    target = os.path.realpath(path_inside)  # mount(2) follows a symlink (resolv.conf often is one)
    if not os.path.isfile(target):
        raise SandboxError("mounts", f"cannot show a file at {path_inside}: {target} is not an existing file",
                           f"create {target} on the host (it can be empty); the sandbox never creates host files")
    return target


def write_file_source(content: bytes, session_id: str = "") -> str:
    """A private temp file holding ``content``, to be bind-mounted and then unlinked at once: the
    mount keeps the inode alive, so nothing is left on the host and nothing needs cleaning up."""
    # The session in the name lets the run's reaper find it if the run dies before the unlink.
    prefix = f"faramesh-sandbox-file-{session_id}-" if session_id else "faramesh-sandbox-file-"
    fd, source = tempfile.mkstemp(prefix=prefix)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.chmod(source, 0o644)  # the agent may run as another user than the launcher
    except BaseException:
        os.unlink(source)
        raise
    return source


class FileSources:
    """The temp files a plan made, unlinked together once mounted (or once nothing will mount them)."""

    def __init__(self, session_id: str = ""):
        self.session_id, self.paths = session_id, []

    def __call__(self, content: bytes) -> str:
        self.paths.append(write_file_source(content, self.session_id))
        return self.paths[-1]

    def unlink(self) -> None:
        for path in self.paths:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.paths = []


def apply(spec: SandboxSpec) -> None:
    """The Python init's stage: every mount of ``plan`` in turn."""
    sources = FileSources(spec.session_id)
    try:
        for step in plan(spec, sources):
            step.apply()
    finally:
        sources.unlink()


def bind_file(path_inside: str, content: bytes, session_id: str = "") -> None:
    """Show ``content`` read-only at the existing file ``path_inside``; only in a private mount namespace."""
    sources = FileSources(session_id)
    try:
        for mount in _bind(sources(content), _file_target(path_inside), _PSEUDO | _libc_ns.MS_RDONLY):
            _libc_ns.mount(*mount)
    finally:
        sources.unlink()
