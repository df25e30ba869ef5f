"""The agent's mount namespace: private propagation, then a /proc and /sys of its own namespaces."""

from __future__ import annotations

import os
import tempfile

from sandbox import _libc_ns
from sandbox.errors import SandboxError
from sandbox.spec import SandboxSpec

_PSEUDO = _libc_ns.MS_NOSUID | _libc_ns.MS_NODEV | _libc_ns.MS_NOEXEC


def apply(spec: SandboxSpec) -> None:
    """Runs in the sandbox's pid 1: procfs shows the pid namespace of the process that mounts it."""
    if "mount" not in spec.namespaces:
        if spec.files:  # fail closed: the agent would read the host's files instead
            raise SandboxError("mounts", f"files {sorted(spec.files)} need a mount namespace",
                               "keep 'mount' in the sandbox's namespaces")
        if spec.hidden:  # fail closed: the agent could reach the launcher's control sockets
            raise SandboxError("mounts", f"hiding {sorted(spec.hidden)} needs a mount namespace",
                               "keep 'mount' in the sandbox's namespaces")
        return
    # Must come first: with shared propagation the mounts below would also appear on the host.
    _libc_ns.mount(None, "/", None, _libc_ns.MS_REC | _libc_ns.MS_PRIVATE)
    if "pid" in spec.namespaces:
        # Safe: a fresh procfs lists only the sandbox's own processes; the host's /proc is covered.
        _libc_ns.mount("proc", "/proc", "proc", _PSEUDO)
    if "net" in spec.namespaces:
        # Safe: sysfs mounted here shows the agent's network namespace (only lo) in /sys/class/net.
        # Read-only: for a root agent a writable sysfs would still reach host-wide kernel knobs.
        _libc_ns.mount("sysfs", "/sys", "sysfs", _PSEUDO | _libc_ns.MS_RDONLY)
    for source, target in spec.binds:
        # Seen only in the agent's namespace (propagation is private); the remount adds the flags,
        # which a bind mount ignores on its first call.
        _libc_ns.mount(source, target, None, _MS_BIND)
        _libc_ns.mount(None, target, None, _MS_REMOUNT | _MS_BIND | _PSEUDO)
    for path, content in sorted(spec.files.items()):
        bind_file(path, content, spec.session_id)
    for path in spec.hidden:
        # Safe: an empty, read-only tmpfs over the directory hides what the launcher keeps there.
        _libc_ns.mount("tmpfs", path, "tmpfs", _PSEUDO | _libc_ns.MS_RDONLY, "mode=0700,size=4k")


_MS_BIND = 0x1000
_MS_REMOUNT = 0x20


def bind_file(path_inside: str, content: bytes, session_id: str = "") -> None:
    """Show ``content`` read-only at the existing file ``path_inside``; only in a private mount namespace.

    The content goes to a private temp file that is bind-mounted and then unlinked at once: the
    mount keeps the inode alive, so nothing is left on the host and nothing needs cleaning up."""
    target = os.path.realpath(path_inside)  # mount(2) follows a symlink (resolv.conf often is one)
    if not os.path.isfile(target):
        raise SandboxError("mounts", f"cannot show a file at {path_inside}: {target} is not an existing file",
                           f"create {target} on the host (it can be empty); the sandbox never creates host files")
    # The session in the name lets the run's reaper find it if init dies before the unlink below.
    prefix = f"faramesh-sandbox-file-{session_id}-" if session_id else "faramesh-sandbox-file-"
    fd, source = tempfile.mkstemp(prefix=prefix)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(content)
        os.chmod(source, 0o644)  # the agent may run as another user than the launcher
        # Safe: seen only in the sandbox (private propagation); the host's file is untouched.
        _libc_ns.mount(source, target, None, _MS_BIND)
        _libc_ns.mount(None, target, None, _MS_REMOUNT | _MS_BIND | _PSEUDO | _libc_ns.MS_RDONLY)
    finally:
        os.unlink(source)
