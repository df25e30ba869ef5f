"""Namespaces for the agent: user (when not root), mount, pid, net, uts, ipc.

Each function is one stage of sandbox.launch and a no-op when the spec turns its part off."""

from __future__ import annotations

import fcntl
import os
import socket
import struct

from sandbox import _libc_ns
from sandbox.spec import SandboxSpec

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = struct.Struct("16sH14x")  # ifr_name, ifr_flags, padding to sizeof(struct ifreq)


def unshare_user(spec: SandboxSpec) -> None:
    """A user namespace first, alone, so that its failure (the common one) is named precisely."""
    if spec.wants_user_namespace():
        # Safe: the new namespace grants capabilities only over namespaces it owns, never the host's.
        _libc_ns.unshare(_libc_ns.CLONE_NEWUSER)


def map_user(spec: SandboxSpec, uid: int, gid: int) -> None:
    """Map the caller's uid and gid to themselves: inside, the agent is the same unprivileged user.

    Mapping to itself (not to 0) means the agent's first execve drops every capability of the
    namespace, so it cannot mount, unshare or change its identity even where the filter would allow."""
    if not spec.wants_user_namespace():
        return
    # setgroups must be denied before an unprivileged process may write its own gid_map.
    _write_proc("/proc/self/setgroups", "deny")
    _write_proc("/proc/self/uid_map", f"{uid} {uid} 1\n")
    _write_proc("/proc/self/gid_map", f"{gid} {gid} 1\n")


def unshare_rest(spec: SandboxSpec) -> None:
    """Every other namespace in one call; CLONE_NEWPID takes effect for the next child only."""
    flags = 0
    for name in sorted(spec.namespaces):
        flags |= _libc_ns.NAMESPACE_FLAGS[name]
    if flags:
        # Safe: new namespaces only take away the host's view (processes, mounts, network, hostname).
        _libc_ns.unshare(flags)


def set_hostname(spec: SandboxSpec) -> None:
    if "uts" in spec.namespaces:
        # Safe: the uts namespace is the agent's own; the host's hostname is unchanged.
        try:
            socket.sethostname(spec.hostname)
        except OSError as err:
            raise OSError(err.errno, f"sethostname({spec.hostname!r}): {os.strerror(err.errno)}") from None


def bring_up_loopback(spec: SandboxSpec) -> None:
    """A new network namespace starts with lo down; bring it up so localhost works inside."""
    if "net" not in spec.namespaces:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            req = bytearray(_IFREQ.pack(b"lo", 0))
            fcntl.ioctl(sock, SIOCGIFFLAGS, req, True)
            name, flags = _IFREQ.unpack(req)
            # Safe: lo exists only inside the agent's network namespace.
            fcntl.ioctl(sock, SIOCSIFFLAGS, _IFREQ.pack(b"lo", flags | IFF_UP))
        except OSError as err:
            raise OSError(err.errno, f"ioctl(SIOCSIFFLAGS, 'lo', IFF_UP): {os.strerror(err.errno)}") from None


def _write_proc(path: str, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as err:
        raise OSError(err.errno, f"write({path}, {text.strip()!r}): {os.strerror(err.errno)}") from None
